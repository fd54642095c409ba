"""Training end to end on CPU: the quick-start spec learns digits, the run folder holds
what the README promises, eval/predict agree with the model, and the loop's pieces
(accumulation, precision, schedules, early stopping) do what they say.

Oracles: a hand-written evaluation of the saved weights, sklearn's digits labels,
TensorBoard's own event reader, and a plain PyTorch loop for the update rule.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from yamlnet.runtime.checkpoint import load_checkpoint

import yamlnet

from .conftest import ROOT, SPECS

DIGITS = SPECS / "digits_cnn.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One full quick-start run (10 epochs), shared by the tests that read its folder."""
    out = tmp_path_factory.mktemp("run") / "digits"
    return yamlnet.train(DIGITS, out=out, stream=_Sink())


class _Sink:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def test_quick_start_reaches_95_percent(digits_run):
    assert digits_run.stopped == "finished"
    assert digits_run.step == 230  # 10 epochs of ceil(1438 / 64) = 23 steps
    assert digits_run.metrics["val/accuracy"] >= 0.95


def test_run_folder_holds_what_the_readme_promises(digits_run):
    out = digits_run.out
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "last.safetensors",
                 "best.safetensors", "metrics.csv", "spec.lock.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    lock = yaml.safe_load((out / "spec.lock.yaml").read_text())
    assert lock["train"]["optimizer"] == {"name": "AdamW", "lr": 0.002, "weight_decay": 0.01}
    assert lock["train"]["keep_checkpoints"] == 2  # defaults filled in
    assert lock["data"]["dataset"] == "digits" and "fc2" in lock["nodes"]


def test_checkpoint_is_plain_data_and_matches_safetensors(digits_run):
    raw = torch.load(digits_run.last, weights_only=True)  # never unpickles code
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "position", "spec"} <= set(raw)
    assert raw["position"]["step"] == 230
    weights = load_file(digits_run.out / "last.safetensors")
    assert set(weights) == set(raw["model"])
    assert all(torch.equal(weights[k], raw["model"][k]) for k in weights)
    model = yamlnet.compile(DIGITS)
    model.load_state_dict(raw["model"])  # strict: the keys are the spec's


def test_best_checkpoint_is_the_best_validation(digits_run):
    rows = _rows(digits_run.out / "metrics.csv")
    val = [(int(r["step"]), float(r["val/accuracy"])) for r in rows if r["val/accuracy"]]
    best_step, best_acc = max(val, key=lambda v: (v[1], -v[0]))  # first of the maxima
    best = load_checkpoint(digits_run.best)
    assert best["position"]["step"] == best_step
    assert best["position"]["best"] == pytest.approx(best_acc, abs=1e-6)


def test_metrics_csv_has_a_row_per_log_and_validation(digits_run):
    rows = _rows(digits_run.out / "metrics.csv")
    train_steps = [int(r["step"]) for r in rows if r["train/loss"]]
    assert train_steps == list(range(10, 231, 10))
    assert [int(r["step"]) for r in rows if r["val/loss"]] == list(range(23, 231, 23))
    assert float([r for r in rows if r["lr"]][-1]["lr"]) < 1e-5  # cosine ends near zero


def test_tensorboard_reader_sees_the_same_values(digits_run):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(digits_run.out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("val/accuracy")}
    rows = _rows(digits_run.out / "metrics.csv")
    csv_vals = {int(r["step"]): float(r["val/accuracy"]) for r in rows if r["val/accuracy"]}
    assert tb.keys() == csv_vals.keys()
    assert all(tb[s] == pytest.approx(csv_vals[s], abs=1e-5) for s in tb)


