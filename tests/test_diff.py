"""`yamlnet diff`: nodes added, removed and changed, the parameter delta and checkpoint
compatibility, against torchvision's resnets and against set arithmetic on state_dict keys."""

import json

import pytest
import torch
from yamlnet.compiler.diff import checkpoint_fit
from yamlnet.runtime.checkpoint import save_checkpoint

import yamlnet
from yamlnet.cli import main

from .conftest import ROOT

ZOO_RESNET = str(ROOT / "specs" / "zoo" / "resnet.yaml")

SMALL = """\
yamlnet: 1
name: small
vars: {classes: 10}
inputs:
  x: [N, 3, 16, 16]
nodes:
  conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  bn: {op: BatchNorm2d}
  act: {op: ReLU}
  pool: {op: AdaptiveAvgPool2d, output_size: 1}
  flat: {op: Flatten}
HEAD
outputs: {logits: fc}
"""
OLD_HEAD = """\
  head_bn: {op: BatchNorm1d}
  fc: {op: Linear, out_features: "${classes}"}"""
# the fine-tuned head: head_bn gone, a new neck, fc for 3 classes (same name, new shape)
NEW_HEAD = """\
  neck: {op: Linear, out_features: 8}
  neck_act: {op: ReLU}
  fc: {op: Linear, out_features: 3}"""


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def specs(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SMALL.replace("HEAD", OLD_HEAD))
    b.write_text(SMALL.replace("HEAD", NEW_HEAD))
    return a, b


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_resnet18_to_34_matches_torchvision(capsys, tmp_path):
    from torchvision.models import resnet18, resnet34

    tv18, tv34 = resnet18(), resnet34()
    ckpt = tmp_path / "tv18.pt"
    torch.save(tv18.state_dict(), ckpt)  # torchvision's names are the zoo resnet's
    rc, out, _ = run(capsys, "diff", ZOO_RESNET, ZOO_RESNET, "--set-a", "depth=18", "--set-b", "depth=34",
                     "--checkpoint", ckpt, "--format", "json")  # fmt: skip
    doc = json.loads(out)
    assert rc == 1 and not doc["equal"] and doc["removed"] == []
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert doc["params_delta"] == numel(tv34) - numel(tv18)
    assert (doc["a"]["params"], doc["b"]["params"]) == (numel(tv18), numel(tv34))
    sd18, sd34 = tv18.state_dict(), tv34.state_dict()
    new_blocks = {k.rsplit(".", 1)[0] for k in sd34.keys() - sd18.keys()}  # layer1.2.conv1, ...
    weighted = {n["name"] for n in doc["added"] if n["params"]}
    assert weighted == {b for b in new_blocks if not b.endswith(("running_mean", "running_var"))}
    assert {n["name"].rsplit(".", 1)[0] for n in doc["added"]} == {b.rsplit(".", 1)[0] for b in new_blocks}
    # what changed is the wiring into each stage's first block (and the pooling after it)
    assert {c["name"] for c in doc["changed"]} >= {"layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"}
    assert all([x["field"] for x in c["changes"]] == ["in"] for c in doc["changed"])
    fit = doc["checkpoint"]
    assert set(fit["loads"]) == set(sd18) and fit["shape_mismatch"] == [] and fit["dropped"] == []
    assert set(fit["new"]) == sd34.keys() - sd18.keys()


def test_resnet_table(capsys):
    rc, out, _ = run(capsys, "diff", ZOO_RESNET, ZOO_RESNET, "--set-a", "depth=18", "--set-b", "depth=34")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == f"A: {ZOO_RESNET} (depth=18): resnet, 69 nodes, 11,689,512 parameters"
    assert "added (56 nodes):" in lines and not any(line.startswith("removed") for line in lines)
    assert lines[-1] == "different: nodes 56 added, 0 removed, 7 changed; parameters +10,108,160 (11,689,512 -> 21,797,672)"


def test_fine_tuned_head_and_its_checkpoint(capsys, tmp_path, specs):
    a, b = specs
    old = yamlnet.compile(a).state_dict()
    torch.save(old, tmp_path / "a.pt")
    new = _shapes(yamlnet.compile(b).state_dict())
    rc, out, _ = run(capsys, "diff", a, b, "--checkpoint", tmp_path / "a.pt", "--format", "json")
    doc = json.loads(out)
    assert rc == 1
    assert [n["name"] for n in doc["added"]] == ["neck", "neck_act"]
    assert [n["name"] for n in doc["removed"]] == ["head_bn"]
    (fc,) = doc["changed"]
    assert fc["name"] == "fc" and {c["field"]: (c["a"], c["b"]) for c in fc["changes"]} == {
        "in": ("head_bn", "neck_act"), "out_features": (10, 3), "output shape": ("[N, 10]", "[N, 3]"),
        "param count": (90, 27)}  # fmt: skip
    old = _shapes(old)
    both = old.keys() & new.keys()
    fit = doc["checkpoint"]
    assert set(fit["loads"]) == {k for k in both if old[k] == new[k]}
    assert {m["name"] for m in fit["shape_mismatch"]} == {k for k in both if old[k] != new[k]} == {"fc.weight", "fc.bias"}
    assert set(fit["new"]) == new.keys() - old.keys() and set(fit["dropped"]) == old.keys() - new.keys()
    assert fit["tensors"] == len(old)


