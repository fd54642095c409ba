"""Tensor-function ops (add, cat, permute, ...) and parameter/buffer nodes.

Each entry names the callable (or Tensor method), its inputs and its arguments'
JSON Schemas, using PyTorch's own keyword names. Arguments listed in `positional`
are passed positionally after the inputs, exactly as one writes them in PyTorch
(`x.permute(dims)`, `torch.chunk(x, chunks, dim)`).
"""

from __future__ import annotations

import operator

from ..registry import ArgDef, OpDef

__all__ = ["register_tensor_functions", "register_parameters", "register_constants", "python_index", "make_tensor", "fill_call", "FILLS",
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


def cat_rule(_built, inputs: list, args: dict):
    """Shape rule of cat for the usual call: tensors of one dtype and rank, equal but
    along `dim`. Anything else is declined, so torch's kernel words the error (its meta
    kernel costs a millisecond a call: DenseNet's blocks join hundreds of inputs)."""
    tensors = inputs  # the node's inputs, not yet one list
    if set(args) - {"dim"} or not tensors:
        return NotImplemented
    first = tensors[0]
    rank, dim = first.dim(), args.get("dim", 0)
    if rank == 0 or not -rank <= dim < rank:
        return NotImplemented
    dim %= rank
    rest = first.shape[:dim] + first.shape[dim + 1:]
    for t in tensors[1:]:
        if t.dtype != first.dtype or t.dim() != rank or t.shape[:dim] + t.shape[dim + 1:] != rest:
            return NotImplemented
    size = sum(t.shape[dim] for t in tensors)
    return first.new_empty((*first.shape[:dim], size, *first.shape[dim + 1:]))


def _roll_rule(_built, inputs: list, args: dict):
    """roll keeps its input's shape; declined unless the shifts and dims pair up in range."""
    (x,) = inputs
    shifts, dims = args.get("shifts"), args.get("dims")
    shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if set(args) - {"shifts", "dims"} or x.dim() == 0 or len(shifts) != len(dims) or not all(
            isinstance(d, int) and -x.dim() <= d < x.dim() for d in dims):  # fmt: skip
        return NotImplemented
    return x


def register_tensor_functions(registry) -> None:
    import torch
    import torch.nn.functional as F

    def fn(name, target, inputs=(1, 1), args=(), positional=(), kind="function", doc="",
           list_input=False, size_args=(), input_names=(), prepare=None, hint="", rule=None,
           lead=(), keyword_inputs=(), source="torch"):  # fmt: skip
        lo, hi = inputs
        registry.add(OpDef(
            name, kind, target, {a.name: a for a in args}, lo, hi, tuple(input_names),
            positional=tuple(positional), list_input=list_input, size_args=tuple(size_args),
            doc=doc, source=source, prepare=prepare, hint=hint, rule=rule, lead=tuple(lead),
            keyword_inputs=tuple(keyword_inputs),
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
        fn(name, target, (1, None), [_a("dim", INT)], list_input=True, rule=cat_rule if name == "cat" else None,
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
    fn("getitem", operator.getitem, (1, 2), args=[_a("index", INDEX)], positional=["index"],
       prepare=lambda args: {**args, "index": python_index(args["index"])} if "index" in args else args,
       input_names=("input", "index"), rule=_getitem_rule,
       doc="x[index] on a tensor: an int, or a list like [':', 0] (':' '1:' '::2' '...' and "
       "null as in Python); or, with a second input, x[ids] by an integer (or bool) tensor; "
       "pick an element of a tuple output with name[k] in in:")  # fmt: skip
    _register_selection(fn, torch)
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


def _getitem_rule(_built, inputs: list, args: dict):
    """getitem takes its index either as the `index:` argument or as a second input."""
    if len(inputs) == 2 and "index" in args:
        raise ValueError("give the index either as index: or as a second input (x[ids]), not both")
    if len(inputs) == 1 and "index" not in args:
        raise ValueError("needs an index: index: [':', 0], or a second input (x[ids])")
    return NotImplemented


def _where_rule(_built, inputs: list, args: dict):
    """where takes a condition and two values, each an input or a number argument."""
    given = len(inputs) + sum(k in args for k in ("input", "other"))
    if given != 3 or (len(inputs) == 3 and args) or (len(inputs) == 2 and "input" in args):
        raise ValueError("needs a condition and two values: in: [condition, a, b], or in: [condition, a] "
                         "with other:, or in: condition with input: and other:")  # fmt: skip
    return NotImplemented


def _register_selection(fn, torch) -> None:
    """Ops that pick, compare, mask and rearrange (the windowed-attention kit): shapes
    come from running each on meta tensors."""
    from . import functions

    num_or_null = {"anyOf": [NUM, {"type": "null"}]}
    fn("roll", torch.roll, args=[_a("shifts", DIMS, True), _a("dims", DIMS)], positional=["shifts"],
       rule=_roll_rule, doc="torch.roll: shift elements along dims, wrapping around (shifted windows)")  # fmt: skip
    fn("gather", torch.gather, (2, 2), [_a("dim", INT, True)], input_names=("input", "index"),
       keyword_inputs=("index",), doc="torch.gather(input, dim, index): pick along dim by an int64 index tensor")  # fmt: skip
    fn("index_select", torch.index_select, (2, 2), [_a("dim", INT, True)], input_names=("input", "index"),
       keyword_inputs=("index",), doc="torch.index_select(input, dim, index): whole slices by a 1-D index")  # fmt: skip
    fn("take_along_dim", torch.take_along_dim, (2, 2), [_a("dim", {"anyOf": [INT, {"type": "null"}]})],
       input_names=("input", "indices"), doc="torch.take_along_dim(input, indices, dim)")  # fmt: skip
    fn("where", torch.where, (1, 3), [_a("input", NUM, doc="a number for the true places"),
                                      _a("other", NUM, doc="a number for the false places")],
       ["input", "other"], input_names=("condition", "input", "other"), rule=_where_rule,
       doc="torch.where(condition, input, other): input where condition, else other (tensors "
       "as inputs, or numbers as arguments)")  # fmt: skip
    fn("clamp", torch.clamp, args=[_a("min", num_or_null), _a("max", num_or_null)],
       doc="torch.clamp: limit values to [min, max]")  # fmt: skip
    for name in ("eq", "ne", "lt", "le", "gt", "ge"):
        fn(name, getattr(torch, name), (1, 2), [_a("other", NUM, doc="a number, when the node has one input")],
           ["other"], doc=f"torch.{name}: element-wise comparison (a bool tensor), with broadcasting")  # fmt: skip
    fn("logical_not", torch.logical_not, doc="torch.logical_not, element-wise")
    fn("masked_fill", "masked_fill", (2, 2), [_a("value", NUM, True)], ["value"], kind="method",
       input_names=("input", "mask"), doc="Tensor.masked_fill(mask, value): value where mask is true")  # fmt: skip
    fn("einsum", torch.einsum, (1, None), [_a("equation", STR, True)], lead=["equation"], list_input=True,
       doc="torch.einsum(equation, [inputs]): e.g. 'bhqd,bhkd->bhqk'")  # fmt: skip
    fn("interpolate_like", functions.interpolate_like, (2, 2),
       [_a("mode", STR), _a("align_corners", {"anyOf": [BOOL, {"type": "null"}]})],
       input_names=("input", "like"), source="yamlnet",
       doc="F.interpolate(input, size=like.shape[2:]): resize to another node's spatial size, "
       "symbolic sizes included (a U-Net's or FCN's upsampling to its skip input)")  # fmt: skip


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
    shape, *rest = fill
    registry.add(OpDef(
        "Buffer", "buffer", None,
        {a.name: a for a in [_a("shape", INTS, doc="the tensor's shape (not with an input)"), *rest,
                             _a("persistent", BOOL, doc="saved in state_dict (default true)"),
                             _a("dtype", {"enum": TENSOR_DTYPES})]}, 0, 1,
        rule=_buffer_rule,
        doc="A non-learnable tensor owned by the model (e.g. a mask): filled as shape:/fill: say, "
        "or, with an input computed from constants (arange, tensor, ...), holding its value, "
        "computed when the model is built",
    ))  # fmt: skip


TENSOR_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool"]


def _buffer_rule(_built, inputs: list, args: dict):
    """A Buffer is either filled (shape:) or holds its input, not both."""
    if bool(inputs) == ("shape" in args):
        raise ValueError("give either shape: (and fill:) or an input computed from constants, not "
                         + ("both" if inputs else "neither"))  # fmt: skip
    if inputs and any(k in args for k in ("fill", "mean", "std", "low", "high", "value")):
        raise ValueError("a Buffer that holds its input takes no fill: arguments")
    return NotImplemented


def register_constants(registry) -> None:
    """Tensors made from arguments alone; the ops that read them are folded with them
    into buffers when the model is built (an index table computed once, at construction,
    as torchvision computes Swin's relative position index)."""
    import torch

    dtype = _a("dtype", {"enum": TENSOR_DTYPES})
    as_dtype = lambda args: {**args, "dtype": getattr(torch, args["dtype"])} if "dtype" in args else args  # noqa: E731

    def const(name, target, args, doc):
        registry.add(OpDef(name, "constant", target, {a.name: a for a in args}, 0, 0, prepare=as_dtype,
                           doc=doc, source="torch"))  # fmt: skip

    const("arange", torch.arange, [_a("start", NUM), _a("end", NUM, True), _a("step", NUM), dtype],
          "torch.arange(start, end, step): 0, 1, ..., end - 1 by default (int64 for integer arguments)")
    const("tensor", torch.tensor, [_a("data", {"anyOf": [NUM, BOOL, {"type": "array"}]}, True), dtype],
          "torch.tensor(data): a tensor written out in the spec")
    indexing = ArgDef("indexing", {"enum": ["ij", "xy"]}, default="ij", doc="ij (the default) or xy")
    registry.add(OpDef("meshgrid", "function", torch.meshgrid, {"indexing": indexing}, 1, None,
                       prepare=lambda args: {"indexing": "ij", **args},  # torch's default, said aloud
                       doc="torch.meshgrid(*inputs, indexing): coordinate grids, a tuple", source="torch"))  # fmt: skip


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
