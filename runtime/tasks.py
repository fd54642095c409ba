"""What a run trains and measures, whatever the model: which batch fields feed the spec's
inputs, the loss terms (each a torch loss on a named output against a named target field,
weighted) and the metrics (each on a named output).

A batch is a dict of named tensors (data.py). The model is called with the fields
`feeds` names, in the spec's input order, and its outputs are taken by name. The class
dimension of an output is said once per term (`class_dim: -1` for a language model's
[N, T, vocab] logits) and moved to where torch's losses (dim 1) and each metric expect
it, so sequence and dense outputs train without a transpose in the network.

    train:
      loss:
        - {name: CrossEntropyLoss, output: logits, target: label}
        - {name: CrossEntropyLoss, output: aux, target: label, loss_weight: 0.3}
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace

import torch

from ..compiler.errors import did_you_mean
from .data import Fields
from .errors import ConfigError
from .metrics import CLASS_LAST, build_metric, metric_class, metric_label
from .optim import build_loss

__all__ = ["Task", "LossTerm", "MetricSlot", "build_task", "resolve_feeds", "as_tuple", "to_device",
           "TERM_KEYS", "sample_batch", "check_fields", "loss_items"]  # fmt: skip

TERM_KEYS = ("output", "target", "loss_weight", "class_dim", "label")  # ours, beside the loss's own


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss on one output against one target field."""

    label: str  # logged as train/loss_LABEL when there are several terms
    output: int  # index into the spec's outputs
    target: str  # batch field
    fn: torch.nn.Module
    weight: float
    class_dim: int  # the output's class dim, moved to 1 for the loss

    def value(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The term's loss. Class ids against scores whose classes come last ([N, T, V]
        logits, `class_dim: -1`) go to cross-entropy flattened to [N*T, V] against [N*T]
        rather than moved to [N, V, T]: the same values (a mean over the same elements,
        ignore_index and class weights alike), and about a quarter faster forward and back."""
        dims = pred.dim()
        if (dims > 2 and self.class_dim % dims == dims - 1 and target.dim() == dims - 1
                and isinstance(self.fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss))):  # fmt: skip
            out = self.fn(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
            return out.reshape(target.shape) if out.dim() else out  # reduction: none
        return self.fn(_scores(pred, self.class_dim), target)


@dataclass(frozen=True)
class MetricSlot:
    """One torchmetrics metric on one output: a fresh copy is made for each evaluation."""

    label: str
    output: int
    target: str
    class_dim: int
    class_last: bool  # the metric wants scores as [..., classes] (Perplexity)
    ids: bool  # the metric wants class ids (argmax over the class dim), not scores
    metric: object  # a torchmetrics.Metric, never updated itself
    higher_is_better: bool


@dataclass(frozen=True)
class Task:
    feeds: tuple[str, ...]  # the batch field feeding each spec input, in the spec's order
    outputs: tuple[str, ...]  # the spec's output names, then its train outputs'
    terms: tuple[LossTerm, ...]
    metrics: tuple[MetricSlot, ...]
    evaluated: int = 0  # how many outputs the model gives in eval (the train outputs come after); 0: all

    @property
    def fields(self) -> tuple[str, ...]:
        """Every batch field the run reads (so only those move to the device)."""
        used = [*self.feeds, *(t.target for t in self.terms), *(m.target for m in self.metrics)]
        return tuple(dict.fromkeys(used))

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return tuple(batch[f] for f in self.feeds)

    def loss(self, outs: tuple, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The weighted sum of the terms, and each term's own value. In eval the model
        gives no train outputs, and their terms are left out."""
        terms = self._terms(len(outs) < len(self.outputs))
        parts = [t.value(outs[t.output], batch[t.target]) for t in terms]
        total = parts[0] * terms[0].weight if terms[0].weight != 1 else parts[0]
        for term, part in zip(terms[1:], parts[1:], strict=True):
            total = total + term.weight * part
        return total, parts

    def _terms(self, evaluating: bool) -> tuple[LossTerm, ...]:
        if not evaluating or not self.evaluated:
            return self.terms
        return tuple(t for t in self.terms if t.output < self.evaluated)

    def loss_labels(self, evaluating: bool = False) -> list[str]:
        """Columns of the terms ('loss_logits', ...); none when there is one term.
        Evaluating, the terms on train outputs are not there."""
        terms = self._terms(evaluating)
        return [f"loss_{t.label}" for t in terms] if len(terms) > 1 else []

    def new_metrics(self, device: torch.device) -> dict[str, object]:
        return {m.label: copy.deepcopy(m.metric).to(device) for m in self.metrics}

    def update(self, metrics: dict, outs: tuple, batch: dict) -> None:
        for slot in self.metrics:
            pred = outs[slot.output].detach()
            metrics[slot.label].update(*_metric_args(slot, pred, batch[slot.target]))

    def modes(self) -> dict[str, str]:
        """'min' or 'max' for every logged validation value."""
        out = {"loss": "min", **{label: "min" for label in self.loss_labels(evaluating=True)}}
        out.update({m.label: "max" if m.higher_is_better else "min" for m in self.metrics})
        return out