def test_fine_tuned_head_table(capsys, tmp_path, specs):
    a, b = specs
    save_checkpoint({"model": yamlnet.compile(a).state_dict(), "config": {}}, tmp_path / "best.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "best.pt").rename(tmp_path / "run" / "checkpoints" / "best.pt")  # a run folder
    rc, out, _ = run(capsys, "diff", a, b, "--checkpoint", tmp_path / "run")
    assert rc == 1
    assert "\n".join(out.splitlines()[-7:]) == f"""\
checkpoint {tmp_path / "run" / "checkpoints" / "best.pt"} (14 tensors) into B, by name and shape:
  loads          7  conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var ... (+1 more)
  shape differs  2  fc.weight [10, 8] vs [3, 8], fc.bias [10] vs [3]
  new in B       2  neck.weight, neck.bias
  dropped        5  head_bn.weight, head_bn.bias, head_bn.running_mean, head_bn.running_var, head_bn.num_batches_tracked

different: nodes 2 added, 1 removed, 1 changed; parameters -7 (346 -> 339)"""
    assert "  fc    in            head_bn  neck_act" in out


def test_safetensors_checkpoint(capsys, tmp_path, specs):
    from safetensors.torch import save_file

    a, b = specs
    save_file(yamlnet.compile(b).state_dict(), tmp_path / "b.safetensors")
    rc, out, _ = run(capsys, "diff", a, b, "--checkpoint", tmp_path / "b.safetensors", "--format", "json")
    fit = json.loads(out)["checkpoint"]
    assert rc == 1 and fit["new"] == fit["dropped"] == fit["shape_mismatch"] == []


def test_same_specs_exit_0(capsys, specs):
    a, _ = specs
    rc, out, _ = run(capsys, "diff", a, a)
    assert rc == 0 and out.splitlines()[-1] == "same network: 7 nodes, 346 parameters"
    assert not any(line.startswith(("added", "removed", "changed")) for line in out.splitlines())
    rc, out, _ = run(capsys, "diff", a, a, "--set-b", "classes=10", "--format", "json")
    doc = json.loads(out)
    assert rc == 0 and doc["equal"] and doc["params_delta"] == 0 and doc["b"]["set"] == ["classes=10"]
    assert doc["added"] == doc["removed"] == doc["changed"] == doc["interface"] == []


def test_set_applies_to_both_and_set_b_to_b(capsys, specs):
    a, _ = specs
    assert run(capsys, "diff", a, a, "--set", "classes=5")[0] == 0
    rc, out, _ = run(capsys, "diff", a, a, "--set", "classes=5", "--set-b", "classes=7", "--format", "json")
    doc = json.loads(out)
    assert rc == 1 and doc["a"]["set"] == ["classes=5"] and doc["b"]["set"] == ["classes=5", "classes=7"]
    assert [(c["name"], c["changes"][0]) for c in doc["changed"]] == [("fc", {"field": "out_features", "a": 5, "b": 7})]


def test_interface_changes(capsys, tmp_path, specs):
    a, _ = specs
    c = tmp_path / "c.yaml"
    c.write_text(a.read_text().replace("[N, 3, 16, 16]", "[N, 3, 32, 32]"))
    rc, out, _ = run(capsys, "diff", a, c)
    assert rc == 1 and "  input x  [N, 3, 16, 16]  ->  [N, 3, 32, 32]" in out.splitlines()


@pytest.mark.parametrize("argv, message", [
    (["{a}", "{tmp}/missing.yaml"], "missing.yaml:1:1: cannot read"),
    (["{a}", "{a}", "--set-a", "classes"], "error: --set-a expects VAR=VALUE, got 'classes'"),
    (["{a}", "{a}", "--set-b", "classes=0"], "with classes=0: nodes.fc: Linear gives an output of shape [N, 0]"),
    (["{a}", "{a}", "--checkpoint", "{tmp}/a.yaml"], "a.yaml is corrupt or truncated"),
    (["{a}", "{a}", "--checkpoint", "{tmp}/tensors.pt"], "tensors.pt is neither a yamlnet checkpoint nor a state_dict"),
    (["{a}", "{a}", "--checkpoint", "{tmp}"], "no checkpoint in"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, specs, argv, message):
    torch.save({"step": 3}, tmp_path / "tensors.pt")
    a, _ = specs
    rc, out, err = run(capsys, "diff", *[x.format(a=a, tmp=tmp_path) for x in argv])
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err


def test_checkpoint_fit_is_set_arithmetic():
    tensors = {"a": (2, 3), "b": (4,), "gone": (1,)}
    model = {"a": (2, 3), "b": (5,), "fresh": (7,)}
    fit = checkpoint_fit("c.pt", tensors, model)
    assert (fit.loads, fit.mismatched, fit.new, fit.dropped) == (("a",), (("b", (4,), (5,)),), ("fresh",), ("gone",))
    assert fit.total == len(tensors)
