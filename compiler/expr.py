"""Safe expressions: the `${...}` inside spec strings.

An expression is parsed with `ast.parse(..., mode="eval")` (parsing runs no code) and
then *interpreted* by walking a small whitelist of node types; nothing is ever handed
to Python's `eval`. What exists:

    literals      1  2.5  "s"  true/false (also True/False)  none  [a, b]
    names         variables, block parameters, `i` (the repeat index)
    arithmetic    + - * / // % **   (** with |exponent| <= 64; results bounded)
    comparison    == != < <= > >= in, not in, chained (a < b < c)
    logic         and or not, and the conditional `a if cond else b`
    indexing      xs[0]  table["key"]  xs[1:3]
    functions     min max sum abs int float round ceil floor log log2 sqrt len bool str divisible
                  shape(node) -> the node's inferred output shape as a list

A whole-string expression (`"${width * 2}"`) keeps its type (an int here); an
expression inside a longer string is formatted into it (`"block_${i}"`).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ExprError, Location, did_you_mean

__all__ = ["Scope", "evaluate", "resolve", "MAX_EXPR_CHARS"]

MAX_EXPR_CHARS = 400
MAX_INT = 2**63
MAX_LEN = 100_000  # the size of one value: characters of a string, or every item of a
# list or mapping counted in full, nested ones included, as often as they occur (a list
# that holds another twice counts it twice: that is what formatting or comparing it costs)
_EXPR = re.compile(r"\$\{([^{}]*)\}")


@dataclass
class Scope:
    """Names visible to an expression, and how to ask for a node's shape."""

    names: dict[str, Any] = field(default_factory=dict)
    shape_of: Callable[[str], list] | None = None

    def child(self, **names: Any) -> Scope:
        return Scope({**self.names, **names}, self.shape_of)


