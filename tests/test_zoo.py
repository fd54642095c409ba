"""The model zoo (specs/zoo/): each torchvision-backed spec loads the torchvision model's
state_dict with strict=True and gives its outputs (eval mode, batch 2, 3x224x224, fp32,
max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import yamlnet

from .conftest import SPECS

ZOO = SPECS / "zoo"

# (spec, variables, torchvision builder)
TORCHVISION = [
    ("resnet.yaml", {"depth": 18}, "resnet18"),
    ("resnet.yaml", {"depth": 34}, "resnet34"),
    ("resnet.yaml", {"depth": 50}, "resnet50"),
    pytest.param("resnet.yaml", {"depth": 101}, "resnet101", marks=pytest.mark.slow),
    pytest.param("resnet.yaml", {"depth": 152}, "resnet152", marks=pytest.mark.slow),
    ("mobilenet_v2.yaml", {}, "mobilenet_v2"),
]


def _id(param) -> str:
    values = param.values if hasattr(param, "values") else param
    return values[2]


@pytest.mark.parametrize("spec, variables, builder", TORCHVISION, ids=[_id(p) for p in TORCHVISION])
def test_torchvision_weights_load_strictly_and_outputs_match(spec, variables, builder):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, builder)().eval()
    model = yamlnet.compile(ZOO / spec, **variables).eval()
    assert list(model.state_dict()) == list(ref.state_dict())  # names and order
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4
