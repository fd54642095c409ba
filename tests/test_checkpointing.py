"""Activation checkpointing: `checkpoint: true` on a layer, a block instance or a repeat
(each copy), and `train.activation_checkpointing` naming blocks in a run configuration.

Oracles: the same spec without checkpointing (same initial weights, state_dict keys,
outputs and gradients, bitwise, dropout included), the bytes autograd keeps for backward
(counted by torch.autograd.graph.saved_tensors_hooks), torch.export, TorchScript and
pickling of the eval model, and a whole training run from the command line.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.errors import SpecError
from yamlnet.compiler.load import load_spec_source

import yamlnet
from benchmarks.scale import kept_for_backward

from .test_tasks_runs import gpt_spec

NET = """\
yamlnet: 1
vars: {ck: true, width: 16}
inputs: {x: [N, 8]}
nodes:
  stem: {op: Linear, out_features: "${width}"}
  body: {block: res, repeat: 3, checkpoint: "${ck}"}
  two:  {block: pair, checkpoint: "${ck}"}
  head: {op: Linear, in: "two[1]", out_features: 4, checkpoint: "${ck}"}
outputs: {y: head, z: "two[0]"}
blocks:
  res:
    nodes:
      fc:   {op: Linear, out_features: "${width}"}
      act:  {op: GELU}
      drop: {op: Dropout, p: 0.2}
      add:  {op: add, in: [input, drop]}
  pair:
    outputs: [a, b]
    nodes:
      a: {op: Linear, out_features: 3}
      b: {op: Linear, in: input, out_features: "${width}"}
