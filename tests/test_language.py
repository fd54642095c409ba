"""Spec-language constructs end to end: each compiles to the module it describes."""

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.errors import GraphError, SchemaError, ShapeError, SpecError

import yamlnet


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def refusal(tmp_path, text: str) -> str:
    """The one-line error of the spec `text` (written to bad.yaml), after `bad.yaml:`:
    `4:3: nodes.x: ...`."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        yamlnet.compile(path)
    message = str(err.value)
    assert message.startswith(f"{path}:") and "\n" not in message, message
    return message.removeprefix(f"{path}:")


def shapes(result) -> dict:
    return {n: str(result.graph.nodes[n]["type"]) for n in result.graph
            if result.graph.nodes[n]["kind"] == "op"}  # fmt: skip


def test_repeat_index_first_stride_only_and_hierarchical_names():
    r = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 8, 16, 16]}
        nodes:
          stage: {block: b, repeat: 3, stride: "${2 if i == 0 else 1}"}
        blocks:
          b:
            params: {stride: int}
            nodes:
              conv: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: "${stride}", padding: 1}
        """))
    assert shapes(r) == {"stage.0.conv": "[N, 8, 8, 8]", "stage.1.conv": "[N, 8, 8, 8]",
                         "stage.2.conv": "[N, 8, 8, 8]"}  # fmt: skip
    assert list(r.module.state_dict()) == [f"stage.{k}.conv.{p}" for k in range(3) for p in ("weight", "bias")]


def test_if_false_passes_input_through():
    text = spec("""
        yamlnet: 1
        vars: {norm: false}
        inputs: {x: [N, 4]}
        nodes:
          fc: {op: Linear, out_features: 4}
          bn: {op: BatchNorm1d, if: "${norm}"}
          act: {op: ReLU}
        """)
    assert [n.name for n in yamlnet.load_spec(text).nodes] == ["fc", "act"]
    assert [n.name for n in yamlnet.load_spec(text, norm=True).nodes] == ["fc", "bn", "act"]


def test_left_out_node_with_several_inputs_passes_its_first_input():
    text = spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          res: {block: residual, repeat: 2, skip: "${i == 0}"}
        blocks:
          residual:
            params: {skip: bool}
            nodes:
              fc: {op: Linear, out_features: 4}
              add: {op: add, in: [fc, input], if: "${skip}"}
        """)
    r = yamlnet.build(text)
    assert [n.name for n in r.spec.nodes] == ["res.0.fc", "res.0.add", "res.1.fc"]
    x = torch.randn(3, 4)
    m = r.module
    fc0, fc1 = m.get_submodule("res.0.fc"), m.get_submodule("res.1.fc")
    assert torch.equal(m(x), fc1(fc0(x) + x))
    with pytest.raises(yamlnet.SpecError, match="left out .* has no input to pass through"):
        yamlnet.load_spec(spec("""
            yamlnet: 1
            nodes:
              p: {op: Parameter, shape: [4], if: "${false}"}
              out: {op: mul, in: p, other: 2}
            """))


def test_shape_of_input_in_expressions_and_symbolic_dims():
    r = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 6, H, W]}
        nodes:
          squeeze: {op: Conv2d, out_channels: "${shape(x)[1] // 2}", kernel_size: 1}
          pool: {op: MaxPool2d, kernel_size: 2}
          up: {op: ConvTranspose2d, out_channels: 3, kernel_size: 2, stride: 2}
        """))
    assert shapes(r) == {"squeeze": "[N, 3, H, W]", "pool": "[N, 3, H/2, W/2]", "up": "[N, 3, H, W]"}
    assert r.module(torch.randn(2, 6, 10, 12)).shape == (2, 3, 10, 12)


