"""`yamlnet tune`: an Optuna study over a spec's run keys and variables, each trial an
ordinary run folder trained here by `train()`.

The study folder (`--out`, default runs/NAME-tune) holds `study.db`, the default storage
(SQLite; any Optuna RDB URL may replace it), and a run folder per trial, `trial_K` (K the
trial's number): resumable, evaluable and exportable like any run. Every validation of a
trial is reported to the pruner, which may end the run there ("pruned", saved). The trial
count is the study's, not the process's: a process stops once the study holds that many
finished (complete or pruned) trials, so a study stopped and started again goes on where
it was, and processes started on one storage share the work. A process that waits only
on others' running trials waits for them, so that when one dies (its heartbeat stops) its
trial runs again from its run folder's newest checkpoint.
"""

from __future__ import annotations

import inspect
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

from ..compiler.errors import did_you_mean
from ..compiler.load import load_spec_source
from .config import RunConfig, load_run_config, split_overrides
from .data import check_kwargs
from .errors import ConfigError, TrainingError, first_line
from .space import TuneConfig, load_tune
from .trials import best_trials, best_value, format_trial, summary

__all__ = ["tune", "TuneResult", "OPTUNA_MISSING"]

OPTUNA_MISSING = 'yamlnet tune needs optuna: pip install "yamlnet[tune]"'
HEARTBEAT_S, GRACE_S = 5, 15  # a trial whose process is silent for GRACE_S is failed, and runs again
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
    space = load_tune(source, config, overrides)
    cfg = load_run_config(source.main, config, split_overrides(overrides)[0])
    metric, direction = objective_of(space, cfg)
    name = study or space.study or source.main.data.get("name") or Path(spec).stem
    folder = Path(out or Path("runs") / f"{name}-tune").resolve()
    url = storage or space.storage or f"sqlite:///{folder / 'study.db'}"
    stream = stream or sys.stdout
    say = lambda text: print(text, file=stream, flush=True)  # noqa: E731
    job = _Job(Path(spec), config, dict(overrides), tuple(plugins), space, metric, direction, folder,
               trials or space.trials, say)  # fmt: skip
    with _quiet(optuna):
        the_study = open_study(optuna, url, name, job)
        say(f"study {name} in {url}: {job.target} trials, {direction} {metric}; runs in {_show(folder)}")
        code = _run(optuna, the_study, job, None if timeout is None else time.monotonic() + timeout)
        trials_now = the_study.get_trials(deepcopy=False)
    best = next(iter(best_trials(trials_now, direction)), None)
    say(summary(trials_now, metric, direction, list(space.space), _show))
    say(f"best: trial {best.number} {metric} {best.value:.4f} in {_show(best.user_attrs['run'])}"
        if best else "best: none (no trial completed)")  # fmt: skip
    return TuneResult(name, url, folder, metric, direction, best, code or (0 if best else 1))


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(OPTUNA_MISSING) from None
    return optuna


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


# -- the study and its storage --------------------------------------------------------


def open_study(optuna, url: str, name: str, job: _Job):
    """The study, created or loaded (under a file lock for SQLite: two processes starting
    together would both create its tables), checked to measure what this tune measures."""
    with _create_lock(url):
        storage = _storage(optuna, url)
        study = optuna.create_study(storage=storage, study_name=name, direction=job.direction,
                                    load_if_exists=True)  # fmt: skip
        if not _measures(study, job) and _empty(study):  # a study that got nowhere (a typo'd metric)
            optuna.delete_study(study_name=name, storage=storage)
            study = optuna.create_study(storage=storage, study_name=name, direction=job.direction)
    if not _measures(study, job):
        said, theirs = study.user_attrs.get("metric"), study.direction.name.lower()
        raise job.tune.error(f"the study '{name}' in {url} {theirs}s {said}, not {job.direction}s {job.metric}",
                             ("metric",), "name another study (--study), or keep its metric and direction")  # fmt: skip
    study.set_user_attr("metric", job.metric)
    done = len(study.get_trials(deepcopy=False))  # a restarted seeded sampler draws anew
    sampler = _built(optuna.samplers, SAMPLER_CLASSES, job.tune.sampler, ("sampler",), job.tune,
                     seed=None if job.tune.seed is None else job.tune.seed + done)  # fmt: skip
    pruner = _built(optuna.pruners, PRUNER_CLASSES, job.tune.pruner, ("pruner",), job.tune)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _measures(study, job: _Job) -> bool:
    said = study.user_attrs.get("metric", job.metric)
    return said == job.metric and study.direction.name.lower() == job.direction


def _empty(study) -> bool:
    """No trial ended, and none is running or waiting: nothing to keep."""
    return all(t.state.name == "FAIL" and not ended(t) for t in study.get_trials(deepcopy=False))


