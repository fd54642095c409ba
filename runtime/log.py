"""What a run tells the user and writes down: a progress bar on a terminal (plain lines
when output is not a terminal), `metrics.csv`, and the trackers of `train.loggers`
(TensorBoard, MLflow: runtime/trackers.py).

Only rank 0 logs; other ranks get `NullLog`. On resume, rows of metrics.csv past the
checkpoint's step are dropped, because the resumed run logs those steps again.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import atomic_write
from .trackers import guarded

if TYPE_CHECKING:
    from .run import Run

__all__ = ["RunLog", "NullLog", "format_duration", "log_columns", "banner", "end_summary",
           "last_metrics"]  # fmt: skip


def format_duration(seconds: float) -> str:
    """83.2 -> '1:23'; 3725 -> '1:02:05'."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


class RunLog:
    """Console, metrics.csv and the trackers (started ones) for one run folder."""

    def __init__(self, out: Path, columns: list[str], total_steps: int, *, resume_step: int = 0,
                 stream=None, bar=None, trackers: list | None = None):  # fmt: skip
        self.out, self.columns, self.total = out, ["step", "epoch", *columns, "time"], total_steps
        self.stream = stream or sys.stdout
        self.bar = sys.stderr.isatty() if bar is None else bar  # redraw one line, or print lines
        self.csv_path = out / "metrics.csv"
        self._keep_rows_until(resume_step)
        self.trackers = list(trackers or [])
        self.t0, self.step0, self._drawn = time.perf_counter(), resume_step, 0.0

    def _keep_rows_until(self, step: int) -> None:
        rows = []
        if step and self.csv_path.exists():
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.csv_path, buf.getvalue().encode())

    def write(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One row of metrics.csv, and the same values to every tracker."""
        row = {"step": step, "epoch": epoch, "time": f"{time.time():.3f}",
               **{k: f"{v:.9g}" for k, v in values.items()}}  # fmt: skip  float32-exact
        with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore", lineterminator="\n").writerow(row)
        self.trackers = [t for t in self.trackers if guarded(t, "write", step, values)]

    def progress(self, step: int, epoch: int, epochs: int, loss: float, line: bool = False) -> None:
        """Redraw the bar (at most 10 times a second); off a terminal, print a line when
        `line` is set (the logging cadence)."""
        now = time.perf_counter()
        if self.bar and now - self._drawn < 0.1 and step != self.total:
            return
        if not self.bar and not line:
            return
        self._drawn = now
        rate = (step - self.step0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        text = (f"epoch {epoch + 1}/{epochs} step {step}/{self.total} loss {loss:.4f} "
                f"{rate:.1f} steps/s ETA {format_duration(eta)}")  # fmt: skip
        if self.bar:
            width = 24
            done = int(width * step / max(self.total, 1))
            sys.stderr.write(f"\r[{'=' * done}{' ' * (width - done)}] {text}\x1b[K")
            sys.stderr.flush()
        else:
            self.say(text)

    def say(self, text: str) -> None:
        """A line of its own (clears the bar first)."""
        if self.bar:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        print(text, file=self.stream, flush=True)

    def close(self, status: str = "FINISHED") -> None:
        """End the bar and the trackers; `status` is MLflow's: FINISHED, FAILED or KILLED."""
        if self.bar:
            sys.stderr.write("\r\x1b[K")
        for tracker in self.trackers:
            guarded(tracker, "close", status)
        self.trackers = []


class NullLog:
    """What ranks other than 0 log: nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, *args, **kwargs) -> None:
        pass

    def progress(self, *args, **kwargs) -> None:
        pass

    def say(self, text: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


# -- what a run says: its columns, banner and closing line ---------------------------


def last_metrics(run: Run) -> dict[str, float]:
    """The newest value of each column of metrics.csv."""
    out: dict[str, float] = {}
    path = run.out / "metrics.csv"
    if run.env.is_main and path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out.update({k: float(v) for k, v in row.items() if v and k not in ("step", "epoch", "time")})
    return out


def log_columns(run: Run) -> list[str]:
    cols = ["train/loss", "lr", *(f"train/{label}" for label in run.task.loss_labels())]
    if run.loaders.val is not None:
        cols += [f"val/{m}" for m in run.task.modes()]
    return cols


def banner(run: Run) -> str:
    n_train, n_val = run.loaders.sizes
    t, spec = run.cfg.train, run.compiled.spec
    params = sum(p.numel() for p in run.model.parameters())
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    counts = f"{params:,} parameters" + (f", {trainable:,} trainable" if trainable != params else "")
    batch, world, accum = run.cfg.data["batch_size"], run.env.world_size, t["grad_accum"]
    per_step = batch * world * accum
    sizes = f"{batch}" + (f" x {world} processes" if world > 1 else "") + (f" x {accum} accumulated" if accum > 1 else "")
    return (f"run {run.out}: {spec.name} ({counts}, hash {run.compiled.hash[:12]})\n"
            f"device {run.env.device}, precision {t['precision']}, {world} process(es); "
            f"data {run.cfg.data['dataset']}: {n_train} train / {n_val} val, batch "
            f"{sizes}{f' = {per_step} per step' if per_step != batch else ''}; {run.total_steps} steps")  # fmt: skip


def end_summary(run: Run, ending: str, metrics: dict[str, float], seconds: float) -> str:
    took = f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
    best = (f"; best {run.monitor} {run.pos.best:.4f} at step {run.pos.best_step}"
            if run.pos.best is not None else "")  # fmt: skip
    return f"{ending} at step {run.pos.step} in {took}: {shown}{best}; saved in {run.out}"