def resolve(value: Any, scope: Scope, loc: Location | None, path: str) -> Any:
    """Evaluate every `${...}` inside `value` (recursively through lists and dicts)."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        whole = _EXPR.fullmatch(value.strip())
        if whole:
            return evaluate(whole.group(1), scope, loc, path)
        if value.count("${") != len(_EXPR.findall(value)):
            raise ExprError(f"unterminated or nested expression in '{_short(value)}'", loc, path)
        return _interpolate(value, scope, loc, path)
    if isinstance(value, list):
        return [resolve(v, scope, loc, path) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, scope, loc, path) for k, v in value.items()}
    return value


def evaluate(text: str, scope: Scope, loc: Location | None = None, path: str = "") -> Any:
    """Evaluate one expression (the text between `${` and `}`).

    >>> evaluate("max(8, width // 2)", Scope({"width": 32}))
    16
    """
    src = text.strip()
    if not src:
        raise ExprError("empty expression ${}", loc, path)
    if len(src) > MAX_EXPR_CHARS:
        raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters", loc, path)
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError) as err:
        msg = getattr(err, "msg", str(err))
        raise ExprError(f"invalid expression '${{{_short(src)}}}': {msg}", loc, path) from None
    except (RecursionError, MemoryError):
        raise ExprError(f"expression '${{{_short(src)}}}' is nested too deeply", loc, path) from None
    try:
        return _Interpreter(scope, src).visit(tree.body)
    except ExprError as err:
        raise ExprError(err.diagnostics[0].message, loc, path, err.diagnostics[0].hint) from None
    except RecursionError:
        raise ExprError(f"expression '${{{_short(src)}}}' is nested too deeply", loc, path) from None


def _interpolate(value: str, scope: Scope, loc: Location | None, path: str) -> str:
    """Format each `${...}` of a longer string into it; the string as a whole is bounded
    like any one value, checked as it grows."""
    parts, total, at = [], 0, 0
    for match in _EXPR.finditer(value):
        result = evaluate(match.group(1), scope, loc, path)
        if size_of(result) > MAX_LEN:  # a list or mapping, formatted below
            raise ExprError(f"result is larger than {MAX_LEN:,} items", loc, path)
        for piece in (value[at : match.start()], _format(result)):
            total += len(piece)
            if total > MAX_LEN:
                raise ExprError(f"the string is longer than {MAX_LEN:,} characters", loc, path)
            parts.append(piece)
        at = match.end()
    parts.append(value[at:])
    if total + len(parts[-1]) > MAX_LEN:
        raise ExprError(f"the string is longer than {MAX_LEN:,} characters", loc, path)
    return "".join(parts)


def size_of(value: Any, limit: int = MAX_LEN, memo: dict | None = None) -> int:
    """The size of a value as formatting or comparing it would walk it: a string's
    characters, a list's or mapping's items in full (shared ones as often as they occur),
    1 for anything else. Each distinct list is walked once, so this is cheap even when the
    answer is huge; it stops counting past `limit`."""
    memo = {} if memo is None else memo
    return _size(value, limit, memo)


def _size(value: Any, limit: int, memo: dict) -> int:
    if isinstance(value, str):
        return max(1, len(value))
    if not isinstance(value, (list, tuple, dict)):
        return 1
    known = memo.get(id(value))
    if known is not None:
        return known[1]
    memo[id(value)] = (value, limit + 1)  # a value that holds itself counts as too large
    items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _size(item, limit, memo)
        if total > limit:
            break
    memo[id(value)] = (value, total)  # the value is kept so its id is not reused
    return total


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_CONSTANTS = {"true": True, "false": False, "none": None, "True": True, "False": False, "None": None}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _to_int(x: Any) -> int:
    if isinstance(x, str):
        x = x.strip()
        if not re.fullmatch(r"[-+]?[0-9]{1,18}", x):
            raise ExprError(f"int() cannot convert '{_short(x)}'")
        return int(x)
    if isinstance(x, float) and not math.isfinite(x):
        raise ExprError("int() of a non-finite number")
    return int(x)


def _round(x: Any, ndigits: int | None = None) -> Any:
    if ndigits is not None and (not _is_int(ndigits) or abs(ndigits) > 20):
        raise ExprError("round() digits must be an integer in [-20, 20]")
    return round(x) if ndigits is None else round(x, ndigits)


def _to_str(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if x is None:
        return "none"
    if isinstance(x, (int, float, str)):
        return str(x)
    raise ExprError(f"str() takes a number, a string or a bool, not {type(x).__name__}")


def _divisible(value: Any, divisor: Any = 8) -> int:
    """The channel rounding of MobileNet and EfficientNet: the nearest multiple of
    `divisor`, at least `divisor`, and never below 90% of `value`."""
    if not _is_int(divisor) or divisor < 1 or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError("divisible(value, divisor) takes a number and a positive integer")
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _sum(values: Any) -> Any:
    if not isinstance(values, list) or not all(_number(v) for v in values):
        raise ExprError("sum() takes a list of numbers")
    return sum(values)


def _log(x: Any, base: Any = math.e) -> float:
    if not (_number(x) and x > 0 and _number(base) and base > 0 and base != 1):
        raise ExprError("log(x, base) takes a number above 0 (and a base above 0, not 1)")
    return math.log(x, base)


def _log2(x: Any) -> float:
    if not (_number(x) and x > 0):
        raise ExprError("log2() takes a number above 0")
    return math.log2(x)


def _sqrt(x: Any) -> float:
    if not (_number(x) and x >= 0):
        raise ExprError("sqrt() takes a number of 0 or more")
    return math.sqrt(x)


def _error(message: Any) -> Any:
    """error('depth 18 and 34 take groups=1 only'): refuse a configuration in the spec's
    own words, at the expression (in a branch: `x if ok else error('...')`)."""
    if not isinstance(message, str):
        raise ExprError("error() takes a message, a string")
    raise ExprError(message[:300])


_FUNCS: dict[str, Callable] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": _to_int,
    "float": float,
    "round": _round,
    "ceil": math.ceil,
    "floor": math.floor,
    "len": len,
    "bool": bool,
    "str": _to_str,
    "divisible": _divisible,
    "sum": _sum,
    "log": _log,
    "log2": _log2,
    "sqrt": _sqrt,
    "error": _error,
}


class _Interpreter:
    def __init__(self, scope: Scope, src: str):
        self.scope = scope
        self.src = src
        self.sizes: dict = {}  # id -> (list, size) for the lists this expression has seen

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise ExprError(
                f"'{ast.unparse(node)}' is not allowed in an expression "
                "(only arithmetic, comparisons, conditionals, indexing and a few functions)"
            )
        return self._check(method(node))

    def _check(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ExprError("integer result is too large (limit 2**63)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ExprError("result is not a finite number")
        if isinstance(value, complex):
            raise ExprError("result is a complex number (a negative number to a fractional power?)")
        if isinstance(value, str) and len(value) > MAX_LEN:
            raise ExprError(f"the string is longer than {MAX_LEN:,} characters")
        if isinstance(value, (list, dict)) and _size(value, MAX_LEN, self.sizes) > MAX_LEN:
            raise ExprError(
                f"result is larger than {MAX_LEN:,} items, nested lists counted in full",
                hint="a list that holds another list twice holds its items twice",
            )
        return value

    def visit_Constant(self, node: ast.Constant) -> Any:
        if node.value is None or isinstance(node.value, (bool, int, float, str)):
            return node.value
        raise ExprError(f"constant {node.value!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.scope.names:
            return self.scope.names[node.id]
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ExprError(f"unknown name '{node.id}'", hint=did_you_mean(node.id, self.scope.names))

    def visit_List(self, node: ast.List) -> list:
        return [self.visit(e) for e in node.elts]

    visit_Tuple = visit_List

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if not _number(value):
            raise ExprError(f"unary minus/plus needs a number, got {_type(value)}")
        return -value if isinstance(node.op, ast.USub) else +value

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        op = type(node.op)
        if op not in _BINOPS:
            raise ExprError(f"operator {ast.unparse(node)} is not allowed")
        if op is ast.Add and type(left) is type(right) and isinstance(left, (str, list)):
            if len(left) + len(right) > MAX_LEN:  # before the copy is made
                raise ExprError(f"result is longer than {MAX_LEN:,} items")
            return left + right
        if op is ast.Mult and (isinstance(left, list) and _is_int(right) or _is_int(left) and isinstance(right, list)):
            items, times = (left, right) if isinstance(left, list) else (right, left)
            if size_of(items) * max(times, 0) > MAX_LEN:  # before the copy is made
                raise ExprError(f"result is larger than {MAX_LEN:,} items, nested lists counted in full")
            return items * times  # [0] * 3: a list repeated, as in Python
        if not (_number(left) and _number(right)):
            sym = next((v for v in (left, right) if isinstance(v, str)), None)
            hint = f"'{sym}' is a symbolic dimension" if sym and sym.isidentifier() else ""
            raise ExprError(
                f"cannot apply '{ast.unparse(node)}' to {_type(left)} and {_type(right)}",
                hint=hint,
            )
        if op is ast.Pow and (abs(right) > 64 or abs(left) > MAX_INT):
            raise ExprError("exponent too large in ** (limit 64)")
        try:
            return _BINOPS[op](left, right)
        except ZeroDivisionError:
            raise ExprError(f"division by zero in '{ast.unparse(node)}'") from None
        except OverflowError:
            raise ExprError(f"overflow in '{ast.unparse(node)}'") from None

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        is_and = isinstance(node.op, ast.And)
        value = None
        for expr in node.values:
            value = self.visit(expr)
            if bool(value) != is_and:
                return value
        return value

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op, expr in zip(node.ops, node.comparators, strict=True):
            right = self.visit(expr)
            try:
                ok = _CMPOPS[type(op)](left, right)
            except TypeError:
                raise ExprError(
                    f"cannot compare {_type(left)} with {_type(right)} in '{ast.unparse(node)}'"
                ) from None
            if not ok:
                return False
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        value = self.visit(node.value)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else self.visit(p) for p in
                     (node.slice.lower, node.slice.upper, node.slice.step)]  # fmt: skip
            if not all(p is None or _is_int(p) for p in parts) or parts[2] == 0:
                raise ExprError(f"bad slice in '{ast.unparse(node)}'")
            if not isinstance(value, (list, str)):
                raise ExprError(f"cannot slice {_type(value)}")
            return value[slice(*parts)]
        key = self.visit(node.slice)
        try:
            if isinstance(value, dict):
                return value[key]
            if isinstance(value, (list, str)) and _is_int(key):
                return value[key]
        except TypeError:
            raise ExprError(f"cannot index {_type(value)} with {_type(key)}") from None
        except (KeyError, IndexError):
            if isinstance(value, dict):
                keys = ", ".join(map(str, list(value)[:12])) + (" ..." if len(value) > 12 else "")
                raise ExprError(f"no key {_short(repr(key))} in '{ast.unparse(node)}'",
                                hint=did_you_mean(str(key), value) or f"keys: {keys}") from None  # fmt: skip
            raise ExprError(f"index {_short(repr(key))} out of range in '{ast.unparse(node)}'") from None
        raise ExprError(f"cannot index {_type(value)} with {_type(key)}")

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise ExprError(f"'{ast.unparse(node.func)}' is not a function you can call")
        name = node.func.id
        if node.keywords:
            raise ExprError(f"{name}() takes no keyword arguments here")
        if name == "shape":
            return self._shape(node)
        if name not in _FUNCS:
            raise ExprError(
                f"unknown function '{name}'",
                hint=did_you_mean(name, list(_FUNCS) + ["shape"]) or "functions: " + ", ".join(_FUNCS),
            )
        args = [self.visit(a) for a in node.args]
        try:
            return _FUNCS[name](*args)
        except ExprError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise ExprError(f"{name}() failed: {err}") from None

    def _shape(self, node: ast.Call) -> list:
        if len(node.args) != 1:
            raise ExprError("shape() takes one node name, e.g. shape(input)")
        arg = node.args[0]
        if isinstance(arg, ast.Name):
            ref = arg.id
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            ref = arg.value
        else:
            raise ExprError("shape() takes one node name, e.g. shape(input)")
        if self.scope.shape_of is None:
            raise ExprError("shape() is not available here (only in node arguments)")
        return list(self.scope.shape_of(ref))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _type(value: Any) -> str:
    if value is None:
        return "none"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )
