"""Turning the calls of torch functions and Tensor methods in the traced graph into yamlnet ops
and their arguments."""

from __future__ import annotations

import math
import operator

from ..registry import REGISTRY
from .common import _is_node
from .layer_args import _NOT_PLAIN, _plain

# ---- functions ----------------------------------------------------------------------------------
_PLUGIN_HINT = (
    "register an op for it with a plugin (--plugin), or trace a module that does not call it"
)
_SIZE_HINT = "write that size as a constant, or -1 in a reshape"


class _Unsupported(Exception):
    def __init__(self, message: str, hint: str = _PLUGIN_HINT):
        super().__init__(message)
        self.hint = hint


_BASE = {"getitem": "getitem", "scaled_dot_product_attention": "attention"}


_ALIASES = {"axis": "dim", "split_size": "split_size_or_sections", "self": "input",
            "axis0": "dim0", "axis1": "dim1"}


def _bind(n, names: list[str]) -> dict:
    """The call's arguments by the names the op takes (PyTorch's aliases mapped)."""
    bound = dict(zip(names, n.args, strict=False))
    if len(n.args) > len(names):
        raise _Unsupported(f"takes {len(n.args)} positional arguments")
    for k, v in n.kwargs.items():
        key = k if k in names else _ALIASES.get(k, k)
        if key not in names and not (key == "input" and "self" in names):
            raise _Unsupported(f"is called with {k}=, which the importer does not know")
        bound["self" if key == "input" and "self" in names else key] = v
    return bound


