"""`yamlnet tune`: an Optuna study whose trials are ordinary run folders. A real study on
digits with pruning (in-process, and continued to more trials); bad spaces and studies
that cannot run as one located line each; trials that fail alone (a refused value, out of
memory, no finite metric) counted and freed; and, in the extended run, a study killed
with SIGKILL and started again, a process paused past the grace period, and two
processes sharing one SQLite study."""

from __future__ import annotations

import contextlib
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
  pruner: PRUNER
  sampler: random
  seed: 4
  grace_period: GRACE
"""


@pytest.fixture
def one_thread():
    """Several agents' tests share two cores: torch's own threads would fight them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sweep(folder: Path, steps: int = 6, pruner: str = "{name: median, n_startup_trials: 1}", grace: int = 10) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(SWEEP.replace("STEPS", str(steps)).replace("PRUNER", pruner).replace("GRACE", str(grace)))
    return path


def _study(folder: Path):
    from yamlnet.runtime.study import _create_lock

    url = f"sqlite:///{folder / 'study.db'}"
    with _create_lock(url, "--storage"):  # a tune process may be creating the tables: wait for it
        return optuna.load_study(study_name="digits_cnn", storage=url)


FINISHED = ("COMPLETE", "PRUNED")  # the states a trial ends in, failures aside


def _finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]


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
    assert "best: trial 0 val/accuracy" in out and "study/digits_cnn/trial_0" in out  # runs under the study's name
    assert "resuming" not in out
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
    "a variable the network refuses": ("vars.width: {choice: [0, 8]}",
                                       "sweep.yaml:3:5: tune.space.vars.width: width=0: blocks.conv_bn_relu.nodes.conv "
                                       "(in features.0): Conv2d gives an output of shape [N, 0, 8, 8], with a "
                                       "dimension of size 0 (a tensor with no elements: check the sizes in this node)"),
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


REFUSED = {
    "no validation data": (["--set", "data.val_fraction=0"],
                           "--set data.val_fraction=0: data.val_fraction: the run holds out no validation data, "
                           "so no trial can measure val/accuracy (tune needs validations: set it above 0, or give a "
                           "validation set)"),
    "a fixed key that is drawn": (["--set", "vars.width=8"],
                                  "--set vars.width: 'vars.width' is fixed here and drawn by tune.space.width "
                                  "(drop the --set item, or the space key)"),
    "a fixed key that is drawn, plainly": (["--set", "width=8"],
                                           "--set width: 'width' is fixed here and drawn by tune.space.width "
                                           "(drop the --set item, or the space key)"),
    "an --out that cannot be made": (["--out", "/proc/nope"],
                                     "--out: cannot make /proc/nope (No such file or directory) "
                                     "(name a folder this process may write)"),
    "a storage that cannot be made": (["--storage", "sqlite:////proc/nope/x.db"],
                                      "--storage: cannot make /proc/nope (No such file or directory) "
                                      "(name a folder this process may write)"),
    "a storage in memory": (["--storage", "sqlite:///"],
                            "--storage: sqlite:/// is an in-memory database: its study would end with this "
                            "process (name a file: sqlite:///path/study.db)"),
}  # fmt: skip


