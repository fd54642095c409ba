"""Rows 14-16: the model zoo (specs/zoo/) against torchvision's models.

Row 14 compiles every variant of every zoo family and constructs the same torchvision
model (both allocate and initialise the same weights), each warm: after a first call, in
rounds sized to the variant (3 to 11). A family's row is its worst variant; its note gives
every variant's ratio. The worst of several noisy ratios leans high: read it beside the
others. torchvision re-initialises most weights after the layers' own initialisation
(kaiming_normal_, normal_, trunc_normal_), which the zoo specs do not ask for: where the
weights dominate (VGG, ConvNeXt, Swin, ViT) its side does more work than ours.

Row 15 is the first compile in a fresh process: a child that has imported torch times
`import yamlnet` and one compile of the family's first variant, against a child that
times `import torchvision` and one construction. Row 16 times `yamlnet import` of
torchvision's ResNet-50 (trace, write, compile back, check) as a whole process, beside a
process that builds the model and traces it with torch.fx, for scale.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .common import (
    SPECS,
    Goal,
    Row,
    Side,
    interleaved,
    process_seconds,
    rounds,
    run_process,
    yamlnet_cmd,
)

ZOO = SPECS / "zoo"
ROUND_SECONDS = 4.0  # a variant gets as many rounds as fit in this, at a warm round's pace
REGNETS = ["y_400mf", "x_400mf", "x_800mf", "y_800mf", "x_1_6gf", "y_1_6gf", "x_3_2gf", "y_3_2gf",
           "x_8gf", "y_8gf", "x_16gf", "y_16gf", "x_32gf", "y_32gf", "y_128gf"]  # fmt: skip
SWIN_S = {"depths": [2, 2, 18, 2], "stochastic_depth_prob": 0.3}

# family -> (its spec, [(torchvision builder, the spec's variables)]) as each spec's header
# comment lists them; the first is the smallest, the one a quick run and row 15 compile
FAMILIES: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    "resnet": ("resnet.yaml", [
        *[(f"resnet{d}", {"depth": d}) for d in (18, 34, 50, 101, 152)],
        ("resnext50_32x4d", {"depth": 50, "groups": 32, "width_per_group": 4}),
        ("resnext101_32x8d", {"depth": 101, "groups": 32, "width_per_group": 8}),
        ("resnext101_64x4d", {"depth": 101, "groups": 64, "width_per_group": 4}),
        ("wide_resnet50_2", {"depth": 50, "width_per_group": 128}),
        ("wide_resnet101_2", {"depth": 101, "width_per_group": 128})]),
    "vgg": ("vgg.yaml", [(f"vgg{d}{'_bn' if bn else ''}", {"depth": d, "batch_norm": bn})
                         for d in (11, 13, 16, 19) for bn in (False, True)]),
    "mobilenet_v2": ("mobilenet_v2.yaml", [("mobilenet_v2", {})]),
    "efficientnet": ("efficientnet.yaml", [(f"efficientnet_{v}", {"variant": v}) for v in ("b0", "b1", "b2", "b3")]),
    "densenet": ("densenet.yaml", [(f"densenet{d}", {"depth": d}) for d in (121, 169, 201, 161)]),
    "convnext": ("convnext.yaml", [(f"convnext_{s}", {"size": s}) for s in ("tiny", "small")]),
    "vit": ("vit.yaml", [(f"vit_b_{p}", {"patch": p}) for p in (16, 32)]),
    "regnet": ("regnet.yaml", [(f"regnet_{v}", {"variant": v}) for v in REGNETS]),
    "swin": ("swin.yaml", [("swin_t", {}), ("swin_s", SWIN_S),
                           ("swin_b", {**SWIN_S, "embed_dim": 128, "num_heads": [4, 8, 16, 32],
                                       "stochastic_depth_prob": 0.5})]),
}  # fmt: skip


def family_rows(quick: bool) -> list[Row]:
    """Row 14: per family, warm compile seconds / torchvision construction seconds (<= 1.2),
    the worst variant; a quick run compiles each family's first variant once."""
    rows = []
    for k, (spec, variants) in enumerate(FAMILIES.values()):
        each = [_variant_row(spec, builder, variables, quick)
                for builder, variables in variants[: 1 if quick else None]]
        worst = max(each, key=lambda row: row.ratio)
        ratios = ", ".join(f"{row.key} {row.ratio:.2f}" for row in each)
        figure = f"compile time, zoo/{spec}, worst of {len(each)}: {worst.key}"
        rows.append(replace(worst, key=f"14{'abcdefghi'[k]}", figure=figure, note=f"each: {ratios}"))
    return rows