def test_tuple_outputs_indexing_and_multiple_outputs():
    m = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {seq: [N, T, 5]}
        nodes:
          rnn: {op: GRU, hidden_size: 7, batch_first: true}
          last: {op: getitem, in: "rnn[1]", index: -1}
          parts: {op: chunk, in: "rnn[0]", chunks: 2, dim: 1}
        outputs: {hidden: last, first_half: "parts[0]"}
        """))
    hidden, half = m(torch.randn(3, 6, 5))
    assert hidden.shape == (3, 7) and half.shape == (3, 3, 7)


def test_parameter_buffer_call_and_symbolic_size():
    m = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, T, 8]}
        nodes:
          token: {op: Parameter, shape: [1, 1, 8], fill: normal, std: 0.02}
          tokens: {op: expand, size: [N, -1, -1]}
          seq: {op: cat, in: [tokens, x], dim: 1}
          scale: {op: Buffer, shape: [8], fill: constant, value: 2.0}
          scaled: {op: mul, in: [seq, scale]}
          attn: {op: MultiheadAttention, in: [scaled, scaled, scaled], num_heads: 2, batch_first: true,
                 call: {need_weights: false}}
        outputs: "attn[0]"
        """))
    assert m(torch.randn(4, 5, 8)).shape == (4, 6, 8)
    assert set(m.state_dict()) >= {"token", "scale", "attn.in_proj_weight"}
    assert isinstance(m.token, torch.nn.Parameter) and not isinstance(m.scale, torch.nn.Parameter)


def test_list_form_nodes_are_numbered_like_sequential():
    m = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          classifier:
            nodes:
              - {op: Dropout, p: 0.5}
              - {op: Linear, out_features: 3}
        """))
    assert list(m.state_dict()) == ["classifier.1.weight", "classifier.1.bias"]


def test_forward_reference_is_resolved_at_scope_end():
    m = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          out: {op: add, in: [a, b]}
          a: {op: Linear, in: x, out_features: 4}
          b: {op: Linear, in: x, out_features: 4}
        outputs: out
        """))
    assert m(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize(
    "body, error, message",
    [
        ("  a: {op: Linear, in: y, out_features: 2}\n", GraphError,
         "t.yaml:4:3: nodes.a.in: unknown input 'y' (known names: x, a)"),
        ("  a: {op: Linear, in: b, out_features: 4}\n  b: {op: Linear, in: a, out_features: 4}\n",
         GraphError, "t.yaml:4:3: nodes.a: cycle: a -> b -> a (a node cannot depend on its own output)"),
        ("  a: {op: Linear, out_features: 2, in_features: 5}\n", ShapeError,
         "t.yaml:4:3: nodes.a: Linear got input [N, 4] but in_features=5; the input says in_features=4 "
         "(remove in_features to infer it, or fix the node before)"),
        ("  a: {op: Linear, out_features: 2, bias: 1}\n", SchemaError,
         "t.yaml:4:36: nodes.a.bias: Linear.bias expects true or false, got integer 1"),
        ("  a: {op: Linear}\n", SchemaError,
         "t.yaml:4:3: nodes.a: Linear needs argument 'out_features'"),
        ("  a: {op: Conv2d, out_channels: 2, kernel_size: 3}\n", ShapeError,
         "t.yaml:4:3: nodes.a: Conv2d cannot take input [N, 4]"),
        ("  a: {op: add, in: [x, x, x]}\n", GraphError, "t.yaml:4:16: nodes.a: add takes 1 to 2 inputs, got 3"),
        ("  a: {op: Linear, out_features: 2}\n  b: {op: ReLU, in: x}\n", GraphError,
         "t.yaml:4:3: nodes.a: node 'a' is never used"),
        ("  a: {op: Linear, out_features: 2, repeat: -1}\n", SchemaError,
         "t.yaml:4:36: nodes.a.repeat: -1 is less than the minimum of 0"),
        ("  a: {block: nope}\n", SchemaError, "t.yaml:4:7: nodes.a.block: unknown block 'nope' (no blocks are defined)"),
        ("  a: {op: Linear, out_features: \"${2 *}\"}\n", SpecError,
         "t.yaml:4:19: nodes.a.out_features: invalid expression '${2 *}': invalid syntax"),
    ],
)
def test_located_errors(body, error, message):
    text = "yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n" + body
    with pytest.raises(error) as info:
        _compile(text)
    assert str(info.value).startswith(message), str(info.value)


BUNDLE = "blocks:\n  two: {nodes: {p: {op: ReLU}, q: {op: Tanh, in: input}}, outputs: [p, q]}\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("  g: {block: two}\n  fc: {op: Linear, out_features: 3}\n" + BUNDLE,
         "t.yaml:5:3: nodes.fc: input 0 comes from a block with 2 outputs (pick one with name[0], name[1], ...)"),
        ("  fc: {op: Linear, in: g, out_features: 3}\n  g: {block: two, in: x}\n" + BUNDLE,
         "t.yaml:4:3: nodes.fc: an input comes from a block with 2 outputs"),
        ("  g: {block: two}\noutputs: g\n" + BUNDLE, "t.yaml:5:1: outputs: output 'g' is a block with 2 outputs"),
        ("  a: {op: Linear, out_features: \"${8 / 2}\"}\n",
         "t.yaml:4:19: nodes.a.out_features: Linear.out_features expects an integer, got number 4.0 "
         "(use // or int(...) in the expression)"),
        ("  a: {block: two, call: {x: 1}}\n" + BUNDLE, "t.yaml:4:19: nodes.a.call: call: applies to op nodes only"),
        ("  a: {op: ReLU, name: b}\n", "t.yaml:4:17: nodes.a.name: name: is only for nodes written as a list"),
    ],
)
def test_wiring_mistakes_are_located(body, message):
    with pytest.raises(SpecError) as info:
        _compile("yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n" + body)
    assert str(info.value).startswith(message), str(info.value)


