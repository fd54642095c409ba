"""The run configuration: a spec's `data:` and `train:` sections, merged with a config file
(`--config`) and dotted overrides (`--set train.optimizer.lr=0.01`), checked against a
JSON Schema, with every default filled in.

Sources merge in that order, later ones winning key by key. Every value keeps where it
came from (file:line:col, or the `--set` item), so a mistake is reported there. Named
things (optimizer, scheduler, loss, metrics, transforms) may be written as a bare name
(`optimizer: SGD`) or as a mapping whose other keys are the constructor's arguments
(`optimizer: {name: SGD, lr: 0.1, momentum: 0.9}`); they are normalised to the mapping
form before overrides apply, so `--set train.optimizer.lr=0.1` always works.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..compiler.errors import Diagnostic, Location, did_you_mean, not_a_regular_file
from ..compiler.load import LIMITS, Document, load_document, nearest_loc
from ..compiler.validate import (
    StrictValidator,
    explain_schema_error,
    format_path,
    schema_error_path,
)
from .data import DATASETS
from .errors import ArgLocation, ChangedBy, ConfigError

__all__ = ["RunConfig", "load_run_config", "split_overrides", "weights_overlay", "train_schema", "data_schema",
           "section_schemas", "PRECISIONS", "DEVICES"]  # fmt: skip

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
DEVICES = ("auto", "cpu", "cuda", "mps")

_NAME = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}


_CLASS_DIM = {"type": "integer", "description": "the output's class dimension (default 1; -1 for "
                                              "[N, T, classes] sequence logits)"}
MAX_ITEMS = 64  # loss terms, metrics, transforms: each is built and probed at preflight

_TERM = {**_NAMED, "properties": {
    "name": _NAME,
    "output": {"type": "string", "description": "the spec output it reads (default: train.output)"},
    "target": {"type": "string", "description": "the batch field it compares against"},
    "loss_weight": {"type": "number", "minimum": 0, "description": "its factor in the total loss"},
    "class_dim": _CLASS_DIM,
    "label": _NAME}}  # fmt: skip
_METRIC = {**_NAMED, "properties": {
    "name": _NAME,
    "output": {"type": "string", "description": "the spec output it measures"},
    "target": {"type": "string", "description": "the batch field it compares against"},
    "class_dim": _CLASS_DIM,
    "label": {"type": "string", "description": "its column in metrics.csv"}}}  # fmt: skip

_LOGGER = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"enum": ["csv", "tensorboard", "mlflow"]},
    "tracking_uri": {"type": "string", "minLength": 1, "maxLength": 4096,
                     "description": "mlflow: the store (default MLFLOW_TRACKING_URI, else SQLite "
                                    "beside the run folder: runs/NAME/mlflow.db)"},
    "experiment": {"type": "string", "minLength": 1, "maxLength": 500,
                   "description": "mlflow: the experiment (default: the spec's name)"},
    "run_name": {"type": "string", "minLength": 1, "maxLength": 250,
                 "description": "mlflow: the run's name (default: the run folder's name)"},
    "tags": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 5000},
             "maxProperties": 100, "description": "mlflow: extra tags of the run"}}}  # fmt: skip


def _int(default, minimum=1, null=False, doc=""):
    return {"type": ["integer", "null"] if null else "integer", "minimum": minimum,
            "default": default, "description": doc}  # fmt: skip


TRAIN_PROPS: dict[str, dict] = {
    "epochs": _int(10, doc="passes over the training set"),
    "max_steps": _int(None, null=True, doc="stop after this many optimizer steps (wins over epochs)"),
    "optimizer": {**_NAMED, "default": {"name": "AdamW", "lr": 0.001},
                  "description": "a torch.optim class and its arguments"},
    "scheduler": {"anyOf": [_NAMED, {"type": "null"}], "default": None,
                  "description": "a torch.optim.lr_scheduler class and its arguments; extra keys: "
                                 "warmup_steps (linear warmup), interval (step or epoch)"},
    "loss": {"anyOf": [_TERM, {"type": "array", "items": _TERM, "minItems": 1, "maxItems": MAX_ITEMS}],
             "default": {"name": "CrossEntropyLoss"},
             "description": "a torch.nn loss, or a list of weighted terms each on a named output "
                            "(keys output, target, loss_weight, class_dim, label)"},
    "metrics": {"type": "array", "items": _METRIC, "maxItems": MAX_ITEMS, "default": [{"name": "accuracy"}],
                "description": "torchmetrics classes by name (F1Score, JaccardIndex, Perplexity, "
                               "...) or accuracy, top_k_accuracy (k), mse, mae; keys output, "
                               "target, class_dim, label beside the class's own"},
    "output": {"type": ["string", "null"], "default": None,
               "description": "the model output the loss reads (default: the first)"},
    "grad_accum": _int(1, doc="micro-batches per optimizer step"),
    "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                  "description": "clip the gradients' global L2 norm to this"},
    "val_every_n_epochs": _int(1, null=True, doc="validate after every N epochs"),
    "val_every_n_steps": _int(None, null=True, doc="also validate every N optimizer steps"),
    "log_every_n_steps": _int(10, doc="metrics.csv / TensorBoard / plain-line cadence"),
    "checkpoint_every_n_steps": _int(None, null=True, doc="checkpoint every N optimizer steps"),
    "checkpoint_every_n_epochs": _int(1, null=True, doc="checkpoint after every N epochs"),
    "checkpoint_every_n_minutes": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 10,
                                   "description": "also checkpoint once this many minutes of "
                                                  "training passed since the last checkpoint"},
    "keep_checkpoints": _int(2, doc="step checkpoints kept (the newest); best.pt is extra"),
    "monitor": {"type": ["string", "null"], "default": None,
                "description": "metric for best.pt and early stopping (default: val/accuracy "
                               "if measured, else val/loss)"},
    "mode": {"enum": ["min", "max", None], "default": None,
             "description": "min or max (default: min for losses and errors, max otherwise)"},
    "early_stopping": {"type": ["object", "null"], "default": None, "additionalProperties": False,
                       "properties": {"patience": _int(5, doc="validations without improvement"),
                                      "min_delta": {"type": "number", "minimum": 0, "default": 0}},
                       "description": "stop when the monitored metric stops improving"},
    "on_nonfinite": {"enum": ["stop", "skip"], "default": "stop",
                     "description": "a NaN/inf loss stops the run, or skips that step"},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 0,
             "description": "seeds weights, shuffling, dropout"},
    "device": {"type": "string", "pattern": r"^(auto|cpu|mps|cuda(:[0-9]+)?)$", "default": "auto",
               "description": "auto picks cuda, then mps, then cpu"},
    "precision": {"enum": list(PRECISIONS), "default": "32",
                  "description": "32, bf16-mixed, or 16-mixed (with a gradient scaler)"},
    "compile": {"type": "boolean", "default": False, "description": "torch.compile the model"},
    "strategy": {"enum": ["ddp", "fsdp"], "default": "ddp",
                 "description": "on several processes: ddp keeps the whole model on each; fsdp shards the "
                                "parameters, gradients and optimizer state across them (FSDP2), a unit per "
                                "block instance of the spec"},
    "fsdp": {"type": "object", "additionalProperties": False, "default": {},
             "properties": {
                 "units": {"type": ["array", "null"], "default": None, "maxItems": MAX_ITEMS, "uniqueItems": True,
                           "items": {"type": "string", "minLength": 1, "maxLength": 400},
                           "description": "what is sharded on its own, instead of every block instance: block "
                                          "names (each instance) and module paths (embed, blocks.0.mlp)"},
                 "cpu_offload": {"type": "boolean", "default": False,
                                 "description": "keep the shards, their gradients and the optimizer state in CPU "
                                                "memory, and step there (GPU memory for one unit at a time)"},
                 "reshard_after_forward": {"type": "boolean", "default": True,
                                           "description": "free each unit's gathered weights after its forward "
                                                          "(gathered again for backward); false keeps them: "
                                                          "faster, more memory"}},
             "description": "with strategy: fsdp: the units, CPU offload, resharding"},  # fmt: skip
    "activation_checkpointing": {
        "type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "maxItems": MAX_ITEMS,
        "uniqueItems": True, "default": [],
        "description": "blocks of the spec whose every instance recomputes its activations in backward "
                       "(as checkpoint: true on each): less memory, about one more forward of them"},
    "loggers": {"type": "array", "items": _LOGGER, "maxItems": 8, "default": [{"name": "csv"}, {"name": "tensorboard"}],
                "description": "where metrics go: csv (metrics.csv, always written), tensorboard "
                               "(RUN/tensorboard), mlflow (keys tracking_uri, experiment, run_name, tags)"},
    "deterministic": {"type": "boolean", "default": True,
                      "description": "deterministic kernels (exact resume; may be slower)"},
    "dist_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400, "default": 300,
                     "description": "seconds a process waits for the others (joining, each "
                                    "collective) before it fails with an error"},
    "find_unused_parameters": {"type": ["boolean", "null"], "default": None,
                               "description": "DDP's find_unused_parameters (default: on for "
                                              "specs with several outputs)"},
    "sync_batchnorm": {"type": "boolean", "default": False,
                       "description": "on several processes, BatchNorm statistics over the "
                                      "global batch (SyncBatchNorm; CUDA)"},
}  # fmt: skip

DATA_PROPS: dict[str, dict] = {
    "dataset": {"type": "string", "default": "digits", "description": "a registered source"},
    "batch_size": _int(64, doc="samples per batch on each process"),
    "val_batch_size": _int(None, null=True, doc="default: batch_size"),
    "num_workers": {**_int(0, minimum=0, doc="DataLoader worker processes"), "maximum": 64},
    "pin_memory": {"type": ["boolean", "null"], "default": None, "description": "default: on CUDA"},
    "shuffle": {"type": "boolean", "default": True},
    "drop_last": {"type": "boolean", "default": False},
    "transforms": {"type": "array", "items": _NAMED, "maxItems": MAX_ITEMS, "default": [],
                   "description": "torchvision.transforms.v2 for training samples"},
    "val_transforms": {"type": "array", "items": _NAMED, "maxItems": MAX_ITEMS, "default": [],
                       "description": "torchvision.transforms.v2 for validation samples"},
    "input": {"type": ["string", "null"], "default": None,
              "description": "the model input the source's only input field feeds"},
    "inputs": {"type": ["object", "null"], "default": None,
               "additionalProperties": {"type": "string"},
               "description": "{spec input: batch field}; default: by name, or the only one"},
}  # fmt: skip


def train_schema() -> dict:
    return {"type": "object", "additionalProperties": False, "properties": TRAIN_PROPS}


def data_schema(dataset: str | None = None) -> dict:
    """The schema of `data:` for one source (strict), or for editors (every source)."""
    if dataset is not None:
        props = {**DATA_PROPS, **DATASETS[dataset].args}
        return {"type": "object", "additionalProperties": False, "properties": props,
                "required": list(DATASETS[dataset].required)}  # fmt: skip
    branches = [{"if": {"properties": {"dataset": {"const": n}}},
                 "then": {"properties": d.args, "required": list(d.required)}}
                for n, d in DATASETS.items()]  # fmt: skip
    props = {**DATA_PROPS, "dataset": {**DATA_PROPS["dataset"], "enum": list(DATASETS)}}
    return {"type": "object", "properties": props, "allOf": branches}


def section_schemas() -> dict[str, dict]:
    """`data:` and `train:` for the published (editor) schema. Unlike the checks above,
    which see the sections after bare names became mappings, it takes both spellings."""
    train, data = copy.deepcopy(train_schema()), copy.deepcopy(data_schema())
    for key in ("optimizer", "scheduler"):
        train["properties"][key] = _or_bare_name(train["properties"][key])
    loss = train["properties"]["loss"]
    loss["anyOf"] = [_NAME, _TERM, {**loss["anyOf"][1], "items": {"anyOf": [_NAME, _TERM]}}]
    for props, key in ((train["properties"], "metrics"), (train["properties"], "loggers"), (data["properties"], "transforms"),
                       (data["properties"], "val_transforms")):  # fmt: skip
        props[key]["items"] = _or_bare_name(props[key]["items"])
    return {"data": data, "train": train}


def _or_bare_name(schema: dict) -> dict:
    keep = {k: schema[k] for k in ("default", "description") if k in schema}
    body = {k: v for k, v in schema.items() if k not in keep}
    return {"anyOf": [_NAME, body], **keep}


@dataclass(frozen=True)
class RunConfig:
    """Checked `data:` and `train:` with defaults filled, the spec's variable overrides,
    and where every value came from."""

    data: dict
    train: dict
    vars: dict = field(default_factory=dict)
    locs: dict = field(default_factory=dict, repr=False)
    # `init:` and `freeze:` of a config file or `--set`, where given: in place of the spec's
    weights: dict = field(default_factory=dict)

    def weights_overlay(self):
        """The run's `init:` and `freeze:` for the compiler (None where the spec's stand);
        an init file is relative to the config file that names it, or to the working folder."""
        from ..compiler.expand import FreezePattern, WeightsOverlay, init_specs

        init = freeze = None
        if "init" in self.weights:
            written = self.locs.get(("init",))
            folder = os.path.dirname(written.file) if type(written) is Location else os.getcwd()
            init = init_specs(self.weights["init"], folder, self.loc)
        if "freeze" in self.weights:
            freeze = tuple(FreezePattern(p, self.loc(("freeze", k)), f"freeze[{k}]")
                           for k, p in enumerate(self.weights["freeze"] or []))  # fmt: skip
        return WeightsOverlay(init, freeze)

    def loc(self, path: tuple) -> Location | None:
        """Where `path` (or its nearest ancestor) was written; where that is a file and
        `--set` items changed values inside it, they are named too."""
        path = tuple(path)
        found = nearest_loc(self.locs, path)
        if found is None or isinstance(found, ArgLocation):
            return found
        items = tuple(sorted({str(where) for p, where in self.locs.items()
                              if isinstance(where, ArgLocation) and len(p) > len(path) and p[: len(path)] == path}))  # fmt: skip
        return ChangedBy(found.file, found.line, found.col, items) if items else found

    def error(self, message: str, path: tuple, hint: str = "") -> ConfigError:
        return ConfigError(message, self.loc(path), format_path(path), hint)

    @contextmanager
    def located(self):
        """Give a ConfigError raised inside (by a builder that knows only the spec path,
        `train.optimizer.lrr`) the file:line:col or `--set` item of that path."""
        try:
            yield
        except ConfigError as err:
            d = err.diagnostics[0]
            if d.loc is not None or not d.path or len(err.diagnostics) > 1:
                raise
            raise ConfigError(d.message, self.loc(parse_path(d.path)), d.path, d.hint) from None


def parse_path(text: str) -> tuple:
    """'data.transforms[0].name' -> ('data', 'transforms', 0, 'name')"""
    out: list = []
    for part in text.split("."):
        name, *indices = part.replace("]", "").split("[")
        out += ([name] if name else []) + [int(i) for i in indices if i.lstrip("-").isdigit()]
    return tuple(out)


def split_overrides(items: dict[str, Any]) -> tuple[dict, dict]:
    """{'train.epochs': 3, 'width': 64} -> ({'train.epochs': 3}, {'width': 64}):
    keys under data./train. (and init, freeze) go to the run config, the rest (or vars.X)
    are variables."""
    run, variables = {}, {}
    for key, value in items.items():
        head = key.split(".", 1)[0]
        if head in ("data", "train", *WEIGHT_KEYS):
            run[key] = value
        elif head == "vars":
            variables[key.split(".", 1)[1]] = value
        else:
            variables[key] = value
    return run, variables


def load_run(spec: str | os.PathLike, config: str | os.PathLike | None = None,
             overrides: dict[str, Any] | None = None):
    """The spec's source, its checked run configuration, and the variable overrides:
    what `train`, the launcher's check and the Lightning adapter all start from."""
    from pathlib import Path

    from ..compiler.load import load_spec_source

    run_over, var_over = split_overrides(dict(overrides or {}))
    source = load_spec_source(Path(spec))
    return source, load_run_config(source.main, config, run_over), var_over


