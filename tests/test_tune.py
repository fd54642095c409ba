"""`yamlnet tune`: an Optuna study whose trials are ordinary run folders. A real study on
digits with pruning (in-process, and continued to more trials); bad spaces as one
located line each; and, in the extended run, a study killed with SIGKILL and started
again, and two processes sharing one SQLite study."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from yamlnet.runtime.trials import best_value

from yamlnet.cli import main

from .conftest import ROOT, SPECS

optuna = pytest.importorskip("optuna")

SPEC = SPECS / "digits_cnn.yaml"

# Small and quick: 6 steps, a validation every 2 (three reports to the pruner), 90
# validation samples. With the random sampler seeded 4 the first two trials draw the
# good learning rate and the third the useless one, which the median pruner stops at its
# second report (at the first, step 2, neither has learned anything yet).
SWEEP = """\
data: {batch_size: 32, val_fraction: 0.05}
train:
  max_steps: STEPS
  val_every_n_steps: 2
  scheduler: null
  metrics: [accuracy]
tune:
  space:
    train.optimizer.lr: {choice: [0.02, 1.0e-6]}
    vars.width: {choice: [4, 8]}
  trials: 3
  pruner: {name: median, n_startup_trials: 1}
  sampler: random
  seed: 4
"""


@pytest.fixture
def one_thread():
    """Several agents' tests share two cores: torch's own threads would fight them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sweep(folder: Path, steps: int = 6) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(SWEEP.replace("STEPS", str(steps)))
    return path


def _study(folder: Path):
    return optuna.load_study(study_name="digits_cnn", storage=f"sqlite:///{folder / 'study.db'}")


def _finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]


def _check_best(study) -> None:
    """The best trial's value is the best val/accuracy of its run's metrics.csv."""
    best = study.best_trial
    run = Path(best.user_attrs["run"])
    assert (run / "checkpoints" / "last.pt").exists()
    assert best.value == pytest.approx(best_value(run / "metrics.csv", "val/accuracy", "maximize"))


def test_a_study_prunes_and_continues(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    _sweep(tmp_path)
    assert main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 complete: val/accuracy" in out and "trial 2 pruned at step 4" in out
    assert "best: trial 0 val/accuracy" in out and "study/trial_0" in out
    study = _study(tmp_path / "study")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = study.trials[2]
    assert list(pruned.intermediate_values) == [2, 4]  # behind the others' median at step 4: stopped
    assert (Path(pruned.user_attrs["run"]) / "checkpoints" / "last.pt").exists()  # ended cleanly
    assert study.trials[0].intermediate_values.keys() == {2, 4, 6}
    _check_best(study)
    # started again with a larger target, the same study goes on: one trial more
    assert main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study", "--trials", "4"]) == 0
    assert "trial 3 " in capsys.readouterr().out
    assert len(_finished(_study(tmp_path / "study"))) == 4
    # and a study that has its trials runs none
    assert main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study", "--trials", "4"]) == 0
    assert "trial 4" not in capsys.readouterr().out


BAD_SPACES = {
    "unknown run key": ("train.optimzer.lr: {log_uniform: [1.0e-4, 1.0e-1]}",
                        "sweep.yaml:3:5: tune.space.train.optimzer.lr: train.optimzer: unknown key 'optimzer' "
                        "(did you mean train.optimizer.lr?)"),
    "unknown train key": ("train.epoch: {int: [1, 3]}",
                          "sweep.yaml:3:5: tune.space.train.epoch: unknown key 'epoch' (did you mean train.epochs?)"),
    "unknown optimizer argument": ("train.optimizer.lrr: {uniform: [0.1, 0.2]}",
                                   "sweep.yaml:3:5: tune.space.train.optimizer.lrr: AdamW takes no argument 'lrr' "
                                   "(did you mean lr?)"),
    "unknown variable": ("vars.widht: {choice: [8]}",
                         "sweep.yaml:3:5: tune.space.vars.widht: the spec has no variable 'widht' "
                         "(did you mean vars.width?)"),
    "low above high": ("train.optimizer.lr: {uniform: [0.1, 0.01]}",
                       "sweep.yaml:3:26: tune.space.train.optimizer.lr.uniform: low 0.1 is not below high 0.01 "
                       "(a fixed value is a --set item)"),
    "log from zero": ("train.optimizer.lr: {log_uniform: [0, 0.1]}",
                      "sweep.yaml:3:26: tune.space.train.optimizer.lr.log_uniform: a log scale needs low > 0, "
                      "got 0 (uniform: [0, 0.1] for a linear scale)"),
    "empty choice": ("vars.width: {choice: []}", "sweep.yaml:3:18: tune.space.vars.width.choice: must not be empty"),
    "unknown kind": ("vars.width: {choise: [1, 2]}",
                     "sweep.yaml:3:18: tune.space.vars.width.choise: unknown key 'choise' (did you mean choice?)"),
    "floats for an integer": ("train.epochs: {uniform: [1, 3]}",
                              "sweep.yaml:3:5: tune.space.train.epochs: expected an integer, got number 1.0 "
                              "(int: [low, high] draws whole numbers)"),
    "a value the run refuses": ("train.grad_accum: {int: [0, 3]}",
                                "sweep.yaml:3:5: tune.space.train.grad_accum: 0 is less than the minimum of 1"),
}  # fmt: skip


@pytest.mark.parametrize("line, expected", BAD_SPACES.values(), ids=list(BAD_SPACES))
def test_a_bad_space_is_one_located_line(line, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(f"tune:\n  space:\n    {line}\n")
    assert main(["tune", str(SPEC), "--config", "sweep.yaml"]) == 2
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "runs").exists()  # refused before any study or trial


def test_bad_settings_are_all_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("tune:\n  space: {vars.width: {int: [8, 16]}}\n  pruner: medain\n"
                                         "  trials: 0\n")  # fmt: skip
    assert main(["tune", str(SPEC), "--config", "sweep.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sweep.yaml:3:3: tune.pruner.name: 'medain' is not one of: median, percentile, hyperband, "
        "successive_halving, none (did you mean median?)",
        "sweep.yaml:4:3: tune.trials: 0 is less than the minimum of 1"]  # fmt: skip
    (tmp_path / "sweep.yaml").write_text("tune:\n  space: {vars.width: {int: [8, 16]}}\n"
                                         "  sampler: {name: tpe, n_startup: 3}\n")  # fmt: skip
    assert main(["tune", str(SPEC), "--config", "sweep.yaml"]) == 2
    assert capsys.readouterr().err.strip() == ("sweep.yaml:3:24: tune.sampler.n_startup: TPESampler takes no "
                                               "argument 'n_startup' (did you mean n_startup_trials?)")  # fmt: skip


def test_a_spec_without_tune_and_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(SPEC)]) == 2
    assert capsys.readouterr().err.strip().endswith("digits_cnn.yaml:3:1: the spec has no tune: section "
                                                    "(add one with a space:, or pass --config FILE with tune: in it)")  # fmt: skip
    assert main(["tune", str(SPEC), "--trials", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --trials takes a number > 0, got 0"
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in ("--trials", "--timeout", "--storage", "--study", "--set"))


def test_without_optuna_it_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["tune", str(SPEC)]) == 2
    assert capsys.readouterr().err.strip() == 'error: yamlnet tune needs optuna: pip install "yamlnet[tune]"'


