"""Metrics from torchmetrics, by class name with the class's own arguments.

    metrics: [accuracy, {name: F1Score, average: macro}, {name: JaccardIndex, output: masks}]

A name is looked up in torchmetrics' namespaces (classification, regression,
segmentation, text: `Accuracy`, `F1Score`, `AUROC`, `ConfusionMatrix`, `JaccardIndex`,
`Perplexity`, `MeanSquaredError`, ...). The short names older runs wrote keep working and
keep their columns in metrics.csv: `accuracy`, `top_k_accuracy` (`k`; logged as
`top5_accuracy`), `mse`, `mae`. For classification metrics `task` and `num_classes` are
read off the output they measure (its class dimension, `class_dim`, and the target's
dtype) when left out. torchmetrics keeps each metric's state and, on several processes,
gathers it over ranks when it computes: a distributed validation gives the one-process
values.

    >>> import torch
    >>> m = build_metric({"name": "accuracy"}, out_shape=(2, 2), target=torch.tensor([1, 1]), where="m")
    >>> m.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])); float(m.compute())
    0.5
"""

from __future__ import annotations

import inspect
import re
from functools import cache

import torch

from ..compiler.errors import did_you_mean
from .errors import ConfigError

__all__ = ["build_metric", "metric_class", "metric_label", "LEGACY", "CLASS_LAST"]

# short names -> (torchmetrics class, fixed arguments, arguments renamed)
LEGACY: dict[str, tuple[str, dict, dict]] = {
    "accuracy": ("Accuracy", {}, {}),
    "top_k_accuracy": ("Accuracy", {"top_k": 5}, {"k": "top_k"}),
    "mse": ("MeanSquaredError", {}, {}),
    "mae": ("MeanAbsoluteError", {}, {}),
}
CLASS_LAST = {"Perplexity"}  # metrics that take scores as [..., classes], not [N, classes, ...]
_OWN_KEYS = ("name", "output", "target", "class_dim", "label")  # ours, not the class's


@cache
def _known() -> dict[str, type]:
    import torchmetrics
    from torchmetrics import classification, regression, segmentation, text

    out: dict[str, type] = {}
    for module in (torchmetrics, classification, regression, segmentation, text):  # the last wins
        out.update({n: c for n, c in vars(module).items() if isinstance(c, type)
                    and issubclass(c, torchmetrics.Metric) and not n.startswith("_")})  # fmt: skip
    return out


def metric_class(name: str, where: str) -> type:
    """The torchmetrics class a metric item names (a legacy short name included)."""
    known = _known()
    cls_name = LEGACY[name][0] if name in LEGACY else name
    if cls_name not in known:
        hint = did_you_mean(name, [*LEGACY, *known]) or "a torchmetrics class, or " + ", ".join(LEGACY)
        raise ConfigError(f"unknown metric '{name}'", path=f"{where}.name", hint=hint)
    return known[cls_name]


def metric_label(item: dict) -> str:
    """The column a metric is logged under: `label`, a legacy name, or the class name in
    snake_case (F1Score -> f1_score)."""
    if item.get("label"):
        return str(item["label"])
    name = item["name"]
    if name == "top_k_accuracy":
        return f"top{item.get('k', 5)}_accuracy"
    if name in LEGACY:
        return name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def build_metric(item: dict, *, out_shape: tuple, target: torch.Tensor, where: str,
                 class_dim: int = 1):  # fmt: skip
    """The torchmetrics object for one checked `train.metrics` item. `out_shape` is the
    measured output's shape and `target` a batch of its targets, from which `task` and
    `num_classes` are filled in when the class takes them and the item does not say."""
    name = item["name"]
    cls = metric_class(name, where)
    fixed, renamed = LEGACY.get(name, ("", {}, {}))[1:]
    kwargs = {**fixed, **{renamed.get(k, k): v for k, v in item.items() if k not in _OWN_KEYS}}
    if name == "top_k_accuracy" and not (isinstance(kwargs["top_k"], int) and kwargs["top_k"] >= 1):
        raise ConfigError("k must be a positive integer", path=f"{where}.k")
    params = _params(cls)
    _check_sizes(item, where)
    if "task" in params:
        _fill_task(kwargs, out_shape, target, class_dim, where)
    elif "num_classes" in params and "num_classes" not in kwargs and len(out_shape) > 1:
        kwargs["num_classes"] = int(out_shape[class_dim])
    if name == "top_k_accuracy" and kwargs.get("num_classes"):
        kwargs["top_k"] = min(kwargs["top_k"], kwargs["num_classes"])  # k past the classes: all hit
    if "input_format" in params:
        kwargs.setdefault("input_format", "index")  # the runtime hands it class ids
    _check_args(cls, params, kwargs, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: {str(err).splitlines()[0]}", path=where) from None


def _params(cls) -> dict:
    """The arguments a metric class takes (task wrappers such as Accuracy take theirs in
    __new__)."""
    fn = cls.__new__ if "__new__" in vars(cls) else cls.__init__
    return dict(inspect.signature(fn).parameters)


def _fill_task(kwargs: dict, out_shape: tuple, target: torch.Tensor, class_dim: int, where: str) -> None:
    """task: multiclass when integer targets meet scores over C >= 2 classes; binary for
    one score per sample (or float 0/1 targets of the output's shape); multilabel for
    float targets over C > 1 labels. Anything else is to be said."""
    classes = int(out_shape[class_dim]) if len(out_shape) > 1 else 1
    if "task" not in kwargs:
        if not target.is_floating_point() and classes >= 2:
            kwargs["task"] = "multiclass"
        elif classes == 1 or tuple(target.shape) == tuple(out_shape[:1]):
            kwargs["task"] = "binary"
        elif target.is_floating_point() and tuple(target.shape) == tuple(out_shape):
            kwargs["task"] = "multilabel"
        else:
            raise ConfigError(f"cannot tell the task from outputs {list(out_shape)} and targets "
                              f"{list(target.shape)} {target.dtype}", path=where,
                              hint="set task: binary, multiclass or multilabel")  # fmt: skip
    if kwargs["task"] == "multiclass":
        kwargs.setdefault("num_classes", classes)
    elif kwargs["task"] == "multilabel":
        kwargs.setdefault("num_labels", classes)


MAX_METRIC_INT = 1_000_000  # a whole-number argument a user gives a metric (bins, classes, k)


def _check_sizes(item: dict, where: str) -> None:
    """Whole numbers given to a metric within MAX_METRIC_INT: bins, thresholds and classes
    size a metric's memory (`CalibrationError n_bins: 100000000` took 3 GB)."""
    for key, value in item.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_METRIC_INT:
                raise ConfigError(f"{key} {v} is past {MAX_METRIC_INT:,}", path=f"{where}.{key}",
                                  hint="a metric's memory grows with its bins, thresholds and classes")  # fmt: skip


def _check_args(cls, params: dict, kwargs: dict, where: str) -> None:
    named = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD and k not in ("self", "cls")}
    for key in kwargs:
        if key not in named and key not in _METRIC_BASE_ARGS:
            hint = did_you_mean(key, named) or "arguments: " + ", ".join(sorted(named))
            raise ConfigError(f"{cls.__name__} takes no argument '{key}'", path=f"{where}.{key}",
                              hint=hint)  # fmt: skip


# keyword arguments every torchmetrics Metric takes (through **kwargs)
_METRIC_BASE_ARGS = ("compute_on_cpu", "dist_sync_on_step", "sync_on_compute", "compute_with_cache")
