"""Loading the user's target (`MODULE:ATTR`) and turning the `--input` shapes into forward's
inputs and sample tensors."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from ..errors import SpecError
from ..schema import DTYPES
from .common import ImportFailure, _first, _leaf_op, _stand_in


# ---- loading the user's module ----------------------------------------------------------
def load_target(target: str, kwargs: dict | None = None):
    """`MODULE:ATTR` or `path/to/file.py:ATTR` -> an nn.Module (calling ATTR with kwargs
    when it is a class or function). This runs the user's code, on their request."""
    import torch.nn as nn

    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ImportFailure(
            f"'{target}' is not MODULE:ATTR", hint="e.g. torchvision.models:resnet18 or net.py:Net"
        )
    try:
        if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
            if not os.path.isfile(mod_name):
                raise ImportFailure(f"no such file: {mod_name}")
            name = "_yamlnet_import_" + re.sub(
                r"\W", "_", os.path.splitext(os.path.basename(mod_name))[0]
            )
            spec = importlib.util.spec_from_file_location(name, mod_name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            added = os.getcwd() not in sys.path
            if added:  # as `python -c` would: the user's own packages in this folder
                sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(os.getcwd())
    except ImportFailure:
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: any failure is reported
        raise ImportFailure(
            f"cannot import {mod_name}: {type(err).__name__}: {_first(err)}"
        ) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportFailure(f"{mod_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ImportFailure(f"{target} is a module instance; it takes no --arg")
        return obj
    if not callable(obj):
        raise ImportFailure(f"{target} is not an nn.Module, a class or a function")
    try:
        built = obj(**(kwargs or {}))
    except Exception as err:  # noqa: BLE001
        raise ImportFailure(f"{target}(...) raised {type(err).__name__}: {_first(err)}") from err
    if not isinstance(built, nn.Module):
        raise ImportFailure(f"{target}(...) returned {type(built).__name__}, not an nn.Module")
    return built


def parse_input(text: str) -> tuple[str | None, list, str]:
    """`x=[N,3,224,224]`, `[N,3,32,32]` or `tokens=[N,T]:int64` -> (name, shape, dtype)."""
    from ..expand import parse_override

    name, dtype = None, "float32"
    m = re.match(r"^\s*([A-Za-z_]\w*)\s*=(.*)$", text)
    if m:
        name, text = m.group(1), m.group(2)
    m = re.match(r"^(.*\])\s*:\s*(\w+)\s*$", text)
    if m:
        text, dtype = m.group(1), m.group(2)
    try:
        shape = parse_override(text)
    except SpecError:
        shape = None
    ok = isinstance(shape, list) and shape and all(
        (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d.isidentifier())
        for d in shape
    )  # fmt: skip
    if not ok:
        raise ImportFailure(f"--input {text.strip()!r}: expected a shape such as [N, 3, 224, 224]")
    if dtype not in DTYPES:
        raise ImportFailure(
            f"--input: unknown dtype '{dtype}'", hint=f"one of {', '.join(DTYPES)}"
        )
    return name, shape, dtype


def _input_decls(module, inputs) -> list[tuple[str, list, str]]:
    """(name, shape, dtype) of each input, in forward's order."""
    import inspect

    cls = type(module).__name__
    if _leaf_op(module) is not None:
        raise ImportFailure(
            f"{cls} is itself a layer: write {{op: {_leaf_op(module)}, ...}} in a spec"
        )
    if _stand_in(module) is not None:  # its own forward is what fx cannot follow
        raise ImportFailure(f"{cls} can be imported inside a module, not by itself",
                            hint="import a module that holds it")  # fmt: skip
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ImportFailure(f"{cls}.forward takes *args; a spec's inputs are named")
    kw_only = [
        p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if kw_only:
        raise ImportFailure(f"{cls}.forward needs the keyword-only argument '{kw_only[0]}'; a spec's "
                            "inputs are positional")  # fmt: skip
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    if not positional:
        raise ImportFailure(f"{cls}.forward takes no tensor inputs")
    sig = f"{cls}.forward({', '.join(p.name for p in positional)})"
    if not inputs:
        first = required[0] if required else "x"
        raise ImportFailure(
            f"give each input of {sig} a shape", hint=f"--input {first}=[N,3,224,224]"
        )
    names = []
    for k, (given, _, _) in enumerate(inputs):
        if given is None:
            if k >= len(positional):
                raise ImportFailure(f"{sig} takes {len(positional)} inputs, got {len(inputs)}")
            given = positional[k].name
        names.append(given)
    known = [p.name for p in positional]
    for n in names:
        if n not in known:
            raise ImportFailure(f"{sig} has no input '{n}'")
    missing = [n for n in required if n not in names]
    if missing:
        raise ImportFailure(
            f"{sig} needs a shape for {', '.join(missing)}", hint=f"--input {missing[0]}=[...]"
        )
    if len(set(names)) != len(names):
        raise ImportFailure("an input is given twice")
    decls = [(n, shape, dtype) for n, (_, shape, dtype) in zip(names, inputs, strict=True)]
    return sorted(decls, key=lambda d: [p.name for p in positional].index(d[0]))


def _samples(decls, dims: dict[str, int]) -> dict[str, int]:
    """A concrete size for every symbolic dim: N=3, the others 8, 12, 16, ... (distinct,
    so that a size computed in forward tells which dim it is), unless --dim says."""
    sample: dict[str, int] = {}
    others = iter(range(8, 10_000, 4))
    for _, shape, _ in decls:
        for d in shape:
            if isinstance(d, str) and d not in sample:
                sample[d] = dims[d] if d in dims else 3 if d == "N" else next(others)
    unknown = set(dims) - set(sample)
    if unknown:
        raise ImportFailure(f"--dim {sorted(unknown)[0]}: no input has that symbolic dim")
    return sample


def _example(shape, dtype, sample):
    import torch

    size = [sample[d] if isinstance(d, str) else d for d in shape]
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    if dt.is_floating_point:
        return torch.randn(size, generator=gen).to(dt)
    if dt == torch.bool:
        return torch.randint(0, 2, size, generator=gen).bool()
    return torch.randint(0, 2, size, generator=gen).to(dt)
