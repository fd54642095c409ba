"""Tensor-function ops (add, cat, permute, ...) and parameter/buffer nodes.

Each entry names the callable (or Tensor method), its inputs and its arguments'
JSON Schemas, using PyTorch's own keyword names. Arguments listed in `positional`
are passed positionally after the inputs, exactly as one writes them in PyTorch
(`x.permute(dims)`, `torch.chunk(x, chunks, dim)`).
"""

from __future__ import annotations

import operator

from ..registry import ArgDef, OpDef

__all__ = ["register_tensor_functions", "register_parameters", "python_index", "make_tensor", "fill_call", "FILLS",
           "broadcast_rule"]

INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
STR = {"type": "string"}
INTS = {"type": "array", "items": INT}
DIMS = {"anyOf": [INT, INTS]}
# sizes may name a symbolic dimension of a spec input ("N"); -1 infers one dim
SIZE = {"type": "array", "items": {"anyOf": [INT, STR]}}
INDEX_ITEM = {"anyOf": [INT, {"type": "string", "pattern": r"^(-?\d*:-?\d*(:-?\d*)?|\.\.\.)$"},
                        {"type": "null"}]}  # fmt: skip
INDEX = {"anyOf": [INDEX_ITEM, {"type": "array", "items": INDEX_ITEM}]}
FILLS = ("zeros", "ones", "normal", "uniform", "trunc_normal", "constant")


def _a(name: str, schema: dict, required: bool = False, doc: str = "") -> ArgDef:
    return ArgDef(name, schema, required, doc=doc)


def broadcast_rule(_built, inputs: list, args: dict):
    """Shape rule of add, sub and mul on two tensors: they broadcast, the dtype promotes
    (as the meta kernel, a Python decomposition, would say; see ops/modules.py). Other
    calls (a number `other`, `alpha`, bool tensors, a missing operand) are declined, so
    the op's own kernel checks them."""
    import torch

    if len(inputs) != 2 or args or any(t.dtype == torch.bool for t in inputs):
        return NotImplemented
    a, b = inputs
    shape, dtype = torch.broadcast_shapes(a.shape, b.shape), torch.result_type(a, b)
    return torch.empty(shape, dtype=dtype, device=a.device)


