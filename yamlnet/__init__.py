"""yamlnet — a declarative model-graph compiler for PyTorch.

    >>> import yamlnet
    >>> model = yamlnet.compile("specs/mlp.yaml", hidden=64)   # doctest: +SKIP
    >>> model(torch.randn(8, 64)).shape                         # doctest: +SKIP
    torch.Size([8, 10])

Importing yamlnet is cheap: torch is imported when a function needs it.
"""

from __future__ import annotations

import os
from typing import Any

from .compiler.errors import SpecError

__version__ = "0.1.0"
__all__ = [
    "compile", "build", "load_spec", "named_outputs", "register_op", "train", "evaluate", "predict", "generate",
    "export",
    "from_module", "published_schema", "SpecError", "__version__",
]  # fmt: skip


def compile(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Compile a spec (a path or YAML text) into an `nn.Module` (a torch.fx GraphModule).

    Keyword arguments override the spec's `vars:` (`yamlnet.compile(path, depth=50)`);
    `init=` and `freeze=` take the place of the spec's `init:` and `freeze:`, as in a run's
    config (`yamlnet.compile("zoo:resnet18", freeze=["layer1"], init="r18.pt")`).
    Raises `SpecError` with a located message for any mistake in the spec.
    """
    return build(source, plugins=plugins, **overrides).module


def build(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Like `compile`, but returns the whole `Compiled` result: module, expanded spec,
    typed graph (shapes, args, parameter counts) and the spec hash."""
    from .compiler.compile import compile_spec

    variables, overlay = _split(overrides)
    return compile_spec(source, variables, plugins=tuple(plugins), overlay=overlay)


def load_spec(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Load, validate and expand a spec without building it: an `ExpandedSpec`."""
    from .compiler.compile import compile_spec

    return compile_spec(source, _plain(overrides), plugins=tuple(plugins), build=False).spec


def named_outputs(model, *inputs: Any) -> dict:
    """Run a compiled model and name what it returns by the spec's output names (in
    training, the train outputs too): `yamlnet.named_outputs(model, x)["aux"]`."""
    from .compiler.codegen import output_names

    names = output_names(model)
    values = model(*inputs)
    return dict(zip(names, values if len(names) > 1 else (values,), strict=True))


def _split(overrides: dict):
    """Variables, and `init=`/`freeze=` as the compiler's overlay (None without them)."""
    from .runtime.config import WEIGHT_KEYS, weights_overlay

    plain = _plain(overrides)
    weights = {k: v for k, v in plain.items() if k.split(".", 1)[0] in WEIGHT_KEYS}
    variables = {k: v for k, v in plain.items() if k not in weights}
    return variables, (weights_overlay(weights) if weights else None)


def _plain(overrides: dict) -> dict:
    """Python values as the spec would write them (tuples are YAML lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def register_op(name: str, target: Any, **kwargs: Any):
    """Register a user op (an nn.Module class or a function); see `compiler.registry`."""
    from .compiler.registry import register_op as _register

    return _register(name, target, **kwargs)


def train(spec: str | os.PathLike, **kwargs: Any):
    """Train a spec from its `data:`/`train:` sections; returns a `TrainResult` (final
    metrics, run folder, best and last checkpoints). Overrides use `--set` keys:
    `yamlnet.train("digits.yaml", out="runs/d", **{"train.epochs": 3, "width": 64})`.
    See `yamlnet.runtime.train.train` for every option."""
    from .runtime.train import train as _train

    return _train(spec, **kwargs)


def evaluate(spec: str | os.PathLike, checkpoint: str | os.PathLike, **kwargs: Any) -> dict:
    """Loss and metrics of a checkpoint (a file or a run folder) on the spec's data."""
    from .runtime.evaluate import evaluate as _evaluate

    return _evaluate(spec, checkpoint, **kwargs)


def predict(spec: str | os.PathLike, checkpoint: str | os.PathLike, inputs: Any, **kwargs: Any):
    """Outputs of a checkpoint (or a weights file) on samples: a path (images, a folder of
    them searched recursively, .csv with or without a header, .npz, .pt), a tensor or
    array, or a dict of them by input name. Returns `Predictions` (`.rows()`, `.outputs`)."""
    from .runtime.predict import predict as _predict

    return _predict(spec, checkpoint, inputs, **kwargs)


def generate(spec: str | os.PathLike, checkpoint: str | os.PathLike, prompt: str, **kwargs: Any):
    """Continue `prompt` with a trained language model (the run's tokenizer, the last
    block_size tokens as context): a `Generation` (`.text` is the continuation)."""
    from .runtime.generate import generate as _generate

    return _generate(spec, checkpoint, prompt, **kwargs)


def export(spec: str | os.PathLike, *, format: str, **kwargs: Any):
    """Export a spec (optionally with `checkpoint=` weights) to "onnx", "torchscript" or
    "pt2", verified in a fresh process by default; returns an `ExportResult`."""
    from .runtime.export import export as _export

    return _export(spec, format=format, **kwargs)


def from_module(module, inputs: dict[str, Any], *, name: str | None = None,
                dims: dict[str, int] | None = None, check: bool = True):  # fmt: skip
    """Write a spec for an `nn.Module` (what `yamlnet import` does): `inputs` maps each
    forward argument to its shape, or to (shape, dtype): `{"x": ["N", 3, 224, 224]}`.
    The module is put in eval mode and traced with torch.fx; with `check` the spec is
    compiled back, loaded with the module's state_dict (strict) and compared on sample
    inputs. Returns an `ImportResult` (`.text` is the spec). Raises `SpecError`."""
    from .compiler.importer import import_module

    decls = []
    for key, value in inputs.items():
        shape, dtype = value if isinstance(value, tuple) else (value, "float32")
        decls.append((key, list(shape), dtype))
    return import_module(module, decls, name=name, dims=dims, check=check)


def published_schema() -> dict:
    """The JSON Schema of a whole spec file, `data:` and `train:` included (for editors;
    `yamlnet schema` prints it and specs/schema.json holds it)."""
    from .compiler.schema import published_schema as model_schema
    from .runtime.config import section_schemas
    from .runtime.space import tune_schema

    schema = model_schema()
    for key, section in {**section_schemas(), "tune": tune_schema(editors=True)}.items():
        schema["properties"][key] = {**section, "description": schema["properties"][key]["description"]}
    return schema
