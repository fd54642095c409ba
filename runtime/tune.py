"""`yamlnet tune`: an Optuna study over a spec's run keys and variables, each trial an
ordinary run folder trained here by `train()`.

The study folder (`--out`, default runs/NAME-tune) holds `study.db`, the default storage
(SQLite; any Optuna RDB URL may replace it), and the study's run folders,
`STUDY/trial_K` (K the trial's number): resumable, evaluable and exportable like any run.
Every validation of a trial is reported to the pruner, which may end the run there
("pruned", saved). The trial count is the study's, not the process's: a process stops
once the study holds that many ended trials (complete, pruned, or failed by its own run:
a NaN loss, a value the run refuses, no finite metric, out of memory), so a study stopped
and started again goes on where it was, and processes started on one storage share the
work. A process that waits only on others' running trials waits for them, so that when
one dies (its heartbeat is silent for tune.grace_period) its trial runs again from its
run folder's newest checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compiler.errors import SpecError, did_you_mean
from ..compiler.load import load_spec_source
from .config import RunConfig, load_run_config, split_overrides
from .errors import ConfigError, TrainingError, first_line, import_extra
from .space import TuneConfig, load_tune
from .study import made_folder, open_study, shown, storage_folder
from .trials import aside, best_trials, best_value, ended, format_trial, show, summary

__all__ = ["tune", "TuneResult", "import_optuna"]

POLL_S = 2.0  # how often a process waiting on others' trials looks again


@dataclass(frozen=True)
class TuneResult:
    """What `tune` returns: the study, where it is, and its best trial."""

    study: str
    storage: str
    folder: Path
    metric: str
    direction: str
    best: Any  # optuna's FrozenTrial of the best complete trial, or None
    exit_code: int = 0


class _Stopped(Exception):
    """A trial's run was stopped by a signal (saved, queued to run again)."""

    def __init__(self, exit_code: int):
        super().__init__(f"stopped by a signal (exit {exit_code})")
        self.exit_code = exit_code


class _Surplus(Exception):
    """Other processes started the study's last trials first: this one is not run."""


class _Busy(Exception):
    """The run a requeued trial would resume is still trained by its first process (one
    that was silent, not dead): the trial is queued again for later."""


class _WrongMetric(Exception):
    """The run does not measure the study's metric: a mistake of every trial, not one."""

    def __init__(self, error: ConfigError):
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Job:
    """What every trial of this process shares."""

    spec: Path
    config: str | os.PathLike | None
    overrides: dict
    plugins: tuple
    tune: TuneConfig
    metric: str
    direction: str
    folder: Path
    runs: Path  # the study's run folders: folder/STUDY
    target: int
    say: Any


def tune(spec: str | os.PathLike, *, config: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
         trials: int | None = None, timeout: float | None = None, study: str | None = None,
         storage: str | None = None, plugins: tuple[str, ...] = (), stream=None, **overrides: Any) -> TuneResult:  # fmt: skip
    """Run (or go on with) the study the spec's `tune:` section describes; keyword
    overrides are fixed `--set` items of every trial.

        >>> result = yamlnet.runtime.tune.tune("specs/digits_cnn.yaml", trials=6)  # doctest: +SKIP
        >>> result.best.value, result.best.user_attrs["run"]                        # doctest: +SKIP
    """
    optuna = import_optuna()
    source = load_spec_source(Path(spec))
    space = load_tune(source, config, overrides, plugins)
    cfg = load_run_config(source.main, config, split_overrides(overrides)[0])
    metric, direction = objective_of(space, cfg)
    check_validates(cfg, metric)
    name = study or space.study or source.main.data.get("name") or Path(spec).stem
    url, flag = storage or space.storage, "--storage" if storage else "tune.storage"
    if url:
        storage_folder(url, flag)  # checked before --out is made
    folder = made_folder(Path(out or Path("runs") / f"{name}-tune").resolve(), "--out")
    url = url or f"sqlite:///{folder / 'study.db'}"
    stream = stream or sys.stdout
    say = lambda text: print(text, file=stream, flush=True)  # noqa: E731
    job = _Job(Path(spec), config, dict(overrides), tuple(plugins), space, metric, direction, folder,
               folder / name, trials or space.trials, say)  # fmt: skip
    with _quiet(optuna), _storage_failures(optuna, url):
        the_study = open_study(optuna, url, name, job, flag)
        say(f"study {name} in {shown(url)}: {job.target} trials, {direction} {metric}; runs in {show(job.runs)}")
        code = _run(optuna, the_study, job, None if timeout is None else time.monotonic() + timeout)
        trials_now = the_study.get_trials(deepcopy=False)
    best = next(iter(best_trials(trials_now, direction)), None)
    say(summary(trials_now, metric, direction, list(space.space), show))
    say(f"best: trial {best.number} {metric} {best.value:.4f} in {show(best.user_attrs['run'])}"
        if best else "best: none (no trial completed)")  # fmt: skip
    return TuneResult(name, url, folder, metric, direction, best, code or (0 if best else 1))


