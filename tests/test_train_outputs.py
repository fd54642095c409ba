"""Train outputs: heads that live in the module and its state_dict, run in training
(their outputs feed loss terms) and are skipped in eval, export and predict — as
GoogLeNet's and Inception's auxiliary classifiers are."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from torch import nn
from yamlnet.compiler.codegen import emit_python, eval_module
from yamlnet.compiler.compile import compile_spec

import yamlnet

from .conftest import SPECS
from .test_language import spec

AUX = spec("""
    yamlnet: 1
    inputs: {x: [N, 8]}
    nodes:
      body: {op: Linear, out_features: 16}
      act: {op: ReLU}
      aux_head: {op: Linear, in: body, out_features: 3}
      aux_soft: {op: log_softmax, dim: 1}
      logits: {op: Linear, in: act, out_features: 3}
    outputs: {logits: logits}
    train_outputs: {aux: aux_soft, raw: aux_head}
    """)


class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.act = nn.Linear(8, 16), nn.ReLU()
        self.aux_head, self.logits = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x):
        body = self.body(x)
        logits = self.logits(self.act(body))
        if not self.training:
            return logits
        raw = self.aux_head(body)
        return logits, torch.log_softmax(raw, dim=1), raw


def test_train_mode_gives_every_output_eval_the_outputs_alone():
    model, twin = yamlnet.compile(AUX), Twin()
    assert list(model.state_dict()) == list(twin.state_dict())  # the heads are in the state_dict
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, 8)
    for got, want in zip(model.train()(x), twin.train()(x), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(model.eval()(x), twin.eval()(x))
    assert "if self.training: aux_head" in model.code


def test_exporters_see_the_eval_forward():
    result = compile_spec(AUX)
    model, x = result.module, torch.randn(2, 8)
    want = model.eval()(x)
    assert torch.equal(torch.jit.script(model)(x), want)
    assert torch.equal(torch.export.export(eval_module(model), (x,)).module()(x), want)
    namespace: dict = {}
    exec(compile(emit_python(result.graph, model), "<emitted>", "exec"), namespace)
    standalone = next(v for k, v in namespace.items() if isinstance(v, type) and issubclass(v, nn.Module))()
    standalone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(standalone.eval()(x), want) and len(standalone.train()(x)) == 3


RELOAD = """
import sys, torch
model = torch.load(sys.argv[1], weights_only=False)
x = torch.load(sys.argv[2])
outs = model.train()(x)
print(model.eval()(x).shape == (2, 3), len(outs), torch.equal(outs[2], torch.load(sys.argv[3])))
"""


def test_a_pickled_model_keeps_the_guard_in_a_fresh_process(tmp_path):
    model = yamlnet.compile(AUX).eval()
    x = torch.randn(2, 8)
    torch.save(model, tmp_path / "m.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(model.train()(x)[2], tmp_path / "raw.pt")
    proc = subprocess.run([sys.executable, "-c", RELOAD, *(str(tmp_path / f) for f in ("m.pt", "x.pt", "raw.pt"))],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.stdout.split() == ["True", "3", "True"], proc.stderr


def digits_with_aux(tmp_path, loss: str) -> str:
    text = (SPECS / "digits_cnn.yaml").read_text()
    text = text.replace("outputs: {logits: fc2}", "  aux_flat: {op: flatten, in: pool, start_dim: 1}\n"
                        "  aux_fc: {op: Linear, out_features: \"${classes}\"}\n"
                        "outputs: {logits: fc2}\ntrain_outputs: {aux: aux_fc}")  # fmt: skip
    path = tmp_path / "aux.yaml"
    path.write_text(text.replace("  loss: CrossEntropyLoss", loss))
    return str(path)


def test_training_adds_the_aux_term_and_validation_leaves_it_out(tmp_path, monkeypatch):
    loss = ("  loss:\n    - {name: CrossEntropyLoss, output: logits}\n"
            "    - {name: CrossEntropyLoss, output: aux, loss_weight: 0.3}")  # fmt: skip
    path = digits_with_aux(tmp_path, loss)
    monkeypatch.chdir(tmp_path)
    rc = yamlnet.cli.main(["train", path, "--out", "run", "--set", "train.max_steps=12",
                           "--set", "train.val_every_n_steps=6", "--set", "train.log_every_n_steps=3"])  # fmt: skip
    assert rc == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    trained = [r for r in rows if r["train/loss"]]
    assert trained and "val/loss_aux" not in rows[0] and "val/loss_logits" not in rows[0]
    for row in trained:  # the weighted sum of both terms
        total = float(row["train/loss_logits"]) + 0.3 * float(row["train/loss_aux"])
        assert float(row["train/loss"]) == pytest.approx(total, rel=1e-6)
    saved = yamlnet.evaluate(path, tmp_path / "run" / "last.safetensors")
    logged = [r for r in rows if r["val/loss"]][-1]
    assert saved["val/loss"] == pytest.approx(float(logged["val/loss"]), rel=1e-5)  # logits' term alone


@pytest.mark.parametrize("loss, sets, message", [
    ("  loss: {name: CrossEntropyLoss, output: aux}", [],
     "train.loss: every loss term reads a train output, and validation (in eval) has none of them"),
    ("  loss: CrossEntropyLoss", ["train.metrics=[{name: accuracy, output: aux}]"],
     "train.metrics[0].output: 'aux' is a train output: metrics are computed in eval, where it is not"),
])  # fmt: skip
def test_run_config_refusals(loss, sets, message, tmp_path, capsys):
    path = digits_with_aux(tmp_path, loss)
    rc = yamlnet.cli.main(["train", path, "--out", str(tmp_path / "run"), *(a for s in sets for a in ("--set", s))])
    assert rc == 2 and message in capsys.readouterr().err


def test_a_name_used_twice_is_refused():
    with pytest.raises(yamlnet.SpecError, match="two outputs would be named 'logits'"):
        yamlnet.compile(AUX.replace("{aux: aux_soft, raw: aux_head}", "{logits: aux_soft, raw: aux_head}"))


def test_outputs_are_reachable_by_name():
    model, x = yamlnet.compile(AUX), torch.randn(2, 8)
    trained = yamlnet.named_outputs(model.train(), x)
    assert list(trained) == ["logits", "aux", "raw"]
    assert torch.equal(trained["raw"], model.aux_head(model.body(x)))
    assert list(yamlnet.named_outputs(model.eval(), x)) == ["logits"]