def _const(v, what: str, tr=None):
    if _is_node(v):
        if tr is not None and v in tr.sizes:
            return tr.scalar_value(v)
        raise _Unsupported(f"{what} is computed in forward")
    if isinstance(v, (tuple, list)):
        return [_const(x, what, tr) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise _Unsupported(f"{what}={v!r} cannot be written in YAML")
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise _Unsupported(f"{what}={v!r} cannot be written in YAML")


def _function_table():
    import torch
    import torch.nn.functional as F

    table: dict = {}

    def add(targets, handler):
        for t in targets:
            table[t] = handler

    def binary(op, commutes):
        extras = ["alpha"] if op in ("add", "sub") else ["rounding_mode"] if op == "div" else []

        def h(n, tr):
            b = _bind(n, ["input", "other", *extras])
            a, o = b.pop("input"), b.pop("other", None)
            extra = {k: _const(v, k, tr) for k, v in b.items() if v not in (1, None)}
            if tr.is_tensor(a) and tr.is_tensor(o):
                return op, [tr.val(a), tr.val(o)], extra
            if tr.is_tensor(a):
                return op, [tr.val(a)], {"other": _const(o, "other", tr), **extra}
            if commutes and tr.is_tensor(o):
                return op, [tr.val(o)], {"other": _const(a, "other", tr), **extra}
            raise _Unsupported(f"a number {op} a tensor (write it with the tensor first)")

        return h

    add([operator.add, operator.iadd, torch.add, "add"], binary("add", True))
    add([operator.sub, operator.isub, torch.sub, "sub"], binary("sub", False))
    add([operator.mul, operator.imul, torch.mul, "mul"], binary("mul", True))
    add([operator.truediv, operator.itruediv, torch.div, "div"], binary("div", False))

    def matmul(n, tr):
        return "matmul", [tr.val(n.args[0]), tr.val(n.args[1])], {}

    add([operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"], matmul)

    def join(op):
        def h(n, tr):
            b = _bind(n, ["tensors", "dim"])
            ts = b["tensors"]
            if not isinstance(ts, (list, tuple)) or not all(_is_node(t) for t in ts):
                raise _Unsupported("joins a list computed in forward")
            return (
                op,
                [tr.val(t) for t in ts],
                ({"dim": _const(b["dim"], "dim", tr)} if b.get("dim", 0) != 0 else {}),
            )

        return h

    add([torch.cat, torch.concat], join("cat"))

    def einsum(n, tr):  # einsum("bij,bjk->bik", a, b) or einsum(equation, [a, b])
        equation, *operands = n.args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        if n.kwargs or not operands or not all(tr.is_tensor(t) for t in operands):
            raise _Unsupported("takes operands that are not tensors given by position")
        return "einsum", [tr.val(t) for t in operands], {"equation": _const(equation, "equation", tr)}

    add([torch.einsum], einsum)
    add([torch.stack], join("stack"))

    def simple(op, names, defaults=None, drop=()):
        defaults = defaults or {}

        def h(n, tr):
            b = _bind(n, names)
            x = b.pop(names[0])
            if not tr.is_tensor(x):
                raise _Unsupported("its input is not a tensor")
            if b.get("inplace") and len(x.users) > 1:
                raise _Unsupported("changes a tensor in place that forward uses again")
            args = {}
            for k, v in b.items():
                if k in drop or (k in defaults and defaults[k] == v):
                    continue
                args[k] = _const(v, k, tr)
            return op, [tr.val(x)], args

        return h

    add(
        [torch.flatten],
        simple("flatten", ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1}),
    )
    add(
        ["flatten"],
        simple("flatten", ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1}),
    )
    add([torch.transpose, "transpose", torch.swapaxes, "swapaxes", torch.swapdims, "swapdims"],
        simple("transpose", ["input", "dim0", "dim1"]))
    add([torch.unsqueeze, "unsqueeze"], simple("unsqueeze", ["input", "dim"]))
    add([torch.squeeze, "squeeze"], simple("squeeze", ["input", "dim"]))
    add(
        ["contiguous"],
        simple("contiguous", ["self", "memory_format"], {"memory_format": torch.contiguous_format}),
    )
    add([torch.clone, "clone"], simple("clone", ["input"]))
    for name in ("mean", "sum", "amax"):
        add(
            [getattr(torch, name), name],
            simple(name, ["input", "dim", "keepdim"], {"keepdim": False, "dim": None}),
        )
    for name in ("softmax", "log_softmax"):
        add([getattr(torch, name), getattr(F, name), name],
            simple(name, ["input", "dim", "_stacklevel", "dtype"], {"dtype": None}, drop=("_stacklevel",)))  # fmt: skip
    for name in ("relu", "gelu", "silu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "neg", "abs"):
        targets = [name]
        for mod in (torch, F):
            if hasattr(mod, name):
                targets.append(getattr(mod, name))
        if name == "neg":
            targets.append(operator.neg)
        add(targets, simple(name, ["input", "approximate" if name == "gelu" else "inplace"],
                            {"approximate": "none"}, drop=("inplace",)))  # fmt: skip
    add([torch.chunk, "chunk"], simple("chunk", ["input", "chunks", "dim"], {"dim": 0}))
    add(
        [torch.split, "split"],
        simple("split", ["input", "split_size_or_sections", "dim"], {"dim": 0}),
    )
    add(
        [F.pad],
        simple("pad", ["input", "pad", "mode", "value"], {"mode": "constant", "value": None}),
    )
    names = ["input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"]
    defaults = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                "recompute_scale_factor": None, "antialias": False}  # fmt: skip
    interpolate = simple("interpolate", names, defaults)

    def interpolate_like(n, tr):  # F.interpolate(x, size=skip.shape[-2:]): sized like skip
        b = _bind(n, names)
        x = tr.val(b.pop("input"))
        like = _spatial_source(b.pop("size", None), tr, x)
        args = {k: _const(v, k, tr) for k, v in b.items() if defaults[k] != v}
        if like is None or set(args) - {"mode", "align_corners"}:
            return interpolate(n, tr)
        return "interpolate_like", [x, tr.val(like)], args

    add([F.interpolate], interpolate_like)

    def sizes(op, key):
        def h(n, tr):
            x, rest = n.args[0], list(n.args[1:])
            if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
                rest = list(rest[0])
            if not rest and key in n.kwargs:
                rest = list(n.kwargs[key])
            return (
                op,
                [tr.val(x)],
                {key: [tr.size_value(v) if _is_node(v) else _const(v, key, tr) for v in rest]},
            )

        return h

    add(["reshape", torch.reshape], sizes("reshape", "shape"))
    add(["view"], sizes("view", "shape"))
    add(["expand"], sizes("expand", "size"))
    add(["permute", torch.permute], sizes("permute", "dims"))

    def unflatten(n, tr):
        b = _bind(n, ["self", "dim", "sizes"])
        sizes = [tr.size_value(v) if _is_node(v) else v for v in b["sizes"]]
        return (
            "unflatten",
            [tr.val(b["self"])],
            {"dim": _const(b["dim"], "dim", tr), "sizes": sizes},
        )

    add(["unflatten", torch.unflatten], unflatten)

    def getitem(n, tr):
        if tr.is_tensor(n.args[1]):  # table[ids]: rows picked by a tensor of indices
            return "getitem", [tr.val(n.args[0]), tr.val(n.args[1])], {}
        return "getitem", [tr.val(n.args[0])], {"index": _index(n.args[1])}

    add([operator.getitem], getitem)

    def sdpa(n, tr):
        b = _bind(
            n,
            ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"],
        )
        ins = [tr.val(b.pop(k)) for k in ("query", "key", "value")]
        mask = b.pop("attn_mask", None)
        if mask is not None:
            if not _is_node(mask):
                raise _Unsupported("attn_mask is not a tensor")
            ins.append(tr.val(mask))
        defaults = {"dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
        return (
            "scaled_dot_product_attention",
            ins,
            {k: _const(v, k, tr) for k, v in b.items() if defaults.get(k) != v},
        )

    add([F.scaled_dot_product_attention], sdpa)

    # stateless layers called as functions: written as their module (no weights)
    def layer(op, names, defaults, drop=()):
        def h(n, tr):
            b = _bind(n, names)
            x = b.pop(names[0])
            args = {
                k: _const(v, k, tr)
                for k, v in b.items()
                if k not in drop and defaults.get(k, _NOT_PLAIN) != v
            }
            args = {k: _plain(v, REGISTRY.get(op).args[k].schema) for k, v in args.items()}
            return op, [tr.val(x)], args

        return h

    add([F.adaptive_avg_pool2d], layer("AdaptiveAvgPool2d", ["input", "output_size"], {}))
    add([F.adaptive_avg_pool1d], layer("AdaptiveAvgPool1d", ["input", "output_size"], {}))
    add([F.adaptive_max_pool2d], layer("AdaptiveMaxPool2d", ["input", "output_size", "return_indices"],
                                       {"return_indices": False}))  # fmt: skip
    add([F.avg_pool2d], layer("AvgPool2d", ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                            "count_include_pad", "divisor_override"],
                              {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                               "divisor_override": None}))  # fmt: skip
    add([F.max_pool2d], layer("MaxPool2d", ["input", "kernel_size", "stride", "padding", "dilation",
                                            "ceil_mode", "return_indices"],
                              {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                               "return_indices": False}))  # fmt: skip
    add([F.dropout], layer("Dropout", ["input", "p", "training", "inplace"], {"p": 0.5, "inplace": False},
                           drop=("training",)))  # fmt: skip
    add([F.relu6], layer("ReLU6", ["input", "inplace"], {"inplace": False}))
    add([F.hardswish], layer("Hardswish", ["input", "inplace"], {"inplace": False}))
    add([F.leaky_relu], layer("LeakyReLU", ["input", "negative_slope", "inplace"],
                              {"negative_slope": 0.01, "inplace": False}))  # fmt: skip
    return table


_TABLE: dict | None = None


def _convert_function(n, tr) -> tuple[str, list, dict]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _function_table()
    try:
        handler = _TABLE.get(n.target)
    except TypeError:  # unhashable target
        handler = None
    if handler is not None:
        return handler(n, tr)
    op = registered_functions().get(n.target)
    if op is None:
        raise _Unsupported("has no yamlnet op")
    return _registered_call(n, tr, op)


def registered_functions() -> dict:
    """target -> OpDef of every function op called as `target(*inputs, **args)`: those
    plugins register with `register_op(name, fn)`. Tracing keeps their calls whole."""
    found = {}
    for name in REGISTRY.names():
        op = REGISTRY.get(name)
        plain = not (op.lead or op.positional or op.keyword_inputs or op.list_input or op.prepare)
        if op.kind == "function" and plain and callable(op.target):
            try:
                found.setdefault(op.target, op)
            except TypeError:  # unhashable target
                continue
    return found


def _registered_call(n, tr, op) -> tuple[str, list, dict]:
    """A call of a registered function: its leading tensors the inputs, the rest arguments
    by name (positional ones named from the function's signature)."""
    import inspect

    k = 0
    while k < len(n.args) and tr.is_tensor(n.args[k]):
        k += 1
    inputs, rest = list(n.args[:k]), list(n.args[k:])
    if any(tr.is_tensor(v) for v in rest + list(n.kwargs.values())):
        raise _Unsupported(f"passes a tensor after its arguments; {op.name} takes tensors first")
    names = []
    if rest:
        try:
            names = list(inspect.signature(op.target).parameters)[k:]
        except (TypeError, ValueError):
            names = []
        if len(names) < len(rest):
            raise _Unsupported(f"passes {len(rest)} arguments by position that {op.name}'s "
                               "signature does not name", "pass them by keyword")  # fmt: skip
    args = {key: _const(v, key, tr) for key, v in [*zip(names, rest, strict=False), *n.kwargs.items()]}
    unknown = [key for key in args if key not in op.args]
    if unknown and not op.open_args:
        raise _Unsupported(f"is called with {unknown[0]}=, which op {op.name} does not take")
    hi = op.max_inputs
    if len(inputs) < op.min_inputs or hi is not None and len(inputs) > hi:
        raise _Unsupported(f"gets {len(inputs)} tensors; op {op.name} takes "
                           f"{op.min_inputs if hi == op.min_inputs else (op.min_inputs, hi)}")  # fmt: skip
    return op.name, [tr.val(v) for v in inputs], args


def _spatial_source(size, tr, x):
    """The tensor t when `size` is t's spatial size (t.shape[2:], t.shape[-2:] of a 4-d t,
    [t.size(2), t.size(3)]) and t has x's rank; else None."""
    found = _dims_of(size, tr)
    if found is None:
        return None
    t, dims = found
    rank = len(tr._shape(tr.val(t)) or ())
    if rank != len(tr._shape(x) or ()) or dims != list(range(2, rank)):
        return None
    return t


def _dims_of(v, tr):
    """(tensor node, the dims of its shape that `v` holds), or None."""
    if isinstance(v, (list, tuple)):
        parts = [_dims_of(x, tr) for x in v]
        if not parts or any(p is None or len(p[1]) != 1 or p[0] is not parts[0][0] for p in parts):
            return None
        return parts[0][0], [p[1][0] for p in parts]
    if not _is_node(v) or v.op not in ("call_function", "call_method"):
        return None

    def rank(t) -> int:
        return len(tr._shape(tr.val(t)) or ())

    if v.target is getattr and v.args[1] == "shape" or v.target == "size" and len(v.args) == 1:
        return v.args[0], list(range(rank(v.args[0])))
    if v.target == "size" and isinstance(v.args[1], int):
        return v.args[0], [v.args[1] % rank(v.args[0])]
    if v.target is operator.getitem and isinstance(v.args[1], (int, slice)):
        base = _dims_of(v.args[0], tr)
        if base is None:
            return None
        picked = base[1][v.args[1]]
        return base[0], picked if isinstance(picked, list) else [picked]
    return None


def _index(idx):
    if isinstance(idx, tuple):
        return [_index_item(i) for i in idx]
    return _index_item(idx)


def _index_item(i):
    if isinstance(i, bool) or _is_node(i):
        raise _Unsupported("indexes with a value computed in forward", _SIZE_HINT)
    if isinstance(i, int) or i is None:
        return i
    if i is Ellipsis:
        return "..."
    if isinstance(i, slice):
        parts = [i.start, i.stop, i.step]
        if any(p is not None and not isinstance(p, int) for p in parts):
            raise _Unsupported("slices with values computed in forward", _SIZE_HINT)
        text = ":".join("" if p is None else str(p) for p in parts[:2])
        return text + (f":{i.step}" if i.step is not None else "")
    raise _Unsupported(f"indexes with {i!r}")
