"""What every step of the import shares: its error and result types, and small helpers for
names, modules and values."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError
from ..registry import REGISTRY


class ImportFailure(SpecError):
    """The module cannot be imported, traced, or said as a spec."""


@dataclass(frozen=True)
class ImportResult:
    text: str  # the spec
    name: str
    nodes: int  # nodes of the expanded spec
    parameters: int
    max_abs_diff: float | None  # outputs of the spec vs the module (None: not checked)
    sample: dict  # symbolic dim -> the size the check used


def snake_case(name: str) -> str:
    """ResNet -> res_net, MLPBlock -> mlp_block: a class's name as a spec name."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower()
    s = re.sub(r"\W", "_", s)
    return s if s and not s[0].isdigit() else f"m_{s}"


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _few(keys: list) -> str:
    keys = list(keys)
    return (
        "none"
        if not keys
        else ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    )


def _is_node(v) -> bool:
    return hasattr(v, "op") and hasattr(v, "target")


_TV_LEAVES = {"StochasticDepth", "Permute", "FrozenBatchNorm2d", "DropBlock2d", "DropBlock3d"}


def _leaf_op(module) -> str | None:
    """The registry op a module instance is, or None when it is to be traced through."""
    name = REGISTRY.module_op(type(module))
    if name is None:
        return None
    if REGISTRY.get(name).source == "torchvision.ops" and name not in _TV_LEAVES:
        return None  # compositions of torch.nn layers: traced, so their layers keep their names
    return name


def _is_container(module) -> bool:
    import torch.nn as nn

    return type(module) in (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = _Sentinel("<absent>")  # a value of a node that one instance does not have


class _PerI(tuple):
    """The values of one argument along a repeat (index i)."""


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b and type(a) is type(b))  # fmt: skip
