"""The generated forward's hoisted lookups (codegen.hoist_lookups) and the registered
shape rules that stand in for meta kernels (Linear, batch norm, adaptive pooling, add,
cat, and torchvision.ops' composites).

Oracles: fx's own plain code for the same graph, eager PyTorch on real tensors, and the
modules' own behaviour (hooks, assignment, deepcopy, pickling, TorchScript).
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torchvision import ops as tvops
from torchvision.models.convnext import LayerNorm2d
from yamlnet.compiler.codegen import plain_code
from yamlnet.compiler.ops.modules import SHAPE_RULES
from yamlnet.compiler.ops.tensors import _roll_rule, broadcast_rule, cat_rule

import yamlnet

from .conftest import SPECS


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return yamlnet.compile(SPECS / "resnet18.yaml", size=64).eval()


X = torch.randn(2, 3, 64, 64)


def test_module_calls_are_hoisted_lookups(resnet):
    code = resnet.code
    assert "getattr(self" not in code and "self.layer1" not in code
    assert "layer1_0_conv1 = " in code and "['conv1'](maxpool)" in code
    # fx's own code for the same graph still reads attribute paths
    assert 'getattr(self.layer1, "0").conv1(maxpool)' in plain_code(resnet)


def test_hooks_run_and_assigned_submodules_are_called(resnet):
    model = copy.deepcopy(resnet)
    seen = []
    handle = model.get_submodule("layer2.1.conv2").register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(X)
    assert seen == [torch.Size([2, 128, 8, 8])]
    handle.remove()
    model.fc = torch.nn.Identity()  # fine-tuning swaps a head by assignment
    before = model(X)
    assert before.shape == (2, 512)
    model.get_submodule("layer1.0")._modules["conv2"] = torch.nn.Identity()  # or through _modules
    assert not torch.allclose(model(X), before)


def test_copies_pickles_and_scripts_keep_the_outputs(resnet):
    want = resnet(X)
    copied = copy.deepcopy(resnet)
    assert "_d0 = self._modules" in copied.code  # the copy keeps the fast code
    assert torch.equal(copied(X), want)
    buf = io.BytesIO()
    torch.save(resnet, buf)
    buf.seek(0)
    assert torch.allclose(torch.load(buf, weights_only=False)(X), want, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.script(resnet)
    assert torch.allclose(scripted(X), want, atol=1e-6)
    retraced = torch.fx.symbolic_trace(resnet)
    assert torch.allclose(retraced(X), want, atol=1e-6)


def test_node_names_that_look_like_the_locals_do_not_collide():
    text = ("yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n"
            "  _d0: {op: Linear, out_features: 4}\n  _d1: {op: ReLU}\n"
            "  inner: {nodes: {_a2: {op: Linear, out_features: 3}}}\n"
            "  w: {op: Parameter, shape: [3]}\n  out: {op: add, in: [inner, w]}\n")  # fmt: skip
    model = yamlnet.compile(text)
    x = torch.randn(5, 4)
    want = model.inner._a2(torch.relu(model._d0(x))) + model.w
    assert torch.equal(model(x), want)


# -- shape rules: the rule's answer equals eager PyTorch's -----------------------------

CASES = [
    (torch.nn.Linear(6, 3), [(2, 6)]),
    (torch.nn.Linear(6, 3), [(2, 5, 7, 6)]),
    (torch.nn.BatchNorm1d(4), [(2, 4)]),
    (torch.nn.BatchNorm1d(4), [(2, 4, 9)]),
    (torch.nn.BatchNorm2d(4), [(2, 4, 5, 6)]),
    (torch.nn.BatchNorm3d(4), [(2, 4, 3, 5, 6)]),
    (torch.nn.AdaptiveAvgPool1d(3), [(2, 4, 9)]),
    (torch.nn.AdaptiveAvgPool2d(1), [(2, 4, 9, 7)]),
    (torch.nn.AdaptiveAvgPool2d((2, None)), [(4, 9, 7)]),
    (torch.nn.AdaptiveAvgPool3d([2, 1, None]), [(2, 4, 5, 6, 7)]),
    (tvops.SqueezeExcitation(4, 2), [(2, 4, 5, 6)]),
    (tvops.SqueezeExcitation(4, 2), [(4, 5, 6)]),
    (tvops.Conv2dNormActivation(4, 6, 3, stride=2, activation_layer=torch.nn.Hardswish), [(2, 4, 9, 7)]),
    (tvops.Conv2dNormActivation(4, 6, 1, norm_layer=None), [(4, 5, 5)]),
    (tvops.Conv3dNormActivation(4, 6, 3), [(2, 4, 5, 6, 7)]),
    (tvops.MLP(6, [8, 3], dropout=0.1), [(2, 5, 6)]),
    (tvops.StochasticDepth(0.2, "row"), [(2, 5, 6)]),
    (torch.nn.LayerNorm(6), [(2, 5, 6)]),
    (torch.nn.LayerNorm([5, 6]), [(2, 5, 6)]),
    (LayerNorm2d(4), [(2, 4, 5, 6)]),
]


@pytest.mark.parametrize("module, shapes", CASES, ids=lambda c: str(c).replace(" ", ""))
def test_module_rules_agree_with_the_module(module, shapes):
    real = [torch.randn(s) for s in shapes]
    want = module.eval()(*real)
    got = SHAPE_RULES[type(module).__name__](module, [t.to("meta") for t in real], {})
    assert (got.shape, got.dtype, got.device.type) == (want.shape, want.dtype, "meta")


@pytest.mark.parametrize("a, b", [((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((2, 3), (2, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_broadcast_rule_agrees_with_torch_add(a, b, dtype):
    real = [torch.ones(a, dtype=dtype), torch.ones(b, dtype=dtype)]
    want = torch.add(*real)
    got = broadcast_rule(None, [t.to("meta") for t in real], {})
    assert (got.shape, got.dtype) == (want.shape, want.dtype)


@pytest.mark.parametrize("inputs, args", [([(5,)], {"other": 2.5}), ([(5,)], {}), ([(2, 3), (2, 3)], {"alpha": 2})])
def test_broadcast_rule_leaves_other_calls_to_the_kernel(inputs, args):
    assert broadcast_rule(None, [torch.empty(s, device="meta") for s in inputs], args) is NotImplemented
    bools = [torch.empty(3, dtype=torch.bool, device="meta")] * 2
    assert broadcast_rule(None, bools, {}) is NotImplemented


@pytest.mark.parametrize("shapes, dim", [([(2, 3, 4), (2, 5, 4)], 1), ([(2, 3), (2, 3), (2, 3)], -1), ([(4,)], 0)])
def test_cat_rule_agrees_with_torch_cat(shapes, dim):
    real = [torch.randn(s) for s in shapes]
    want = torch.cat(real, dim=dim)
    got = cat_rule(None, [t.to("meta") for t in real], {"dim": dim})
    assert (got.shape, got.dtype) == (want.shape, want.dtype)


def test_layer_norm_and_roll_rules_leave_what_does_not_fit_to_the_kernel():
    x = torch.empty(2, 5, 6, device="meta")
    assert SHAPE_RULES["LayerNorm"](torch.nn.LayerNorm(5), [x], {}) is NotImplemented
    assert SHAPE_RULES["LayerNorm"](torch.nn.LayerNorm(6), [x.long()], {}) is NotImplemented
    assert SHAPE_RULES["LayerNorm2d"](LayerNorm2d(6), [x], {}) is NotImplemented
    assert _roll_rule(None, [x], {"shifts": [1, 2], "dims": [1, 2]}).shape == x.shape
    assert torch.roll(torch.zeros(2, 5, 6), 3, 1).shape == _roll_rule(None, [x], {"shifts": 3, "dims": 1}).shape
    for args in ({"shifts": [1, 2], "dims": [1]}, {"shifts": 1, "dims": 3}, {"shifts": 1}):
        assert _roll_rule(None, [x], args) is NotImplemented


@pytest.mark.parametrize("shapes, args", [([(2, 3), (3, 3)], {"dim": 1}), ([(2, 3), (2, 3, 1)], {}),
                                          ([(2, 3)], {"dim": 2}), ([()], {}), ([(2, 3)], {"out": None})])
def test_cat_rule_leaves_mismatches_to_the_kernel(shapes, args):
    assert cat_rule(None, [torch.empty(s, device="meta") for s in shapes], args) is NotImplemented
    mixed = [torch.empty(2, device="meta"), torch.empty(2, dtype=torch.int64, device="meta")]
    assert cat_rule(None, mixed, {}) is NotImplemented


@pytest.mark.parametrize("node, shape, message", [
    ("{op: SqueezeExcitation, squeeze_channels: 2}", "[N, 3, 8]", "SqueezeExcitation cannot take input [N, 3, 8]: "),
    ("{op: Conv2dNormActivation, out_channels: 4}", "[N, 5, 8]",
     "Conv2dNormActivation cannot take input [N, 5, 8]: Invalid channel dimensions"),
    ("{op: BatchNorm2d}", "[N, 3, 8]", "BatchNorm2d cannot take input [N, 3, 8]: expected 4D input (got 3D input)"),
    ("{op: BatchNorm1d}", "[N, 3, 8, 8]", "expected 2D or 3D input (got 4D input)"),
    ("{op: AdaptiveAvgPool2d, output_size: 1}", "[N, 8]", "expected 3D or 4D input (got 2D input)"),
    ("{op: Linear, out_features: 2, in_features: 4}", "[]", "Linear cannot read in_features from input []"),
    ("{op: add}", "[N, 4]", "add cannot take input [N, 4]: add() received an invalid combination"),
])  # fmt: skip
def test_rules_refuse_what_the_layer_refuses(tmp_path, node, shape, message):
    spec = tmp_path / "net.yaml"
    spec.write_text(f"yamlnet: 1\ninputs: {{x: {shape}}}\nnodes:\n  layer: {node}\n")
    with pytest.raises(yamlnet.SpecError) as err:
        yamlnet.compile(spec)
    assert message in str(err.value) and str(err.value).startswith(f"{spec}:4:3: nodes.layer: ")


def test_validating_resnet50_does_not_load_torchdynamo():
    """The rules keep `yamlnet validate` off TorchDynamo (about a second of start-up)."""
    import subprocess
    import sys

    code = ("import sys, yamlnet; yamlnet.load_spec(sys.argv[1], depth=50); "
            "print('torch._dynamo' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(SPECS / "zoo" / "resnet.yaml")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "False", done.stderr
