"""Every torchvision classification, segmentation and video model under 100M parameters run
through `yamlnet import` (random weights, small inputs): those in EXPECTED_EXACT must import
exactly (strict state_dict, same outputs); every other one must be refused with a one-line
ImportFailure, never an internal error.

Run it as a report (counts and each refusal's first line) with
    python tests/test_import_sweep.py [NAME ...]
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings

import pytest

MAX_PARAMS = 100_000_000

# input shape per model, [N, 3, H, W] unless listed (fixed-size models, video [N, 3, T, H, W])
_IMAGE = ["N", 3, 64, 64]
_SHAPES = {
    "inception_v3": ["N", 3, 299, 299],  # its aux head (a train output) needs 17x17 at Mixed_6e
    "maxvit_t": ["N", 3, 224, 224],
    "vit_b_16": ["N", 3, 224, 224],
    "vit_b_32": ["N", 3, 224, 224],
    "mvit_v1_b": ["N", 3, 16, 224, 224],
    "mvit_v2_s": ["N", 3, 16, 224, 224],
    "s3d": ["N", 3, 16, 224, 224],
}
_VIDEO = ["N", 3, 4, 64, 64]
_BIG = {"maxvit_t", "vit_b_16", "vit_b_32", "mvit_v1_b", "mvit_v2_s", "s3d"}  # batch 1: cheap
_DIMS = {"inception_v3": {"N": 2}}  # batch 2: training's batch norm needs two values (1x1 maps)

EXPECTED_EXACT = {  # 76 of 78 (tests/test_import_sweep.py's report)
    "alexnet", "convnext_base", "convnext_small", "convnext_tiny",
    "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet101", "deeplabv3_resnet50", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_s",
    "fcn_resnet101", "fcn_resnet50", "googlenet", "inception_v3", "lraspp_mobilenet_v3_large",
    "maxvit_t", "mc3_18", "mnasnet0_5",
    "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "r2plus1d_18", "r3d_18", "regnet_x_16gf", "regnet_x_1_6gf",
    "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf", "regnet_y_16gf",
    "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf",
    "resnet101", "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d",
    "resnext101_64x4d", "resnext50_32x4d", "s3d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin3d_b",
    "swin3d_s", "swin3d_t", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t",
    "vit_b_16", "vit_b_32", "wide_resnet50_2",
}  # fmt: skip

# The rest, each refused for a cause the importer names (the start of its one line):
REFUSED = {
    # MViT v1 calls torchvision's `_unsqueeze`, a helper kept whole by torch.fx that adds a
    # dim when the input has one fewer: no yamlnet op stands for it
    "mvit_v1_b": "torchvision.models.video.mvit._unsqueeze: has no yamlnet op",
    # MViT v2's attention assigns into a tuple of tensors by index, which fx cannot trace;
    # as one op it would need constructor arguments the layer does not keep (MSBlockConfig)
    "mvit_v2_s": "cannot trace MViT in submodule 'blocks.0.attn' (MultiscaleAttention): torch.fx cannot "
                 "trace it: TypeError: 'Proxy' object does not support item assignment",
}  # fmt: skip


def _families():
    from torchvision import models

    return (
        ("classification", models),
        ("segmentation", models.segmentation),
        ("video", models.video),
    )


def _param_count(name: str) -> int:
    """From the weights' metadata (no download, no build); a meta-device build otherwise."""
    import torch
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT.meta["num_params"]
    except (KeyError, AttributeError, ValueError):
        with torch.device("meta"):
            model = _build(name)
        return sum(p.numel() for p in model.parameters())


def _build(name: str):
    from torchvision import models

    kwargs = {"weights": None}
    if name in models.list_models(module=models.segmentation):
        kwargs["weights_backbone"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models.get_model(name, **kwargs)


def swept_models() -> list[tuple[str, str]]:
    """(family, name) of every model builder under MAX_PARAMS."""
    from torchvision import models

    out = []
    for family, module in _families():
        for name in models.list_models(module=module):
            if _param_count(name) < MAX_PARAMS:
                out.append((family, name))
    return out


def _shape(family: str, name: str) -> list:
    return _SHAPES.get(name, _VIDEO if family == "video" else _IMAGE)


def sweep_one(family: str, name: str) -> tuple[str, str]:
    """('exact', diff) | ('refused', the message) | ('error', a traceback)."""
    import torch
    from yamlnet.compiler.importer import ImportFailure, import_module

    torch.manual_seed(0)
    model = _build(name)
    dims = {"N": 1} if name in _BIG else _DIMS.get(name)
    try:
        r = import_module(model, [(None, _shape(family, name), "float32")], name=name, dims=dims)
    except ImportFailure as err:
        return "refused", str(err)
    except Exception:  # noqa: BLE001 - an internal error is what the sweep looks for
        return "error", traceback.format_exc()
    if r.max_abs_diff is None:
        return "error", "not checked"
    return "exact", f"max abs diff {r.max_abs_diff:.3g}"


@pytest.mark.extended
@pytest.mark.parametrize("family, name", swept_models())
def test_torchvision_model_imports_exactly_or_is_refused_in_one_line(family, name):
    outcome, detail = sweep_one(family, name)
    assert outcome != "error", detail
    if name in EXPECTED_EXACT:
        assert outcome == "exact", f"{name}: {detail}"
    else:
        assert outcome == "refused", f"{name} now imports exactly: add it to EXPECTED_EXACT"
        assert detail.strip() and "\n" not in detail.strip(), detail  # one line, as the CLI prints it
        assert detail.startswith(REFUSED[name]), detail


def main(names: list[str]) -> int:
    models = [(f, n) for f, n in swept_models() if not names or n in names]
    counts: dict = {}
    for family, name in models:
        start = time.time()
        outcome, detail = sweep_one(family, name)
        counts[outcome] = counts.get(outcome, 0) + 1
        lines = detail.strip().splitlines() or [""]
        line = lines[-1] if outcome == "error" else lines[0]
        print(f"{outcome:8} {family:14} {name:30} {time.time() - start:6.1f}s  {line}", flush=True)
        if outcome == "error":
            print(detail, flush=True)
    exact = counts.get("exact", 0)
    print(f"exact {exact}/{len(models)}; refused {counts.get('refused', 0)}; "
          f"internal errors {counts.get('error', 0)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
