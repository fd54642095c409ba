"""The Optuna study of a `yamlnet tune`: its storage (a SQLite file by default, any RDB
URL), opened under a file lock, checked to measure what the tune measures, and the
heartbeat that fails and requeues the trial of a process that went silent."""

from __future__ import annotations

import inspect
from contextlib import closing, contextmanager
from pathlib import Path

from .data import check_kwargs
from .errors import ArgLocation, ConfigError
from .space import TuneConfig
from .trials import aside, ended, show

__all__ = ["open_study", "made_folder", "sqlite_file", "storage_folder", "shown", "HEARTBEAT_S"]

HEARTBEAT_S = 5  # a trial whose process is silent for tune.grace_period is failed, and runs again
SQLITE_WAIT_S = 60  # how long a process waits on another's lock on a SQLite study


def open_study(optuna, url: str, name: str, job, flag: str = "--storage"):
    """The study, created or loaded (under a file lock for SQLite: two processes starting
    together would both create its tables), checked to measure what this tune measures.
    Each process that opens it is counted, and a seeded sampler's seed moved on by that
    count, so that processes sharing a study (or one started again) draw anew."""
    with _create_lock(url, flag):
        storage = _storage(optuna, url, job.tune.grace_period)
        study = optuna.create_study(storage=storage, study_name=name, direction=job.direction,
                                    load_if_exists=True)  # fmt: skip
        if not _measures(study, job) and _empty(study):  # a study that got nowhere (a typo'd metric)
            optuna.delete_study(study_name=name, storage=storage)
            study = optuna.create_study(storage=storage, study_name=name, direction=job.direction)
        opened = study.user_attrs.get("processes", 0)
        study.set_user_attr("processes", opened + 1)  # atomic on SQLite, under the lock
    if not _measures(study, job):
        said, theirs = study.user_attrs.get("metric"), study.direction.name.lower()
        raise job.tune.error(f"the study '{name}' in {shown(url)} {theirs}s {said}, not {job.direction}s {job.metric}",
                             ("metric",), "name another study (--study), or keep its metric and direction")  # fmt: skip
    study.set_user_attr("metric", job.metric)
    _check_runs(study, job)
    sampler = _built(optuna.samplers, SAMPLER_CLASSES, job.tune.sampler, ("sampler",), job.tune,
                     seed=None if job.tune.seed is None else job.tune.seed + opened)  # fmt: skip
    pruner = _built(optuna.pruners, PRUNER_CLASSES, job.tune.pruner, ("pruner",), job.tune)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _check_runs(study, job) -> None:
    """Every run folder of the study's is one of its trials': a folder left by another
    study of the name (deleted, or in another storage) would be taken for a new trial's."""
    found = sorted(job.runs.glob("trial_*"))  # listed first: a folder is made after its trial names it
    claimed = {t.user_attrs.get("run") for t in study.get_trials(deepcopy=False)}
    strays = [p for p in found if str(p) not in claimed]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise ConfigError(f"{show(strays[0])}{more} holds a run that the study '{study.study_name}' "
                          "has no trial of", ArgLocation("--out", 0, 0), "", "move it away, or name another study (--study)")  # fmt: skip


def _measures(study, job) -> bool:
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


def _storage(optuna, url: str, grace: int):
    sqlite = url.startswith("sqlite:")
    beat = "heartbeat_stale_trial_callback"  # optuna >= 4.9; failed_trial_callback before
    if beat not in inspect.signature(optuna.storages.RDBStorage).parameters:
        beat = "failed_trial_callback"
    if sqlite and not _read_only(url):
        _write_ahead(sqlite_file(url))

    class Storage(optuna.storages.RDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            """A beat the database refuses (another process holds its lock past the
            wait) is skipped, not the end of the heartbeat thread: the next one is tried
            HEARTBEAT_S later, and the trial is failed as stale only after grace_period."""
            try:
                super().record_heartbeat(trial_id)
            except optuna.exceptions.StorageInternalError:
                pass

    try:
        return Storage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_S}} if sqlite else None,
                       heartbeat_interval=HEARTBEAT_S, grace_period=grace, **{beat: _requeue})  # fmt: skip
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's many errors for a URL it cannot open
        raise ConfigError(f"cannot open the storage {shown(url)}: {str(err).splitlines()[0]}",
                          hint="an RDB URL: sqlite:///path.db, postgresql://..., mysql://...") from None  # fmt: skip


def _write_ahead(path: Path) -> None:
    """Keep a SQLite study in write-ahead-log mode (it stays in the file): there, readers
    never block a writer, so a process paused while reading the study (a laptop asleep)
    leaves the others free to fail its trial and go on. In the default mode its read lock
    would hold every other process's commit until it woke. WAL needs every process on one
    machine (they share memory beside the file), which SQLite on a network share never
    served either: processes on several machines use a server RDB."""
    import sqlite3

    try:
        with closing(sqlite3.connect(path, timeout=SQLITE_WAIT_S)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # RDBStorage says what is wrong with the file, in its own words


def _read_only(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).query.get("mode") == "ro"


def shown(url: str) -> str:
    """A storage URL as printed: its password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def made_folder(folder: Path, said: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot make {folder} ({err.strerror})", ArgLocation(said, 0, 0), "",
                          "name a folder this process may write") from None  # fmt: skip
    return folder


def sqlite_file(url: str, flag: str = "--storage") -> Path | None:
    """The file of a SQLite URL, as SQLAlchemy reads the URL (percent-escapes decoded; a
    `file:` URI with `?uri=true`); None for other databases. An in-memory one is refused:
    its study would end with the process, and no other process could share it."""
    if not url.startswith("sqlite:"):
        return None
    from urllib.parse import unquote

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{url} is not a database URL", ArgLocation(flag, 0, 0), "",
                          "name a file: sqlite:///path/study.db") from None  # fmt: skip
    path = parsed.database or ""
    if parsed.query.get("uri") == "true" and path.startswith("file:"):
        path = unquote(path.removeprefix("file:").split("?", 1)[0])
    if not path or path.startswith(":memory:") or "mode=memory" in url:
        raise ConfigError(f"{url} is an in-memory database: its study would end with this process",
                          ArgLocation(flag, 0, 0), "", "name a file: sqlite:///path/study.db")  # fmt: skip
    return Path(path)


def storage_folder(url: str, flag: str = "--storage") -> Path | None:
    """A SQLite storage's file, its folder made; None for other databases."""
    path = sqlite_file(url, flag)
    if path is not None:
        made_folder(path.resolve().parent, flag)
    return path


@contextmanager
def _create_lock(url: str, flag: str):
    path = storage_folder(url, flag)
    if path is None:
        yield
        return
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
    if trial.user_attrs.get("run") and not aside(trial):
        study.enqueue_trial(trial.params, user_attrs={"resume": trial.user_attrs["run"]})