def _scores(pred: torch.Tensor, class_dim: int) -> torch.Tensor:
    """Scores with their class dim at 1, where torch's losses want it."""
    if class_dim == 1 or pred.dim() < 2 or class_dim % pred.dim() == 1:
        return pred
    return pred.movedim(class_dim, 1)


def _metric_args(slot: MetricSlot, pred: torch.Tensor, target: torch.Tensor):
    pred = pred.float()
    if slot.ids:
        return pred.argmax(dim=slot.class_dim), target
    if slot.class_last:
        return pred.movedim(slot.class_dim, -1), target
    if pred.dim() > 1:
        pred = _scores(pred, slot.class_dim)
    if pred.shape != target.shape and pred.numel() == target.numel() and target.is_floating_point():
        target = target.reshape(pred.shape)  # regression: [N] targets of an [N, 1] output
    return pred, target


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def to_device(device: torch.device, batch: dict, names) -> dict:
    """The named fields of a batch on `device` (asynchronously to CUDA: the loaders pin
    memory there)."""
    nb = device.type == "cuda"
    return {k: batch[k].to(device, non_blocking=nb) for k in names}


# -- building --------------------------------------------------------------------------


def resolve_feeds(input_names: list[str], fields: Fields, data: dict) -> tuple[str, ...]:
    """The field feeding each spec input: `data.inputs` ({input: field}), else the field of
    the input's own name, else (one input, one input field) that field. `data.input` names
    the spec input the source's only input field feeds."""
    explicit = dict(data.get("inputs") or {})
    for name in explicit:
        if name not in input_names:
            raise ConfigError(f"the spec has no input '{name}'", path=f"data.inputs.{name}",
                              hint=did_you_mean(name, input_names) or "inputs: " + ", ".join(input_names))  # fmt: skip
    if data.get("input") is not None:
        if data["input"] not in input_names:
            raise ConfigError(f"the spec has no input '{data['input']}'", path="data.input",
                              hint=did_you_mean(data["input"], input_names) or "inputs: " + ", ".join(input_names))  # fmt: skip
        explicit.setdefault(data["input"], fields.inputs[0])
    feeds = []
    for name in input_names:
        feeds.append(_feed(name, explicit, input_names, fields))
    return tuple(feeds)


def _feed(name: str, explicit: dict, input_names: list[str], fields: Fields) -> str:
    if name in explicit:
        if explicit[name] not in fields.names:
            raise ConfigError(f"the data has no field '{explicit[name]}'", path=f"data.inputs.{name}",
                              hint=did_you_mean(explicit[name], fields.names) or _fields_hint(fields))  # fmt: skip
        return explicit[name]
    if name in fields.names:
        return name
    if len(input_names) == 1 and len(fields.inputs) == 1:
        return fields.inputs[0]
    raise ConfigError(f"no field feeds the spec's input '{name}'", path="data.inputs",
                      hint=f"{_fields_hint(fields)}; set data.inputs: {{{name}: FIELD}}")  # fmt: skip


def _fields_hint(fields: Fields) -> str:
    return "the samples have fields " + ", ".join(fields.names)


def sample_batch(dataset, n: int = 2) -> dict:
    """The first `n` samples of a loader's dataset (indexed by (epoch, index)), collated."""
    from torch.utils.data import default_collate

    return default_collate([dataset[(0, i)] for i in range(min(n, len(dataset)))])


def build_task(compiled, cfg, fields: Fields, batch: dict, device: torch.device) -> Task:
    """The task of a run from its checked config, the data's fields and a sample `batch`
    (for the outputs' shapes and the targets' dtypes metrics are sized from). The
    compiled module is on `device` already."""
    spec = compiled.spec
    outputs = tuple(name for name, _ in spec.outputs + spec.train_outputs)
    feeds = resolve_feeds([i.name for i in compiled.spec.inputs], fields, cfg.data)
    check_fields(compiled, feeds, batch, cfg.data["dataset"])
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        was = compiled.module.training
        compiled.module.eval()
        try:
            outs = as_tuple(compiled.module(*(batch[f] for f in feeds)))
            shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in outs]
        finally:
            compiled.module.train(was)
    outs += _train_outputs(compiled, len(batch[feeds[0]]))
    shapes += [tuple(o.shape) if o is not None else None for o in outs[len(shapes):]]
    terms = tuple(replace(t, fn=t.fn.to(device)) for t in _terms(cfg, outputs, fields))
    _check_evaluable(terms, len(spec.outputs), outputs)
    for i, t in enumerate(terms):
        _tensor_output(outs[t.output], outputs[t.output], "train.loss", "a loss")
        where = f"train.loss[{i}]" if isinstance(cfg.train["loss"], list) else "train.loss"
        check_class_dim(t.class_dim, shapes[t.output], outputs[t.output], f"{where}.class_dim")
    metrics = _metrics(cfg, outputs, fields, terms, shapes, batch, len(spec.outputs))
    for i, (slot, item) in enumerate(zip(metrics, cfg.train["metrics"], strict=True)):
        _try_metric(slot, item["name"], outs, batch, f"train.metrics[{i}]")
    return Task(feeds, outputs, terms, metrics, len(spec.outputs) if spec.train_outputs else 0)


