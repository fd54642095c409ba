"""specs/zoo/swin.yaml against torchvision's Swin Transformer v1 (swin_t, swin_s, swin_b):
the relative position index buffers equal torchvision's at construction (before any
state_dict is loaded), a shift mask (not in the state_dict) exactly in the shifted blocks
whose windows do not cover the whole map, torchvision's stochastic depth schedule, its
state_dict loaded with strict=True, and its outputs (eval, batch 2, fp32, max abs diff
<= 1e-4). swin_t runs by default; swin_s, swin_b and a 200x200 input (padding to whole
windows, odd sizes at a patch merging) run with the extended set."""

from __future__ import annotations

import pytest
import torch
import torchvision

import yamlnet

from .conftest import SPECS

SPEC = SPECS / "zoo" / "swin.yaml"
SWIN_S = {"depths": [2, 2, 18, 2], "stochastic_depth_prob": 0.3}
SWIN_B = {"embed_dim": 128, "num_heads": [4, 8, 16, 32], **SWIN_S, "stochastic_depth_prob": 0.5}

# (torchvision builder, variables, image size)
VARIANTS = [
    ("swin_t", {}, 224),
    pytest.param("swin_s", SWIN_S, 224, marks=pytest.mark.extended),
    pytest.param("swin_b", SWIN_B, 224, marks=pytest.mark.extended),
    pytest.param("swin_t", {}, 200, marks=pytest.mark.extended),  # maps of 50, 25, 13, 7
]


def _id(param) -> str:
    builder, variables, size = param.values if hasattr(param, "values") else param
    return builder if size == 224 else f"{builder}-{size}"


@pytest.mark.parametrize("builder, variables, size", VARIANTS, ids=[_id(p) for p in VARIANTS])
def test_swin_equals_torchvision(builder, variables, size):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, builder)().eval()
    model = yamlnet.compile(SPEC, image=size, **variables).eval()

    # (a) the relative position index: torchvision's buffers, as built, before any loading
    theirs = dict(ref.named_buffers())
    ours = dict(model.named_buffers())
    index = sorted(k for k in ours if k.endswith(".relative_position_index"))
    assert index == sorted(theirs)
    for name in index:
        assert torch.equal(ours[name], theirs[name]), name
    # the masks: built once, kept out of the state_dict, in every second block of the stages
    # whose windows do not cover the whole (padded) map: all but the last (7x7) stage
    depths = variables.get("depths", [2, 2, 6, 2])
    masks = sorted(k for k in ours if k.endswith(".attn_mask.mask"))
    assert masks == sorted(f"features.{2 * s + 1}.{j}.attn.attn_mask.mask"
                           for s in range(3) for j in range(1, depths[s], 2))  # fmt: skip
    assert ours[masks[0]].dtype == torch.float32
    assert set(ours[masks[0]].unique().tolist()) == {-100.0, 0.0}
    assert not set(masks) & set(model.state_dict())

    # torchvision calls one StochasticDepth twice per block; the spec has one per residual
    for name, module in model.named_modules():
        if type(module).__name__ == "StochasticDepth":
            want = ref.get_submodule(name.replace("stochastic_depth_mlp", "stochastic_depth")).p
            assert module.p == pytest.approx(want, abs=1e-12), name

    # (b) the state_dict loads strictly: the same keys in the same order
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict(), strict=True)

    # (c) the same outputs
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4
