"""Tracing the module with torch.fx, each traced node becoming an op node of the spec (`_Item`)
in the scope of the module that made it."""

from __future__ import annotations

import operator
import types
from dataclasses import dataclass, field
from typing import Any

from ..registry import REGISTRY
from .common import ImportFailure, _is_node, _leaf_op, _stand_in, snake_case
from .functions import (
    _BASE,
    _SIZE_HINT,
    _const,
    _convert_function,
    _Unsupported,
    registered_functions,
)
from .layer_args import _NOT_PLAIN, _module_args, _plain
from .load import _example
from .modes import _split_modes
from .record import (
    _T,
    _describe,
    _flat_args,
    _has_param,
    _is_namedtuple_call,
    _is_scalar,
    _is_size_leaf,
    _record,
    _refuse_sharing,
    _returned,
    _scope_of,
    _trace_error,
    _Tuple,
    torch_assert,
)


def _traced_through(target, plugin_functions: tuple) -> bool:
    """A library's function that torch.fx.wrap keeps whole (torchvision's
    `_get_relative_position_bias`) and no plugin registers: traced through like a module's
    forward, since a spec has no op for it (one that branches on sizes stays whole). torch's
    own functions stay single nodes."""
    return isinstance(target, types.FunctionType) and target not in plugin_functions \
        and (target.__module__ or "").split(".")[0] != "torch"  # fmt: skip


# ---- tracing ------------------------------------------------------------------------------------
def _trace_graph(module, names: list[str], mode: str = ""):
    """The fx graph of `module` (a registry op's layer one node), in the mode it is in."""
    import inspect

    import torch.fx as fx

    class Tracer(fx.Tracer):
        proxy_buffer_attributes = True  # a buffer read in forward is a node (index.view(-1))

        def is_leaf_module(self, m, qualname):
            return _leaf_op(m) is not None

        def call_module(self, m, forward, args, kwargs):
            return super().call_module(m, _stand_in(m) or forward, args, kwargs)

        def create_proxy(self, kind, target, args, kwargs, *rest, **more):
            if kind == "call_function" and _traced_through(target, wrapped):
                last = next(reversed(self.graph.nodes), None)
                try:
                    out = target(*args, **kwargs)  # its body becomes nodes
                except fx.proxy.TraceError:  # it branches on sizes
                    out = None
                if isinstance(out, fx.Proxy):
                    self.unwrapped.append(out.node)  # fx marks it wrapped next: undone after
                    return out
                while (tail := next(reversed(self.graph.nodes), None)) is not last:
                    self.graph.erase_node(tail)  # kept whole, as fx.wrap asked
            return super().create_proxy(kind, target, args, kwargs, *rest, **more)

    _refuse_sharing(module)
    wrapped = tuple(f for f in registered_functions() if isinstance(f, types.FunctionType))
    tracer = Tracer(autowrap_functions=wrapped)  # a plugin's function: one call, one node
    concrete = {}
    try:
        for p in list(inspect.signature(module.forward).parameters.values()):
            if p.name not in names and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                if p.default is inspect.Parameter.empty:
                    raise ImportFailure(f"{type(module).__name__}.forward needs '{p.name}'",
                                        hint=f"--input {p.name}=[...]")  # fmt: skip
                concrete[p.name] = p.default
    except (TypeError, ValueError):
        pass
    tracer.unwrapped = []
    try:
        graph = tracer.trace(module, concrete_args=concrete or None)
    except ImportFailure:
        raise
    except Exception as err:  # noqa: BLE001 - explain fx's failure, name the submodule
        raise _trace_error(err, tracer, module, mode) from err
    for n in tracer.unwrapped:  # else fx's code for the graph would wrap torch.cat for good
        n.meta.pop("is_wrapped", None)
    return graph


@dataclass
class _Val:
    """A value as the graph sees it: an fx node, indexed into when it is a tuple."""

    node: Any
    index: tuple = ()

    def key(self):
        return (self.node, self.index)