@pytest.mark.parametrize("args, expected", REFUSED.values(), ids=list(REFUSED))
def test_what_the_study_cannot_run_is_refused_first(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("tune:\n  space:\n    width: {choice: [4, 8]}\n")
    assert main(["tune", str(SPEC), "--config", "sweep.yaml", *args]) == 2
    assert capsys.readouterr().err.strip() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no study, no trial, no .lock


def test_a_folder_the_study_does_not_know_is_refused(tmp_path, monkeypatch, capsys):
    """Two studies share an --out: each has its own STUDY/ folder; a run folder that the
    study has no trial of (a deleted study's) is refused before any trial."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("tune:\n  space:\n    width: {choice: [4, 8]}\n")
    (tmp_path / "study" / "digits_cnn" / "trial_0").mkdir(parents=True)
    assert main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study"]) == 2
    assert capsys.readouterr().err.strip() == ("--out: study/digits_cnn/trial_0 holds a run that the study "
                                               "'digits_cnn' has no trial of (move it away, or name another "
                                               "study (--study))")  # fmt: skip


def test_a_study_locked_past_the_wait_is_one_line(tmp_path, monkeypatch, capsys):
    """Another process holding the study's database past the wait (one stuck mid-commit)
    ends the tune with one line that says so, exit 1; the study is in WAL mode, so reading
    it is not what waits."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("yamlnet.runtime.study.SQLITE_WAIT_S", 0.5)
    _sweep(tmp_path)
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    (tmp_path / "study").mkdir()
    optuna.create_study(storage=url, study_name="digits_cnn", direction="maximize")
    with contextlib.closing(sqlite3.connect(tmp_path / "study" / "study.db", isolation_level=None)) as holder:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held as a stuck process would
        code = main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study"])
        holder.execute("ROLLBACK")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: the study's storage {url} failed: ") and "database is locked" in err, err
    assert "another process holds it (paused or stuck?); run the command again" in err
    assert optuna.load_study(study_name="digits_cnn", storage=url).trials == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore:Argument ``heartbeat_interval``")
def test_a_sqlite_study_is_in_wal_mode_and_its_heartbeat_outlives_a_lock(tmp_path, monkeypatch):
    """The file SQLAlchemy opens (its URL percent-decoded) is the one put in WAL mode, with
    no stray file beside it; a heartbeat refused by a held lock is skipped, not raised
    (it would end the heartbeat thread, and the live trial would be failed as stale)."""
    import sqlite3

    from yamlnet.runtime import study

    monkeypatch.setattr(study, "SQLITE_WAIT_S", 0.3)
    url = f"sqlite:///{tmp_path}/my%20study.db"
    assert study.sqlite_file(url) == tmp_path / "my study.db"
    assert study.sqlite_file(f"sqlite:///file:{tmp_path}/a.db?uri=true") == tmp_path / "a.db"
    storage = study._storage(optuna, url, 10)
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {"my study.db"}  # and its -wal, -shm
    with contextlib.closing(sqlite3.connect(tmp_path / "my study.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    with contextlib.closing(sqlite3.connect(tmp_path / "my study.db", isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        storage.record_heartbeat(trial._trial_id)  # waits 0.3 s, skips the beat
        holder.execute("ROLLBACK")
    storage.record_heartbeat(trial._trial_id)
    assert storage._get_stale_trial_ids(trial.study._study_id) == []  # the beat after it counted


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # asked here, not run by optimize
def test_processes_with_one_seed_draw_apart(tmp_path):
    from yamlnet.compiler.load import load_spec_source
    from yamlnet.runtime import tune as tune_module
    from yamlnet.runtime.space import load_tune

    (tmp_path / "sweep.yaml").write_text("tune:\n  space: {width: {int: [1, 1000]}}\n  seed: 3\n")
    space = load_tune(load_spec_source(SPEC), tmp_path / "sweep.yaml")
    job = tune_module._Job(SPEC, None, {}, (), space, "val/loss", "minimize", tmp_path, tmp_path / "s", 2, print)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    width = {"width": optuna.distributions.IntDistribution(1, 1000)}
    with tune_module._quiet(optuna):
        firsts = [tune_module.open_study(optuna, url, "s", job).ask(width).params["width"] for _ in range(2)]
    assert firsts[0] != firsts[1]  # each process that opens the study moves the seed on


class _Cycle:
    me = None


class _FakeRun:
    """train() for trial bookkeeping: each call fails or measures as told, and leaves a
    reference cycle behind (as a real model and optimizer do)."""

    def __init__(self, outcomes: list):
        self.outcomes, self.alive = outcomes, []

    def __call__(self, spec, *, out, on_validate, **kwargs):
        import weakref
        from types import SimpleNamespace

        import torch
        from yamlnet.compiler.errors import SpecError

        gc_alive = [r for r in self.alive if r() is not None]
        assert not gc_alive, "the previous trial's objects are still alive"
        cycle = _Cycle()
        cycle.me = cycle
        self.alive.append(weakref.ref(cycle))
        print("resuming from nowhere")  # the run's own stdout: not a trial line
        what = self.outcomes.pop(0)
        if what == "spec":
            raise SpecError("a value this trial drew is refused")
        if what == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        out.mkdir(parents=True)
        (out / "metrics.csv").write_text("step,val/loss\n2,nan\n")
        on_validate(2, {"val/accuracy": math.nan})
        return SimpleNamespace(stopped="max_steps", step=2, exit_code=0)


def test_a_trial_that_cannot_be_scored_fails_and_counts(tmp_path, monkeypatch, capsys):
    import gc

    import yamlnet.runtime.train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "train", _FakeRun(["spec", "oom", "nan"]))
    (tmp_path / "sweep.yaml").write_text("tune:\n  space:\n    width: {choice: [4, 8]}\n")
    gc.disable()  # only tune's own collection frees the cycles between trials
    try:
        assert main(["tune", str(SPEC), "--config", "sweep.yaml", "--out", "study", "--trials", "3"]) == 1
    finally:
        gc.enable()
    out, err = capsys.readouterr()
    assert "trial 0 failed: a value this trial drew is refused" in out, err
    assert "trial 1 failed: CUDA out of memory. Tried to allocate 1 GiB" in out
    assert "trial 2 failed: measured no finite val/accuracy" in out
    assert "trial 3" not in out and "resuming" not in out
    assert "0 complete, 0 pruned, 3 failed, 0 running" in out


def test_the_summary_counts_a_resumed_trial_once():
    from types import SimpleNamespace

    from yamlnet.runtime.trials import summary

    def trial(number, state, **attrs):
        return SimpleNamespace(number=number, state=SimpleNamespace(name=state), user_attrs=attrs, value=0.5,
                               params={})  # fmt: skip

    trials = [trial(0, "FAIL", run="r0"), trial(1, "COMPLETE", run="r0", resume="r0"), trial(2, "FAIL", run="r2"),
              trial(3, "FAIL", surplus=True), trial(4, "FAIL", busy=True, resume="r2"),
              trial(5, "FAIL", run="r5", error="nan")]  # fmt: skip
    head = summary(trials, "val/loss", "minimize", [], str).splitlines()[0]
    assert head.startswith("1 complete, 0 pruned, 1 failed, 1 stopped, 0 running")


# -- several processes ------------------------------------------------------------------


def _tune_process(folder: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "yamlnet", "tune", str(SPEC), "--config", "sweep.yaml",
                             "--out", "study", "--trials", "6", *extra], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _trials(folder: Path) -> list:
    """The study's trials as they are now; none before the study exists."""
    if not (folder / "study.db").exists():
        return []
    try:
        return _study(folder).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def _count_finished(folder: Path) -> int:
    return sum(t.state.name in FINISHED for t in _trials(folder))


def _running_trial(folder: Path):
    """A trial of the study running in its run folder (not between trials), once one has
    finished; or None. The study is read once."""
    trials = _trials(folder)
    if not any(t.state.name in FINISHED for t in trials):
        return None
    running = [t for t in trials if t.state.name == "RUNNING" and "run" in t.user_attrs]
    return next((t for t in running if (Path(t.user_attrs["run"]) / "metrics.csv").exists()), None)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    return found


@pytest.mark.extended
def test_a_killed_study_continues_where_it_was(tmp_path):
    # pruned no earlier than step 60 of 80: the trials after the first two (all pruned) run
    # long enough to be caught running; one that ends first is let go (_pause_in_a_trial)
    _sweep(tmp_path, steps=80, pruner="{name: median, n_startup_trials: 1, n_warmup_steps: 60}")
    first = _tune_process(tmp_path)
    _wait_for(lambda: _count_finished(tmp_path / "study") >= 2, first)
    killed = _pause_in_a_trial(first, tmp_path / "study")
    first.send_signal(signal.SIGKILL)  # no goodbye: its running trial is left RUNNING
    first.wait()
    second = _tune_process(tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    study = _study(tmp_path / "study")
    assert len(_finished(study)) == 6
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [killed.number], out  # failed as stale once its heartbeat stopped
    resumed = [t for t in _finished(study) if t.user_attrs.get("resume") == killed.user_attrs["run"]]
    assert len(resumed) == 1, out  # and ran again from its run folder, to an end
    head = next(line for line in out.splitlines() if " complete, " in line)
    assert ", 0 failed, " in head and "stopped" not in head, out  # the killed trial counts once, resumed
    assert "best: trial" in out
    _check_best(study)


def _pause_outside_a_write(process: subprocess.Popen, db: Path) -> None:
    """SIGSTOP the process at a moment it holds no write lock on the study. One stopped
    in the middle of a commit would hold SQLite's write lock while asleep, and every other
    process would wait on it: SQLite's rule, which no tune can change. (A reader stopped
    mid-read blocks no one: the study is in WAL mode, which the first check asserts.)"""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        _wait_until_stopped(process)  # a signal is delivered later than kill() returns
        with contextlib.closing(sqlite3.connect(db, timeout=0.2, isolation_level=None)) as check:
            try:
                check.execute("BEGIN IMMEDIATE")
                check.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:  # stopped mid-commit: let it finish, and try again
                process.send_signal(signal.SIGCONT)
                time.sleep(0.05)
    raise AssertionError("the tune process held the study's write lock at every try")


def _running_in(folder: Path, process: subprocess.Popen):
    """A RUNNING trial of the study that this process took, or None."""
    mine = f":{process.pid}"
    return next((t for t in _trials(folder) if t.state.name == "RUNNING"
                 and t.user_attrs.get("process", "").endswith(mine)), None)  # fmt: skip


def _pause_in_a_trial(process: subprocess.Popen, folder: Path, find=_running_trial):
    """SIGSTOP the process outside a write while one of its trials (`find`) is RUNNING in
    the study, and return that trial. The trial is read again once the process is asleep:
    one seen running a moment earlier may have ended (pruned, say) before the signal landed."""
    for _ in range(50):
        seen = _wait_for(lambda: find(folder), process)
        _pause_outside_a_write(process, folder / "study.db")
        now = _study(folder).trials[seen.number]
        if now.state.name == "RUNNING":
            return now
        process.send_signal(signal.SIGCONT)  # it ended meanwhile: wait for the next one
    raise AssertionError("no trial was found running while the tune process slept")


def _wait_until_stopped(process: subprocess.Popen) -> None:
    """Until every thread of the process is stopped (Linux: state T in /proc)."""
    deadline = time.monotonic() + 60
    tasks = Path(f"/proc/{process.pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
        except FileNotFoundError:  # a thread ended meanwhile
            continue
        if all(state in "tT" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {process.pid} did not stop")


@pytest.mark.extended
def test_a_paused_process_gives_its_trial_up(tmp_path):
    """A process paused past the grace period (SIGSTOP, a laptop asleep) finds its trial
    failed as stale and resumed elsewhere: it ends that run saved and goes on."""
    _sweep(tmp_path, steps=40)
    first = _tune_process(tmp_path, "--trials", "4")
    paused = _pause_in_a_trial(first, tmp_path / "study")
    second = _tune_process(tmp_path, "--trials", "4")
    try:
        _wait_for(lambda: _study(tmp_path / "study").trials[paused.number].state.name == "FAIL", second)
        time.sleep(3)  # the requeued resume is tried, and found busy
    finally:
        first.send_signal(signal.SIGCONT)
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert f"trial {paused.number} was failed while this process was silent" in outs[0], outs
    study = _study(tmp_path / "study")
    assert len(_finished(study)) == 4
    resumed = [t for t in _finished(study) if t.user_attrs.get("resume") == paused.user_attrs["run"]]
    assert len(resumed) == 1, outs
    _check_best(study)


@pytest.mark.extended
def test_two_processes_share_one_study(tmp_path):
    # the first is held asleep in a trial until the second has taken one of its own, so
    # that both take trials however late the second starts (asleep is not stale here)
    _sweep(tmp_path, steps=12, grace=600)
    first = _tune_process(tmp_path)
    _pause_in_a_trial(first, tmp_path / "study", find=lambda folder: _running_in(folder, first))
    try:
        second = _tune_process(tmp_path)
        _wait_for(lambda: _running_in(tmp_path / "study", second), second)
    finally:
        first.send_signal(signal.SIGCONT)
    both = [first, second]
    outs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    study = _study(tmp_path / "study")
    finished = _finished(study)
    assert len(finished) == 6
    assert len({t.user_attrs["process"] for t in finished}) == 2  # both took trials
    assert len({t.user_attrs["run"] for t in finished}) == 6
    assert not any(math.isnan(t.value) for t in finished if t.value is not None)
    _check_best(study)