def test_emit_python_refuses_plugin_functions():
    from yamlnet.compiler.codegen import emit_python
    from yamlnet.compiler.registry import REGISTRY

    yamlnet.register_op("doc_swish", lambda x: x * torch.sigmoid(x))
    try:
        r = yamlnet.build("yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n  a: {op: doc_swish}\n")
        with pytest.raises(SpecError, match="cannot be written as standalone PyTorch"):
            emit_python(r.graph, r.module)
    finally:
        REGISTRY._ops.pop("doc_swish", None)


def _compile(text):
    from yamlnet.compiler.load import SpecSource, load_document

    return compile_spec(SpecSource(load_document(text.encode(), "t.yaml")), build=False)


def test_all_schema_errors_at_once():
    text = "yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n  a: {op: Lineer}\n  b: {op: ReLU, inplace: 2}\nextra: 1\n"
    with pytest.raises(SchemaError) as info:
        _compile(text)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and "unknown key 'extra'" in lines[0]  # structure first
    text = text.replace("extra: 1\n", "")
    with pytest.raises(SchemaError) as info:
        _compile(text)
    assert str(info.value).splitlines() == [
        "t.yaml:4:7: nodes.a.op: unknown op 'Lineer' (did you mean Linear?)",
        "t.yaml:5:17: nodes.b.inplace: ReLU.inplace expects true or false, got integer 2",
    ]


def test_overrides_must_name_a_variable():
    with pytest.raises(SpecError, match="unknown variable 'widht' in override .did you mean width"):
        yamlnet.compile("yamlnet: 1\nvars: {width: 2}\ninputs: {x: [N, 2]}\nnodes: {a: {op: ReLU}}\n", widht=3)


