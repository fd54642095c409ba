"""Rows 3-4: how long yamlnet takes to turn a spec into a module, and to start.

Row 3 compares compiling the ResNet-50 spec with constructing torchvision's ResNet-50
(both allocate and initialise the same weights), `yamlnet validate` as a whole process
with `python -c "import torch"`, and times `yamlnet --help`. Row 4 compiles generated
chains of 1k..10k nodes and fits the exponent of time against size. Rows 3a and 4 collect
Python's garbage before each timed call: the reference cycles a built model leaves were
otherwise collected inside whichever call came next (a 2k-node compile once took 1.9 s
where its other rounds took 0.6-0.8 s).
"""

from __future__ import annotations

import math
import sys

from .common import SPECS, Goal, Row, Side, interleaved, process_seconds, yamlnet_cmd

RESNET = SPECS / "zoo" / "resnet.yaml"


def compile_rows(quick: bool) -> list[Row]:
    import torchvision

    import yamlnet

    depth = 18 if quick else 50
    t = interleaved({"ours": lambda: yamlnet.compile(RESNET, depth=depth),
                     "theirs": getattr(torchvision.models, f"resnet{depth}")}, 2 if quick else 11,
                    collect=True)  # fmt: skip
    spec = [str(RESNET), "--set", f"depth={depth}"]
    p = process_seconds({"validate": yamlnet_cmd("validate", *spec),
                         "torch": [sys.executable, "-c", "import torch"],
                         "help": yamlnet_cmd("--help")}, 1 if quick else 7, warmup=0 if quick else 1,
                        together=quick)  # fmt: skip
    return [
        Row("3a", f"compile time, zoo/resnet.yaml depth={depth}", Side("yamlnet.compile", t["ours"], "s"),
            Side(f"torchvision resnet{depth}()", t["theirs"], "s"), Goal("<=", 1.2)),
        Row("3b", f"`yamlnet validate` resnet{depth} (whole process)", Side("yamlnet validate", p["validate"], "s"),
            Side("python -c 'import torch'", p["torch"], "s"), Goal("<=", 1.5)),
        Row("3c", "`yamlnet --help` (whole process)", Side("yamlnet --help", p["help"], "s"),
            goal=Goal("<", 0.3, on="value")),
    ]  # fmt: skip


def chain(nodes: int) -> str:
    """A spec of `nodes` explicit nodes: Linear and ReLU, alternating, width 8."""
    lines = ["yamlnet: 1", f"name: chain_{nodes}", "inputs: {x: [N, 8]}", "nodes:"]
    for i in range(nodes):
        op = "{op: Linear, out_features: 8}" if i % 2 == 0 else "{op: ReLU}"
        lines.append(f"  n{i}: {op}")
    lines.append(f"outputs: {{y: n{nodes - 1}}}")
    return "\n".join(lines) + "\n"


def scaling_row(quick: bool) -> Row:
    """Row 4: compile time of the largest chain / the smallest (10k / 1k <= 11)."""
    import yamlnet

    sizes = (100, 200, 500, 1000) if quick else (1000, 2000, 5000, 10000)
    texts = {n: chain(n) for n in sizes}
    t = interleaved({n: (lambda s=s: yamlnet.compile(s)) for n, s in texts.items()}, 1 if quick else 5,
                    warmup=0 if quick else 1, collect=True)  # fmt: skip
    med = {n: Side("", v, "s").median for n, v in t.items()}
    xs, ys = [math.log(n) for n in sizes], [math.log(med[n]) for n in sizes]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)
    lo, hi = sizes[0], sizes[-1]
    each = ", ".join(f"{n}: {med[n]:.2f} s" for n in sizes)
    return Row("4", f"compile time, generated chain of {hi} nodes / {lo} nodes",
               Side(f"{hi} nodes", t[hi], "s"), Side(f"{lo} nodes", t[lo], "s"),
               Goal("<=", 1.1 * hi / lo), note=f"fitted exponent {slope:.2f} ({each})")  # fmt: skip
