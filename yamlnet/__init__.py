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
__all__ = ["compile", "build", "load_spec", "register_op", "SpecError", "__version__"]


def compile(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Compile a spec (a path or YAML text) into an `nn.Module` (a torch.fx GraphModule).

    Keyword arguments override the spec's `vars:` (`yamlnet.compile(path, depth=50)`).
    Raises `SpecError` with a located message for any mistake in the spec.
    """
    return build(source, plugins=plugins, **overrides).module


def build(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Like `compile`, but returns the whole `Compiled` result: module, expanded spec,
    typed graph (shapes, args, parameter counts) and the spec hash."""
    from .compiler.compile import compile_spec

    return compile_spec(source, _plain(overrides), plugins=tuple(plugins))


def load_spec(source: str | os.PathLike, *, plugins: tuple[str, ...] = (), **overrides: Any):
    """Load, validate and expand a spec without building it: an `ExpandedSpec`."""
    from .compiler.compile import compile_spec

    return compile_spec(source, _plain(overrides), plugins=tuple(plugins), build=False).spec


def _plain(overrides: dict) -> dict:
    """Python values as the spec would write them (tuples are YAML lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def register_op(name: str, target: Any, **kwargs: Any):
    """Register a user op (an nn.Module class or a function); see `compiler.registry`."""
    from .compiler.registry import register_op as _register

    return _register(name, target, **kwargs)
