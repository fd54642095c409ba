"""Oracle tests: compiled specs against hand-written PyTorch twins (tests/twins.py)
and against torchvision's ResNet-18.

For each pair: the state_dict keys and shapes are identical, the twin's weights load
into the compiled module with strict=True, and both give the same outputs (and, for
digits_cnn, the same gradients).
"""

from __future__ import annotations

import pytest
import torch

import yamlnet

from .conftest import SPECS
from .twins import TWINS

TOL = 1e-5


def shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight and BatchNorm statistic away from its default, so that a
    mis-wired class token, bias or running statistic shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=gen))


_PAIRS: dict = {}


def compiled_and_twin(spec_file: str, **overrides):
    """A fresh twin (seeded, weights randomized) and the compiled spec with the same
    overrides. Compiling is the slow part, so compiled modules are cached; every test
    that uses one loads the twin's weights and sets train/eval itself."""
    twin_cls, make_input = TWINS[spec_file]
    torch.manual_seed(0)
    twin = twin_cls(**overrides)
    randomize_(twin)
    key = (spec_file, tuple(sorted(overrides.items())))
    if key not in _PAIRS:
        _PAIRS[key] = yamlnet.compile(SPECS / spec_file, **overrides)
    return _PAIRS[key], twin, make_input


def assert_same_state_layout(compiled, reference):
    a, b = shapes(compiled), shapes(reference)
    assert sorted(a) == sorted(b), (
        f"only in compiled: {sorted(set(a) - set(b))}; only in reference: {sorted(set(b) - set(a))}"
    )
    mismatched = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert not mismatched, f"shape mismatches (compiled, reference): {mismatched}"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return (a - b).abs().max().item()


# ---- the twins -------------------------------------------------------------------------

TWIN_CASES = [
    pytest.param("mlp.yaml", {}, id="mlp"),
    pytest.param("lenet5.yaml", {}, id="lenet5"),
    pytest.param("digits_cnn.yaml", {}, id="digits_cnn"),
    pytest.param("lstm_classifier.yaml", {}, id="lstm_classifier"),
    pytest.param("tiny_vit.yaml", {}, id="tiny_vit"),
    # the same twins with vars overridden, on both sides
    pytest.param("mlp.yaml", {"features": 20, "hidden": 48, "classes": 3}, id="mlp-overrides"),
    pytest.param("lenet5.yaml", {"classes": 7}, id="lenet5-overrides"),
    pytest.param("digits_cnn.yaml", {"width": 8, "classes": 5}, id="digits_cnn-overrides"),
    pytest.param(
        "lstm_classifier.yaml",
        {"vocab": 50, "embed": 16, "hidden": 24, "layers": 3},
        id="lstm_classifier-overrides",
    ),
    pytest.param(
        "tiny_vit.yaml",
        {"image": 16, "patch": 4, "dim": 32, "heads": 2, "depth": 3, "mlp_ratio": 2, "classes": 6},
        id="tiny_vit-overrides",
    ),
]


@pytest.mark.parametrize("spec_file, overrides", TWIN_CASES)
def test_twin_state_dict_layout(spec_file, overrides):
    compiled, twin, _ = compiled_and_twin(spec_file, **overrides)
    assert_same_state_layout(compiled, twin)


@pytest.mark.parametrize("spec_file, overrides", TWIN_CASES)
def test_twin_outputs_match(spec_file, overrides):
    compiled, twin, make_input = compiled_and_twin(spec_file, **overrides)
    result = compiled.load_state_dict(twin.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in twin.state_dict().items():  # the weights really were copied
        assert torch.equal(compiled.state_dict()[key], value), key
    compiled.eval()
    twin.eval()
    torch.manual_seed(1)
    for batch in (2, 3):
        x = make_input(batch, **overrides)
        expected = twin(x)
        got = compiled(x)
        assert got.shape[0] == batch
        assert max_diff(got, expected) <= TOL
        with torch.no_grad():  # no_grad may take other kernels (MultiheadAttention's fast path)
            assert max_diff(compiled(x), twin(x)) <= TOL


def test_twin_outputs_are_not_trivially_equal():
    """A sanity check of the oracle itself: without loading, outputs differ."""
    _, twin, make_input = compiled_and_twin("tiny_vit.yaml")
    torch.manual_seed(5)
    compiled = yamlnet.compile(SPECS / "tiny_vit.yaml")  # its own weights, not the twin's
    compiled.eval()
    twin.eval()
    x = make_input(2)
    assert max_diff(compiled(x), twin(x)) > 1e-3


def test_digits_cnn_gradients_match_twin():
    """Train mode (BatchNorm on batch statistics), dropout switched off by a var override:
    same loss, same gradient for every parameter, same running statistics afterwards."""
    compiled, twin, make_input = compiled_and_twin("digits_cnn.yaml", dropout=0.0)
    compiled.load_state_dict(twin.state_dict(), strict=True)
    compiled.train()
    twin.train()
    torch.manual_seed(2)
    x = make_input(4)
    target = torch.randint(0, 10, (4,))
    losses = []
    for model in (twin, compiled):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= TOL
    twin_params = dict(twin.named_parameters())
    compiled_params = dict(compiled.named_parameters())
    assert sorted(twin_params) == sorted(compiled_params)
    for name, p in twin_params.items():
        q = compiled_params[name]
        assert p.grad is not None and q.grad is not None, name
        assert max_diff(q.grad, p.grad) <= TOL, name
    twin_buffers = dict(twin.named_buffers())
    for name, b in compiled.named_buffers():
        assert torch.allclose(b.float(), twin_buffers[name].float(), atol=TOL), name


# ---- torchvision's ResNet-18 ------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_pair():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    randomize_(reference)
    compiled = yamlnet.compile(SPECS / "resnet18.yaml")
    return compiled, reference


def test_resnet18_state_dict_layout_matches_torchvision(resnet_pair):
    compiled, reference = resnet_pair
    assert_same_state_layout(compiled, reference)


def test_resnet18_outputs_match_torchvision(resnet_pair):
    compiled, reference = resnet_pair
    result = compiled.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    compiled.eval()
    reference.eval()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        got = compiled(x)
    assert got.shape == (2, 1000)
    assert max_diff(got, expected) <= TOL


# ---- var overrides ---------------------------------------------------------------------


def test_override_mlp_classes():
    model = yamlnet.compile(SPECS / "mlp.yaml", classes=3)
    model.eval()
    assert model(torch.randn(2, 64)).shape == (2, 3)
    assert tuple(model.state_dict()["head.weight"].shape) == (3, 32)


def test_override_resnet18_classes():
    model = yamlnet.compile(SPECS / "resnet18.yaml", classes=100)
    state = model.state_dict()
    assert tuple(state["fc.weight"].shape) == (100, 512)
    assert tuple(state["fc.bias"].shape) == (100,)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 100)


def test_override_resnet18_classes_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=100)
    compiled = yamlnet.compile(SPECS / "resnet18.yaml", classes=100)
    assert_same_state_layout(compiled, reference)
    compiled.load_state_dict(reference.state_dict(), strict=True)
