"""Node names beyond identifiers (any name PyTorch takes for a submodule, less the spec's
own syntax) and layer-class arguments (`activation_layer: Hardswish`), each against a
hand-written PyTorch twin."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import yamlnet

from .test_language import refusal, spec

SPEC = Path(__file__).parent / "specs" / "names_layers.yaml"


class Unit(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("conv-bn-act", torchvision.ops.Conv2dNormActivation(8, 8, activation_layer=nn.Hardswish))
        self.se = torchvision.ops.SqueezeExcitation(8, 2, activation=nn.SiLU, scale_activation=nn.Hardsigmoid)

    def forward(self, x):
        return self.se(getattr(self, "conv-bn-act")(x)) + x


class Twin(nn.Module):
    """What tests/specs/names_layers.yaml says, written by hand."""

    def __init__(self):
        super().__init__()
        self.stem = torchvision.ops.Conv2dNormActivation(
            3, 8, norm_layer=functools.partial(nn.BatchNorm2d, eps=0.001))
        self.add_module("block1-0", Unit())
        self.add_module("block1-1", Unit())
        self.add_module("head:pool", nn.AdaptiveAvgPool2d(1))
        self.mlp = torchvision.ops.MLP(8, [6, 4], activation_layer=functools.partial(nn.GELU, approximate="tanh"))

    def forward(self, x):
        x = getattr(self, "block1-1")(getattr(self, "block1-0")(self.stem(x)))
        return self.mlp(torch.flatten(getattr(self, "head:pool")(x), 1))


def test_names_and_layers_match_a_hand_written_twin():
    model, twin = yamlnet.compile(SPEC), Twin()
    assert list(model.state_dict()) == list(twin.state_dict())
    twin.load_state_dict(model.state_dict(), strict=True)
    model.eval(), twin.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), twin(x))
    assert type(model.get_submodule("block1-0.conv-bn-act")[2]) is nn.Hardswish
    assert model.stem[1].eps == 0.001 and model.mlp[1].approximate == "tanh"


def test_such_names_script_and_export():
    model = yamlnet.compile(SPEC).eval()
    x = torch.randn(2, 3, 16, 16)
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-6)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_se_input_channels_is_inferred():
    model = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, 24, 4, 4]}
        nodes:
          se: {op: SqueezeExcitation, squeeze_channels: 6}
        """))
    assert model.se.fc1.in_channels == 24 and model.se.fc2.out_channels == 24


@pytest.mark.parametrize("name, message", [
    ("a.b", "'a.b' is not a valid name here (a name has no . [ ] $ quotes, backslashes or spaces)"),
    ("a[0]", "'a[0]' is not a valid name here"),
    ("two words", "'two words' is not a valid name here"),
    ("w$x", "'w$x' is not a valid name here"),
])  # fmt: skip
def test_names_that_the_syntax_needs_are_refused(name, message, tmp_path):
    text = refusal(tmp_path, f'yamlnet: 1\ninputs: {{x: [N, 4]}}\nnodes:\n  "{name}": {{op: Linear, out_features: 2}}\n')
    assert text.startswith("4:3: nodes.") and message in text


@pytest.mark.parametrize("value, message", [
    ("Hardswsh", "activation_layer: unknown op 'Hardswsh' (did you mean Hardswish?)"),
    ("add", "activation_layer: add is a function, not a layer (an nn.Module op)"),
    ("{op: GELU, approx: tanh}", "unknown argument 'approx' for GELU (did you mean approximate?)"),
    ("3", "activation_layer expects a string or a mapping or null, got integer 3"),
])  # fmt: skip
def test_bad_layer_arguments_are_located(value, message, tmp_path):
    text = refusal(tmp_path, "yamlnet: 1\ninputs: {x: [N, 3, 8, 8]}\nnodes:\n"
                   f"  c: {{op: Conv2dNormActivation, out_channels: 4, activation_layer: {value}}}\n")
    assert text.startswith("4:") and "nodes.c.activation_layer: Conv2dNormActivation." in text
    assert message in text


def test_state_dict_keys_follow_the_writing_order_not_the_running_order():
    """torchvision's PatchMerging registers `reduction` before the `norm` that runs first:
    a spec that writes them so (a forward reference) gets its key order."""
    model = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          reduction: {op: Linear, in: norm, out_features: 2}
          norm: {op: LayerNorm, in: x}
        outputs: reduction
        """))
    assert list(model.state_dict()) == ["reduction.weight", "reduction.bias", "norm.weight", "norm.bias"]
    x = torch.randn(3, 4)
    assert torch.equal(model(x), model.reduction(model.norm(x)))
