"""The selection, comparison and rearranging ops (roll, gather, index_select,
take_along_dim, indexing by a tensor, where, clamp, comparisons, masked_fill, einsum,
interpolate_like) against a hand-written twin, through TorchScript, torch.export and
the standalone Python file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from yamlnet.compiler.codegen import emit_python
from yamlnet.compiler.compile import compile_spec

import yamlnet

from .test_language import refusal, spec

SPEC = Path(__file__).parent / "specs" / "tensor_ops.yaml"


def twin(model, x, idx, rows):
    """tests/specs/tensor_ops.yaml by hand, with the model's table."""
    rolled = torch.roll(x, [1, -2], [2, 3])
    mask = x > 0.5
    kept = torch.where(mask, rolled, 0.0)
    filled = kept.clamp(-1.0, 1.0).masked_fill(mask, -3.0)
    flat = filled.flatten(2)
    some = torch.index_select(torch.gather(flat, 2, idx), 1, rows)
    scores = torch.einsum("nck,ck->nk", some, model.table[rows])
    up = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[2:], mode="bilinear", align_corners=False)
    pooled = torch.where(up == x, up, x).mean([2, 3])
    return scores, pooled, torch.take_along_dim(flat, idx, 2)


def inputs(n=3):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, 4, 6, 6, generator=gen), torch.randint(0, 36, (n, 4, 5), generator=gen),
            torch.tensor([3, 0, 2]))  # fmt: skip


def test_ops_match_a_hand_written_twin():
    model = yamlnet.compile(SPEC)
    for got, want in zip(model(*inputs()), twin(model, *inputs()), strict=True):
        assert torch.equal(got, want)


def test_ops_script_export_and_emit():
    result = compile_spec(SPEC)
    model, args = result.module, inputs()
    want = model(*args)
    scripted = torch.jit.script(model)
    exported = torch.export.export(model, args).module()
    namespace: dict = {}
    exec(compile(emit_python(result.graph, model), "<emitted>", "exec"), namespace)
    standalone = namespace["TensorOps"]()
    standalone.load_state_dict(model.state_dict(), strict=True)
    for other in (scripted, exported, standalone):
        for got, ref in zip(other(*args), want, strict=True):
            assert torch.allclose(got, ref, atol=1e-6)


def test_interpolate_like_keeps_symbolic_sizes():
    result = compile_spec(spec("""
        yamlnet: 1
        inputs: {x: [N, 2, H, W]}
        nodes:
          down: {op: MaxPool2d, kernel_size: 2}
          up: {op: interpolate_like, in: [down, x]}
        """))
    assert str(result.graph.nodes["up"]["type"]) == "[N, 2, H, W]"
    assert result.module(torch.randn(1, 2, 10, 14)).shape == (1, 2, 10, 14)


@pytest.mark.parametrize("node, message", [
    ("{op: getitem, in: [x, ids], index: 0}", "give the index either as index: or as a second input (x[ids]), "
     "not both"),
    ("{op: getitem, in: x}", "needs an index: index: [':', 0], or a second input (x[ids])"),
    ("{op: gather, in: [x, x], dim: 1}", "gather"),
    ("{op: einsum, in: [x, x], equation: 'ab,bc->ac,'}", "einsum"),
    ("{op: where, in: x, other: 1.0}", "where cannot take input [N, 4]: needs a condition and two values"),
])  # fmt: skip
def test_misuse_is_located(node, message, tmp_path):
    text = refusal(tmp_path, "yamlnet: 1\ninputs:\n  x: [N, 4]\n  ids: {shape: [2], dtype: int64}\n"
                   f"nodes:\n  bad: {node}\n  other: {{op: clone, in: ids}}\noutputs: [bad, other]\n")
    assert text.startswith("6:3: nodes.bad: ") and message in text