def import_optuna():
    return import_extra("optuna", "tune", "yamlnet tune")


def objective_of(space: TuneConfig, cfg: RunConfig) -> tuple[str, str]:
    """The metric and direction: as written, else the run's monitor and its mode."""
    monitor = cfg.train["monitor"] or ("val/accuracy" if _measures_accuracy(cfg) else "val/loss")
    metric = space.metric or monitor
    if space.direction:
        return metric, space.direction
    if metric == monitor and cfg.train["mode"]:
        return metric, {"max": "maximize", "min": "minimize"}[cfg.train["mode"]]
    name = metric.rsplit("/", 1)[-1]
    if name.startswith("loss") or name in ("mse", "mae") or name.endswith("_error"):
        return metric, "minimize"
    if name.endswith("accuracy"):
        return metric, "maximize"
    raise space.error(f"say whether '{metric}' is to be maximized or minimized", ("direction",),
                      "direction: maximize or direction: minimize")  # fmt: skip


def _measures_accuracy(cfg: RunConfig) -> bool:
    return any(m.get("label", m["name"]) == "accuracy" for m in cfg.train["metrics"])


_NOT_SOURCES = ("val_fraction", "val_transforms", "val_batch_size")  # other data.val* keys name a validation set


def check_validates(cfg: RunConfig, metric: str) -> None:
    """A trial is judged by its validations: a run that holds out no validation data (its
    source has no validation set and val_fraction is 0) cannot be scored, so it is
    refused before the study."""
    data = cfg.data
    own_val = any(data.get(k) for k in data if k.startswith("val") and k not in _NOT_SOURCES)
    if data.get("val_fraction", 1) <= 0 and not own_val:
        raise cfg.error(f"the run holds out no validation data, so no trial can measure {metric}",
                        ("data", "val_fraction"), "tune needs validations: set it above 0, or give a validation set")  # fmt: skip


@contextmanager
def _quiet(optuna):
    """Optuna's INFO lines and its warnings of failed trials (with tracebacks) say what our
    trial lines say; its experimental-feature warnings are about the heartbeat this
    module relies on knowingly."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


@contextmanager
def _storage_failures(optuna, url: str):
    """The study's database failing mid-tune is one line, exit 1, in the database's words
    (-v adds the traceback). Locked past the wait (another process stuck mid-commit) is
    passing: the trial this process ran keeps its run folder, and running the command
    again goes on with the study."""
    try:
        yield
    except optuna.exceptions.StorageInternalError as err:
        cause = first_line(err.__cause__ or err, 300)
        again = ("; another process holds it (paused or stuck?); run the command again to go on with the study"
                 if "database is locked" in cause else "")  # fmt: skip
        failure = TrainingError(f"the study's storage {shown(url)} failed: {cause}{again}")
        failure.exit_code = 1
        raise failure from err


# -- the loop: one trial at a time until the study has its trials --------------------


def _run(optuna, study, job: _Job, deadline: float | None) -> int:
    from optuna.trial import TrialState

    asked: list = []  # the trial this process runs now
    while deadline is None or time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = sum(map(ended, trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= job.target:
            return 0
        if done + running >= job.target:  # others' trials finish it, unless their process dies
            time.sleep(POLL_S)
            continue
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        asked.clear()
        try:
            study.optimize(lambda trial: _objective(optuna, job, trial, asked), n_trials=1, timeout=left,
                           catch=(TrainingError, _Surplus, _Busy), callbacks=[lambda s, t: _said(job, t)])  # fmt: skip
        except _Stopped as err:
            return err.exit_code
        except ValueError:  # optuna's "Cannot tell a FAIL trial.": see _taken_over
            if not (asked and _taken_over(study, asked[0])):
                raise
            job.say(f"trial {asked[0].number} was failed while this process was silent; its run goes on "
                    "in a trial of its own")  # fmt: skip
        finally:
            _free_memory()
    return 0


def _taken_over(study, trial) -> bool:
    """Whether another process failed this process's trial as stale (this one was paused
    longer than the grace period, not dead), and requeued its run."""
    return study.get_trials(deepcopy=False)[trial.number].state.name == "FAIL"


def _free_memory() -> None:
    """A trial's model and optimizer hold reference cycles: freed before the next trial."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _objective(optuna, job: _Job, trial, asked: list) -> float:
    asked.append(trial)
    params = {key: _suggest(trial, key, kind, values) for key, (kind, values) in job.tune.space.items()}
    if _surplus(trial, job.target):
        trial.set_user_attr("surplus", True)
        raise _Surplus("the study had its trials")
    resume = trial.user_attrs.get("resume")
    run = Path(resume) if resume else job.runs / f"trial_{trial.number}"
    if resume and _busy(run):
        trial.set_user_attr("busy", True)
        trial.study.enqueue_trial(trial.params, user_attrs={"resume": resume})
        time.sleep(POLL_S)
        raise _Busy(f"{run} is still being trained")
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
    result = _train(optuna, job, trial, run, bool(resume), params)
    if result.stopped.startswith("SIG"):
        trial.study.enqueue_trial(trial.params, user_attrs={"resume": str(run)})
        raise _Stopped(result.exit_code)
    if result.stopped == "pruned":
        raise optuna.TrialPruned(f"pruned at step {result.step}")
    value = best_value(run / "metrics.csv", job.metric, job.direction)
    if math.isnan(value):
        _fail(trial, f"measured no finite {job.metric}")
    return value


