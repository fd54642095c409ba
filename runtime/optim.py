"""Optimizer, learning-rate schedule and loss, each by name from PyTorch itself:
`torch.optim.NAME`, `torch.optim.lr_scheduler.NAME` (plus linear warmup) and
`torch.nn.NAME` losses. Arguments are checked against the class's signature first, so
a typo gets a located "did you mean" instead of a TypeError from deep inside.
"""

from __future__ import annotations

import torch

from ..compiler.errors import did_you_mean
from .data import check_kwargs
from .errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "check_schedule", "build_loss", "Schedule"]


def _classes(module, base) -> dict[str, type]:
    return {n: c for n, c in vars(module).items()
            if isinstance(c, type) and issubclass(c, base) and c is not base and not n.startswith("_")}  # fmt: skip


def _lookup(name: str, known: dict, what: str, path: str) -> type:
    if name not in known:
        raise ConfigError(f"unknown {what} '{name}'", path=f"{path}.name",
                          hint=did_you_mean(name, known) or "choose from: " + ", ".join(sorted(known)))  # fmt: skip
    return known[name]


def _construct(cls, args: tuple, kwargs: dict, path: str):
    check_kwargs(cls, kwargs, path)
    try:
        return cls(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - a constructor's complaint about its arguments
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{cls.__name__}: {said}", path=path) from None


def _kwargs(item: dict, drop: tuple = ()) -> dict:
    return {k: v for k, v in item.items() if k != "name" and k not in drop}


_UNSUPPORTED_OPTIMIZERS = {
    "LBFGS": "needs a closure that re-evaluates the loss; the loop takes one step per batch",
    "SparseAdam": "needs sparse gradients (Embedding(sparse=True) only)",
}


def build_optimizer(item: dict, params) -> torch.optim.Optimizer:
    """{name: AdamW, lr: 0.001, ...} over the trainable parameters."""
    known = {n: c for n, c in _classes(torch.optim, torch.optim.Optimizer).items()
             if n not in _UNSUPPORTED_OPTIMIZERS}  # fmt: skip
    if item["name"] in _UNSUPPORTED_OPTIMIZERS:
        raise ConfigError(f"optimizer {item['name']} {_UNSUPPORTED_OPTIMIZERS[item['name']]}",
                          path="train.optimizer.name")  # fmt: skip
    cls = _lookup(item["name"], known, "optimizer", "train.optimizer")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (all frozen?)", path="train.optimizer")
    return _construct(cls, (params,), _kwargs(item), "train.optimizer")


DRY_STEPS = 20_000  # a schedule is stepped this far ahead at preflight (about 0.2 s)


def check_optimizer(item: dict, device: torch.device) -> None:
    """Two steps of a throwaway copy of the optimizer on one parameter with a gradient,
    on the run's device, before training starts: arguments the constructor takes but a
    step refuses (`betas: [0.9]`, `differentiable: true`, `capturable: true` off CUDA,
    `t0: abc`) are one located line now, not a crash at step 1."""
    dummy = torch.zeros(2, device=device, requires_grad=True)
    optimizer = build_optimizer(item, [dummy])
    for _ in range(2):
        dummy.grad = torch.ones_like(dummy)
        try:
            optimizer.step()
        except Exception as err:  # noqa: BLE001 - whatever the step says, it says it of these arguments
            said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{item['name']} fails at its first step: {said}", path="train.optimizer") from None


def check_schedule(item: dict | None, optimizer_item: dict, *, steps_per_epoch: int, total_steps: int,
                   mode: str = "min") -> None:  # fmt: skip
    """Step a throwaway copy of the schedule (same optimizer, on one dummy parameter)
    over the run's planned length, up to DRY_STEPS, before training starts: a schedule
    that fails part-way (StepLR with step_size 0 at its first step, OneCycleLR whose
    total_steps ends before the run) or drives the learning rate to a negative or
    non-finite value is one located line now, not a crash at that step."""
    if item is None or item["name"] == "ReduceLROnPlateau":  # stepped by a metric: nothing to plan
        return
    dummy = torch.zeros(1, requires_grad=True)
    optimizer = build_optimizer(optimizer_item, [dummy])
    schedule = build_scheduler(item, optimizer, steps_per_epoch=steps_per_epoch,
                               total_steps=total_steps, mode=mode)  # fmt: skip
    interval = schedule.interval
    planned = total_steps if interval == "step" else -(-total_steps // steps_per_epoch)
    unit = "step" if interval == "step" else "epoch"
    if item["name"] == "OneCycleLR" and planned > schedule_length(schedule.scheduler, item):
        raise ConfigError(f"OneCycleLR ends after {schedule_length(schedule.scheduler, item)} {unit}s; "
                          f"the run has {planned}", path="train.scheduler.total_steps",
                          hint="leave total_steps out: it is then the run's length")  # fmt: skip
    for k in range(1, min(planned, DRY_STEPS) + 1):
        try:
            optimizer.step()
            schedule.scheduler.step()
        except (ArithmeticError, ValueError, RuntimeError, TypeError, IndexError) as err:
            raise ConfigError(f"{item['name']} fails at {unit} {k} of the run: {str(err).splitlines()[0]}",
                              path="train.scheduler") from None  # fmt: skip
        lrs = [g["lr"] for g in optimizer.param_groups]
        if not all(isinstance(lr, (int, float)) and 0 <= lr < float("inf") for lr in lrs):
            raise ConfigError(f"{item['name']} sets the learning rate to {lrs[0]} at {unit} {k} of the run",
                              path="train.scheduler")  # fmt: skip


def schedule_length(scheduler, item: dict) -> int:
    """OneCycleLR's own length in steps (without a warmup before it)."""
    inner = scheduler._schedulers[-1] if isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR) else scheduler
    return int(inner.total_steps) + int(item.get("warmup_steps", 0))


class Schedule:
    """The LR scheduler and when to step it: 'step' (every optimizer step), 'epoch', or
    'val' (ReduceLROnPlateau, stepped with the monitored metric)."""

    def __init__(self, scheduler, interval: str):
        self.scheduler, self.interval = scheduler, interval

    def step(self, when: str, metric: float | None = None) -> None:
        if self.scheduler is None or when != self.interval:
            return
        if self.interval == "val":
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


_FILL_TOTAL = {"CosineAnnealingLR": "T_max", "OneCycleLR": "total_steps", "PolynomialLR": "total_iters",
               "LinearLR": "total_iters"}  # fmt: skip


def build_scheduler(item: dict | None, optimizer, *, steps_per_epoch: int, total_steps: int,
                    mode: str = "min") -> Schedule:  # fmt: skip
    """{name: CosineAnnealingLR, warmup_steps: 100, interval: step, ...}.

    Filled in when omitted: the schedule's length (T_max, total_steps, total_iters) as
    the run's length in intervals, after warmup; ReduceLROnPlateau's `mode` as the
    monitored metric's (`mode`), or it would cut the LR while accuracy improves."""
    if item is None:
        return Schedule(None, "step")
    path = "train.scheduler"
    known = _classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    known["ReduceLROnPlateau"] = torch.optim.lr_scheduler.ReduceLROnPlateau
    cls = _lookup(item["name"], known, "scheduler", path)
    plateau = item["name"] == "ReduceLROnPlateau"
    interval = item.get("interval", "val" if plateau else "step")
    warmup = item.get("warmup_steps", 0)
    _check_schedule(interval, warmup, plateau, path)
    kwargs = _kwargs(item, drop=("interval", "warmup_steps"))
    length = total_steps if interval == "step" else -(-total_steps // steps_per_epoch)
    if item["name"] in _FILL_TOTAL:
        kwargs.setdefault(_FILL_TOTAL[item["name"]], max(1, length - warmup))
    if plateau:
        kwargs.setdefault("mode", mode)
    if item["name"] == "OneCycleLR":
        kwargs.setdefault("max_lr", optimizer.param_groups[0]["lr"])
    main = _construct(cls, (optimizer,), kwargs, path)
    if warmup:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1),
                                                 total_iters=warmup)  # fmt: skip
        main = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return Schedule(main, interval)


def _check_schedule(interval, warmup, plateau: bool, path: str) -> None:
    allowed = ("val",) if plateau else ("step", "epoch")
    if interval not in allowed:
        raise ConfigError(f"interval must be {' or '.join(allowed)}, got {interval!r}",
                          path=f"{path}.interval")  # fmt: skip
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"warmup_steps must be a non-negative integer, got {warmup!r}",
                          path=f"{path}.warmup_steps")  # fmt: skip
    if warmup and interval != "step":
        raise ConfigError("warmup_steps needs interval: step", path=f"{path}.warmup_steps")


_TENSOR_ARGS = ("weight", "pos_weight")  # lists in YAML, tensors for the loss


def build_loss(item: dict, where: str = "train.loss") -> torch.nn.Module:
    """{name: CrossEntropyLoss, label_smoothing: 0.1} -> the torch.nn loss module."""
    known = {n: c for n, c in _classes(torch.nn, torch.nn.Module).items() if n.endswith("Loss")}
    cls = _lookup(item["name"], known, "loss", where)
    kwargs = _kwargs(item)
    for key in _TENSOR_ARGS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = torch.tensor(kwargs[key], dtype=torch.float32)
    return _construct(cls, (), kwargs, where)