def load_run_config(spec_doc: Document, config_path: str | os.PathLike | None = None,
                    overrides: dict[str, Any] | None = None) -> RunConfig:  # fmt: skip
    """Merge the spec's sections, a config file and dotted overrides; check; fill defaults."""
    # named defaults first, so `optimizer: {lr: 0.01}` or `--set train.optimizer.lr=0.01`
    # adjusts the default optimizer instead of leaving one without a name
    merged: dict = {"data": {}, "train": {k: copy.deepcopy(TRAIN_PROPS[k]["default"])
                                          for k in ("optimizer", "loss")}}  # fmt: skip
    locs: dict = {}
    variables: dict = {}
    weights: dict = {}  # init:, freeze: (the spec's own are the compiler's)
    _merge_doc(merged, locs, spec_doc)
    if config_path is not None:
        doc = load_config_file(config_path)
        _merge_doc(merged, locs, doc)
        _merge_weights(weights, locs, doc)
        file_vars = (doc.data or {}).get("vars") or {}
        if not isinstance(file_vars, dict):
            raise ConfigError("expected a mapping of variables", doc.loc(("vars",)), "vars")
        variables.update(file_vars)
    for key, value in (overrides or {}).items():
        if key.split(".", 1)[0] in WEIGHT_KEYS:
            _apply_weights_override(weights, locs, key, value)
        else:
            _apply_override(merged, locs, key, value)
    _check(merged, locs)
    _check_weights(weights, locs)
    _fill_defaults(merged)
    return RunConfig(merged["data"], merged["train"], variables, locs, weights)


