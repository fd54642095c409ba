"""Every spec under specs/ (recursively, the zoo included): it validates, compiles, runs
forward on an input built from its declared `inputs:`, produces the shapes that shape
inference announced, back-propagates into every parameter, and its summary counts the
same parameters as the module holds."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

import pytest
import torch
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.shapes import TensorType
from yamlnet.compiler.summary import summary_rows

from .conftest import ROOT, all_specs

SPECS = all_specs()
assert SPECS, "no specs found under specs/"

# Sample values for symbolic input dims: small batches and sequences; other symbols
# (image sizes, channels, ...) get a size big enough for a few stride-2 stages.
SYMBOL_VALUES = {"N": 2, "B": 2, "T": 5, "L": 5, "S": 5}
OTHER_SYMBOL = 32


def _id(path) -> str:
    return str(path.relative_to(ROOT / "specs"))


spec_param = pytest.mark.parametrize("path", SPECS, ids=[_id(p) for p in SPECS])


@pytest.fixture(scope="module")
def compiled_cache():
    """Compile each spec once per module (compiling is the slow part)."""
    cache = {}

    def get(path):
        if path not in cache:
            torch.manual_seed(0)
            cache[path] = compile_spec(str(path))
        return cache[path]

    return get


def symbol_sizes(spec) -> dict[str, int]:
    return {sym: SYMBOL_VALUES.get(sym, OTHER_SYMBOL) for sym in spec.symbols}


def make_inputs(spec, sizes: dict[str, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for inp in spec.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else int(d) for d in inp.shape)
        dtype = getattr(torch, inp.dtype)
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        else:  # token ids, class indices: small and non-negative
            t = torch.randint(0, 10, shape, generator=gen, dtype=dtype)
        tensors.append(t)
    return tensors


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}


def eval_dim(dim, sizes: dict[str, int]):
    """A dim of an inferred type at the given symbol sizes: an int, or None when it
    cannot be evaluated ('?', or a symbol not declared by any input)."""
    if isinstance(dim, int):
        return dim
    if not isinstance(dim, str) or "?" in dim:
        return None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.Name):
            if node.id not in sizes:
                raise KeyError(node.id)
            return Fraction(sizes[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(ast.dump(node))

    try:
        value = ev(ast.parse(dim, mode="eval"))
    except (SyntaxError, KeyError, ValueError, ZeroDivisionError):
        return None
    # a linear rule read off at other sample sizes may not divide evenly here
    return int(value) if value.denominator == 1 else None


def pick(t, index: tuple):
    for i in index:
        assert isinstance(t, tuple), f"cannot index [{i}] into {t}"
        t = t[i]
    return t


def flatten_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if out is None:
        return []
    raise AssertionError(f"unexpected output {type(out)}")


# ---- tests ----------------------------------------------------------------------------


@spec_param
def test_validates(path):
    result = compile_spec(str(path), build=False)
    assert result.module is None
    assert result.spec.inputs and result.spec.outputs
    for name in result.graph:
        assert "type" in result.graph.nodes[name], name


@spec_param
def test_forward_shapes_match_inferred_types(path, compiled_cache):
    result = compiled_cache(path)
    module, spec = result.module, result.spec
    assert isinstance(module, torch.fx.GraphModule)
    sizes = symbol_sizes(spec)
    module.eval()
    with torch.no_grad():
        out = module(*make_inputs(spec, sizes))
    outs = [out] if len(spec.outputs) == 1 else list(out)
    assert len(outs) == len(spec.outputs)
    for (name, ref), tensor in zip(spec.outputs, outs, strict=True):
        inferred = pick(result.graph.nodes[ref.node]["type"], ref.index)
        assert isinstance(inferred, TensorType), (name, inferred)
        assert isinstance(tensor, torch.Tensor), (name, type(tensor))
        assert tensor.dim() == len(inferred.shape), (name, tuple(tensor.shape), inferred)
        for k, (actual, dim) in enumerate(zip(tensor.shape, inferred.shape, strict=True)):
            expected = eval_dim(dim, sizes)
            if expected is not None:
                assert actual == expected, (
                    f"output {name} dim {k}: {tuple(tensor.shape)} vs {inferred} at {sizes}"
                )
        assert str(tensor.dtype) == f"torch.{inferred.dtype}", (name, tensor.dtype, inferred)
        if tensor.dtype.is_floating_point:
            assert torch.isfinite(tensor).all(), name


@spec_param
def test_backward_reaches_every_parameter(path, compiled_cache):
    result = compiled_cache(path)
    module, spec = result.module, result.spec
    module.train()
    module.zero_grad(set_to_none=True)
    out = module(*make_inputs(spec, symbol_sizes(spec)))
    loss = sum(t.float().sum() for t in flatten_outputs(out) if t.dtype.is_floating_point)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    for n, p in module.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    module.zero_grad(set_to_none=True)


@spec_param
def test_summary_counts_module_parameters(path, compiled_cache):
    result = compiled_cache(path)
    rows = summary_rows(result)
    assert rows, path
    total = sum(row["params"] for row in rows)
    assert total == sum(p.numel() for p in result.module.parameters())
