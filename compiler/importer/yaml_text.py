"""Small helpers for writing values as YAML text: scalars, flow collections, expressions of i,
and the types and defaults of block parameters."""

from __future__ import annotations

import math
import re

from .common import MISSING, _PerI, _same, _Sentinel

_NO_DEFAULT = _Sentinel("<no default>")
_NODE_KEYS = {"op", "block", "nodes", "in", "call", "repeat", "if", "name"}


def _is_per_i(values) -> bool:
    return (
        any(isinstance(v, _PerI) for v in values)
        if isinstance(values, list)
        else isinstance(values, _PerI)
    )


def _over_i(values: _PerI):
    """Values along a repeat as the shortest expression of i."""
    vals = list(values)
    if all(_same(v, vals[0]) for v in vals):
        return vals[0]
    if all(_same(v, vals[1]) for v in vals[1:]):
        a, b = vals[0], vals[1]
        if a is True and b is False:
            return "${i == 0}"
        if a is False and b is True:
            return "${i != 0}"
        return f"${{{_expr(a)} if i == 0 else {_expr(b)}}}"
    return f"${{{_expr(vals)}[i]}}"


def _as_value(v):
    """A parameter value as a block use passes it (values along a repeat: a list)."""
    return list(v) if isinstance(v, _PerI) else v


def _expr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_expr(x) for x in v) + "]"
    return repr(v)


def _hashable(v):
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_hashable(x) for x in v))
    return (type(v).__name__, v) if not isinstance(v, _Sentinel) else ("sentinel", id(v))


def _type_name(values) -> str:
    defined = [v for v in values if v is not MISSING]
    kinds = {type(v) for v in defined}
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int"
    if kinds <= {int, float} and kinds:
        return "float"
    if kinds == {str}:
        return "str"
    if kinds and all(issubclass(k, (list, tuple)) for k in kinds):
        return "list"
    return "any"


def _param_default(value):
    if isinstance(value, str) and value in ("int", "float", "bool", "str", "list", "dict", "any"):
        return {"type": "str", "default": value}
    return list(value) if isinstance(value, tuple) else value


_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "~"}


def _scalar(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or math.isfinite(v) else json.dumps(str(v))
    s = str(v)
    if _PLAIN_WORD.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s)


def _flow(v) -> str:
    if isinstance(v, dict):
        return (
            "{"
            + ", ".join(
                f"{_scalar(k)}: {_flow(x)}" for k, x in v.items() if x is not None or k != "nodes"
            )
            + "}"
        )
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def _unique(base: str, used: set) -> str:
    name, k = base, 2
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name
