"""MACs and activation memory per node (`yamlnet summary`, compiler/costs.py), against
hand counts, torchvision's published figure, and the flop counter run on torchvision's
own model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.costs import missing_dims, node_costs
from yamlnet.compiler.errors import SpecError
from yamlnet.compiler.summary import format_summary, summary_rows

from .conftest import SPECS


@pytest.fixture(scope="module")
def resnet18():
    result = compile_spec(SPECS / "resnet18.yaml")
    return result, node_costs(result, {})


def test_resnet18_total_is_the_published_count(resnet18):
    _, costs = resnet18
    total = sum(c.macs for c in costs.values())
    assert abs(total - 1.81e9) / 1.81e9 < 0.01  # torchvision's docs: 1.81 G for resnet18
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        torchvision.models.resnet18().eval()(torch.zeros(1, 3, 224, 224))
    assert total == mode.get_total_flops() // 2  # the same count on torchvision's module


def test_resnet18_nodes_by_hand(resnet18):
    _, costs = resnet18
    assert costs["conv1"].macs == 64 * 3 * 7 * 7 * 112 * 112
    assert costs["conv1"].activation_bytes == 64 * 112 * 112 * 4
    assert costs["fc"].macs == 512 * 1000 and costs["bn1"].macs == 0
    assert costs["layer2.0.downsample.0"].macs == 128 * 64 * 28 * 28


def test_batch_size_scales_costs(resnet18):
    result, costs = resnet18
    four = node_costs(result, {"N": 4})
    assert all(four[k].macs == 4 * c.macs and four[k].activation_bytes == 4 * c.activation_bytes
               for k, c in costs.items())  # fmt: skip


def test_recurrent_layers_are_counted():
    result = compile_spec(SPECS / "lstm_classifier.yaml")
    assert missing_dims(result, {}) == ["T"]
    with pytest.raises(SpecError, match="costs need a size for T"):
        node_costs(result, {})
    costs = node_costs(result, {"T": 32, "N": 3})
    # 2 layers, 4 gates, hidden 128, inputs 64 then 128; per step and sample
    assert costs["lstm"].macs == 3 * 32 * (4 * 128 * (64 + 128) + 4 * 128 * (128 + 128))


def test_summary_table_totals_and_note(resnet18):
    result, costs = resnet18
    text = format_summary(result, summary_rows(result, costs), sizes={"N": 1})
    assert text.splitlines()[1].split() == ["name", "op", "output", "params", "MACs", "activations"]
    assert "11,689,512 parameters, 1.81 GMACs and" in text and "of activations at N=1" in text
    lstm = compile_spec(SPECS / "lstm_classifier.yaml")
    text = format_summary(lstm, summary_rows(lstm), note="(MACs and activations need sizes: --dim T=SIZE)")
    assert text.rstrip().endswith("(MACs and activations need sizes: --dim T=SIZE)")