def test_a_spec_with_tune_validates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("net.yaml").write_text(SPEC.read_text() + "tune:\n  space: {vars.width: {choice: [16, 32]}}\n")
    assert main(["validate", "net.yaml"]) == 0
    Path("net.yaml").write_text(SPEC.read_text() + "tune:\n  space: {vars.widht: {choice: [16, 32]}}\n")
    assert main(["validate", "net.yaml"]) == 2
    line = len(SPEC.read_text().splitlines()) + 2
    assert capsys.readouterr().err.strip() == (f"net.yaml:{line}:11: tune.space.vars.widht: the spec has no "
                                               "variable 'widht' (did you mean vars.width?)")  # fmt: skip


# -- several processes ------------------------------------------------------------------


def _tune_process(folder: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "yamlnet", "tune", str(SPEC), "--config", "sweep.yaml",
                             "--out", "study", "--trials", "6", *extra], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _count_finished(folder: Path) -> int:
    if not (folder / "study.db").exists():
        return 0
    try:
        return len(_finished(_study(folder)))
    except KeyError:  # the study is not created yet
        return 0


@pytest.mark.extended
def test_a_killed_study_continues_where_it_was(tmp_path):
    _sweep(tmp_path, steps=12)
    first = _tune_process(tmp_path)
    deadline = time.monotonic() + 300
    while _count_finished(tmp_path / "study") < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no goodbye: its running trial is left RUNNING
    first.wait()
    second = _tune_process(tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    study = _study(tmp_path / "study")
    assert len(_finished(study)) == 6
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    for dead in failed:  # the killed trial ran again from its run folder
        assert any(t.user_attrs.get("resume") == dead.user_attrs["run"] for t in _finished(study)), out
    assert "best: trial" in out
    _check_best(study)


@pytest.mark.extended
def test_two_processes_share_one_study(tmp_path):
    _sweep(tmp_path, steps=12)
    both = [_tune_process(tmp_path), _tune_process(tmp_path)]
    outs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    study = _study(tmp_path / "study")
    finished = _finished(study)
    assert len(finished) == 6
    assert len({t.user_attrs["process"] for t in finished}) == 2  # both took trials
    assert len({t.user_attrs["run"] for t in finished}) == 6
    assert not any(math.isnan(t.value) for t in finished if t.value is not None)
    _check_best(study)