SAMPLER_CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNER_CLASSES = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
                  "successive_halving": "SuccessiveHalvingPruner", "none": "NopPruner"}  # fmt: skip


def _built(module, classes: dict, item: dict, path: tuple, space: TuneConfig, **extra):
    cls = getattr(module, classes[item["name"]])
    kwargs = {k: v for k, v in item.items() if k != "name"}
    if "seed" in inspect.signature(cls).parameters and "seed" not in kwargs:
        kwargs.update(extra)
    try:
        check_kwargs(cls, kwargs, "")
        return cls(**kwargs)
    except ConfigError as err:
        said = err.diagnostics[0]
        raise space.error(said.message, (*path, said.path.lstrip(".")), said.hint) from None
    except (TypeError, ValueError) as err:
        raise space.error(f"{cls.__name__}: {err}", path) from None


def _storage(optuna, url: str):
    sqlite = url.startswith("sqlite:")
    beat = "heartbeat_stale_trial_callback"  # optuna >= 4.9; failed_trial_callback before
    if beat not in inspect.signature(optuna.storages.RDBStorage).parameters:
        beat = "failed_trial_callback"
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **{beat: _requeue})  # fmt: skip
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's many errors for a URL it cannot open
        raise ConfigError(f"cannot open the storage {url}: {str(err).splitlines()[0]}",
                          hint="an RDB URL: sqlite:///path.db, postgresql://..., mysql://...") from None  # fmt: skip


@contextmanager
def _create_lock(url: str):
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path is None or path.startswith(":memory:"):
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; start such processes one after another
        yield
        return
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _requeue(study, trial) -> None:
    """A trial whose process died: queued to run again, from its run folder."""
    if trial.user_attrs.get("run") and not trial.user_attrs.get("surplus"):
        study.enqueue_trial(trial.params, user_attrs={"resume": trial.user_attrs["run"]})


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


# -- the loop: one trial at a time until the study has its trials --------------------


def _run(optuna, study, job: _Job, deadline: float | None) -> int:
    from optuna.trial import TrialState

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
        try:
            study.optimize(lambda trial: _objective(optuna, job, trial), n_trials=1, timeout=left,
                           catch=(TrainingError, _Surplus), callbacks=[lambda s, t: _said(job, t)],
                           gc_after_trial=False)  # fmt: skip
        except _Stopped as err:
            return err.exit_code
    return 0


def _objective(optuna, job: _Job, trial) -> float:
    params = {key: _suggest(trial, key, kind, values) for key, (kind, values) in job.tune.space.items()}
    if _surplus(trial, job.target):
        trial.set_user_attr("surplus", True)
        raise _Surplus("the study had its trials")
    resume = trial.user_attrs.get("resume")
    run = Path(resume) if resume else job.folder / f"trial_{trial.number}"
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
    from .train import train

    try:
        result = train(job.spec, config=job.config, out=run, resume=bool(resume), plugins=job.plugins,
                       stream=io.StringIO(), on_validate=_reporter(job, trial), **job.overrides, **params)  # fmt: skip
    except TrainingError as err:  # the trial fails (its line says why); the study goes on
        trial.set_user_attr("error", first_line(err, 300))
        raise
    if result.stopped.startswith("SIG"):
        trial.study.enqueue_trial(trial.params, user_attrs={"resume": str(run)})
        raise _Stopped(result.exit_code)
    if result.stopped == "pruned":
        raise optuna.TrialPruned(f"pruned at step {result.step}")
    return best_value(run / "metrics.csv", job.metric, job.direction)


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


def ended(trial) -> bool:
    """Whether a trial counts toward the study's trials: complete, pruned, or failed by its
    own run (a NaN loss: running it again would fail again). Not one whose process died
    or was stopped (it runs again), nor a surplus one."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED") or state == "FAIL" and "error" in trial.user_attrs


def _reporter(job: _Job, trial):
    """What the run calls after each validation: report the metric; prune or go on."""

    def on_validate(step: int, values: dict[str, float]) -> bool:
        if job.metric not in values:
            names = list(values)
            raise job.tune.error(f"the run measures no '{job.metric}'", ("metric",),
                                 did_you_mean(job.metric, names) or "measured: " + ", ".join(names))  # fmt: skip
        value = values[job.metric]
        trial.report(value if math.isfinite(value) else _worst(job.direction), step)
        return trial.should_prune()

    return on_validate


def _worst(direction: str) -> float:
    return -math.inf if direction == "maximize" else math.inf


def _said(job: _Job, trial) -> None:
    if not trial.user_attrs.get("surplus"):
        job.say(format_trial(trial, job.metric, _show))




def _show(path) -> str:
    """A path as the user would write it: relative to here when it is below here."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