# the model's weights: a config file's or --set's take the place of the spec's keys
WEIGHT_KEYS = ("init", "freeze")
CONFIG_KEYS = ("data", "train", "vars", "tune", *WEIGHT_KEYS)  # tune: is read by runtime/tune.py


def _merge_weights(weights: dict, locs: dict, doc: Document) -> None:
    data = doc.data if isinstance(doc.data, dict) else {}
    for key in WEIGHT_KEYS:
        if key in data:
            weights[key] = _bare_file(key, copy.deepcopy(data[key]))
            locs.update({p: loc for p, loc in doc.locs.items() if p[:1] == (key,)})


def _bare_file(key: str, value: Any) -> Any:
    """`init: resnet18.pt` (or `--set init=resnet18.pt`) is `init: {file: resnet18.pt}`."""
    return {"file": value} if key == "init" and isinstance(value, str) else value


def _apply_weights_override(weights: dict, locs: dict, key: str, value: Any) -> None:
    """`--set init=FILE`, `--set freeze=[conv1,"layer*"]`, or a key inside the run's
    `init:` mapping (`--set init.torchvision=resnet18 --set init.exclude=[fc]`)."""
    where = ArgLocation(f"--set {key}={_show(value)}", 0, 0)
    head, _, inner = key.partition(".")
    if not inner:
        weights[head] = _bare_file(head, value)
        for p in [p for p in locs if p[:1] == (head,)]:
            del locs[p]
    elif head == "init" and "." not in inner and isinstance(weights.get("init", {}), dict):
        weights.setdefault("init", {})[inner] = value
        locs.setdefault(("init",), where)  # the mapping is the override's when it made it
    else:
        raise ConfigError(f"'{key}' is not a key of the run's init: mapping", where,
                          hint="--set init.KEY=VALUE sets one key of a single init: item; "
                          "--set init=FILE or freeze=[...] replaces the whole value")  # fmt: skip
    locs[(head, inner) if inner else (head,)] = where