@dataclass
class _Item:
    """One op node of the spec, from one fx node."""

    fx: Any
    op: str
    args: dict
    inputs: list  # of _Val
    owner: str  # module path of the scope it sits in
    name: str = ""
    base: str = ""  # name wanted
    droppable: frozenset = frozenset()
    call: dict = field(default_factory=dict)


class _Traced:
    """The fx trace of a module, each node turned into an `_Item` with its scope."""

    def __init__(self, module, names, examples, decls, sample):
        import torch.fx as fx

        self.module = module
        self.input_decls = [(shape, dtype) for _, shape, dtype in decls]
        self.sample = sample
        self._values_b = None
        eval_graph = _trace_graph(module, names)
        module.train()  # `if self.training:` branches: traced again, compared in modes.py
        try:
            train_graph = _trace_graph(module, names, " in training")
        finally:
            module.eval()
        self.graph, self.n_train, self.output_names = _split_modes(eval_graph, train_graph, module)
        for ph in self.graph.nodes:
            if ph.op == "placeholder" and ph.target in names and not ph.users:
                raise ImportFailure(f"forward never uses its input '{ph.target}'; a spec's inputs are all used",
                                    hint="leave it out of --input (give it a default in forward)")  # fmt: skip
        self.gm = fx.GraphModule(module, self.graph)
        self.values = _record(self.gm, examples)
        self.names = names
        self.items: list[_Item] = []
        self.alias: dict = {}  # fx node -> _Val (tuple indexing, no node of its own)
        self.sizes: dict = {}  # fx nodes of sizes and flags (no node of the spec)
        self.outputs: list = []  # [(name, _Val)]
        self.modules = dict(module.named_modules())
        self._convert()

    # fx node -> items ------------------------------------------------------------------
    def _convert(self):
        for n in self.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                self.outputs = self._outputs(n.args[0])
            elif _is_namedtuple_call(n) and list(n.users) == [self.graph.output_node()]:
                continue  # what forward returns, named
            elif n.op == "call_module":
                self._call_module(n)
            elif n.op == "get_attr":
                self._get_attr(n)
            else:
                self._function(n)

    def val(self, arg) -> _Val:
        return self.alias.get(arg) or _Val(arg)

    def _call_module(self, n):
        path = n.target
        m = self.modules[path]
        op = _leaf_op(m)
        owner = path.rpartition(".")[0]
        inputs = [self.val(a) for a in n.args]
        try:
            call = {k: _const(v, k) for k, v in n.kwargs.items()}
        except _Unsupported as err:
            raise ImportFailure(f"'{path}' ({type(m).__name__}) is called with {err}") from None
        for k, a in enumerate(n.args):
            if not hasattr(a, "op"):
                raise ImportFailure(
                    f"'{path}' ({type(m).__name__}) is called with a constant as input {k}"
                )
        for k, v in enumerate(inputs):  # a later input may be a tuple: an LSTM's (h, c)
            if not isinstance(self._value(v), _T) and not (k > 0 and isinstance(self._value(v), _Tuple)):
                raise ImportFailure(f"'{path}' ({type(m).__name__}) gets a tuple or a number as input {k}; "
                                    "a spec passes tensors only")  # fmt: skip
        shapes = [self._shape(v) for v in inputs]
        args, droppable = _module_args(m, op, shapes, path)
        self.items.append(
            _Item(
                n,
                op,
                args,
                inputs,
                owner,
                base=path.rpartition(".")[2],
                droppable=droppable,
                call=call,
            )
        )

    def _get_attr(self, n):

        owner, _, attr = n.target.rpartition(".")
        value = self.module.get_parameter(n.target) if _has_param(self.module, n.target) else None
        if value is None:
            try:
                value = self.module.get_buffer(n.target)
            except AttributeError:
                raise ImportFailure(f"{self._constant(n)}; a spec holds parameters and buffers only",
                                    hint="register it as a buffer") from None  # fmt: skip
            op, args = "Buffer", {"shape": list(value.shape)}
            dtype = str(value.dtype).removeprefix("torch.")
            if dtype not in REGISTRY.get("Buffer").args["dtype"].schema["enum"]:
                raise ImportFailure(
                    f"buffer '{n.target}' is {dtype}, which a spec's Buffer cannot be"
                )
            if dtype != "float32":
                args["dtype"] = dtype
            owner_module = self.modules.get(owner, self.module)
            if attr in getattr(owner_module, "_non_persistent_buffers_set", ()):
                # not in the state_dict: the spec must make its values itself
                args["persistent"] = False
                flat = value.flatten()
                if flat.numel() and bool((flat == flat[0]).all()) and value.dtype.is_floating_point:
                    first = float(flat[0])
                    if first != 0.0:
                        args.update(fill="constant", value=first) if first != 1.0 else args.update(
                            fill="ones"
                        )
                elif flat.numel() and not bool((flat == 0).all()):
                    raise ImportFailure(f"buffer '{n.target}' is not saved in the state_dict and holds values "
                                        "a spec cannot write (only a constant)")  # fmt: skip
        else:
            op, args = "Parameter", {"shape": list(value.shape)}
            if not value.requires_grad:
                args["requires_grad"] = False
        if owner and _leaf_op(self.modules[owner]):
            raise ImportFailure(
                f"forward reads '{n.target}' of a layer directly; the spec cannot share it"
            )
        self.items.append(_Item(n, op, args, [], owner, base=attr))

    def _constant(self, n) -> str:
        """A tensor forward reads that the module does not hold as a parameter or buffer:
        an attribute, or one fx names `_tensor_constant0` (made in forward), by its module."""
        if not n.target.startswith("_tensor_constant"):
            return f"forward reads '{n.target}', a tensor attribute that is no parameter or buffer"
        owner = _scope_of(n)
        where = f" of '{owner}' ({type(self.modules[owner]).__name__})" if owner else ""
        return f"forward{where} uses a constant tensor (made in forward, or a plain attribute)"

    def _value(self, v: _Val):
        value = self.values.get(v.node)
        for k in v.index:
            value = value[k] if isinstance(value, (tuple, list)) else None
        return value

    def _shape(self, v: _Val):
        value = self._value(v)
        return value.shape if isinstance(value, _T) else None

    def _outputs(self, out) -> list:
        pairs = [(name, v) for name, (_, v) in zip(self.output_names, _returned(out), strict=True)]
        for name, v in pairs:
            if not (_is_node(v) and isinstance(self._value(self.val(v)), _T)):
                what = "a tuple" if _is_node(v) and isinstance(self._value(self.val(v)), tuple) \
                    else "a number" if _is_node(v) else repr(v)  # fmt: skip
                raise ImportFailure(f"forward returns {what} as {name}; a spec returns tensors "
                                    "(one, or a flat tuple or dict of them)")  # fmt: skip
        if len({n for n, _ in pairs}) != len(pairs) or any(not n.isidentifier() for n, _ in pairs):
            raise ImportFailure("forward returns a dict whose keys are not distinct identifiers")
        return [(name, self.val(v)) for name, v in pairs]

    def _function(self, n):
        owner = _scope_of(n)
        target = n.target
        where = f" (in {owner}: {type(self.modules[owner]).__name__})" if owner else ""
        # tuple indexing and sizes make no node
        if target is operator.getitem and isinstance(self.values.get(n.args[0]), _Tuple):
            base = self.val(n.args[0])
            try:
                index = self.scalar_value(n.args[1]) if _is_node(n.args[1]) else n.args[1]
            except _Unsupported as err:
                raise ImportFailure(f"operator.getitem{where}: a tuple indexed by a value computed in "
                                    f"forward: {err}", hint=err.hint) from None  # fmt: skip
            if type(index) is not int:
                raise ImportFailure(f"operator.getitem{where}: a tuple indexed by {index!r}")
            self.alias[n] = _Val(base.node, base.index + (index,))
            return
        if target is torch_assert():
            return  # a check of the module's own; the spec checks shapes itself
        if _is_scalar(self.values.get(n)):
            self.sizes[n] = True  # sizes and flags computed in forward: used as arguments
            return
        try:
            op, inputs, args = _convert_function(n, self)
        except _Unsupported as err:
            raise ImportFailure(f"{_describe(n)}{where}: {err}", hint=err.hint) from None
        fn_name = target if isinstance(target, str) else getattr(target, "__name__", op)
        base = _BASE.get(op) or (op if op[0].islower() else snake_case(fn_name.strip("_")))
        self.items.append(_Item(n, op, args, inputs, owner, base=base))

    def is_tensor(self, v) -> bool:
        return _is_node(v) and v not in self.sizes

    def size_value(self, arg):
        """A size computed in forward (x.size(0)) as the spec writes it: an int, or the
        symbolic input dim it is."""
        return self.scalar_value(arg, size=True)

    def scalar_value(self, arg, size: bool = False):
        """A number computed in forward (x.size(0), c // 16, d ** -0.5) as a constant, or
        (`size`) a symbolic input dim itself. Which sizes follow the symbolic dims is seen
        by tracing the module a second time with every symbolic dim doubled."""
        if arg not in self.sizes:
            raise _Unsupported(f"uses a tensor ({self.origin(arg)}) where a number is expected", _SIZE_HINT)
        a = self.values.get(arg)
        if not self._varies(arg):
            if _plain(a) is _NOT_PLAIN:
                raise _Unsupported(f"uses {a!r} ({self.origin(arg)}), which YAML cannot write")
            return _plain(a)
        if isinstance(a, tuple):
            raise _Unsupported(f"uses a shape ({self.origin(arg)}) that changes with the symbolic dims",
                               _SIZE_HINT)  # fmt: skip
        if size and _is_size_leaf(arg, self.sizes):
            b = self._second_run().get(arg)
            hits = [s for s, v in self.sample.items() if v == a and 2 * v == b]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise _Unsupported(f"uses a size that could be {' or '.join(hits)}",
                                   "give those dims different sizes with --dim")  # fmt: skip
        raise _Unsupported(f"computes a number from the symbolic dims ({self.origin(arg)}); a spec can "
                           "name a symbolic dim, not a number computed from one", _SIZE_HINT)  # fmt: skip

    def origin(self, n) -> str:
        """What made fx node `n`, by the module path it sits in (fx's own node names, such
        as getitem_1, mean nothing to the module's author)."""
        if not _is_node(n):
            return repr(n)
        if n.op == "placeholder":
            return f"the input '{n.target}'"
        if n.op in ("call_module", "get_attr"):
            return f"'{n.target}'"
        owner = _scope_of(n)
        return _describe(n) + (f" in '{owner}'" if owner else "")

    def _varies(self, n, depth: int = 0) -> bool:
        """Whether scalar node `n` changes with the symbolic dims."""
        if depth > 200:
            return True
        if _is_size_leaf(n, self.sizes) and not (n.op == "call_method" and n.target == "dim"):
            return self.values.get(n) != self._second_run().get(n)
        return any(self._varies(a, depth + 1) for a in _flat_args(n) if a in self.sizes)

    def _second_run(self) -> dict:
        if self._values_b is None:
            if not self.sample:
                self._values_b = self.values
                return self._values_b
            doubled = {k: 2 * v for k, v in self.sample.items()}
            examples = [_example(shape, dtype, doubled) for shape, dtype in self.input_decls]
            try:
                self._values_b = _record(self.gm, examples)
            except ImportFailure as err:
                raise ImportFailure(f"forward computes sizes from its inputs' shapes; to see which follow "
                                    f"the symbolic dims it is traced again with them doubled, which fails: "
                                    f"{err}", hint="choose --dim sizes that also work doubled") from None  # fmt: skip
        return self._values_b