def test_include_blocks_from_library(tmp_path):
    (tmp_path / "lib.yaml").write_text(spec("""
        yamlnet: 1
        blocks:
          mlp:
            params: {width: int, act: {type: str, default: ReLU}}
            nodes:
              fc: {op: Linear, out_features: "${width}"}
              act: {op: "${act}"}
        """))
    (tmp_path / "net.yaml").write_text(spec("""
        yamlnet: 1
        include: lib.yaml
        inputs: {x: [N, 3]}
        nodes:
          body: {block: mlp, width: 5, act: GELU}
        """))
    m = yamlnet.compile(tmp_path / "net.yaml")
    assert isinstance(m.body.act, torch.nn.GELU) and m.body.fc.out_features == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("inputs: {x: [N, 4]}\nnodes: {forward: {op: Linear, out_features: 4}}\n",
         "t.yaml:3:9: nodes.forward: 'forward' cannot name a node"),
        ("inputs: {x: [N, 4]}\nnodes: {lambda: {op: Linear, out_features: 4}}\n",
         "t.yaml:3:9: nodes.lambda: 'lambda' cannot name a node"),
        ("inputs: {self: [N, 4]}\nnodes: {a: {op: ReLU}}\n", "t.yaml:2:10: inputs.self: 'self' cannot name an input"),
        ("inputs: {x: [N, 4, H]}\nnodes:\n  a: {op: getitem, index: ['...', '63:']}\n  s: {op: squeeze}\n",
         "t.yaml:5:3: nodes.s: squeeze: the number of dims or outputs depends on a symbolic dim's value"),
        ("inputs: {x: [N, 4]}\nnodes:\n  p: {op: Parameter, shape: [4], call: {a: 1}}\n  a: {op: add, in: [x, p]}\n",
         "t.yaml:4:34: nodes.p.call: call: does not apply to Parameter"),
        ("inputs: {x: [N, 4]}\nnodes:\n  g: {block: b}\nblocks:\n  b:\n    params: {p: {type: float, defualt: 0.5}}\n"
         "    nodes: {d: {op: Dropout, p: '${p}'}}\n",
         "t.yaml:7:31: blocks.b.params.p.defualt: unknown key 'defualt' in a parameter declaration (did you mean default?)"),
        ("inputs: {x: [N, 4]}\nnodes:\n  g: {block: b, in: [x, x]}\nblocks:\n  b:\n    inputs: [u, u]\n"
         "    nodes: {s: {op: sub, in: [u, u]}}\n", "t.yaml:7:5: blocks.b.inputs: ['u', 'u'] has non-unique elements"),
        ("inputs: {x: [N, 4]}\nnodes:\n  c: {op: add, in: [x, s]}\n  s: {op: ReLU, in: t, if: false}\n",
         "t.yaml:5:3: nodes.s.in: unknown input 't'"),
    ],
)
def test_review_findings_are_located_errors(text, message):
    with pytest.raises(SpecError) as info:
        _compile("yamlnet: 1\n" + text)
    assert str(info.value).startswith(message), str(info.value)


ATTRIBUTES = ["training", "meta", "_modules", "_parameters", "__dict__", "__class__", "graph", "code",
              "state_dict", "T_destination"]  # fmt: skip


def _attribute_node(name: str) -> str:
    return f"yamlnet: 1\ninputs: {{x: [N, 4]}}\nnodes:\n  {name}: {{op: Linear, out_features: 4}}\n"


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_no_node_takes_the_name_of_a_module_attribute(name):
    """Class and instance attributes of the generated module alike, dunders too: refused
    where the spec is checked, not a crash when it is built."""
    with pytest.raises(SpecError) as info:
        _compile(_attribute_node(name))
    assert str(info.value).startswith(f"t.yaml:4:3: nodes.{name}: '{name}' cannot name a node"), str(info.value)


def test_attribute_names_are_one_line_each_from_the_cli(tmp_path):
    files = []
    for k, name in enumerate(ATTRIBUTES):
        files.append(tmp_path / f"t{k}.yaml")
        files[-1].write_text(_attribute_node(name))
    r = subprocess.run([sys.executable, "-m", "yamlnet", "validate", *map(str, files)],
                       capture_output=True, text=True)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == len(ATTRIBUTES), r.stderr
    for line, path, name in zip(lines, files, ATTRIBUTES, strict=True):
        assert line.startswith(f"{path}:4:3: nodes.{name}: '{name}' cannot name a node"), line