def weights_overlay(overrides: dict[str, Any]):
    """The `init`/`freeze` items of `--set` overrides as a compiler overlay (what `yamlnet
    summary`, `graph` and `compile` take of a run's settings); other keys are ignored."""
    weights: dict = {}
    locs: dict = {}
    for key, value in overrides.items():
        if key.split(".", 1)[0] in WEIGHT_KEYS:
            _apply_weights_override(weights, locs, key, value)
    _check_weights(weights, locs)
    return RunConfig({}, {}, {}, locs, weights).weights_overlay()


def _check_weights(weights: dict, locs: dict) -> None:
    """init: and freeze: against the spec schema's (null or [] stands for none)."""
    from ..compiler.schema import document_schema

    props = document_schema()["properties"]
    problems: list[Diagnostic] = []
    for key, value in weights.items():
        if value not in (None, []):
            problems += _problems({key: value}, {"type": "object", "properties": {key: props[key]}}, (), locs)
    if problems:
        raise ConfigError(diagnostics=problems)


def load_config_file(path) -> Document:
    """A `--config` file, its top-level keys checked (its sections are merged elsewhere)."""
    from ..compiler.errors import LoadError

    kind = not_a_regular_file(path)
    if kind is not None:
        raise ConfigError(f"cannot read the config file: it is {kind}, not a file",
                          ArgLocation(f"--config {path}", 0, 0))  # fmt: skip
    try:
        with open(path, "rb") as fh:
            raw = fh.read(LIMITS["max_bytes"] + 1)
        if len(raw) > LIMITS["max_bytes"]:  # cut at the limit, it would read as broken YAML
            raise ConfigError(f"the config file is over {LIMITS['max_bytes']:,} bytes, the limit for a YAML file",
                              ArgLocation(f"--config {path}", 0, 0))  # fmt: skip
        doc = load_document(raw, os.fspath(path))
    except OSError as err:
        raise ConfigError(f"cannot read the config file: {err.strerror or err}",
                          ArgLocation(f"--config {path}", 0, 0)) from None  # fmt: skip
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise LoadError("a config file is a mapping with data:, train:, vars: or tune:", doc.loc(()))
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown key '{key}'", doc.loc((key,)), key,
                              did_you_mean(key, CONFIG_KEYS) or
                              "a config file holds data:, train:, vars: and tune:")  # fmt: skip
    return doc



