"""The `tune:` section of a spec or `--config` file: its schema, its defaults, and its
search space checked against the run's keys and the spec's variables before any trial
runs (what `yamlnet tune` sweeps; runtime/tune.py runs the study).

A space key is written as a `--set` key: `train.optimizer.lr`, `data.batch_size`, or a
variable (`vars.width`, or plainly `width`). A trial's values reach the run exactly as
`--set` items would, so every key is tried that way here first, with the ends of its
range and each of its choices: a key the run does not have, or a value it refuses, is
one located line before the study starts. A variable's values are tried by compiling the
spec (shapes only) with each in turn, the other variables at their own values. Arguments
of the scheduler or the loss are checked only when a trial builds them (the optimizer's
are checked here).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from ..compiler.errors import SpecError, did_you_mean
from ..compiler.load import Document, SpecSource, nearest_loc
from ..compiler.validate import (
    StrictValidator,
    explain_schema_error,
    format_path,
    schema_error_path,
)
from .config import RunConfig, load_config_file, load_run_config, split_overrides
from .errors import ArgLocation, ConfigError

__all__ = ["TuneConfig", "load_tune", "tune_schema", "KINDS", "PRUNERS", "SAMPLERS"]

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")
SAMPLERS = ("tpe", "random", "qmc")
_KEY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


def _pair(item: str) -> dict:
    return {"type": "array", "items": {"type": item}, "minItems": 2, "maxItems": 2,
            "description": "[low, high]"}  # fmt: skip


_SCALAR = {"type": ["number", "string", "boolean", "null"]}
DISTRIBUTION = {
    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {"uniform": _pair("number"), "log_uniform": _pair("number"), "int": _pair("integer"),
                   "log_int": _pair("integer"),
                   "choice": {"type": "array", "items": _SCALAR, "minItems": 1, "maxItems": 1000}},
    "description": "one of uniform, log_uniform, int, log_int: [low, high]; or choice: [values]",
}  # fmt: skip


def _named(names: tuple, default: str, doc: str) -> dict:
    return {"type": "object", "required": ["name"], "properties": {"name": {"enum": list(names)}},
            "default": {"name": default}, "description": doc}  # fmt: skip


TUNE_PROPS: dict[str, dict] = {
    "space": {"type": "object", "minProperties": 1, "maxProperties": 64, "additionalProperties": DISTRIBUTION,
              "propertyNames": {"pattern": _KEY},
              "description": "what each trial draws: {run key or variable: distribution}"},
    "metric": {"type": ["string", "null"], "default": None,
               "description": "the validation value a trial is judged by (default: train.monitor)"},
    "direction": {"enum": ["maximize", "minimize", None], "default": None,
                  "description": "default: the metric's own (train.mode for the monitor)"},
    "trials": {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 20,
               "description": "finished trials the study aims at, over all its processes"},
    "pruner": _named(PRUNERS, "median", "stops trials whose validations fall behind: an Optuna "
                     "pruner by name with its own arguments ({name: median, n_startup_trials: 5})"),
    "sampler": _named(SAMPLERS, "tpe", "draws the trials' values: an Optuna sampler by name with "
                      "its own arguments"),
    "seed": {"type": ["integer", "null"], "minimum": 0, "default": None, "description": "the sampler's seed"},
    "grace_period": {"type": "integer", "minimum": 10, "maximum": 86_400, "default": 60,
                     "description": "seconds a trial's process may be silent before its trial is failed "
                     "and runs again"},
    "storage": {"type": ["string", "null"], "default": None,
                "description": "an Optuna RDB URL (default: sqlite in the study folder)"},
    "study": {"type": ["string", "null"], "minLength": 1, "maxLength": 200, "default": None,
              "description": "the study's name in the storage (default: the spec's name)"},
}  # fmt: skip


def tune_schema(editors: bool = False) -> dict:
    """What `tune:` is checked against (pruner and sampler made mappings first), or, for
    editors, the schema that also takes them as bare names."""
    props = copy.deepcopy(TUNE_PROPS)
    if editors:
        for key in ("pruner", "sampler"):
            named = props[key]
            props[key] = {"anyOf": [named["properties"]["name"], {k: v for k, v in named.items()
                                                                  if k not in ("default", "description")}],
                          "default": named["default"]["name"], "description": named["description"]}  # fmt: skip
    return {"type": "object", "additionalProperties": False, "properties": props}


@dataclass(frozen=True)
class TuneConfig:
    """A checked `tune:` with defaults filled, and where each value was written."""

    space: dict[str, tuple[str, list]]  # key -> (kind, [low, high] or choices)
    metric: str | None
    direction: str | None
    trials: int
    pruner: dict
    sampler: dict
    seed: int | None
    grace_period: int
    storage: str | None
    study: str | None
    locs: dict = field(default_factory=dict, repr=False)

    def error(self, message: str, path: tuple, hint: str = "") -> ConfigError:
        return ConfigError(message, nearest_loc(self.locs, ("tune", *path)), _path_text(("tune", *path)), hint)


def _path_text(path: tuple) -> str:
    """('tune', 'space', 'train.optimizer.lr', 'uniform') -> 'tune.space.train.optimizer.lr.uniform':
    a space key is a dotted key already, and reads best unquoted."""
    return ".".join(map(str, path)) if path[1:2] == ("space",) else format_path(path)


def load_tune(source: SpecSource, config: str | os.PathLike | None = None,
              overrides: dict[str, Any] | None = None, plugins: tuple[str, ...] = ()) -> TuneConfig:  # fmt: skip
    """The spec's `tune:` merged with a config file's (its keys win; its `space:` replaces
    the spec's whole), checked, and every space key tried on the run."""
    overrides = overrides or {}
    for key in overrides:
        if key.split(".", 1)[0] == "tune":
            raise ConfigError(f"'{key}' cannot be set: --set items are the trials' fixed run keys and "
                              "variables", ArgLocation(f"--set {key}", 0, 0), "",
                              "write it in tune:, or use --trials, --study, --storage")  # fmt: skip
    merged, locs = _merged(source.main, config)
    _check(merged, locs)
    for key, schema in TUNE_PROPS.items():
        merged.setdefault(key, copy.deepcopy(schema.get("default")))
    space = {key: next(iter(dist.items())) for key, dist in merged.pop("space").items()}
    tune = TuneConfig(space=space, locs=locs, **merged)
    for key, (kind, values) in space.items():
        _check_values(tune, key, kind, values)
    _refuse_overlap(tune, overrides)
    _try_keys(tune, source, config, overrides, plugins)
    return tune


def _name(key: str) -> str:
    """A key as the run reads it: 'vars.width' and 'width' are one variable."""
    return key.split(".", 1)[1] if key.startswith("vars.") else key


def _refuse_overlap(tune: TuneConfig, overrides: dict) -> None:
    drawn = {_name(k): k for k in tune.space}
    for key in overrides:
        if _name(key) in drawn:
            raise ConfigError(f"'{key}' is fixed here and drawn by tune.space.{drawn[_name(key)]}",
                              ArgLocation(f"--set {key}", 0, 0), "",
                              "drop the --set item, or the space key")  # fmt: skip


def _merged(spec_doc: Document, config) -> tuple[dict, dict]:
    merged, locs = {}, {}
    docs = [spec_doc] + ([load_config_file(config)] if config is not None else [])
    for doc in docs:
        body = (doc.data or {}).get("tune")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"expected a mapping, got {type(body).__name__}", doc.loc(("tune",)), "tune")
        if "space" in body:
            locs = {p: loc for p, loc in locs.items() if p[:2] != ("tune", "space")}
        merged.update(copy.deepcopy(body))
        locs.update({p: loc for p, loc in doc.locs.items() if p[:1] == ("tune",)})
    if not merged:
        raise ConfigError("the spec has no tune: section", spec_doc.loc(()), "",
                          "add one with a space:, or pass --config FILE with tune: in it")  # fmt: skip
    for key in ("pruner", "sampler"):
        if isinstance(merged.get(key), str):
            merged[key] = {"name": merged[key]}
    return merged, locs