def test_forward_reference_through_a_left_out_node():
    m = yamlnet.compile(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          c: {op: add, in: [x, s]}
          s: {op: ReLU, in: t, if: false}
          t: {op: Linear, in: x, out_features: 4}
        outputs: c
        """))
    x = torch.randn(2, 4)
    assert torch.allclose(m(x), x + m.t(x))


def test_frozen_parameters_count_everywhere_and_plugin_source_ops():
    from yamlnet.compiler.registry import REGISTRY
    from yamlnet.compiler.summary import summary_rows

    r = yamlnet.build("yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n  p: {op: Parameter, shape: [4], requires_grad: false}\n"
                      "  a: {op: add, in: [x, p]}\n")  # fmt: skip
    assert sum(row["params"] for row in summary_rows(r)) == sum(p.numel() for p in r.module.parameters()) == 4
    op = yamlnet.register_op("doc_source", lambda: torch.zeros(3), inputs=0)
    try:
        assert (op.min_inputs, op.max_inputs) == (0, 0)
    finally:
        REGISTRY._ops.pop("doc_source", None)


def test_torchvision_mlp_reads_the_last_dim():
    m = yamlnet.compile("yamlnet: 1\ninputs: {x: [N, 4, 8]}\nnodes:\n  m: {op: MLP, hidden_channels: [16, 3]}\n")
    assert m(torch.randn(2, 4, 8)).shape == (2, 4, 3)


def test_block_chosen_by_an_expression_is_checked_when_expanded():
    body = """
        yamlnet: 1
        vars: {kind: a}
        inputs: {x: [N, 4]}
        nodes:
          b: {block: "${kind}", width: 3}
        blocks:
          a:
            params: {width: int}
            nodes: {fc: {op: Linear, out_features: "${width}"}}
          b:
            params: {size: int}
            nodes: {fc: {op: Linear, out_features: "${size}"}}
        """
    assert yamlnet.compile(spec(body))(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(yamlnet.SpecError, match=r"<spec>:5:25, with kind=b: nodes.b.width: block 'b' has no parameter 'width'"):
        yamlnet.load_spec(spec(body), kind="b")
    with pytest.raises(yamlnet.SpecError, match=r"nodes.b.block: block: 'c' is not a block"):
        yamlnet.load_spec(spec(body), kind="c")


def test_str_in_expressions():
    from yamlnet.compiler.expr import Scope, resolve

    scope = Scope({"depth": 50, "t": {"50": [3, 4]}, "flag": True})
    assert resolve("${t[str(depth)]}", scope, None, "x") == [3, 4]
    assert resolve("${'a' + str(flag) + str(1.5)}", scope, None, "x") == "atrue1.5"


def test_a_list_numbers_the_nodes_it_keeps_and_splices_repeats():
    text = spec("""
        yamlnet: 1
        vars: {norm: false}
        inputs: {x: [N, 8]}
        nodes:
          f:
            nodes:
              - {op: Linear, out_features: 16}
              - {op: LayerNorm, if: "${norm}"}
              - {op: Linear, repeat: 3, out_features: 16}
              - {op: add, in: ["3", "1"]}
              - nodes:
                  - {op: Linear, repeat: 2, out_features: 4}
        """)
    nodes = yamlnet.load_spec(text).nodes
    assert [n.name for n in nodes] == ["f.0", "f.1", "f.2", "f.3", "f.4", "f.5.0", "f.5.1"]
    assert [r.node for r in nodes[4].inputs] == ["f.3", "f.1"]  # the list's numbers, as kept
    nodes = yamlnet.load_spec(text.replace('in: ["3", "1"]', 'in: ["4", "1"]'), norm=True).nodes
    assert [n.name for n in nodes] == ["f.0", "f.1", "f.2", "f.3", "f.4", "f.5", "f.6.0", "f.6.1"]


def test_splice_numbers_a_groups_nodes_in_the_enclosing_list():
    text = spec("""
        yamlnet: 1
        vars: {config: [16, M, 32], norm: false}
        inputs: {x: [N, 3, 8, 8]}
        nodes:
          f:
            nodes:
              - {op: Identity}
              - {block: layer, repeat: 3, splice: true, c: "${config[i]}"}
              - nodes:
                  - {op: ReLU}
                splice: true
        blocks:
          layer:
            params: {c: any}
            nodes:
              - {op: MaxPool2d, kernel_size: 2, if: "${c == 'M'}"}
              - {op: Conv2d, out_channels: "${c}", kernel_size: 3, padding: 1, if: "${c != 'M'}"}
              - {op: BatchNorm2d, if: "${norm and c != 'M'}"}
        """)
    assert [n.name for n in yamlnet.load_spec(text).nodes] == ["f.0", "f.1", "f.2", "f.3", "f.4"]
    r = yamlnet.build(text, norm=True)
    assert [n.name for n in r.spec.nodes] == ["f.0", "f.1", "f.2", "f.3", "f.4", "f.5", "f.6"]
    assert r.module(torch.randn(2, 3, 8, 8)).shape == (2, 32, 4, 4)
    with pytest.raises(yamlnet.SpecError, match="splice: applies to a block or inline nodes: written in a list"):
        yamlnet.load_spec(spec("""
            yamlnet: 1
            inputs: {x: [N, 3]}
            nodes:
              a: {op: Linear, out_features: 3, splice: true}
            """))


def test_tie_shares_one_parameter_and_refuses_what_does_not_fit():
    body = """
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          a: {op: Linear, out_features: 4}
          b: {op: Linear, out_features: 4, tie: {weight: a.weight}}
        """
    r = yamlnet.build(spec(body))
    assert r.module.b.weight is r.module.a.weight
    assert sum(r.graph.nodes[n].get("params", 0) for n in r.graph) == 4 * 4 + 4 + 4  # counted once
    assert list(r.module.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    for tie, message in [("{weight: a.wieght}", "tie: the model has no parameter 'a.wieght'"),
                         ("{kernel: a.weight}", "tie: Linear has no parameter 'kernel'")]:  # fmt: skip
        with pytest.raises(yamlnet.SpecError, match=message):
            yamlnet.compile(spec(body.replace("{weight: a.weight}", tie)))
    with pytest.raises(yamlnet.SpecError, match=r"tie: weight is \[4, 4\] but a.weight is \[3, 4\]"):
        yamlnet.compile(spec(body.replace("a: {op: Linear, out_features: 4}", "a: {op: Linear, out_features: 3}")
                             .replace("b: {op: Linear", "b: {op: Linear, in: x")) + "outputs: [a, b]\n")  # fmt: skip


def test_repeat_copies_named_with_i():
    text = spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          layers:
            nodes:
              - {name: "layer_${i}", op: Linear, repeat: 3, out_features: 4}
              - {op: add, in: [layer_2, layer_0]}
        """)
    nodes = yamlnet.load_spec(text).nodes
    assert [n.name for n in nodes] == ["layers.layer_0", "layers.layer_1", "layers.layer_2", "layers.0"]
    with pytest.raises(yamlnet.SpecError, match=r"a name with an expression needs repeat:"):
        yamlnet.load_spec(text.replace(", repeat: 3", ""))


