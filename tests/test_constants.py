"""Build-time constants: a subgraph computed from constants alone (arange, tensor,
meshgrid, and functions of them) runs once when the model is built; what a run-time
node reads becomes a buffer, and a Buffer with an input holds its value (persistent or
not, as the spec says). Checked against torchvision's Swin index, built the same way,
before any state_dict is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.swin_transformer import ShiftedWindowAttention
from yamlnet.compiler.codegen import emit_python
from yamlnet.compiler.compile import compile_spec

import yamlnet

from .test_language import refusal

SPEC = Path(__file__).parent / "specs" / "constants.yaml"


@pytest.mark.parametrize("window", [3, 7])
def test_swin_index_equals_torchvision_at_construction(window):
    model = yamlnet.compile(SPEC, window=window) if window == 3 else None
    if model is None:  # the spec's einsum wants x's 9 positions; a 7-window needs 49
        text = SPEC.read_text().replace("[N, 9, 4]", "[N, 49, 4]").replace("[9, 9, 4]", "[49, 49, 4]")
        model = yamlnet.compile(text, window=7)
    theirs = ShiftedWindowAttention(8, [window, window], [0, 0], 2).relative_position_index
    assert torch.equal(model.relative_position_index.flatten(), theirs)
    assert "relative_position_index" in model.state_dict()  # persistent: true, as torchvision's


def test_folded_buffers_and_the_forward():
    result = compile_spec(SPEC)
    model = result.module
    assert [k for k, _ in model.named_buffers()] == ["relative_position_index", "two"]
    assert list(model.state_dict()) == ["table", "relative_position_index"]  # two: not persistent
    assert "arange" not in model.code and "meshgrid" not in model.code  # computed once, at build
    x = torch.randn(2, 9, 4)
    index = model.relative_position_index.reshape(-1)
    bias = model.table[index].reshape(9, 9, 4).permute(2, 0, 1)
    out, two = model(x)
    assert torch.equal(out, torch.einsum("nih,njh->nhij", x, x) + bias)
    assert torch.equal(two, 2 * torch.eye(2))
    assert model.to(torch.float64).relative_position_index.dtype == torch.int64


def test_constants_script_export_and_emit():
    result = compile_spec(SPEC)
    model, x = result.module, torch.randn(2, 9, 4)
    namespace: dict = {}
    exec(compile(emit_python(result.graph, model), "<emitted>", "exec"), namespace)
    standalone = namespace["Constants"]()
    assert torch.equal(standalone.relative_position_index, model.relative_position_index)  # before loading
    standalone.load_state_dict(model.state_dict(), strict=True)
    for other in (torch.jit.script(model), torch.export.export(model, (x,)).module(), standalone):
        for got, want in zip(other(x), model(x), strict=True):
            assert torch.equal(got, want)


BAD = [
    ("{op: Buffer, in: x}", "a Buffer's input must be computed from constants alone (arange, tensor, and functions "
     "of them); 'x' is not"),
    ("{op: Buffer, in: c, shape: [3]}", "give either shape: (and fill:) or an input computed from constants, not both"),
    ("{op: Buffer, in: c, fill: ones}", "a Buffer that holds its input takes no fill: arguments"),
    ("{op: arange, end: 3000000000000}", "parameters and buffer values (limit 1,000,000,000,000)"),
    ("{op: meshgrid, in: [c, c]}", ""),  # read whole by add: refused where add reads it
]  # fmt: skip


@pytest.mark.parametrize("node, message", BAD)
def test_misuse_is_located(node, message, tmp_path):
    text = refusal(tmp_path, "yamlnet: 1\ninputs: {x: [N, 3]}\nnodes:\n  c: {op: arange, end: 3}\n"
                   f"  bad: {node}\n  use: {{op: add, in: [x, bad]}}\noutputs: [use, c]\n")
    where = "6:3: nodes.use: input 'bad' is a tuple" if not message else "5:3: nodes.bad: "
    assert text.startswith(where) and message in text
