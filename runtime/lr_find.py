"""The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017): train from the spec's initial weights while the LR grows exponentially
from `min_lr` to `max_lr`, one optimizer step at a time; the LR where the smoothed loss
falls fastest is the suggestion.

Data, model, optimizer, loss, precision, accumulation and clipping are built exactly as
`train` builds them (`prepare`), but no run folder is made, and the LR schedule is not
used: the test sets the LR itself. Afterwards the model's, optimizer's and grad scaler's
state and the RNGs are as they were. The suggestion is a starting point, not a promise:
it is read off one noisy curve, and a schedule with warmup often tolerates more.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import capture_rng, restore_rng
from .data import batches
from .distributed import shutdown
from .errors import ArgLocation, ConfigError, TrainingError, first_line
from .process import torch_settings_restored
from .run import Run
from .step import apply_gradients, seed_epoch
from .tasks import as_tuple, to_device
from .train import prepare

__all__ = ["lr_find", "range_test", "suggest", "LRFindResult", "draw_lr_find", "lr_text"]

SMOOTHING = 0.9  # weight of the past in the loss's moving average (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best
MAX_STEPS = 100_000


@dataclass(frozen=True)
class LRFindResult:
    """What the range test saw: the LR of each step taken, the loss at that step (raw and
    smoothed), the suggested LR (None when the loss never fell), and why it stopped."""

    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggestion: float | None
    min_lr: float
    max_lr: float
    steps: int  # steps asked for; len(lrs) were taken
    stopped: str  # "end of range" | "diverged" | "non-finite loss"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def best_lr(self) -> float | None:
        """The LR at the lowest smoothed loss (too high to train at: the loss is about to rise)."""
        return self.lrs[int(np.argmin(self.losses))] if self.losses else None


def lr_find(spec: str | os.PathLike, *, config: str | os.PathLike | None = None, min_lr: float = 1e-7,
            max_lr: float = 1.0, steps: int = 100, plugins: tuple[str, ...] = (),
            **overrides: Any) -> LRFindResult:  # fmt: skip
    """The range test on the spec's data, model and optimizer (as `train` builds them,
    with the same `config` and `--set` overrides); writes nothing to disk.

        >>> result = lr_find("specs/digits_cnn.yaml")  # doctest: +SKIP
        >>> result.suggestion                           # doctest: +SKIP
        0.0032
    """
    check_range(min_lr, max_lr, steps)
    with torch_settings_restored():
        run = prepare(spec, config=config, plugins=plugins, overrides=overrides, folder=False)
        try:
            return range_test(run, min_lr=min_lr, max_lr=max_lr, steps=steps)
        finally:
            shutdown(run.env)


def check_range(min_lr: float, max_lr: float, steps: int) -> None:
    if not (math.isfinite(min_lr) and min_lr > 0):
        raise ConfigError(f"got {min_lr}; expected a learning rate > 0", ArgLocation("--min-lr", 0, 0))
    if not (math.isfinite(max_lr) and max_lr > min_lr):
        raise ConfigError(f"got {max_lr}; expected a learning rate above --min-lr {min_lr:g}",
                          ArgLocation("--max-lr", 0, 0))  # fmt: skip
    if not 2 <= steps <= MAX_STEPS:
        raise ConfigError(f"got {steps}; expected 2 to {MAX_STEPS:,} steps", ArgLocation("--steps", 0, 0))


def range_test(run: Run, *, min_lr: float = 1e-7, max_lr: float = 1.0, steps: int = 100) -> LRFindResult:
    """The range test on a prepared run (`prepare(..., folder=False)`); its model,
    optimizer, scaler and RNG states are put back afterwards, whatever happens."""
    check_range(min_lr, max_lr, steps)
    saved = _snapshot(run)
    try:
        trace = _sweep(run, np.geomspace(min_lr, max_lr, steps).tolist())
    finally:
        _restore(run, saved)
    return LRFindResult(trace.lrs, trace.smoothed, trace.raw, suggest(trace.lrs, trace.smoothed),
                        min_lr, max_lr, steps, trace.stopped)  # fmt: skip


def _snapshot(run: Run) -> dict[str, Any]:
    return {"model": copy.deepcopy(run.model.state_dict()), "optimizer": copy.deepcopy(run.optimizer.state_dict()),
            "scaler": run.scaler.state_dict(), "rng": capture_rng(), "training": run.model.training}  # fmt: skip


def _restore(run: Run, saved: dict[str, Any]) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler.load_state_dict(saved["scaler"])
    restore_rng(saved["rng"])
    seed_epoch(run, 0)
    run.model.train(saved["training"])


@dataclass
class _Trace:
    """The sweep so far: each step's LR and loss, the moving average, the best of it."""

    lrs: list[float]
    raw: list[float]
    smoothed: list[float]
    average: float = 0.0
    best: float = math.inf
    stopped: str = "end of range"

    def add(self, lr: float, loss: float) -> bool:
        """Record a step; whether the smoothed loss has diverged from its best."""
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
        value = self.average / (1 - SMOOTHING ** (len(self.raw) + 1))
        self.lrs.append(lr)
        self.raw.append(loss)
        self.smoothed.append(value)
        self.best = min(self.best, value)
        return value > self.best + (DIVERGED - 1) * abs(self.best)  # 4x the best, for a positive loss


