"""Block-local `let:` names (with shape() of the block's inputs), shape() in parameter
defaults, and named loop indices that a repeat inside a repeat can still see."""

from __future__ import annotations

import re

import pytest
import torch

import yamlnet

from .test_language import refusal, shapes, spec

WINDOWS = spec("""
    yamlnet: 1
    inputs:
      x: [N, 8, 12, 16]
    blocks:
      windows:
        params: {size: int, width: "${shape(input)[1] * 2}"}
        let:
          H: "${shape(input)[2]}"
          W: "${shape(input)[3]}"
          rows: "${H // size}"
          cols: "${W // size}"
        nodes:
          conv: {op: Conv2d, out_channels: "${width}", kernel_size: 1}
          split: {op: reshape, shape: [-1, "${width}", "${rows}", "${size}", "${cols}", "${size}"]}
          order: {op: permute, dims: [0, 2, 4, 3, 5, 1]}
    nodes:
      a: {block: windows, size: 4}
      b: {block: windows, in: x, size: 2, width: 4}
      fa: {op: flatten, in: a, start_dim: 1}
      fb: {op: flatten, in: b, start_dim: 1}
      both: {op: cat, in: [fa, fb], dim: 1}
    """)


def test_let_and_shape_in_defaults_per_instance():
    result = yamlnet.build(WINDOWS)
    types = shapes(result)
    assert types["a.split"] == "[N, 16, 3, 4, 4, 4]"  # width defaults to 2 * 8 channels
    assert types["b.split"] == "[N, 4, 6, 2, 8, 2]"  # its own size and width
    x = torch.randn(2, 8, 12, 16)
    conv = result.module.a.conv
    want = conv(x).reshape(2, 16, 3, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).flatten(1)
    assert torch.equal(result.module(x)[:, : want.shape[1]], want)


def test_named_indices_of_nested_repeats():
    result = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 3]}
        nodes:
          grid:
            repeat: {times: 2, index: outer}
            nodes:
              - op: Linear
                repeat: {times: 3, index: inner}
                out_features: "${4 + outer * 10 + inner}"
        """))
    assert [m.out_features for m in result.module.modules() if isinstance(m, torch.nn.Linear)] == [
        4, 5, 6, 14, 15, 16]  # fmt: skip
    assert "grid.1.2.weight" in result.module.state_dict()


@pytest.mark.parametrize("text, message", [
    ("let: {size: 3}", "let: 'size' is a parameter of the block (rename it)"),
    ("let: {shape: 3}", "let: 'shape' is a reserved name"),
    ("let: {h: '${shape(conv)[2]}'}", "shape(conv): 'conv' is not an input of the block (input)"),
    ("let: {h: '${nope + 1}'}", "nope"),
])  # fmt: skip
def test_let_errors_are_located(text, message, tmp_path):
    said = refusal(tmp_path, spec(f"""
        yamlnet: 1
        inputs: {{x: [N, 4, 8, 8]}}
        blocks:
          b:
            params: {{size: 2}}
            {text}
            nodes:
              conv: {{op: Conv2d, out_channels: 4, kernel_size: 1}}
        nodes:
          one: {{block: b}}
        """))
    assert said.startswith("6:") and message in said


def test_reserved_index_name_is_refused(tmp_path):
    said = refusal(tmp_path, "yamlnet: 1\ninputs: {x: [N, 3]}\nnodes:\n"
                   "  fc: {op: Linear, out_features: 3, repeat: {times: 2, index: shape}}\n")
    assert re.fullmatch(r"4:\d+: nodes.fc.repeat.index: repeat: index: 'shape' is a reserved name", said)


def test_a_block_that_reads_nothing():
    result = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        blocks:
          table:
            inputs: []
            params: {n: int}
            nodes:
              r: {op: arange, end: "${n}", dtype: float32}
        nodes:
          fc: {op: Linear, out_features: 4}
          t: {block: table, n: 4}
          s: {op: add, in: [fc, t]}
        """))
    x = torch.randn(2, 4)
    assert torch.equal(result.module(x), result.module.fc(x) + torch.arange(4.0))
    assert "arange" not in result.module.code  # a constant, computed when built