def test_evaluate_matches_a_hand_written_evaluation(digits_run):
    from sklearn.datasets import load_digits

    got = yamlnet.evaluate(DIGITS, digits_run.out)
    model = yamlnet.compile(DIGITS)
    model.load_state_dict(load_checkpoint(digits_run.best)["model"])
    model.eval()
    d = load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
    val = sorted(order[:359])  # the documented fixed split: seed 0, 20%
    x = torch.tensor(d.data[val], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target[val])
    with torch.no_grad():
        logits = model(x)
    assert got["val/accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    assert got["val/loss"] == pytest.approx(loss, rel=1e-5)


def test_predict_agrees_with_the_model(digits_run, tmp_path):
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:50] / 16.0).reshape(-1, 1, 8, 8).astype("float32")
    np.savez(tmp_path / "x.npz", x=x)
    pred = yamlnet.predict(DIGITS, digits_run.best, tmp_path / "x.npz")
    model = yamlnet.compile(DIGITS)
    model.load_state_dict(load_checkpoint(digits_run.best)["model"])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x))
    assert torch.allclose(pred.outputs, expected, atol=1e-6)
    assert [r["class"] for r in pred.rows()] == expected.argmax(1).tolist()


def test_cli_eval_and_predict(digits_run, tmp_path):
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 8, 8), dtype="float32"))
    cmd = [sys.executable, "-m", "yamlnet"]
    r = subprocess.run([*cmd, "eval", str(DIGITS), "--checkpoint", str(digits_run.out), "--format",
                        "json"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert '"val/accuracy"' in r.stdout
    r = subprocess.run([*cmd, "predict", str(DIGITS), "--checkpoint", str(digits_run.out), "--input",
                        str(tmp_path / "x.npz")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "sample,class,probability" and len(lines) == 4
    r = subprocess.run([*cmd, "predict", str(DIGITS), "--checkpoint", str(digits_run.out), "--input",
                        str(tmp_path / "missing.npz")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == f"no such file: {tmp_path / 'missing.npz'}"


def test_plain_progress_lines_off_a_terminal(digits_run):
    out = subprocess.run(
        [sys.executable, "-m", "yamlnet", "train", str(DIGITS), "--epochs", "1", "--out",
         str(digits_run.out.parent / "lines")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    steps = [line for line in out.stdout.splitlines() if line.startswith("epoch 1/1 step")]
    assert [s.split()[3] for s in steps] == ["10/23", "20/23"]  # every log_every_n_steps
    assert "\r" not in out.stdout and "\x1b" not in out.stderr


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the loop's pieces -------------------------------------------------------------------

MLP = """\
yamlnet: 1
inputs:
  x: [N, 64]
nodes:
  fc1: {op: Linear, out_features: 32}
  act: {op: ReLU}
  fc2: {op: Linear, out_features: 10}
data: {dataset: digits, flatten: true, batch_size: 16, shuffle: false, val_fraction: 0.1}
train: {epochs: 1, optimizer: {name: SGD, lr: 0.1}, checkpoint_every_n_steps: null}
"""


def _mlp(tmp_path, text=MLP):
    path = tmp_path / "mlp.yaml"
    path.write_text(text)
    return path


def _final_weights(result):
    return load_file(result.out / "last.safetensors")


def test_sgd_steps_equal_a_plain_pytorch_loop(tmp_path):
    """The update rule is PyTorch's: 10 SGD steps equal a hand-written loop's."""
    from sklearn.datasets import load_digits

    spec = _mlp(tmp_path)
    result = yamlnet.train(spec, out=tmp_path / "r", stream=_Sink(), **{"train.max_steps": 10})
    torch.manual_seed(0)  # the run seeds the same way before building the model
    model = yamlnet.compile(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
    train_idx = sorted(order[180:])  # val_fraction 0.1 -> 180 held out
    x = torch.tensor(d.data[train_idx], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[train_idx])
    for i in range(10):  # shuffle: false -> batches in order
        loss = torch.nn.functional.cross_entropy(model(x[16 * i : 16 * i + 16]), y[16 * i : 16 * i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = _final_weights(result)
    for k, v in model.state_dict().items():
        assert torch.allclose(got[k], v, atol=1e-6), k


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    """Without batch-dependent layers, 2 micro-batches of 16 == 1 batch of 32 (mean loss)."""
    spec = _mlp(tmp_path)
    a = yamlnet.train(spec, out=tmp_path / "a", stream=_Sink(),
                      **{"train.max_steps": 5, "train.grad_accum": 2})  # fmt: skip
    b = yamlnet.train(spec, out=tmp_path / "b", stream=_Sink(),
                      **{"train.max_steps": 5, "data.batch_size": 32})  # fmt: skip
    wa, wb = _final_weights(a), _final_weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert not torch.equal(wa["fc1.weight"], yamlnet.compile(spec).state_dict()["fc1.weight"])


def test_warmup_schedule_reaches_the_base_lr(tmp_path):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "w", stream=_Sink(), **{
        "train.max_steps": 20, "train.log_every_n_steps": 1,
        "train.scheduler": {"name": "ConstantLR", "factor": 1.0, "warmup_steps": 4}})  # fmt: skip
    lrs = [float(r_["lr"]) for r_ in _rows(r.out / "metrics.csv") if r_["lr"]]
    # logged after each step: the ramp 1/5 .. 5/5 of the base LR, then flat
    assert lrs[:6] == pytest.approx([0.04, 0.06, 0.08, 0.1, 0.1, 0.1])


def test_early_stopping_stops_and_says_why(tmp_path):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "e", stream=_Sink(), **{
        "train.epochs": 50, "train.optimizer.lr": 0.0, "train.val_every_n_steps": 1,
        "train.early_stopping": {"patience": 3}})  # fmt: skip
    assert r.stopped == "early_stopping"
    assert r.step == 4  # the first validation sets the best; three more without improvement


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu(tmp_path, precision):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / precision, stream=_Sink(),
                      **{"train.max_steps": 20, "train.precision": precision})  # fmt: skip
    w = _final_weights(r)
    assert all(torch.isfinite(v).all() for v in w.values())
    assert w["fc1.weight"].dtype == torch.float32  # weights stay fp32 under autocast
    if precision == "16-mixed":
        assert load_checkpoint(r.last)["scaler"]["scale"] > 0


@pytest.mark.slow
def test_torch_compile_trains(tmp_path):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "c", stream=_Sink(),
                      **{"train.max_steps": 5, "train.compile": True})  # fmt: skip
    assert set(_final_weights(r)) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_regression_with_mse(tmp_path):
    text = """\
yamlnet: 1
inputs:
  x: [N, 4]
nodes:
  fc: {op: Linear, out_features: 1}
data: {dataset: synthetic, shape: [4], classes: null, size: 256, val_size: 64}
train: {max_steps: 40, loss: MSELoss, metrics: [mse, mae], optimizer: {lr: 0.01}}
"""
    r = yamlnet.train(_mlp(tmp_path, text), out=tmp_path / "m", stream=_Sink())
    assert {"val/mse", "val/mae", "val/loss"} <= set(r.metrics)
    assert r.metrics["val/mse"] == pytest.approx(r.metrics["val/loss"], rel=1e-5)


def test_device_cpu_flag_and_missing_cuda(tmp_path):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "cpu", stream=_Sink(),
                      **{"train.max_steps": 2, "train.device": "cpu"})  # fmt: skip
    assert r.step == 2
    if not torch.cuda.is_available():
        with pytest.raises(yamlnet.SpecError, match="device 'cuda' is not available"):
            yamlnet.train(spec, out=tmp_path / "gpu", **{"train.device": "cuda"})


@pytest.mark.gpu
def test_trains_on_cuda(tmp_path):
    r = yamlnet.train(DIGITS, out=tmp_path / "cuda", stream=_Sink(),
                      **{"train.epochs": 2, "train.device": "cuda"})  # fmt: skip
    assert r.metrics["val/accuracy"] > 0.8


def test_second_sigint_aborts_at_once():
    """The first SIGINT asks for a save-and-stop; a second one raises KeyboardInterrupt
    wherever the process is; handlers are put back afterwards."""
    import os
    import signal

    from yamlnet.runtime.process import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


# -- review fixes: each was a crash or a silent wrong answer -------------------------------

REGRESSION = """\
yamlnet: 1
inputs:
  x: [N, 4]
nodes:
  fc: {op: Linear, out_features: 1}
data: {dataset: tensors, train: reg.npz}
train: {max_steps: 3, loss: MSELoss, metrics: [mse]}
"""


def _regression(tmp_path, y_shape):
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", x=g.normal(size=(40, 4)).astype("float32"),
             y=g.normal(size=y_shape).astype("float32"))  # fmt: skip
    return _mlp(tmp_path, REGRESSION)


def test_a_loss_that_would_broadcast_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _regression(tmp_path, (40,))
    with pytest.raises(yamlnet.SpecError) as err:
        yamlnet.train(spec, out=tmp_path / "r")
    assert str(err.value) == (f"{spec}:7:23: train.loss: MSELoss got outputs [2, 1] but targets "
                              "[2]; it would broadcast them (make the targets the output's shape)")  # fmt: skip
    assert not (tmp_path / "r").exists()  # a run that cannot start leaves no folder


def test_predict_gives_raw_outputs_for_regression(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    spec = _regression(tmp_path, (40, 1))
    r = yamlnet.train(spec, out=tmp_path / "r", stream=_Sink())
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4), dtype="float32"))
    pred = yamlnet.predict(spec, r.last, tmp_path / "x.npz")
    rows = pred.rows()  # one column per output value, named by the output
    assert set(rows[0]) == {"sample", pred.output_name} and rows[0]["sample"] == "0"
    assert rows[1][pred.output_name] == pytest.approx(float(pred.outputs[1, 0]), abs=1e-6)


def test_resume_from_a_checkpoint_stays_in_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _mlp(tmp_path)
    first = yamlnet.train(spec, stream=_Sink(), **{"train.max_steps": 2})
    yamlnet.train(spec, stream=_Sink(), **{"train.max_steps": 2})  # a newer version_1
    again = yamlnet.train(spec, resume=first.last, stream=_Sink(), force=True,
                          **{"train.max_steps": 4})  # fmt: skip
    assert first.out.name == "version_0" and again.out == first.out and again.step == 4


def test_a_run_whose_checkpoints_are_all_damaged_is_not_restarted(tmp_path):
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "r", stream=_Sink(), **{"train.max_steps": 2})
    for p in (r.out / "checkpoints").glob("step-*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(yamlnet.SpecError, match="no checkpoint in .* verifies"):
        yamlnet.train(spec, out=r.out, resume=True, stream=_Sink())


@pytest.mark.parametrize("minutes", [1e-9, 1000.0])
def test_checkpoints_by_the_clock(tmp_path, minutes):
    """train.checkpoint_every_n_minutes: a step checkpoint once that long has passed since
    the last one: after every step when it is a nanosecond or so, none when it is hours
    (the end of the run is saved either way)."""
    spec = _mlp(tmp_path)
    r = yamlnet.train(spec, out=tmp_path / "r", stream=_Sink(), **{
        "train.max_steps": 5, "train.checkpoint_every_n_epochs": None, "train.keep_checkpoints": 10,
        "train.checkpoint_every_n_minutes": minutes, "train.val_every_n_epochs": None})  # fmt: skip
    steps = sorted(p.name for p in (r.out / "checkpoints").glob("step-*.pt"))
    assert steps == [f"step-{s:08d}.pt" for s in ((1, 2, 3, 4, 5) if minutes < 1 else (5,))]


def test_evaluate_refuses_an_unknown_split(digits_run):
    with pytest.raises(yamlnet.SpecError, match="unknown split 'test'"):
        yamlnet.evaluate(DIGITS, digits_run.out, split="test")


def test_seed_out_of_range_is_a_located_error(tmp_path):
    with pytest.raises(yamlnet.SpecError, match=r"--set train.seed=.*: train.seed: "):
        yamlnet.train(_mlp(tmp_path), out=tmp_path / "s", **{"train.seed": 10**15})


def test_a_failure_inside_pytorch_names_the_step_and_keeps_the_checkpoint(tmp_path):
    import numpy as np
    from yamlnet.runtime.errors import TrainingError

    g = np.random.default_rng(0)
    y = g.integers(0, 10, 96)
    y[40] = 12  # beyond the 10-way head: only PyTorch notices, in the step that sees it
    np.savez(tmp_path / "d.npz", x=g.random((96, 64)).astype("float32"), y=y)
    spec = _mlp(tmp_path, MLP.replace("dataset: digits, flatten: true", "dataset: tensors, "
                                      f"train: {tmp_path / 'd.npz'}").replace("0.1}", "0.0}"))
    with pytest.raises(TrainingError) as err:
        yamlnet.train(spec, out=tmp_path / "r", stream=_Sink(),
                      **{"train.checkpoint_every_n_steps": 1})  # fmt: skip
    assert str(err.value) == ("step 3 (epoch 1, batch 3): Target 12 is out of bounds; the last "
                              f"good checkpoint is {tmp_path / 'r' / 'checkpoints' / 'last.pt'}")  # fmt: skip
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["position"]["step"] == 2


@pytest.mark.parametrize("background", [False, True], ids=["cpu-run", "gpu-run"])
def test_checkpoints_hold_the_state_at_their_step(tmp_path, background):
    """Each file holds the state as it was when saved, though training goes on. In the
    background mode (GPU runs) the next snapshot is copied into the CPU buffers of the
    one before, once that is written; tied tensors stay tied."""
    from yamlnet.runtime.checkpoint import CheckpointDir

    model = torch.nn.Linear(4, 3)
    shared = torch.zeros(2)
    ckpts = CheckpointDir(tmp_path / "ckpts", keep=5, background=background)
    saved, buffers = [], []
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpts.save({"model": model.state_dict(), "tied": [shared, shared], "step": step}, step)
        saved.append(model.weight.detach().clone())
        if background:
            buffers.append(ckpts._spare["model"]["weight"].data_ptr())
    ckpts.close()
    assert len(set(buffers)) == (1 if background else 0)  # one buffer, refilled each time
    for step, weight in zip((1, 2, 3), saved, strict=True):
        state = load_checkpoint(ckpts.folder / f"step-{step:08d}.pt")
        assert torch.equal(state["model"]["weight"], weight) and state["step"] == step
        assert type(state["model"]).__name__ == "OrderedDict" and hasattr(state["model"], "_metadata")
        assert state["tied"][0].data_ptr() == state["tied"][1].data_ptr()
    assert torch.equal(load_checkpoint(ckpts.last)["model"]["weight"], saved[-1])
    assert not list(ckpts.folder.glob(".*tmp*"))  # every temp file renamed


@pytest.mark.parametrize("version", [3, 1])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a damaged pickle header
def test_every_damaged_byte_is_refused_or_harmless(tmp_path, version):
    """One byte flipped, at each offset of a checkpoint in turn: the damaged file is
    refused with one line, or it loads to exactly what was saved (the byte held no data:
    alignment padding, say). Files of format 2 and later carry a CRC-32 of their content,
    version 1 files (written by earlier yamlnet) a sha256; both load and both are checked."""
    from yamlnet.runtime.checkpoint import CheckpointError, digest, save_checkpoint

    torch.manual_seed(0)
    state = {"model": torch.nn.Linear(6, 3).state_dict(), "step": 7, "name": "x"}
    path = tmp_path / "c.pt"
    if version == 3:
        save_checkpoint(state, path)
        assert torch.load(path, weights_only=True)["checksum"].startswith("crc32:")
    else:
        payload = {**state, "format": "yamlnet-checkpoint", "version": 1}
        torch.save({**payload, "checksum": digest(payload)}, path)
    assert load_checkpoint(path)["version"] == version
    good = path.read_bytes()
    refused = 0
    for at in range(len(good)):
        data = bytearray(good)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as err:
            assert "is corrupt" in str(err) and "\n" not in str(err), (at, str(err))
            refused += 1
            continue
        assert loaded["step"] == 7 and loaded["name"] == "x", at
        assert loaded["model"].keys() == state["model"].keys(), at
        assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items()), at
    assert refused > len(good) // 3, refused  # the rest: zip padding and the like


def test_rng_states_round_trip_through_a_checkpoint_in_either_form(tmp_path):
    """Python's RNG state is saved as a tensor of its words (older checkpoints: a tuple of
    ints); either form, read back from a file, restores the same stream of draws."""
    import random

    import numpy as np
    from yamlnet.runtime.checkpoint import capture_rng, restore_rng, save_checkpoint

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leaves the second of a pair of draws in the gauss slot
    state = capture_rng()
    assert state["python"][2] is not None
    assert isinstance(state["python"][1], torch.Tensor) and state["python"][1].dtype == torch.int64
    expected = (random.gauss(0, 1), random.random(), np.random.rand(), torch.rand(()).item())
    version, words, gauss = state["python"]
    older = {**state, "python": (version, tuple(words.tolist()), gauss)}
    for form in (state, older):
        save_checkpoint({"rng": form}, tmp_path / "c.pt")
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
        assert (random.gauss(0, 1), random.random(), np.random.rand(), torch.rand(()).item()) == expected


def _freeze_counts_at_each_step(monkeypatch) -> list[int]:
    """A list that gets `gc.get_freeze_count()` at the end of each training step."""
    import gc

    from yamlnet.runtime import train as T

    seen: list[int] = []
    step = T._after_step

    def noting(run):
        seen.append(gc.get_freeze_count())
        return step(run)

    monkeypatch.setattr(T, "_after_step", noting)
    return seen


def test_the_setup_objects_are_frozen_while_the_loop_runs(tmp_path, monkeypatch):
    """The garbage collector leaves the objects alive at the loop's start alone while it
    runs (a full collection would scan them all, a long pause mid-training), and gets them
    back after; a caller that froze objects itself keeps its own frozen set, no more."""
    import gc

    seen = _freeze_counts_at_each_step(monkeypatch)
    spec, sets = _mlp(tmp_path), {"train.max_steps": 2, "train.val_every_n_epochs": None}
    assert gc.get_freeze_count() == 0
    yamlnet.train(spec, out=tmp_path / "a", stream=_Sink(), **sets)
    assert len(seen) == 2 and min(seen) > 10_000, seen  # torch alone is more than that
    assert gc.get_freeze_count() == 0
    seen.clear()
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        yamlnet.train(spec, out=tmp_path / "b", stream=_Sink(), **sets)
        # ours would add the run's own objects (the model, say): the count only shrinks,
        # as frozen objects are freed
        assert len(seen) == 2 and max(seen) <= mine and 0 < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()


def test_the_collector_is_unfrozen_when_training_fails_and_untouched_when_off(tmp_path, monkeypatch):
    """A program that switched the collector off finds nothing frozen; a failure
    mid-training still gives the frozen objects back to the collector."""
    import gc

    from yamlnet.runtime import train as T

    seen = _freeze_counts_at_each_step(monkeypatch)
    spec, sets = _mlp(tmp_path), {"train.max_steps": 2, "train.val_every_n_epochs": None}
    gc.disable()
    try:
        yamlnet.train(spec, out=tmp_path / "b", stream=_Sink(), **sets)
    finally:
        gc.enable()
    assert seen == [0, 0]

    def failing(run):
        assert gc.get_freeze_count() > 10_000
        raise RuntimeError("a failure mid-training")

    monkeypatch.setattr(T, "_after_step", failing)
    with pytest.raises(RuntimeError, match="mid-training"):
        yamlnet.train(spec, out=tmp_path / "a", stream=_Sink(), **sets)
    assert gc.get_freeze_count() == 0


def test_a_checkpoint_from_a_newer_yamlnet_is_refused_in_one_line(tmp_path):
    """A later checkpoint format (a newer yamlnet's) is refused with a line saying so, not
    read as if it were this one's."""
    from yamlnet.runtime import checkpoint as C

    payload = {"step": 1, "format": C.FORMAT, "version": C.VERSION + 1}
    torch.save({**payload, "checksum": "crc32:" + C.digest(payload, "crc32")}, tmp_path / "c.pt")
    newer = rf"written by a newer yamlnet \(checkpoint format {C.VERSION + 1}; this one reads up to {C.VERSION}\)"
    with pytest.raises(C.CheckpointError, match=newer) as err:
        load_checkpoint(tmp_path / "c.pt")
    assert "\n" not in str(err.value)
