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
    name = REGISTRY.module_op(type(module)) or _plain_subclass_op(type(module))
    if name is None or _stand_in(module) is not None:
        return None
    if REGISTRY.get(name).source == "torchvision.ops" and name not in _TV_LEAVES:
        return None  # compositions of torch.nn layers: traced, so their layers keep their names
    return name


# what a subclass may define and still be its base layer: a constructor, docs, new names
_SUBCLASS_KEEPS = {"__init__", "__module__", "__qualname__", "__doc__", "__annotations__", "__dict__",
                   "__weakref__", "__firstlineno__", "__static_attributes__", "__parameters__",
                   "__orig_bases__", "extra_repr"}  # fmt: skip


def _plain_subclass_op(cls: type) -> str | None:
    """The torch.nn op a subclass is when it only computes its base's constructor arguments
    (torchvision's `Conv3DSimple(nn.Conv3d)`): it overrides nothing its base has but
    `__init__`, so it runs as its base, whose arguments are read off the instance."""
    for k, base in enumerate(cls.__mro__[1:], start=1):
        name = REGISTRY.module_op(base)
        if name is None:
            continue
        if REGISTRY.get(name).source != "torch.nn":
            return None
        for sub in cls.__mro__[:k]:
            if any(key not in _SUBCLASS_KEEPS and hasattr(base, key) for key in vars(sub)):
                return None  # forward (or a method it calls) is the subclass's own
        return name
    return None


def _stand_in(module):
    """For a torch.nn layer made of layers (TransformerEncoder), a forward to trace in place
    of its own, whose fast-path checks fx cannot follow: its layers one after another, each
    keeping its name (`layers.0.self_attn...`). None for every other module."""
    import torch.nn as nn

    if type(module) is not nn.TransformerEncoder:
        return None

    def forward(src, mask=None, src_key_padding_mask=None, is_causal=None):
        if mask is not None or src_key_padding_mask is not None or is_causal:
            raise ImportFailure("a TransformerEncoder is called with a mask; the importer takes "
                                "it without masks only")  # fmt: skip
        for layer in module.layers:
            src = layer(src)
        return src if module.norm is None else module.norm(src)

    return forward


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
    """Equal and of one type, all the way down: True is not 1, [True] is not [1]."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b
