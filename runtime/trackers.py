"""Where a run's metrics go besides metrics.csv: TensorBoard event files (tensorboardX)
and MLflow (a tracking store with a database behind it), chosen in `train.loggers`.

A tracker is told three things: `start(run)` once the run folder is ready, `write(step,
values)` per logged row, and `close(status)` at the end. Trackers live on rank 0 only
(inside `RunLog`). A tracker that fails, at any of the three, says so in one warning
and is switched off: logging is never a reason to lose a training run.

metrics.csv itself is not a tracker: the run reads it back (resume cuts it, the end
summary, `plot` and `tune` read it), so it is always written.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import first_line, import_extra

if TYPE_CHECKING:
    from .run import Run

__all__ = ["LOGGERS", "open_trackers", "check_loggers", "TensorBoardTracker", "MLflowTracker",
           "MLFLOW_FILE", "flat_params", "guarded"]  # fmt: skip

LOGGERS = ("csv", "tensorboard", "mlflow")
MLFLOW_FILE = "mlflow.json"  # in the run folder: the MLflow run a resumed run continues
_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value
_BATCH = 100  # parameters per log_batch call (the store's limit)
# MLflow retries an unreachable server 7 times with a growing wait: minutes before it gives
# up, the training waiting meanwhile. Ours: about 3 s, then one warning and no tracker.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


def check_loggers(cfg) -> None:
    """Refuse, before any folder exists, a logger whose library is not installed."""
    names = [item["name"] for item in cfg.train["loggers"]]
    for i, item in enumerate(cfg.train["loggers"]):
        if item["name"] in names[:i]:
            raise cfg.error(f"'{item['name']}' is listed twice", ("train", "loggers", i))
        if item["name"] == "mlflow":
            try:
                import_extra("mlflow", "mlflow", "the mlflow logger", package="MLflow")
            except ImportError as err:
                raise cfg.error(str(err), ("train", "loggers", i)) from None


def open_trackers(run: Run) -> list:
    """The run's trackers from `train.loggers`, started (one that cannot start warned of)."""
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    out = []
    for item in run.cfg.train["loggers"]:
        kind = kinds.get(item["name"])
        if kind is None:
            continue  # csv: always written by RunLog
        tracker = kind(item)
        if guarded(tracker, "start", run):
            out.append(tracker)
    return out


def guarded(tracker, method: str, *args) -> bool:
    """Call tracker.method(*args); on failure warn once and say False."""
    try:
        getattr(tracker, method)(*args)
        return True
    except Exception as err:  # noqa: BLE001 - any failure of a logger: warn, train on
        text = first_line(err)
        text = text if len(text) <= 300 else text[:297] + "..."
        print(f"warning: {tracker.name} logger: {text}; training goes on without it", flush=True)
        tracker.failed = True
        return False