def _merge_doc(merged: dict, locs: dict, doc: Document) -> None:
    data = doc.data if isinstance(doc.data, dict) else {}
    for section in ("data", "train"):
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"expected a mapping, got {type(body).__name__}", doc.loc((section,)),
                              section)  # fmt: skip
        if section == "data":
            _switch_dataset(merged["data"], locs, body.get("dataset"))
        _deep_merge(merged[section], _normalise(section, body))
        locs.update({p: loc for p, loc in doc.locs.items() if p[:1] == (section,)})


def _switch_dataset(data: dict, locs: dict, new: Any) -> None:
    """A later source naming another dataset replaces the source: the earlier dataset's
    own keys (digits' flatten, say) go with it; the loader keys stay."""
    old = data.get("dataset", DATA_PROPS["dataset"]["default"])
    if new is None or new == old or old not in DATASETS:
        return
    for key in set(DATASETS[old].args) - set(DATA_PROPS):
        if data.pop(key, None) is not None:
            locs.pop(("data", key), None)


_NAMED_KEYS = {"train": ("optimizer", "scheduler", "loss"), "data": ()}
_NAMED_LISTS = {"train": ("metrics", "loggers"), "data": ("transforms", "val_transforms")}


def _normalise(section: str, body: dict) -> dict:
    """Bare names -> {name: ...}, in a copy."""
    body = copy.deepcopy(body)
    for key in _NAMED_KEYS[section]:
        if isinstance(body.get(key), str):
            body[key] = {"name": body[key]}
    if section == "train" and isinstance(body.get("loss"), list):
        body["loss"] = [{"name": v} if isinstance(v, str) else v for v in body["loss"]]
    for key in _NAMED_LISTS[section]:
        if isinstance(body.get(key), list):
            body[key] = [{"name": v} if isinstance(v, str) else v for v in body[key]]
    if section == "train" and body.get("precision") == 32:
        body["precision"] = "32"  # written unquoted in YAML
    return body


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "name" not in value:
            _deep_merge(into[key], value)
        else:
            into[key] = value  # a named thing is replaced whole: its arguments belong to it