"""


def build(text: str, **overrides):
    torch.manual_seed(0)
    return compile_spec(load_spec_source(text, name="net.yaml"), overrides)


def step(model, x):
    """One forward and backward in training (dropout drawn from seed 1): outputs, grads."""
    model.train()
    model.zero_grad()
    torch.manual_seed(1)
    y, z = model(x)
    (y.square().sum() + z.sum()).backward()
    return (y.detach(), z.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_checkpointed_layers_blocks_and_repeats_give_the_plain_gradients():
    ours, plain = build(NET).module, build(NET, ck=False).module
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values(),
                                                 strict=True))  # fmt: skip
    x = torch.randn(6, 8)
    (y1, z1), g1 = step(ours, x)
    (y2, z2), g2 = step(plain, x)
    assert torch.equal(y1, y2) and torch.equal(z1, z2)
    assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)
    assert "checkpointed" in ours.code and "checkpointed" not in plain.code
    assert type(ours.get_submodule("body.1")).__name__ == "Checkpointed"  # a copy of the repeat


def saved_bytes(model, x) -> int:
    """Bytes autograd keeps for backward during one training forward."""
    model.train()

    def loss():
        y, z = model(x)
        return y.sum() + z.sum()

    return kept_for_backward(loss)


def test_checkpointing_keeps_a_fraction_of_the_activations():
    deep = NET.replace("repeat: 3", "repeat: 12")
    x = torch.randn(64, 8)
    ours, plain = saved_bytes(build(deep, width=256).module, x), saved_bytes(build(deep, width=256, ck=False).module, x)
    assert ours < plain / 4, (ours, plain)


def test_the_eval_model_exports_scripts_and_pickles_without_checkpointing():
    model = build(NET).module.eval()
    x = torch.randn(5, 8)
    want = model(x)
    exported = torch.export.export(model, (x,)).module()
    assert all(torch.allclose(a, b) for a, b in zip(exported(x), want, strict=True))
    with warnings.catch_warnings():  # TorchScript's deprecation notices
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    assert all(torch.allclose(a, b) for a, b in zip(scripted(x), want, strict=True))
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert all(torch.equal(a, b) for a, b in zip(other(x), want, strict=True))
        assert "checkpointed" in other.code
    trained = pickle.loads(pickle.dumps(model))
    _, grads = step(trained, x)
    _, want_grads = step(model, x)
    assert all(torch.equal(grads[k], want_grads[k]) for k in grads)


def test_blocks_named_by_the_run_configuration():
    text = NET.replace(', checkpoint: "${ck}"', "")
    named = compile_spec(load_spec_source(text, name="net.yaml"), checkpoint_blocks=("res", "pair"))
    assert named.spec.checkpointed == ("body.0", "body.1", "body.2", "two")
    assert named.hash == build(text).hash  # the same network: checkpoints of either load in the other
    with pytest.raises(SpecError, match="activation checkpointing names block 'rez', which the spec does not"):
        compile_spec(load_spec_source(text, name="net.yaml"), checkpoint_blocks=("rez",))


def test_a_block_inside_a_checkpointed_block_is_recomputed_with_it():
    text = NET.replace("  pair:\n", "  outer:\n    nodes:\n      inner: {block: res, checkpoint: true}\n  pair:\n")
    text = text.replace('  two:  {block: pair, checkpoint: "${ck}"}', '  mid:  {block: outer, checkpoint: true}\n'
                        '  two:  {block: pair, checkpoint: "${ck}"}')  # fmt: skip
    assert build(text).spec.checkpointed == ("body.0", "body.1", "body.2", "mid", "two", "head")


@pytest.mark.parametrize("node, message", [
    ("{op: relu, checkpoint: true}", "nodes.head: checkpoint: applies to a layer or a block; this node is 'relu'"),
    ('{op: Linear, out_features: 4, checkpoint: "${1}"}', "nodes.head: checkpoint: must be true or false, got 1"),
    ("{op: Linear, out_features: 4, checkpoint: 1}", "nodes.head.checkpoint: expected true or false or a string"),
])  # fmt: skip
def test_what_cannot_be_checkpointed_is_a_located_error(node, message):
    text = f"yamlnet: 1\ninputs: {{x: [N, 8]}}\nnodes:\n  head: {node}\n"
    with pytest.raises(SpecError) as err:
        build(text)
    assert str(err.value).startswith("net.yaml:4:") and message in str(err.value), str(err.value)


def test_a_spliced_group_cannot_be_checkpointed():
    text = ("yamlnet: 1\ninputs: {x: [N, 8]}\nnodes:\n  body:\n    nodes:\n"
            "      - {block: res, splice: true, checkpoint: true}\n"
            "blocks:\n  res:\n    nodes:\n      fc: {op: Linear, out_features: 8}\n")  # fmt: skip
    with pytest.raises(SpecError, match="checkpoint: needs a node of its own to recompute") as err:
        build(text)
    assert str(err.value).startswith("net.yaml:6:")


def test_the_standalone_file_checkpoints_too(tmp_path):
    """`compile --emit-python`: a class per checkpointed block instance, and the same
    outputs and gradients as the compiled module with the saved weights."""
    spec, module_file, state_file = tmp_path / "net.yaml", tmp_path / "m.py", tmp_path / "m.pt"
    spec.write_text(NET)
    done = subprocess.run([sys.executable, "-m", "yamlnet", "compile", str(spec), "--emit-python", str(module_file),
                           "--out", str(state_file)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    source = module_file.read_text()
    assert "class Net_body_1(nn.Module):" in source and "torch.utils.checkpoint.checkpoint(" in source
    namespace: dict = {"__name__": "emitted"}
    exec(compile(source, str(module_file), "exec"), namespace)
    standalone = namespace["Net"]()
    standalone.load_state_dict(torch.load(state_file, weights_only=True), strict=True)
    compiled = build(NET).module
    compiled.load_state_dict(torch.load(state_file, weights_only=True), strict=True)
    x = torch.randn(4, 8)
    (y1, z1), g1 = step(standalone, x)
    (y2, z2), g2 = step(compiled, x)
    assert torch.equal(y1, y2) and torch.equal(z1, z2) and all(torch.equal(g1[k], g2[k]) for k in g2)


def test_a_gpt_trained_with_checkpointed_blocks_ends_bitwise_equal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spec reads corpus.txt from here
    spec, sets = gpt_spec(tmp_path)
    overrides = dict(s.split("=", 1) for s in sets)
    overrides = {k: yaml_value(v) for k, v in overrides.items()}
    plain = yamlnet.train(spec, out=tmp_path / "plain", **overrides)
    ours = yamlnet.train(spec, out=tmp_path / "ours", **overrides,
                         **{"train.activation_checkpointing": ["decoder_block"]})  # fmt: skip
    assert plain.metrics == ours.metrics
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "ours" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def test_an_unknown_block_in_the_run_configuration_is_one_line_and_exit_2(tmp_path):
    spec, _ = gpt_spec(tmp_path)
    done = subprocess.run([sys.executable, "-m", "yamlnet", "train", str(spec), "--out", str(tmp_path / "r"),
                           "--set", "train.activation_checkpointing=[decoder_blok]"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("train.activation_checkpointing[0]: the spec defines no block 'decoder_blok' "
            "(did you mean decoder_block?)") in done.stderr  # fmt: skip
    assert not (tmp_path / "r").exists()