def _train_outputs(compiled, batch: int) -> tuple:
    """Stand-ins for the train outputs, which an eval forward does not give: meta tensors
    of their inferred shapes (symbolic dims at the batch size), enough to check the loss
    terms that read them; None for one that is not a tensor."""
    from ..compiler.shapes import TensorType, pick_type

    out = []
    for _, ref in compiled.spec.train_outputs:  # their references were checked by the shapes stage
        t = pick_type(compiled.graph.nodes[ref.node]["type"], ref.index)
        if not isinstance(t, TensorType):
            out.append(None)
            continue
        dims = [d if isinstance(d, int) else batch for d in t.shape]
        out.append(torch.empty(dims, dtype=getattr(torch, t.dtype), device="meta"))
    return tuple(out)


def _check_evaluable(terms: tuple[LossTerm, ...], evaluated: int, outputs: tuple[str, ...]) -> None:
    """Validation runs in eval, without the train outputs: one term must read an output."""
    if evaluated < len(outputs) and all(t.output >= evaluated for t in terms):
        raise ConfigError("every loss term reads a train output, and validation (in eval) has none of them",
                          path="train.loss", hint="add a term on one of the outputs: "
                          + ", ".join(outputs[:evaluated]))  # fmt: skip


def check_class_dim(class_dim: int, shape: tuple, name: str, where: str) -> None:
    """A class dim the output has (`-1` of [N, T, V]; not 7 of [N, C])."""
    if len(shape) > 1 and not -len(shape) <= class_dim < len(shape):
        raise ConfigError(f"class_dim {class_dim} is not a dimension of the output '{name}' {list(shape)}",
                          path=where, hint=f"from {-len(shape)} to {len(shape) - 1}")  # fmt: skip


def _tensor_output(value, name: str, where: str, what: str) -> None:
    """A loss takes a tensor: an output that is a tuple (an LSTM's (out, (h, c))) is named."""
    if isinstance(value, torch.Tensor):
        return
    kind = f"a {type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list)) else \
        f"a {type(value).__name__}"  # fmt: skip
    raise ConfigError(f"the output '{name}' is {kind}, not a tensor; {what} takes one", path=where,
                      hint="make the spec's output one tensor (index a tuple: 'node[0]')")  # fmt: skip


def check_fields(compiled, feeds: tuple[str, ...], batch: dict, dataset: str) -> None:
    """Each feeding field must fit its spec input (shape and float or integer), before
    any step runs."""
    for inp, name in zip(compiled.spec.inputs, feeds, strict=True):
        x = batch[name][0]
        want = inp.shape[1:]
        fits = len(want) == x.dim() and all(isinstance(w, str) or w == s
                                            for w, s in zip(want, x.shape, strict=True))  # fmt: skip
        if not fits:
            raise ConfigError(f"samples of '{dataset}' have {name} of shape {list(x.shape)}; the "
                              f"spec's input '{inp.name}' takes [{', '.join(map(str, inp.shape))}]",
                              path="data.dataset", hint="change the input shape or the data")  # fmt: skip
        if x.is_floating_point() != inp.dtype.startswith(("float", "bfloat")):
            raise ConfigError(f"samples' {name} are {x.dtype}; the spec's input '{inp.name}' is "
                              f"{inp.dtype}", path="data.dataset")  # fmt: skip


def loss_items(cfg) -> list[dict]:
    """`train.loss` as a list of terms (one mapping is one term)."""
    loss = cfg.train["loss"]
    return list(loss) if isinstance(loss, list) else [loss]