def _check(merged: dict, locs: dict) -> None:
    problems = []
    if "space" not in merged:
        problems.append(SpecError("missing required key 'space'", nearest_loc(locs, ("tune",)), "tune",
                                  "space: {train.optimizer.lr: {log_uniform: [1e-4, 1e-1]}}").diagnostics[0])  # fmt: skip
    schema = tune_schema()
    for err in sorted(StrictValidator(schema).iter_errors(merged), key=lambda e: list(map(str, e.path))):
        path = ("tune", *schema_error_path(err))
        message, hint = explain_schema_error(err)
        if err.validator == "additionalProperties" and len(path) == 3 and path[1] == "space":
            hint = did_you_mean(message.split("'")[1], KINDS) or "kinds: " + ", ".join(KINDS)
        problems.append(SpecError(message, nearest_loc(locs, path), _path_text(path), hint).diagnostics[0])
    if problems:
        raise ConfigError(diagnostics=problems)


def _check_values(tune: TuneConfig, key: str, kind: str, values: list) -> None:
    where = ("space", key, kind)
    if kind == "choice":
        return
    low, high = values
    if low >= high:
        raise tune.error(f"low {low} is not below high {high}", where, "a fixed value is a --set item")
    if kind.startswith("log_") and low <= 0:
        raise tune.error(f"a log scale needs low > 0, got {low}", where, f"{kind[4:]}: [{low}, {high}] "
                         "for a linear scale")  # fmt: skip