def _apply_override(merged: dict, locs: dict, key: str, value: Any) -> None:
    where = ArgLocation(f"--set {key}={_show(value)}", 0, 0)
    parts = tuple(key.split("."))
    if parts[0] not in ("data", "train") or len(parts) < 2 or not all(parts):
        raise ConfigError(f"'{key}' is not a dotted key under data. or train.", where)
    node = merged
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and i > 0:
            child = node[part] = {}
            locs[parts[: i + 1]] = where  # the mapping is the override's, and so are its errors
        if not isinstance(child, dict):
            raise ConfigError(f"{format_path(parts[: i + 1])} is not a mapping", where)
        node = child
    if parts[:2] == ("data", "dataset"):
        _switch_dataset(merged["data"], locs, value)
    section_value = _normalise(parts[0], {parts[1]: value})[parts[1]] if len(parts) == 2 else value
    node[parts[-1]] = section_value
    for p in [p for p in locs if p[: len(parts)] == parts]:
        del locs[p]
    locs[parts] = where


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _check(merged: dict, locs: dict) -> None:
    problems: list[Diagnostic] = []
    problems += _problems(merged["train"], train_schema(), ("train",), locs)
    dataset = merged["data"].get("dataset", DATA_PROPS["dataset"]["default"])
    if not isinstance(dataset, str) or dataset not in DATASETS:
        path = ("data", "dataset")
        hint = did_you_mean(str(dataset), DATASETS) or "sources: " + ", ".join(DATASETS)
        problems.append(Diagnostic(f"unknown dataset '{dataset}'", nearest_loc(locs, path), "data.dataset",
                                   hint))  # fmt: skip
    else:
        problems += _problems(merged["data"], data_schema(dataset), ("data",), locs)
    if problems:
        raise ConfigError(diagnostics=problems)


