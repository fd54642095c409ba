"""Errors name what failed where a reader would look: the block instance an error
inside a block definition belongs to, the node a shape() depends on, an index into a
left-out node as written, and an output that names a left-out node."""

from __future__ import annotations

import pytest

import yamlnet

from .test_language import spec

BLOCKS = spec("""
    yamlnet: 1
    inputs: {x: [N, 3, 8, 8]}
    blocks:
      basic_conv:
        params: {c: int, k: 1}
        nodes:
          conv: {op: Conv2d, out_channels: "${c}", kernel_size: "${k}"}
          bn: {op: BatchNorm2d}
    nodes:
      stem: {block: basic_conv, c: 4}
      aux:
        nodes:
          conv1: {block: basic_conv, c: 4, k: 3}
          conv2: {block: basic_conv, c: 4, k: 9}
    """)


def check(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(text)
    with pytest.raises(yamlnet.SpecError) as err:
        yamlnet.compile(path)
    assert str(err.value) == f"{path}:{expected}"


def test_a_shape_error_inside_a_block_names_the_instance(tmp_path):
    check(tmp_path, BLOCKS, "7:7: blocks.basic_conv.nodes.conv (in aux.conv2): Conv2d cannot take input "
          "[N, 4, 6, 6]: Calculated padded input size per channel: (6 x 6). Kernel size: (9 x 9). Kernel size "
          "can't be greater than actual input size (Conv2d expects [N, C, H, W]; a flatten or reshape before it?)")


def test_an_expression_error_inside_a_block_names_the_instance(tmp_path):
    text = BLOCKS.replace('kernel_size: "${k}"', 'kernel_size: "${k}", stride: "${k // (k - 3)}"')
    check(tmp_path, text, "7:69: blocks.basic_conv.nodes.conv.stride (in aux.conv1): division by zero in "
          "'k // (k - 3)'")


def test_shape_of_a_node_that_reads_a_later_one(tmp_path):
    check(tmp_path, spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          a: {op: Linear, in: b, out_features: 4}
          c: {op: Linear, in: x, out_features: "${shape(a)[1]}"}
          b: {op: Linear, in: x, out_features: 4}
          d: {op: add, in: [a, c]}
        """), "5:26: nodes.c.out_features: shape() needs 'a', which reads 'b', defined after this node "
        "(shape() sees the nodes above it)")  # fmt: skip


def test_an_index_into_a_left_out_node_is_named_as_written(tmp_path):
    check(tmp_path, spec("""
        yamlnet: 1
        inputs: {x: [N, 5, 4]}
        nodes:
          fc: {op: Linear, out_features: 8}
          lstm: {op: LSTM, hidden_size: 8, batch_first: true, if: false}
          out: {op: getitem, in: "lstm[0]", index: 0}
        """), "6:3: nodes.out: 'lstm[0]' ('lstm' is left out and passes 'fc' through): cannot index [0] into "
        "a single tensor [N, 5, 8]")  # fmt: skip


@pytest.mark.parametrize("outputs, says", [
    ("[fc, bn]", "output 'bn' is left out"),
    ("{main: fc, extra: bn}", "output 'extra' is 'bn', which is left out"),
])  # fmt: skip
def test_an_output_that_is_left_out_is_refused(tmp_path, outputs, says):
    check(tmp_path, spec(f"""
        yamlnet: 1
        inputs: {{x: [N, 4]}}
        nodes:
          fc: {{op: Linear, out_features: 8}}
          bn: {{op: BatchNorm1d, if: false}}
        outputs: {outputs}
        """), f"6:1: outputs: {says} (if: false or repeat: 0) (output the node before it, or keep the node)")
