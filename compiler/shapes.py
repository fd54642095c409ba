"""Stage 6 — shapes: every tensor's shape and dtype, before any weight exists.

Each op is built and run on *meta* tensors (shapes without storage), so there is one
shape rule for nearly all of them: PyTorch's own. Elementwise layers keep their input's
shape (`OpDef.same_shape`), and Linear, batch norm, adaptive average pooling and
add/sub/mul have rules of their own (`OpDef.rule`, tested against the layers) because
their meta kernels are slow Python decompositions. Shape-derived constructor arguments
(`in_channels`, `in_features`, ...) are filled in from the incoming shapes first.

Symbolic dims (`N`, `T`, `H` in `inputs:`) are tracked by running the graph once
with sample sizes and once more per symbol with that symbol's sample changed: a dim
that moves with symbol S is named by the line through the two samples (`N`, `H/2`,
`2*T`). That is exact for the batch and for sizes a stride divides; a floored size
(`floor(H/2)` for odd H) is shown by its line, and a dim that several symbols move in
a way this cannot name is shown as `?`. A tensor whose *rank* would depend on a
symbol's value is an error. Shape inference here is honest, not complete.

Output: a copy of the graph whose op nodes also carry

    type    TensorType, or a tuple of them (and None) for tuple outputs
    args    the final constructor/call arguments (inferred ones included)
    params  number of parameters the node owns
    buffers number of buffer values it owns (a constant's own values included)
    constant  True when computed from constants alone (arange, tensor, functions of
            them): codegen folds it, computing it once when the model is built
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import networkx as nx

from .errors import ExprError, ShapeError, did_you_mean
from .expand import InputSpec, NodeSpec, Ref
from .graph import topological_order
from .registry import REGISTRY

__all__ = ["TensorType", "infer_shapes", "ShapeOracle", "format_type", "first_line", "SAMPLE_SIZES", "pick_type"]

MAX_PARAMS = 10**12  # one node asking for more is a typo, not a model
TOTAL_PARAMS = 10**9  # the whole network, unless $YAMLNET_MAX_PARAMS says otherwise (4 GB as float32)
SAMPLE_SIZES = (32, 64)  # base and alternate sample value of every symbolic dim (kept small:
# recurrent ops on meta tensors take time proportional to the sequence length)


@dataclass(frozen=True)
class TensorType:
    shape: tuple  # ints and symbolic expressions ("N", "H/2")
    dtype: str = "float32"

    def __str__(self) -> str:
        dims = "[" + ", ".join(map(str, self.shape)) + "]"
        return dims if self.dtype == "float32" else f"{dims} {self.dtype}"


def format_type(t: Any) -> str:
    if isinstance(t, tuple):
        return "(" + ", ".join(format_type(x) for x in t) + ")"
    return "None" if t is None else str(t)


def infer_shapes(g: nx.DiGraph, registry=REGISTRY, oracle: ShapeOracle | None = None) -> nx.DiGraph:
    """Annotate every node with its output type, final args and parameter count.

    Passing the `ShapeOracle` used while expanding reuses what it already inferred.
    """
    spec = g.graph["spec"]
    engine = oracle.engine if oracle is not None and oracle.engine is not None else None
    if engine is None:
        engine = _Engine(spec.inputs, {}, registry)
    engine.nodes.update({n.name: n for n in spec.nodes})
    typed = g.copy()
    for name in topological_order(g):
        if g.nodes[name]["kind"] == "input":
            typed.nodes[name]["type"] = engine.types[name]
            continue
        info = engine.infer(name)
        typed.nodes[name].update(type=info.type, args=info.args, params=info.params, buffers=info.buffers,
                                 constant=info.constant)
    check_param_budget(typed, spec)
    for out, ref in g.graph["outputs"]:
        try:
            engine.type_of(ref)
        except ShapeError as err:
            raise ShapeError(f"'{ref}': {err.diagnostics[0].message}", spec.outputs_loc,
                             f"outputs.{out}") from None  # fmt: skip
    return typed


class ShapeOracle:
    """Answers `shape(name)` for the expand stage, on the nodes expanded so far."""

    def __init__(self, registry=REGISTRY):
        self.registry = registry
        self.engine: _Engine | None = None

    def __call__(self, ref: Ref, nodes: list[NodeSpec], inputs: tuple[InputSpec, ...]) -> list:
        if self.engine is None:
            self.engine = _Engine(inputs, {}, self.registry)
        for node in nodes:
            self.engine.nodes.setdefault(node.name, node)
        t = self.engine.type_of(ref)
        if not isinstance(t, TensorType):
            raise ExprError(f"shape({ref}): its output is a tuple; index it, e.g. {ref}[0]")
        return list(t.shape)


@dataclass(frozen=True)
class _Info:
    type: Any
    args: dict
    params: int
    buffers: int = 0  # values in the node's buffers (running statistics, masks, tables)
    constant: bool = False  # computed from constants alone, when the model is built


class _Engine:
    """Runs nodes on meta tensors, once per sample pass, memoizing results."""

    def __init__(self, inputs, nodes: dict[str, NodeSpec], registry):
        import torch

        self.torch = torch
        self.registry = registry
        self.nodes = nodes
        self.symbols = [s for inp in inputs for s in inp.shape if isinstance(s, str)]
        self.symbols = list(dict.fromkeys(self.symbols))
        base, alt = SAMPLE_SIZES
        # pass 0: every symbol at base; pass k: symbol k-1 at alt
        self.passes = [{s: base for s in self.symbols}]
        for s in self.symbols:
            self.passes.append({**self.passes[0], s: alt})
        self.values: dict[str, list] = {}
        self.types: dict[str, Any] = {}
        self.infos: dict[str, _Info] = {}
        for inp in inputs:
            dtype = getattr(torch, inp.dtype)
            self.values[inp.name] = [
                torch.empty([p[d] if isinstance(d, str) else d for d in inp.shape], dtype=dtype,
                            device="meta")
                for p in self.passes
            ]  # fmt: skip
            self.types[inp.name] = TensorType(tuple(inp.shape), inp.dtype)

    # -- queries -------------------------------------------------------------------
    def type_of(self, ref: Ref, user: NodeSpec | None = None) -> Any:
        if ref.node not in self.types:
            self.infer(ref.node)
        try:
            return pick_type(self.types[ref.node], ref.index)
        except ShapeError as err:
            if user is None:
                raise
            raise ShapeError(f"{ref.written or repr(str(ref))}: {err.diagnostics[0].message}", user.loc,
                             user.path) from None  # fmt: skip

    def _value(self, ref: Ref, k: int) -> Any:
        value = self.values[ref.node][k]
        for i in ref.index:
            value = value[i]
        return value

    # -- one node --------------------------------------------------------------------
    def infer(self, name: str) -> _Info:
        """Infer `name`, after its not-yet-inferred producers (iteratively: chains of
        thousands of nodes must not reach Python's recursion limit)."""
        if name in self.infos:
            return self.infos[name]
        order, stack, seen = [], [(name, False)], set()
        while stack:
            current, ready = stack.pop()
            if ready:
                order.append(current)
                continue
            if current in seen or current in self.types:
                continue
            seen.add(current)
            stack.append((current, True))
            for ref in self.nodes[current].inputs:
                if isinstance(ref, Ref) and ref.node not in self.types:
                    stack.append((ref.node, False))
        for current in order:
            self._infer_one(current)
        return self.infos[name]

    def _infer_one(self, name: str) -> _Info:
        node = self.nodes[name]
        op = self.registry.get(node.op)
        for ref in node.inputs:
            if not isinstance(ref, Ref):  # a name used before its definition
                later = getattr(ref, "name", None) or getattr(getattr(ref, "base", None), "name", "?")
                raise ExprError(f"shape() needs '{name}', which reads '{later}', defined after this node",
                                hint="shape() sees the nodes above it")  # fmt: skip
            self.type_of(ref, node)  # infers producers first (memoized)
        in_types = [self.type_of(r, node) for r in node.inputs]
        for k, (r, t) in enumerate(zip(node.inputs, in_types, strict=True)):
            # a module's later inputs may be a tuple: an LSTM's state (h, c) as it came
            if not isinstance(t, TensorType) and not (k > 0 and op.kind == "module"):
                raise ShapeError(f"input '{r}' is a tuple {format_type(t)}; pick one element, "
                                 f"e.g. {r}[0]", node.loc, node.path)  # fmt: skip
        args = self._final_args(node, op, in_types)
        constant = self._constant(node, op)
        built = self._build(node, op, args)
        outs = []
        for k, sample in enumerate(self.passes):
            inputs = [self._value(r, k) for r in node.inputs]
            call_args = self._sizes(node, op, args, sample)
            outs.append(self._run(node, op, built, inputs, call_args, in_types))
        self.values[name] = outs
        self.types[name] = self._combine(outs, node)
        params = _count_params(built)
        for own, _ in node.tie:  # a shared parameter is counted where it is made
            tied = getattr(built, own, None)
            params -= tied.numel() if hasattr(tied, "numel") else 0
        buffers = _count_buffers(built)
        if constant:  # computed when the model is built: its values count like a buffer's
            buffers += sum(t.numel() for t in _tensors(outs[0]))
        if params + buffers > MAX_PARAMS:
            raise ShapeError(f"{op.name} would have {params + buffers:,} parameters and buffer values "
                             f"(limit {MAX_PARAMS:,})", node.loc, node.path,
                             "are the sizes in this node what you meant?")  # fmt: skip
        info = _Info(self.types[name], args, params, buffers, constant)
        self.infos[name] = info
        return info

    def _constant(self, node: NodeSpec, op) -> bool:
        """Whether the node is computed from constants alone: a constant op, or a function
        of constants only. A Buffer's input must be one (it is filled when built)."""
        if op.kind == "constant":
            return True
        if op.kind == "buffer" and node.inputs:
            source = node.inputs[0].node
            if not (source in self.infos and self.infos[source].constant):
                raise ShapeError(f"a Buffer's input must be computed from constants alone (arange, tensor, "
                                 f"and functions of them); '{source}' is not", node.loc, node.path,
                                 "it is filled once, when the model is built")  # fmt: skip
        return op.kind in ("function", "method") and bool(node.inputs) and all(
            r.node in self.infos and self.infos[r.node].constant for r in node.inputs)

    def _final_args(self, node: NodeSpec, op, in_types: list) -> dict:
        args = dict(node.args)
        shapes = [getattr(t, "shape", ()) for t in in_types]  # a tuple input has none
        for key, rule in op.infer.items():
            try:
                value = rule(shapes)
            except IndexError:
                raise ShapeError(f"{op.name} cannot read {key} from input {_show(in_types)}",
                                 node.loc, node.path) from None  # fmt: skip
            if _symbolic(value):
                if key in args:
                    continue
                raise ShapeError(
                    f"{op.name}.{key} would come from a symbolic dim of input {_show(in_types)}",
                    node.loc, node.path, f"give {key} explicitly or make that dim concrete")  # fmt: skip
            if key in args and args[key] != value and not _same(args[key], value):
                raise ShapeError(
                    f"{op.name} got input {_show(in_types)} but {key}={args[key]!r}; the input "
                    f"says {key}={value!r}", node.loc, node.path,
                    f"remove {key} to infer it, or fix the node before")  # fmt: skip
            args[key] = value
        return args

    def _sizes(self, node: NodeSpec, op, args: dict, sample: dict) -> dict:
        if not op.size_args:
            return args
        out = dict(args)
        for key in op.size_args:
            if key in args:
                out[key] = [self._dim(node, d, sample) for d in args[key]]
        return out

    def _dim(self, node, d, sample):
        if not isinstance(d, str):
            return d
        if d not in sample:
            raise ShapeError(f"unknown dimension name '{d}'", node.loc, node.path,
                             did_you_mean(d, sample) or
                             ("symbolic dims: " + ", ".join(sample) if sample else "no input declares a symbolic dim"))  # fmt: skip
        return sample[d]

    def _build(self, node: NodeSpec, op, args: dict) -> Any:
        if not op.owns_state:
            return None
        try:
            with warnings.catch_warnings():  # a zero size is refused below, in its own words
                warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
                built = op.instantiate(args, device="meta")
            if op.kind == "module":
                built.eval()  # same shapes, and batch norm on meta is much cheaper in eval
            return built
        except Exception as err:  # noqa: BLE001 - constructor errors are user errors here
            raise ShapeError(f"cannot build {op.name}({_kw(args)}): {first_line(err)}",
                             node.loc, node.path) from None  # fmt: skip

    def _run(self, node, op, built, inputs, args, in_types) -> Any:
        if op.same_shape and len(inputs) == 1 and not node.call:
            return inputs[0]  # the registered shape rule: output shaped like the input
        if op.kind == "module" and not op.int_inputs and _float_weights(built):
            for t in in_types:
                if getattr(t, "dtype", "float32").startswith(("int", "uint", "bool")):
                    # meta kernels do not check dtypes; eager PyTorch would fail here
                    raise ShapeError(
                        f"{op.name} cannot take input {_show(in_types)}: its weights are floating "
                        f"point and the input is {t.dtype}", node.loc, node.path,
                        "declare the input as float32, or put an Embedding first")  # fmt: skip
        if op.rule is not None and not node.call:  # the op's own rule instead of its kernels
            out = self._guard(node, op, in_types, lambda: op.rule(built, inputs, args))
            if out is not NotImplemented:
                return out
        return self._guard(node, op, in_types, lambda: op.apply(built, inputs, args, node.call, "meta"))

    def _guard(self, node, op, in_types, run: Callable[[], Any]) -> Any:
        try:
            return run()
        except Exception as err:  # noqa: BLE001 - any failure is a shape/argument error
            got = f"input {_show(in_types)}" if in_types else "no input"
            raise ShapeError(f"{op.name} cannot take {got}: {first_line(err)}",
                             node.loc, node.path, op.hint) from None  # fmt: skip

    def _combine(self, outs: list, node) -> Any:
        first = outs[0]
        torch = self.torch
        if any(_structure(o) != _structure(first) for o in outs[1:]):
            raise ShapeError(f"{node.op}: the number of dims or outputs depends on a symbolic "
                             "dim's value", node.loc, node.path,
                             "yamlnet needs it fixed; make that dim concrete")  # fmt: skip
        if isinstance(first, torch.Tensor):
            dims = []
            for d, size in enumerate(first.shape):
                moved = {s: o.shape[d] for s, o in zip(self.symbols, outs[1:], strict=True) if o.shape[d] != size}
                dims.append(size if not moved else _symbolic_dim(size, moved, self.passes[0]))
            out = TensorType(tuple(dims), str(first.dtype).removeprefix("torch."))
            if 0 in dims:
                raise ShapeError(f"{node.op} gives an output of shape {format_type(out)}, with a dimension of size 0",
                                 node.loc, node.path, "a tensor with no elements: check the sizes in this node")  # fmt: skip
            return out
        if isinstance(first, (tuple, list)):
            return tuple(self._combine([o[i] for o in outs], node) for i in range(len(first)))
        if first is None:
            return None
        raise ShapeError(f"{node.op} returned {type(first).__name__}, not a tensor", node.loc, node.path)


def _symbolic_dim(base: int, moved: dict[str, int], sample: dict[str, int]) -> str:
    """Name a dim that moved with one or more symbols: 'N', 'H/2', '2*T+1', 'N*T'."""
    lo = sample
    if len(moved) == 1:
        (sym, alt), = moved.items()
        a = Fraction(alt - base, SAMPLE_SIZES[1] - lo[sym])
        b = base - a * lo[sym]
        return _linear(sym, a, b)
    prod = 1
    for sym in moved:
        prod *= lo[sym]
    if base % prod == 0:
        k = base // prod
        return ("" if k == 1 else f"{k}*") + "*".join(moved)
    return "?"


def _linear(sym: str, a: Fraction, b: Fraction) -> str:
    if a == 0:
        return str(b)
    if a.denominator == 1:
        term = sym if a == 1 else f"{a.numerator}*{sym}"
    elif a.numerator == 1:
        term = f"{sym}/{a.denominator}"
    else:
        term = f"{a.numerator}*{sym}/{a.denominator}"
    if b == 0:
        return term
    sign = "+" if b > 0 else "-"
    return f"{term}{sign}{abs(b)}" if b.denominator == 1 else "?"


def pick_type(t: Any, index: tuple) -> Any:
    """The type of `output[i][j]...` of a node of type `t` (a tuple output indexed)."""
    for i in index:
        if not isinstance(t, tuple):
            raise ShapeError(f"cannot index [{i}] into a single tensor {t}")
        if not -len(t) <= i < len(t):
            raise ShapeError(f"index [{i}] out of range for {len(t)} outputs {format_type(t)}")
        t = t[i]
    return t


def _structure(value: Any) -> Any:
    """Rank of a tensor, or the nested structure of a tuple output."""
    if isinstance(value, (tuple, list)):
        return tuple(_structure(v) for v in value)
    return getattr(value, "ndim", None)


def param_budget() -> int:
    """The most parameter and buffer values a network may have: TOTAL_PARAMS, or
    $YAMLNET_MAX_PARAMS."""
    return env_limit("YAMLNET_MAX_PARAMS", TOTAL_PARAMS, "parameters", ShapeError)


def env_limit(name: str, default: int, unit: str, error: type = ShapeError) -> int:
    """A limit read from the environment variable `name` (`3e9`, `40_000_000`), or
    `default` when it is unset; anything but a positive number is an `error`."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(float(raw)) if "e" in raw.lower() else int(raw)
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise error(f"{name}={raw[:40]!r} is not a positive number of {unit}")
    return value


def check_param_budget(typed: nx.DiGraph, spec) -> None:
    """The network's parameters and buffers, counted at validate from modules built on the meta device
    (nothing allocated), against the budget: a spec that would take more memory than any
    machine should be asked for is refused where it is checked, not by the kernel's OOM
    killer when `compile` builds it. Located at the largest node."""
    sizes = {name: (data.get("params", 0) or 0) + (data.get("buffers", 0) or 0)
             for name, data in typed.nodes(data=True)}  # fmt: skip
    total, budget = sum(sizes.values()), param_budget()
    if total <= budget:
        return
    largest = max(sizes, key=sizes.get)
    node = next((n for n in spec.nodes if n.name == largest), None)
    what = "parameters" if not any(d.get("buffers") for _, d in typed.nodes(data=True)) \
        else "parameter and buffer values"  # fmt: skip
    raise ShapeError(f"the network would have {total:,} {what} ({largest} alone {sizes[largest]:,}); "
                     f"the limit is {budget:,}", node.loc if node else None, node.path if node else "",
                     "set YAMLNET_MAX_PARAMS to allow more")  # fmt: skip


def _float_weights(built: Any) -> bool:
    return any(p.is_floating_point() for p in built.parameters())


def _count_params(built: Any) -> int:
    if built is None:
        return 0
    if hasattr(built, "parameters"):
        return sum(p.numel() for p in built.parameters())
    import torch

    return built.numel() if isinstance(built, torch.nn.Parameter) else 0  # buffers: 0


def _tensors(value: Any) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return [value] if hasattr(value, "numel") else []


def _count_buffers(built: Any) -> int:
    if built is None:
        return 0
    if hasattr(built, "buffers"):
        return sum(b.numel() for b in built.buffers())
    import torch

    is_buffer = isinstance(built, torch.Tensor) and not isinstance(built, torch.nn.Parameter)
    return built.numel() if is_buffer else 0


def _symbolic(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, int) and isinstance(b, (list, tuple)) and len(b) == 1:
        return a == b[0]
    return False


def _show(types: list) -> str:
    return " and ".join(format_type(t) for t in types)


def _kw(args: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) < 120 else text[:117] + "..."


def first_line(err: Exception) -> str:
    """torch's message, first sentence only (the rest repeats sample sizes)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    for stop in ("! ", "; "):
        text = text.split(stop)[0]
    return text[:300]