def test_feed_concat_joins_the_input_and_every_earlier_copy():
    r = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 8, 4, 4]}
        nodes:
          block:
            nodes:
              - {name: "layer${i + 1}", op: Conv2d, repeat: 3, feed: concat, out_channels: 4, kernel_size: 1}
        """))
    nodes = {n.name: [str(i) for i in n.inputs] for n in r.spec.nodes}
    assert nodes == {
        "block.layer1": ["x"], "block.layer2_in": ["x", "block.layer1"], "block.layer2": ["block.layer2_in"],
        "block.layer3_in": ["x", "block.layer1", "block.layer2"], "block.layer3": ["block.layer3_in"],
        "block.layer3_out": ["x", "block.layer1", "block.layer2", "block.layer3"],
    }  # fmt: skip
    m = r.module
    x = torch.randn(2, 8, 4, 4)
    a = m.block.layer1(x)
    b = m.block.layer2(torch.cat([x, a], 1))
    c = m.block.layer3(torch.cat([x, a, b], 1))
    assert torch.equal(m(x), torch.cat([x, a, b, c], 1))


@pytest.mark.parametrize("nodes, message", [
    # a copy's name is the copy, and the joins' names are taken
    ('  - {name: "l${i}", op: Linear, repeat: 2, feed: concat, out_features: 2}\n'
     '  - {op: cat, in: [l1_in, l1_out, l1], dim: 1}\n', None),
    ('  - {name: "l${i}", op: Linear, repeat: 2, feed: concat, out_features: 2}\n  - {name: l1_in, op: ReLU}\n',
     "duplicate name 'l1_in'"),
    ('  - {name: "p${i % 2}", op: Linear, repeat: 3, out_features: 4}\n', "name: gives two copies the name 'p0'"),
    ('  - {op: Linear, out_features: 4}\n  - {block: g, repeat: 2, splice: true}\n', "duplicate name 'gamma'"),
    ('  - {block: b, repeat: 2, splice: true, feed: concat}\n', "so it has no feed:"),
    ('  - {op: Linear, out_features: 4}\n  - {op: ReLU, in: "1", if: false}\n  - {op: Tanh, in: "0"}\n', None),
    ('  - {name: fc, op: Linear, out_features: 4}\n  - {name: p, op: Parameter, shape: [4], if: false}\n'
     '  - {op: add, in: [fc, p]}\n', "'p' is left out (if: false or repeat: 0) and has no input to pass through"),
    ('  - {name: a, op: Linear, out_features: 4, tie: {weight: b.weight}}\n'
     '  - {name: b, op: Linear, out_features: 4, tie: {weight: a.weight}}\n', "a.weight ties back to itself"),
    ('  - {name: a, op: add, other: 1, tie: {weight: b.weight}}\n', "tie: applies to layers with weights, not add"),
])  # fmt: skip
def test_new_constructs_refuse_what_they_cannot_mean(nodes, message):
    text = ("yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n" + nodes +
            "blocks:\n  g:\n    nodes:\n      - {name: gamma, op: Parameter, shape: [4]}\n      - {op: mul, in: [input, gamma]}\n"
            "  b:\n    nodes:\n      - {op: Linear, out_features: 4}\n")  # fmt: skip
    if message is None:
        yamlnet.build(text)
    else:
        with pytest.raises(yamlnet.SpecError, match=re.escape(message)):
            yamlnet.build(text)


def test_ties_follow_chains_and_splice_freezes():
    r = yamlnet.build(spec("""
        yamlnet: 1
        inputs: {x: [N, 4]}
        nodes:
          a: {op: Linear, out_features: 4, tie: {weight: b.weight}}
          b: {op: Linear, out_features: 4, tie: {weight: c.weight}}
          c: {op: Linear, out_features: 4}
          d:
            nodes:
              - {block: blk, repeat: 2, splice: true, freeze: true}
              - {block: named, splice: true, freeze: true}
        blocks:
          blk:
            nodes:
              - {op: Linear, out_features: 4}
          named:
            nodes:
              - {name: scale, op: Linear, out_features: 4}
        """))
    m = r.module
    assert m.a.weight is m.c.weight and m.b.weight is m.c.weight
    assert sum(r.graph.nodes[n].get("params", 0) for n in r.graph) == sum(p.numel() for p in m.parameters())
    assert [n for n, p in m.named_parameters() if not p.requires_grad] == [
        "d.0.weight", "d.0.bias", "d.1.weight", "d.1.bias", "d.scale.weight", "d.scale.bias"]  # fmt: skip
