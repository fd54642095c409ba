"""What a `yamlnet tune` study says: a line per finished trial, the table of its best
trials, and the value a trial is judged by (read back from its run's metrics.csv)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["best_value", "best_trials", "format_trial", "summary", "ended", "aside", "show"]

SHOWN = 5  # best trials in the closing table


def best_value(metrics_csv: Path, metric: str, direction: str) -> float:
    """The best of `metric` over the run's validations: what the trial is worth (NaN
    when it never measured a finite one)."""
    values = []
    with open(metrics_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get(metric):
                values.append(float(row[metric]))
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if direction == "maximize" else min(finite)


def best_trials(trials: list, direction: str) -> list:
    """The complete trials, best first (ties: the earlier trial first)."""
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    sign = -1 if direction == "maximize" else 1
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(trial) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in trial.params.items())


def format_trial(trial, metric: str, show: Callable) -> str:
    """'trial 3 complete: val/accuracy 0.9833 (train.optimizer.lr=0.0041, vars.width=64) runs/x-tune/trial_3'"""
    state = trial.state.name.lower()
    run = show(trial.user_attrs["run"]) if "run" in trial.user_attrs else "-"
    run += " (resumed)" if "resume" in trial.user_attrs else ""
    if state == "fail":
        why = trial.user_attrs.get("error", "stopped")
        return f"trial {trial.number} failed: {why} ({_params(trial)}) {run}"
    where = f" at step {trial.last_step}" if state == "pruned" and trial.last_step is not None else ""
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    return f"trial {trial.number} {state}{where}: {metric} {value} ({_params(trial)}) {run}"


def summary(trials: list, metric: str, direction: str, keys: list[str], show: Callable) -> str:
    """How many trials ended how, and the best ones as a table."""
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "RUNNING")}
    failed = sum(t.state.name == "FAIL" and "error" in t.user_attrs for t in trials)
    resumed = {t.user_attrs["resume"] for t in trials if "resume" in t.user_attrs and ended(t)}
    again = sum(t.state.name == "FAIL" and "error" not in t.user_attrs and not aside(t)
                and t.user_attrs.get("run") not in resumed for t in trials)  # fmt: skip  (stopped; not once resumed to an end)
    head = (f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {failed} failed"
            f"{f', {again} stopped' if again else ''}, {counts['RUNNING']} running")  # fmt: skip
    best = best_trials(trials, direction)[:SHOWN]
    if not best:
        return head
    header = ["trial", metric, *keys, "run"]
    rows = [[str(t.number), f"{t.value:.4f}", *(_value(t.params.get(k, "-")) for k in keys),
             show(t.user_attrs.get("run", "-"))] for t in best]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join([*(c.rjust(w) for c, w in zip(r[:-1], widths, strict=False)), r[-1]])
             for r in [header, *rows]]  # fmt: skip  (the run folder, last, is not padded)
    return "\n".join([f"{head}; the best {len(best)} by {metric} ({direction}):", *lines])


def ended(trial) -> bool:
    """Whether a trial counts toward the study's trials: complete, pruned, or failed by its
    own run (a NaN loss, a value the run refuses, no finite metric, out of memory: running
    it again would fail again). Not one whose process died or was stopped (it runs
    again), nor a surplus one."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED") or state == "FAIL" and "error" in trial.user_attrs


def aside(trial) -> bool:
    """A trial that ran nothing: surplus, or queued again while its run was busy."""
    return bool(trial.user_attrs.get("surplus") or trial.user_attrs.get("busy"))


def show(path) -> str:
    """A path as the user would write it: relative to here when it is below here."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