def _sweep(run: Run, schedule: list[float]) -> _Trace:
    trace = _Trace([], [], [])
    feed = _endless(run)
    run.model.train()
    for k, lr in enumerate(schedule):
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss = _step(run, feed, k, lr)
        if not math.isfinite(loss):
            trace.stopped = "non-finite loss"
            break
        if trace.add(lr, loss):
            trace.stopped = "diverged"
            break
    return trace


def _endless(run: Run):
    """Training batches epoch after epoch, in the order `train` would draw them."""
    epoch = 0
    while True:
        seed_epoch(run, epoch)
        empty = True
        for batch in batches(run.loaders.train, lambda e=epoch: f"lr-find (epoch {e + 1})"):
            empty = False
            yield batch
        if empty:
            raise ConfigError("the training split gives no batches", path="data")
        epoch += 1


def _step(run: Run, feed, k: int, lr: float) -> float:
    """One optimizer step over grad_accum micro-batches at the LR set; their mean loss
    (non-finite: nothing stepped)."""
    try:
        return _accumulate_and_step(run, feed)
    except (RuntimeError, IndexError, ValueError) as err:
        failure = TrainingError(f"lr-find step {k + 1} (lr {lr:.3g}): {first_line(err)}")
        failure.exit_code = 2  # what the data or the configuration gave PyTorch
        raise failure from err


def _accumulate_and_step(run: Run, feed) -> float:
    """grad_accum micro-batches, forward and backward, then the step. Not `micro_step`:
    that one keeps a run's position and stops a run on a non-finite loss, where the range
    test only notes it and stops the sweep."""
    accum, total = run.cfg.train["grad_accum"], 0.0
    for _ in range(accum):
        batch = to_device(run.env.device, next(feed), run.task.fields)
        with run.autocast():
            loss, _ = run.task.loss(as_tuple(run.forward(*run.task.inputs(batch))), batch)
        value = loss.item()
        if not math.isfinite(value):
            run.optimizer.zero_grad(set_to_none=True)
            return value
        run.scaler.scale(loss / accum).backward()
        total += value
    apply_gradients(run)  # as train steps, less the schedule and the position
    return total / accum


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest per decade of LR, looked for between
    the first tenth of the sweep (the average still settling) and the lowest loss (past
    it the loss rises); None when the loss never fell.

        >>> suggest([1e-4, 1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.95, 1.5, 0.5, 0.4])
        0.01
    """
    if len(losses) < 3:
        return None
    end = int(np.argmin(losses))
    start = min(len(losses) // 10, max(end - 2, 0))
    if end - start < 2:
        return None
    slope = np.gradient(np.asarray(losses[start : end + 1]), np.log10(lrs[start : end + 1]))
    k = int(np.argmin(slope))
    return float(lrs[start + k]) if slope[k] < 0 else None


def short_lr(lr: float) -> str:
    """0.0031623 -> '3.2e-3': what a --set takes, short."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def lr_text(result: LRFindResult, spec: str = "SPEC") -> str:
    """The report `yamlnet lr-find` prints."""
    lines = [f"tried {len(result.lrs)} of {result.steps} steps, lr {short_lr(result.min_lr)} to "
             f"{short_lr(result.max_lr)}; stopped: {result.stopped}"
             + (f" at lr {short_lr(result.lrs[-1])}" if result.stopped != "end of range" and result.lrs else "")]  # fmt: skip
    if result.best_lr is not None:
        lines.append(f"lowest smoothed loss {min(result.losses):.4g} at lr {short_lr(result.best_lr)}")
    if result.suggestion is None:
        lines.append("no suggestion: the loss did not fall over this range (widen it with --min-lr/--max-lr, "
                     "or take more --steps)")  # fmt: skip
        return "\n".join(lines)
    lines.append(f"suggested lr: {short_lr(result.suggestion)} (steepest descent of the smoothed loss)")
    lines.append(f"try: yamlnet train {spec} --set train.optimizer.lr={short_lr(result.suggestion)}")
    return "\n".join(lines)


def draw_lr_find(result: LRFindResult, title: str = "learning-rate range test"):
    """A Figure: loss against LR (log scale), raw and smoothed, the suggestion marked."""
    from .plot import literal, new_figure

    fig = new_figure(6.5, 4.0)
    ax = fig.subplots()
    ax.plot(result.lrs, result.raw_losses, color="C0", alpha=0.3, label="loss")
    ax.plot(result.lrs, result.losses, color="C0", label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested {short_lr(result.suggestion)}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(literal(title))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def save_plot(result: LRFindResult, out: str | os.PathLike, title: str = "learning-rate range test") -> Path:
    from .plot import save_figure

    return save_figure(draw_lr_find(result, title), out)