class TensorBoardTracker:
    """Scalars into `RUN/tensorboard/`, through tensorboardX's SummaryWriter. On resume,
    `purge_step` tells TensorBoard to drop what the earlier process wrote past the
    checkpoint, so the resumed steps are not shown twice."""

    name = "tensorboard"

    def __init__(self, item: dict):
        self.writer, self.failed = None, False

    def start(self, run: Run) -> None:
        from tensorboardX import SummaryWriter

        purge = run.pos.step + 1 if run.pos.step else None
        self.writer = SummaryWriter(os.fspath(run.out / "tensorboard"), purge_step=purge,
                                    flush_secs=30)  # fmt: skip

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run per yamlnet run: the resolved spec and run configuration as params,
    every logged row as metrics at its step, the spec hash and version as tags, and
    spec.lock.yaml and the best weights as artifacts at the end. The store is
    `tracking_uri`, else MLFLOW_TRACKING_URI, else SQLite in the folder that holds the run
    folder (`runs/NAME/mlflow.db`). A resumed run continues its MLflow run (its id is in
    RUN/mlflow.json) and skips the steps MLflow already holds."""

    name = "mlflow"

    def __init__(self, item: dict):
        self.item, self.failed = item, False
        self.client = self.run_id = None
        self.logged: dict[str, int] = {}  # metric -> the newest step the store holds

    def start(self, run: Run) -> None:
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)  # before MLflow reads them; the user's win
        from mlflow.tracking import MlflowClient

        uri = self.item.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or default_store(run.out)
        self.client, self.out = MlflowClient(tracking_uri=uri), run.out
        self.run_id = self._continued(run, uri) or self._created(run, uri)
        self._log_params(run)

    def _created(self, run: Run, uri: str) -> str:
        name = self.item.get("experiment") or run.compiled.spec.name
        found = self.client.get_experiment_by_name(name)
        if found is None:
            where = _artifact_root(uri)
            experiment = self.client.create_experiment(name, artifact_location=where)
        else:
            experiment = found.experiment_id
        tags = {"yamlnet.spec_hash": run.compiled.hash, "yamlnet.version": _version(),
                "yamlnet.run_dir": os.fspath(run.out.resolve()), **(self.item.get("tags") or {})}  # fmt: skip
        created = self.client.create_run(experiment, tags=tags,
                                         run_name=self.item.get("run_name") or run.out.name)  # fmt: skip
        record = {"tracking_uri": uri, "run_id": created.info.run_id}
        (run.out / MLFLOW_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
        return created.info.run_id

    def _continued(self, run: Run, uri: str) -> str | None:
        """The MLflow run of an earlier process of this run (resuming), with the newest
        step it holds per metric; None for a fresh run."""
        from mlflow.exceptions import MlflowException

        path = run.out / MLFLOW_FILE
        if not run.pos.step or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("tracking_uri") != uri:
                return None  # another store now: a new MLflow run there
            found = self.client.get_run(str(record["run_id"]))
        except (ValueError, KeyError, AttributeError, MlflowException):
            return None  # unreadable, or the run was deleted: a new MLflow run
        if any(step > run.pos.step for step, _ in run.ckpts.steps()):
            # resumed from an older checkpoint than the newest (--resume-from): a branch,
            # whose steps would differ from those logged: a new MLflow run, tagged with its origin
            self.item = {**self.item, "tags": {**(self.item.get("tags") or {}),
                                               "yamlnet.resumed_from": found.info.run_id}}  # fmt: skip
            print(f"warning: mlflow logger: resumed from step {run.pos.step}, before the run's newest "
                  "checkpoint: a new MLflow run", flush=True)  # fmt: skip
            return None
        for key in found.data.metrics:  # a crash's resume: these steps come again, equal
            history = self.client.get_metric_history(found.info.run_id, key)
            self.logged[key] = max((m.step for m in history), default=-1)
        self.client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id

    def _log_params(self, run: Run) -> None:
        from mlflow.entities import Param

        params = flat_params(run)
        held = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in held]
        changed = sorted(k for k, v in params.items() if k in held and held[k] != v)
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _BATCH])
        if changed:
            print(f"warning: mlflow logger: {', '.join(changed[:5])} changed since the MLflow run "
                  "began; its params keep the first values", flush=True)  # fmt: skip

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, float(v), now, step) for k, v in values.items() if step > self.logged.get(k, -1)]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)

    def close(self, status: str) -> None:
        for name in ("spec.lock.yaml", "best.safetensors", "last.safetensors"):
            path = self.out / name
            if path.is_file():
                self.client.log_artifact(self.run_id, os.fspath(path))
                if name == "best.safetensors":
                    break  # the best weights, else the last: one copy of the weights
        self.client.set_terminated(self.run_id, status=status)


def default_store(out: Path) -> str:
    """SQLite beside the run folders: runs/NAME/version_K -> runs/NAME/mlflow.db."""
    return "sqlite:///" + (out.resolve().parent / "mlflow.db").as_posix()


def _artifact_root(uri: str) -> str | None:
    """A SQLite store keeps artifacts beside its database (MLflow's default, ./mlruns
    under the current directory, would scatter them)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def flat_params(run: Run) -> dict[str, str]:
    """The run as MLflow params: spec name, variables, data.* and train.*, nested keys
    dotted, lists as JSON, values cut at MLflow's limit."""
    out = {"spec": run.compiled.spec.name}
    out.update({f"vars.{k}": v for k, v in sorted(run.variables.items())})
    _flatten(out, "data", run.cfg.data)
    _flatten(out, "train", run.cfg.train)
    return {k: _text(v)[:_PARAM_CHARS] for k, v in out.items()}


def _flatten(out: dict, prefix: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(out, f"{prefix}.{k}", v)
    else:
        out[prefix] = value


def _text(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "null" if value is None else str(value)


def _version() -> str:
    from . import package_version

    return package_version()