def _variant_row(spec: str, builder: str, variables: dict, quick: bool) -> Row:
    """One variant, warm: a first round sizes the rounds that count (quick: that round only)."""
    import torchvision

    import yamlnet

    sides = {"ours": lambda: yamlnet.compile(ZOO / spec, **variables),
             "theirs": getattr(torchvision.models, builder)}  # fmt: skip
    t = first = interleaved(sides, 1, warmup=0, collect=True)
    if not quick:
        repeat = int(ROUND_SECONDS / (first["ours"][0] + first["theirs"][0]))
        t = interleaved(sides, max(3, min(11, repeat)), warmup=0, collect=True)
    return Row(builder, "", Side("yamlnet.compile", t["ours"], "s"), Side(f"torchvision {builder}()", t["theirs"], "s"),
               Goal("<=", 1.2))  # fmt: skip


CHILD = """\
import time
import torch
start = time.perf_counter()
{}
print(time.perf_counter() - start)
"""


def first_compile_row(quick: bool) -> Row:
    """Row 15: per family's first variant, `import yamlnet` + one compile / `import torchvision`
    + one construction, each timed inside a fresh process that has imported torch; the
    worst family (report only). A quick run measures resnet18 alone, both sides at once."""
    each = []
    for k, (spec, variants) in enumerate(list(FAMILIES.values())[: 1 if quick else None]):
        builder, variables = variants[0]
        sides = {"ours": _child(f"import yamlnet; yamlnet.compile({str(ZOO / spec)!r}, **{variables!r})"),
                 "theirs": _child(f"import torchvision; torchvision.models.{builder}()")}  # fmt: skip
        # one warm-up, before the first family: it fills the file cache for all of them
        t = rounds(sides, 1 if quick else 3, warmup=0 if quick or k else 1, together=quick)
        each.append(Row(builder, "", Side("import yamlnet + compile", t["ours"], "s"),
                        Side(f"import torchvision + {builder}()", t["theirs"], "s")))  # fmt: skip
    worst = max(each, key=lambda row: row.ratio)
    ratios = ", ".join(f"{r.key} {r.ratio:.2f} ({r.ours.median:.2f} / {r.reference.median:.2f} s)"
                       for r in each)  # fmt: skip
    figure = f"first compile in a fresh process (torch imported, not timed), worst of {len(each)}: {worst.key}"
    return replace(worst, key="15", figure=figure, note=f"each: {ratios}")


def _child(code: str) -> Callable[[], float]:
    """A fresh interpreter running `code` after `import torch`; the seconds it reports."""
    return lambda: float(run_process([sys.executable, "-c", CHILD.format(code)]).stdout.split()[-1])


def import_row(quick: bool) -> Row:
    """Row 16: `yamlnet import` of torchvision's ResNet-50 (resnet18 when quick), whole
    process, beside building the model and tracing it with torch.fx (report only)."""
    name = "resnet18" if quick else "resnet50"
    trace = f"import torch.fx, torchvision; torch.fx.symbolic_trace(torchvision.models.{name}())"
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"import": yamlnet_cmd("import", f"torchvision.models:{name}", "--input", "x=[N,3,224,224]",
                                      "-o", str(Path(tmp) / f"{name}.yaml"), "--force"),
                "trace": [sys.executable, "-c", trace]}  # fmt: skip
        t = process_seconds(cmds, 1 if quick else 3, warmup=0 if quick else 1, together=quick)
    return Row("16", f"`yamlnet import torchvision.models:{name} --input x=[N,3,224,224]` (whole process: "
               "trace, write, compile back, check)", Side("yamlnet import", t["import"], "s"),
               Side("python: build + torch.fx.symbolic_trace", t["trace"], "s"))  # fmt: skip