def _problems(body: dict, schema: dict, base: tuple, locs: dict) -> list[Diagnostic]:
    out = []
    for err in sorted(StrictValidator(schema).iter_errors(body), key=lambda e: list(e.path)):
        err = _branch_error(err)
        path = base + schema_error_path(err)
        message, hint = explain_schema_error(err)
        out.append(Diagnostic(message, nearest_loc(locs, path), format_path(path), hint))
    return out


def _branch_error(err):
    """For `scheduler: {step_size: 3}` (a mapping or null), the mapping branch's own error
    ("missing required key 'name'"), not "is not valid under any of the given schemas"."""
    if err.validator == "anyOf" and err.context:
        inner = [e for e in err.context if e.validator != "type"]
        if inner:
            return inner[0]
    return err


def _fill_defaults(merged: dict) -> None:
    for key, schema in TRAIN_PROPS.items():
        merged["train"].setdefault(key, copy.deepcopy(schema.get("default")))
    for key, schema in TRAIN_PROPS["fsdp"]["properties"].items():
        merged["train"]["fsdp"].setdefault(key, schema["default"])
    es = merged["train"]["early_stopping"]
    if es is not None:
        es.setdefault("patience", 5)
        es.setdefault("min_delta", 0)
    data = merged["data"]
    data.setdefault("dataset", DATA_PROPS["dataset"]["default"])
    for key, schema in {**DATA_PROPS, **DATASETS[data["dataset"]].args}.items():
        data.setdefault(key, copy.deepcopy(schema.get("default")))