# -- every key tried as the trials will pass it --------------------------------------


def candidates(kind: str, values: list) -> list:
    """The values a key is tried with before the study: its range's ends, or its choices."""
    if kind in ("uniform", "log_uniform"):
        return [float(values[0]), float(values[1])]
    return list(values)


def _try_keys(tune: TuneConfig, source: SpecSource, config, overrides: dict, plugins: tuple) -> None:
    run_over, var_over = split_overrides(overrides)
    defined = dict((source.main.data or {}).get("vars") or {})
    if config is not None:
        defined.update((load_config_file(config).data or {}).get("vars") or {})
    fixed = None  # the variables every trial compiles with: read once, if a variable is drawn
    for key, (kind, values) in tune.space.items():
        head = key.split(".", 1)[0]
        if head in ("data", "train"):
            for value in candidates(kind, values):
                _try_run_key(tune, source, config, run_over, key, value)
            continue
        _check_variable(tune, key, defined)
        fixed = fixed if fixed is not None else {**load_run_config(source.main, config, run_over).vars, **var_over}
        for value in candidates(kind, values):
            _try_variable(tune, source, plugins, {**fixed, _name(key): value}, key)


def _try_variable(tune: TuneConfig, source: SpecSource, plugins: tuple, variables: dict, key: str) -> None:
    """The spec compiled (shapes only, no weights) with one candidate of a drawn variable."""
    from ..compiler.compile import compile_spec

    try:
        compile_spec(source, variables, plugins=tuple(plugins), build=False)
    except ConfigError:
        raise
    except SpecError as err:
        said = err.diagnostics[0]
        where = f"{said.path}: " if said.path else ""
        raise tune.error(f"{_name(key)}={variables[_name(key)]!r}: {where}{said.message}", ("space", key),
                         said.hint) from None  # fmt: skip


def _try_run_key(tune: TuneConfig, source: SpecSource, config, run_over: dict, key: str, value) -> None:
    try:
        cfg = load_run_config(source.main, config, {**run_over, key: value})
        if key.startswith("train.optimizer."):
            _build_optimizer(cfg)
    except ConfigError as err:
        raise _relocated(tune, err, key, value) from None


def _build_optimizer(cfg: RunConfig) -> None:
    import torch

    from .optim import build_optimizer

    build_optimizer(cfg.train["optimizer"], [torch.nn.Parameter(torch.zeros(1))])


def _relocated(tune: TuneConfig, err: ConfigError, key: str, value) -> ConfigError:
    """The run's complaint about `--set KEY=VALUE`, said at the space key that drew it."""
    said = err.diagnostics[0]
    ours = said.loc is None or isinstance(said.loc, ArgLocation) and said.loc.file.startswith(f"--set {key}=")
    if not ours:
        return err  # the spec's, the config file's or a fixed --set item's own mistake
    message = said.message if said.path in ("", key) else f"{said.path}: {said.message}"
    hint = said.hint
    if said.message.startswith("expected an integer") and tune.space[key][0] == "uniform":
        hint = "int: [low, high] draws whole numbers"
    if said.message.startswith("unknown key") and said.path.count(".") == 1:
        hint = _close_run_key(key) or hint
    return tune.error(message, ("space", key), hint)


def _close_run_key(key: str) -> str:
    """'train.optimzer.lr' -> 'did you mean train.optimizer.lr?'"""
    import difflib

    from .config import DATA_PROPS, TRAIN_PROPS

    head, name, *rest = key.split(".")
    props = TRAIN_PROPS if head == "train" else DATA_PROPS
    close = difflib.get_close_matches(name, list(props), n=1, cutoff=0.6)
    return f"did you mean {'.'.join([head, close[0], *rest])}?" if close else ""


def _check_variable(tune: TuneConfig, key: str, defined: dict) -> None:
    name = key.split(".", 1)[1] if key.startswith("vars.") else key
    if name in defined:
        return
    known = [f"vars.{v}" for v in defined]
    hint = did_you_mean(key if key.startswith("vars.") else f"vars.{key}", known)
    if not key.startswith("vars."):
        hint = did_you_mean(key, [*known, "train.epochs", "train.optimizer.lr", "data.batch_size"]) or hint
    raise tune.error(f"the spec has no variable '{name}'", ("space", key),
                     hint or (f"its vars: {', '.join(defined)}" if defined else "the spec has no vars:; "
                              "run keys start with train. or data."))  # fmt: skip