def _train(optuna, job: _Job, trial, run: Path, resume: bool, params: dict):
    """The trial's run, quiet (its line says how it went). What fails in it alone, a NaN
    loss, a value the run refuses, memory, fails the trial; the study goes on."""
    import torch

    from .train import train

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "resuming from ...", said by the run
            return train(job.spec, config=job.config, out=run, resume=resume, plugins=job.plugins,
                         stream=io.StringIO(), on_validate=_reporter(optuna, job, trial), **job.overrides,
                         **params)  # fmt: skip
    except _WrongMetric as err:
        raise err.error from None
    except (TrainingError, SpecError, torch.OutOfMemoryError) as err:
        _fail(trial, first_line(err, 300))


def _fail(trial, why: str):
    trial.set_user_attr("error", why)
    raise TrainingError(why)


def _busy(run: Path) -> bool:
    """Whether a process still holds the run folder's training lock."""
    from .run import FolderLock

    try:
        FolderLock(run).release()
    except ConfigError:
        return True
    return False


def _suggest(trial, key: str, kind: str, values: list):
    if kind == "choice":
        return trial.suggest_categorical(key, values)
    low, high = values
    if kind in ("int", "log_int"):
        return trial.suggest_int(key, low, high, log=kind == "log_int")
    return trial.suggest_float(key, low, high, log=kind == "log_uniform")


def _surplus(trial, target: int) -> bool:
    """Whether the trials numbered below this one (ended, or on their way) already make
    the study's count: two processes asked for the last trial at once."""
    below = trial.study.get_trials(deepcopy=False)[: trial.number]
    return sum(t.state.name in ("RUNNING", "WAITING") or ended(t) for t in below) >= target


def _reporter(optuna, job: _Job, trial):
    """What the run calls after each validation: report the metric; prune or go on. A
    trial failed meanwhile by another process (this one was silent too long) ends the
    run here, saved: the trial that resumes it goes on."""

    def on_validate(step: int, values: dict[str, float]) -> bool:
        if job.metric not in values:
            names = list(values)
            raise _WrongMetric(job.tune.error(f"the run measures no '{job.metric}'", ("metric",),
                                              did_you_mean(job.metric, names) or "measured: " + ", ".join(names)))  # fmt: skip
        value = values[job.metric]
        try:
            trial.report(value if math.isfinite(value) else _worst(job.direction), step)
        except optuna.exceptions.UpdateFinishedTrialError:
            return True
        return trial.should_prune()

    return on_validate


def _worst(direction: str) -> float:
    return -math.inf if direction == "maximize" else math.inf


def _said(job: _Job, trial) -> None:
    if not aside(trial):
        job.say(format_trial(trial, job.metric, show))
