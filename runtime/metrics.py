"""Metrics by name. Each is a function of one batch returning (sum, count) as tensors, so
a validation pass adds them up on the device and a distributed run reduces them across
ranks with one all-reduce; the value is sum / count.

    >>> import torch
    >>> sum_, n = METRICS["accuracy"].fn(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    >>> float(sum_ / n)
    0.5
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

__all__ = ["MetricDef", "METRICS", "build_metrics", "metric_mode"]


@dataclass(frozen=True)
class MetricDef:
    name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    mode: str  # "max" or "min": which way is better
    args: tuple[str, ...] = ()


def _accuracy(pred: torch.Tensor, target: torch.Tensor):
    hits = (pred.argmax(dim=1) == target).sum()  # pred (B, classes), target (B,)
    return hits.float(), torch.tensor(float(target.numel()), device=pred.device)


def _top_k(pred: torch.Tensor, target: torch.Tensor, k: int = 5):
    top = pred.topk(min(k, pred.shape[1]), dim=1).indices  # (B, k)
    hits = (top == target.unsqueeze(1)).any(dim=1).sum()
    return hits.float(), torch.tensor(float(target.numel()), device=pred.device)


def _mse(pred: torch.Tensor, target: torch.Tensor):
    diff = pred.float() - target.float().reshape(pred.shape)
    return (diff**2).sum(), torch.tensor(float(diff.numel()), device=pred.device)


def _mae(pred: torch.Tensor, target: torch.Tensor):
    diff = pred.float() - target.float().reshape(pred.shape)
    return diff.abs().sum(), torch.tensor(float(diff.numel()), device=pred.device)


METRICS: dict[str, MetricDef] = {
    "accuracy": MetricDef("accuracy", _accuracy, "max"),
    "top_k_accuracy": MetricDef("top_k_accuracy", _top_k, "max", ("k",)),
    "mse": MetricDef("mse", _mse, "min"),
    "mae": MetricDef("mae", _mae, "min"),
}


def build_metrics(items: list[dict], error) -> dict[str, Callable]:
    """{'accuracy': fn, 'top5_accuracy': fn, ...} from the checked `train.metrics` list;
    `error(message, path, hint)` makes the located exception."""
    from ..compiler.errors import did_you_mean

    out = {}
    for i, item in enumerate(items):
        name, kwargs = item["name"], {k: v for k, v in item.items() if k != "name"}
        if name not in METRICS:
            raise error(f"unknown metric '{name}'", ("train", "metrics", i, "name"),
                        did_you_mean(name, METRICS) or "metrics: " + ", ".join(METRICS))  # fmt: skip
        mdef = METRICS[name]
        for key in kwargs:
            if key not in mdef.args:
                raise error(f"metric {name} takes no argument '{key}'", ("train", "metrics", i, key))
        if name == "top_k_accuracy" and not (isinstance(kwargs.get("k", 5), int) and kwargs.get("k", 5) >= 1):
            raise error("k must be a positive integer", ("train", "metrics", i, "k"))
        label = f"top{kwargs.get('k', 5)}_accuracy" if name == "top_k_accuracy" else name
        out[label] = partial(mdef.fn, **kwargs)
    return out


def metric_mode(label: str) -> str:
    """'min' for losses and errors, 'max' for the rest ('val/top5_accuracy' -> 'max')."""
    base = label.rsplit("/", 1)[-1]
    return "min" if base in ("loss", "mse", "mae") or base.endswith("loss") else "max"