def _terms(cfg, outputs: tuple[str, ...], fields: Fields) -> tuple[LossTerm, ...]:
    items = loss_items(cfg)
    if not items:
        raise ConfigError("train.loss has no terms", path="train.loss")
    terms = []
    for i, item in enumerate(items):
        where = f"train.loss[{i}]" if isinstance(cfg.train["loss"], list) else "train.loss"
        out = _output(item.get("output") or cfg.train["output"], outputs, f"{where}.output")
        target = _target(item.get("target"), fields, f"{where}.target")
        fn = build_loss({k: v for k, v in item.items() if k not in TERM_KEYS}, where)
        weight = item.get("loss_weight", 1.0)
        terms.append(LossTerm(item.get("label") or outputs[out], out, target, fn, float(weight),
                              int(item.get("class_dim", 1))))  # fmt: skip
    labels = [t.label for t in terms]
    if len(set(labels)) < len(labels):  # two terms on one output: number them
        terms = [replace(t, label=f"{t.label}_{i}") if labels.count(t.label) > 1 else t
                 for i, t in enumerate(terms)]
    return tuple(terms)


def _output(name: str | None, outputs: tuple[str, ...], where: str) -> int:
    if name is None:
        return 0
    if name not in outputs:
        raise ConfigError(f"the spec has no output '{name}'", path=where,
                          hint=did_you_mean(name, outputs) or "outputs: " + ", ".join(outputs))  # fmt: skip
    return outputs.index(name)


def _target(name: str | None, fields: Fields, where: str) -> str:
    if name is None:
        if len(fields.targets) != 1:
            raise ConfigError("say which field this compares against", path=where,
                              hint=f"{_fields_hint(fields)}; targets: {', '.join(fields.targets) or 'none'}")  # fmt: skip
        return fields.targets[0]
    if name not in fields.names:
        raise ConfigError(f"the data has no field '{name}'", path=where,
                          hint=did_you_mean(name, fields.names) or _fields_hint(fields))  # fmt: skip
    return name


def _try_metric(slot: MetricSlot, name: str, outs: tuple, batch: dict, where: str) -> None:
    """Measure the sample batch once with a copy (not synchronised over ranks): a metric
    that cannot take these outputs and targets, or whose value is not one number (a
    confusion matrix, a per-class score), is refused before training, not at its first
    validation."""
    trial = copy.deepcopy(slot.metric).to(outs[slot.output].device)
    trial.sync_on_compute = trial._to_sync = False
    pred, target = outs[slot.output], batch[slot.target]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial.update(*_metric_args(slot, pred, target))
            value = trial.compute()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"{name} cannot take outputs {list(pred.shape)} and targets "
                          f"{list(target.shape)} {target.dtype}: {str(err).splitlines()[0][:200]}",
                          path=where, hint=_class_dim_hint(pred, slot.class_dim)) from None  # fmt: skip
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"{name} gives {shape}, not one number (metrics.csv and best.pt take "
                          "numbers)", path=where,
                          hint="an average of one number (average: macro), or another metric")  # fmt: skip


def _class_dim_hint(pred: torch.Tensor, class_dim: int) -> str:
    if pred.dim() > 2 and class_dim == 1:
        return "for scores shaped [N, T, classes] set class_dim: -1 on the loss (its metrics follow)"
    return "is class_dim right?" if pred.dim() > 2 else ""


def _metrics(cfg, outputs, fields, terms, shapes, batch, evaluated: int) -> tuple[MetricSlot, ...]:
    slots = []  # metrics are computed in eval, on the outputs alone (not the train outputs)
    main = next(t.output for t in terms if t.output < evaluated)
    for i, item in enumerate(cfg.train["metrics"]):
        where = f"train.metrics[{i}]"
        out = _output(item.get("output"), outputs, f"{where}.output") if item.get("output") else main
        if out >= evaluated:
            raise ConfigError(f"'{outputs[out]}' is a train output: metrics are computed in eval, where it is not",
                              path=f"{where}.output", hint="outputs: " + ", ".join(outputs[:evaluated]))  # fmt: skip
        term = next((t for t in terms if t.output == out), None)
        target = _target(item.get("target") or (term.target if term else None), fields, f"{where}.target")
        class_dim = int(item.get("class_dim", term.class_dim if term else 1))
        if shapes[out] is None:
            raise ConfigError(f"the output '{outputs[out]}' is not a tensor; a metric takes one", path=where,
                              hint="make the spec's output one tensor (index a tuple: 'node[0]')")  # fmt: skip
        check_class_dim(class_dim, shapes[out], outputs[out], f"{where}.class_dim")
        metric = build_metric(item, out_shape=shapes[out], target=batch[target], where=where,
                              class_dim=class_dim)  # fmt: skip
        label = metric_label(item)
        if out != main and not item.get("label"):
            label = f"{outputs[out]}_{label}"
        name = metric_class(item["name"], where).__name__
        slots.append(MetricSlot(label, out, target, class_dim, name in CLASS_LAST,
                                getattr(metric, "input_format", None) == "index" and name not in CLASS_LAST,
                                metric, bool(metric.higher_is_better)))  # fmt: skip
    labels = [s.label for s in slots]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(f"two metrics are logged as '{label}'", path="train.metrics",
                              hint="give one a label:")  # fmt: skip
    return tuple(slots)