def register_tensor_functions(registry) -> None:
    import torch
    import torch.nn.functional as F

    def fn(name, target, inputs=(1, 1), args=(), positional=(), kind="function", doc="",
           list_input=False, size_args=(), input_names=(), prepare=None, hint="", rule=None):  # fmt: skip
        lo, hi = inputs
        registry.add(OpDef(
            name, kind, target, {a.name: a for a in args}, lo, hi, tuple(input_names),
            positional=tuple(positional), list_input=list_input, size_args=tuple(size_args),
            doc=doc, source="torch", prepare=prepare, hint=hint, rule=rule,
        ))  # fmt: skip

    other = _a("other", NUM, doc="a number, when the node has one input")
    same = ("both inputs must have the same shape or broadcast; "
            "e.g. a 1x1 conv on the shortcut matches channels")  # fmt: skip
    for name, target in (("add", torch.add), ("sub", torch.sub), ("mul", torch.mul)):
        extra = [_a("alpha", NUM)] if name != "mul" else []
        fn(name, target, (1, 2), [other, *extra], ["other"], hint=same, rule=broadcast_rule,
           doc=f"torch.{name}: element-wise, with broadcasting")  # fmt: skip
    fn("div", torch.div, (1, 2), [other, _a("rounding_mode", {"enum": ["trunc", "floor", None]})],
       ["other"], hint=same, doc="torch.div: element-wise division")  # fmt: skip
    fn("matmul", torch.matmul, (2, 2), doc="torch.matmul: matrix product of two inputs")
    for name, target in (("cat", torch.cat), ("stack", torch.stack)):
        fn(name, target, (1, None), [_a("dim", INT)], list_input=True,
           hint="all inputs must have the same shape except along dim",
           doc=f"torch.{name}: join inputs along dim")  # fmt: skip
    fn("flatten", torch.flatten, args=[_a("start_dim", INT), _a("end_dim", INT)],
       doc="torch.flatten: merge dims start_dim..end_dim")  # fmt: skip
    for name in ("reshape", "view"):
        fn(name, name, args=[_a("shape", SIZE, True)], positional=["shape"], kind="method",
           size_args=["shape"], doc=f"Tensor.{name}: new shape (-1 infers one dim; "
           "a symbolic input dim such as N may be named)")  # fmt: skip
    fn("expand", "expand", args=[_a("size", SIZE, True)], positional=["size"], kind="method",
       size_args=["size"], doc="Tensor.expand: broadcast to size (-1 keeps a dim)")  # fmt: skip
    fn("unflatten", "unflatten", args=[_a("dim", INT, True), _a("sizes", SIZE, True)],
       positional=["dim", "sizes"], kind="method", size_args=["sizes"],
       doc="Tensor.unflatten: split one dim into sizes")  # fmt: skip
    fn("permute", "permute", args=[_a("dims", INTS, True)], positional=["dims"], kind="method",
       doc="Tensor.permute: reorder dims")  # fmt: skip
    fn("transpose", torch.transpose, args=[_a("dim0", INT, True), _a("dim1", INT, True)],
       positional=["dim0", "dim1"], doc="torch.transpose: swap two dims")  # fmt: skip
    fn("unsqueeze", torch.unsqueeze, args=[_a("dim", INT, True)], positional=["dim"],
       doc="torch.unsqueeze: insert a dim of size 1")  # fmt: skip
    fn("squeeze", torch.squeeze, args=[_a("dim", DIMS)], doc="torch.squeeze: drop size-1 dims")
    fn("contiguous", "contiguous", kind="method", doc="Tensor.contiguous")
    for name, target in (("mean", torch.mean), ("sum", torch.sum), ("amax", torch.amax)):
        fn(name, target, args=[_a("dim", DIMS), _a("keepdim", BOOL)],
           doc=f"torch.{name}: reduce over dim")  # fmt: skip
    for name, target in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax)):
        fn(name, target, args=[_a("dim", INT, True)], doc=f"torch.{name} over dim")
    fn("getitem", operator.getitem, args=[_a("index", INDEX, True)], positional=["index"],
       prepare=lambda args: {**args, "index": python_index(args["index"])},
       doc="x[index] on a tensor: an int, or a list like [':', 0] (':' '1:' '::2' '...' and "
       "null as in Python); pick an element of a tuple output with name[k] in in:")  # fmt: skip
    fn("chunk", torch.chunk, args=[_a("chunks", INT, True), _a("dim", INT)],
       positional=["chunks"], doc="torch.chunk: a tuple of equal parts")  # fmt: skip
    fn("split", torch.split, args=[_a("split_size_or_sections", DIMS, True), _a("dim", INT)],
       positional=["split_size_or_sections"], doc="torch.split: a tuple of parts")  # fmt: skip
    fn("scaled_dot_product_attention", F.scaled_dot_product_attention, (3, 4),
       [_a("dropout_p", NUM), _a("is_causal", BOOL), _a("scale", {"anyOf": [NUM, {"type": "null"}]})],
       input_names=("query", "key", "value", "attn_mask"),
       doc="F.scaled_dot_product_attention(query, key, value[, attn_mask])")  # fmt: skip
    for name in ("relu", "gelu", "silu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "neg", "abs"):
        target = getattr(F, name, None) if name in ("relu", "gelu", "silu") else getattr(torch, name)
        args = [_a("approximate", {"enum": ["none", "tanh"]})] if name == "gelu" else []
        fn(name, target, args=args, doc=f"{target.__module__.split('.')[0]}.{name}, element-wise")
    fn("pad", F.pad, args=[_a("pad", INTS, True), _a("mode", STR), _a("value", NUM)],
       positional=["pad"], doc="F.pad: pad the last dims by (left, right, top, bottom, ...)")  # fmt: skip
    fn("interpolate", F.interpolate,
       args=[_a("size", DIMS), _a("scale_factor", {"anyOf": [NUM, {"type": "array", "items": NUM}]}),
             _a("mode", STR), _a("align_corners", BOOL)],
       doc="F.interpolate: resize spatial dims")  # fmt: skip
    fn("clone", torch.clone, doc="torch.clone")
    from .functions import positions

    fn("positions", positions, args=[_a("dim", INT)],
       doc="torch.arange over one dim of the input (default -1): the positions 0..T-1 of a "
       "sequence, e.g. for a position embedding")  # fmt: skip


def python_index(value):
    """YAML index -> Python index: 0 -> 0, ':' -> slice(None), [':', 0] -> (slice(None), 0)."""
    if isinstance(value, list):
        return tuple(python_index(v) for v in value)
    if isinstance(value, str):
        if value == "...":
            return Ellipsis
        parts = [int(p) if p.strip() else None for p in value.split(":")]
        return slice(*parts)
    return value


def register_parameters(registry) -> None:
    fill = [
        _a("shape", INTS, True, "the tensor's shape"),
        _a("fill", {"enum": list(FILLS)}, doc="initial values (default zeros)"),
        _a("mean", NUM, doc="for fill: normal / trunc_normal"),
        _a("std", NUM, doc="for fill: normal / trunc_normal (default 1.0)"),
        _a("low", NUM, doc="for fill: uniform (default 0)"),
        _a("high", NUM, doc="for fill: uniform (default 1)"),
        _a("value", NUM, doc="for fill: constant"),
    ]
    registry.add(OpDef(
        "Parameter", "parameter", None,
        {a.name: a for a in fill + [_a("requires_grad", BOOL)]}, 0, 0,
        doc="A learnable tensor owned by the model (e.g. a class token); takes no input",
    ))  # fmt: skip
    registry.add(OpDef(
        "Buffer", "buffer", None,
        {a.name: a for a in fill + [
            _a("persistent", BOOL, doc="saved in state_dict (default true)"),
            _a("dtype", {"enum": ["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool"]}),
        ]}, 0, 0,
        doc="A non-learnable tensor owned by the model (e.g. a mask); takes no input",
    ))  # fmt: skip


def fill_call(args: dict) -> tuple[str, tuple]:
    """The torch.nn.init function and its arguments after the tensor, for `fill`."""
    mean, std = args.get("mean", 0.0), args.get("std", 1.0)
    return {
        "zeros": ("zeros_", ()),
        "ones": ("ones_", ()),
        "constant": ("constant_", (args.get("value", 0.0),)),
        "normal": ("normal_", (mean, std)),
        "uniform": ("uniform_", (args.get("low", 0.0), args.get("high", 1.0))),
        "trunc_normal": ("trunc_normal_", (mean, std, mean - 2 * std, mean + 2 * std)),
    }[args.get("fill", "zeros")]


def make_tensor(args: dict, device: str, learnable: bool):
    """The tensor of a Parameter/Buffer node, filled as its arguments say."""
    import torch

    dtype = getattr(torch, args.get("dtype", "float32"))
    name, values = fill_call(args)
    if name in ("normal_", "uniform_", "trunc_normal_") and not dtype.is_floating_point:
        raise ValueError(f"fill: {args['fill']} needs a floating-point dtype, not {args['dtype']}")
    t = torch.empty(args["shape"], dtype=dtype, device=device)
    if device != "meta":
        with torch.no_grad():
            getattr(torch.nn.init, name)(t, *values)
    if learnable:
        return torch.nn.Parameter(t, requires_grad=args.get("requires_grad", True))
    return t
