"""The op registry: every op a spec can name is one registered `OpDef`.

An `OpDef` is the whole truth about an op — how to build it, how it is called, which
arguments it takes (a JSON Schema per argument, used by validation and by the published
schema), how many tensor inputs it accepts, and which constructor arguments are derived
from the incoming shapes (`in_channels` from `input.shape[1]`, ...). Shape rules are
mostly not written per op: the shapes stage runs the op on meta tensors. A few of the
commonest ops register a rule of their own (`same_shape`, `rule`), because their meta
kernels are slow Python decompositions that also load TorchDynamo on first use.

Kinds and how codegen emits them:

    module     an nn.Module class; built once per node, emitted as `call_module`
    function   a callable such as `torch.cat`; emitted as `call_function`
    method     a Tensor method name such as "permute"; emitted as `call_method`
    parameter  a learnable tensor owned by the model; emitted as `get_attr`
    buffer     a non-learnable tensor (state_dict entry unless persistent: false)
    constant   a tensor made from arguments alone (arange, tensor): with what is computed
               from it, folded into a buffer when the model is built (see codegen.py)

Sources are loaded lazily (importing torchvision costs seconds): the registry knows
every name up front and builds the `OpDef` on first use. User ops are added with
`register_op` — from a module given to `--plugin`, or from an installed package's
`yamlnet.ops` entry point. A spec itself can never name Python code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import PluginError

__all__ = ["ArgDef", "OpDef", "Registry", "REGISTRY", "register_op", "load_plugins", "layer_class"]

Shape = tuple  # a tuple of ints and symbolic dim names


@dataclass(frozen=True)
class ArgDef:
    """One argument of an op: its JSON Schema, whether it is required, and its docs."""

    name: str
    schema: dict = field(default_factory=dict)
    required: bool = False
    default: Any = None
    doc: str = ""
    inferred: bool = False  # filled in from input shapes when absent
    layer: bool = False  # takes a layer class: an op name (`Hardswish`) or {op: Name, **arguments}


@dataclass(frozen=True)
class OpDef:
    """One op: builder, call convention, argument schema and shape-derived arguments."""

    name: str
    kind: str  # module | function | method | parameter | buffer | constant
    target: Any  # class, callable or method name
    args: dict[str, ArgDef] = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int | None = 1  # None: any number
    input_names: tuple[str, ...] = ()
    infer: dict[str, Callable[[list[Shape]], Any]] = field(default_factory=dict)
    positional: tuple[str, ...] = ()  # args passed positionally after the inputs
    lead: tuple[str, ...] = ()  # args passed positionally before the inputs (einsum's equation)
    keyword_inputs: tuple[str, ...] = ()  # inputs 2, 3, ... passed by these keywords (gather's index)
    list_input: bool = False  # inputs are passed as one list (torch.cat([a, b]))
    size_args: tuple[str, ...] = ()  # list args whose items may name symbolic dims
    open_args: bool = False  # accepts any keyword (plugins without a signature)
    prepare: Callable[[dict], dict] | None = None  # turn YAML values into call values
    hint: str = ""  # how to fix the usual shape error of this op
    int_inputs: bool = False  # a module with float weights that takes integer ids (Embedding)
    same_shape: bool = False  # shape rule: the output is shaped like the (only) input
    # shape rule: (built, meta inputs, args) -> output, or NotImplemented to run the op instead
    rule: Callable[[Any, list, dict], Any] | None = None
    doc: str = ""
    source: str = "yamlnet"
    takes_device: bool = False  # a torch.nn module whose constructor places every tensor by `device=`

    @property
    def owns_state(self) -> bool:
        """Whether each node of this op owns a module or tensor (built once, at its name)."""
        return self.kind in ("module", "parameter", "buffer")

    def call_parts(self, inputs: list, args: dict) -> tuple[tuple, dict]:
        """A function's or method's call as (positional, keyword), after `prepare`:
        `lead` arguments, the inputs (one list for `list_input`; the first only when the
        rest go by keyword), `positional` arguments; then the keyword arguments. For a
        method the first positional value is the tensor it is called on."""
        args = self.prepare(args) if self.prepare else args
        lead = [args[k] for k in self.lead if k in args]
        pos = [args[k] for k in self.positional if k in args]
        kw = {k: v for k, v in args.items() if k not in self.positional and k not in self.lead}
        if self.keyword_inputs:
            kw.update(zip(self.keyword_inputs, inputs[1:], strict=False))
            inputs = inputs[:1]
        first = [list(inputs)] if self.list_input else list(inputs)
        return (*lead, *first, *pos), kw

    def instantiate(self, args: dict, device: str | None = None) -> Any:
        """The module (or parameter/buffer tensor) a node owns; None for functions."""
        import torch

        device = device or torch.get_default_device()  # cpu, unless a `with torch.device(...)` says
        if self.kind == "module":
            args = {k: layer_class(v) if k in self.args and self.args[k].layer else v for k, v in args.items()}
            if str(device) == str(torch.get_default_device()):
                return self.target(**args)  # no device mode: it intercepts every call made
            if self.takes_device:
                return self.target(**args, device=device)
            with torch.device(device):
                return self.target(**args)
        if self.kind in ("parameter", "buffer"):
            if "shape" not in args:  # a Buffer that holds its input's value (made from constants)
                return None
            from .ops.tensors import make_tensor

            return make_tensor(args, device, learnable=self.kind == "parameter")
        return None

    def apply(self, built: Any, inputs: list, args: dict, call: dict, device: Any = None) -> Any:
        """Run the op eagerly (the shapes stage does this on meta tensors; `device` is
        where a constant is made)."""
        if self.kind == "module":
            return built(*inputs, **call)
        if self.kind in ("parameter", "buffer"):
            return built if built is not None else _held(inputs[0], args)
        pos, kw = self.call_parts(list(inputs), args)
        if self.kind == "constant":
            return self.target(*pos, **kw, **call, device=device or "cpu")
        if self.kind == "method":
            return getattr(pos[0], self.target)(*pos[1:], **kw, **call)
        return self.target(*pos, **kw, **call)

    def check_arity(self, n: int) -> str:
        """'' when `n` inputs are acceptable, else the reason."""
        lo, hi = self.min_inputs, self.max_inputs
        if lo <= n and (hi is None or n <= hi):
            return ""
        want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        names = f" ({', '.join(self.input_names)})" if self.input_names else ""
        return f"{self.name} takes {want} input{'s' if want != '1' else ''}{names}, got {n}"


class Registry:
    """Name -> OpDef, with lazily loaded sources."""

    def __init__(self) -> None:
        self._ops: dict[str, OpDef | Callable[[], OpDef]] = {}
        self._sources: list[Callable[[Registry], None]] = []
        self._loaded = False
        self._plugins_loaded = False

    def add_source(self, loader: Callable[[Registry], None]) -> None:
        self._sources.append(loader)
        self._loaded = False

    def add(self, op: OpDef | Callable[[], OpDef], name: str | None = None, *, replace=False):
        key = name or op.name
        if key in self._ops and not replace:
            raise PluginError(f"op '{key}' is already registered")
        self._ops[key] = op

    def _ensure(self) -> None:
        if not self._loaded:
            self._loaded = True
            for loader in self._sources:
                loader(self)
        if not self._plugins_loaded:
            self._plugins_loaded = True
            _load_entry_points()

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._ops)

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._ops

    def get(self, name: str) -> OpDef:
        self._ensure()
        op = self._ops[name]
        if not isinstance(op, OpDef):
            op = op()
            self._ops[name] = op
        return op

    def module_op(self, cls: type) -> str | None:
        """The name of the module op whose class is `cls` (a built-in op is named after
        its class; a plugin may name its op otherwise), or None."""
        name = cls.__name__
        if name in self and self.get(name).kind == "module" and self.get(name).target is cls:
            return name
        for key, op in self._ops.items():
            if isinstance(op, OpDef) and op.kind == "module" and op.target is cls:
                return key
        return None

    def all(self) -> Iterable[OpDef]:
        return (self.get(n) for n in self.names())


REGISTRY = Registry()


def _held(value: Any, args: dict) -> Any:
    """What a Buffer with an input holds: that value, copied, in the Buffer's dtype."""
    import torch

    dtype = getattr(torch, args["dtype"]) if "dtype" in args else value.dtype
    return value.detach().to(dtype=dtype, copy=True)


def layer_class(value: Any) -> Any:
    """A layer argument's value as the constructor takes it: `Hardswish` -> nn.Hardswish,
    `{op: BatchNorm2d, eps: 0.001}` -> partial(nn.BatchNorm2d, eps=0.001), null -> None.
    The value was checked by the validate stage (`check_args`)."""
    if value is None:
        return None
    if isinstance(value, str):
        return REGISTRY.get(value).target
    import functools

    rest = {k: v for k, v in value.items() if k != "op"}
    return functools.partial(REGISTRY.get(value["op"]).target, **rest)


def register_op(
    name: str,
    target: Any,
    *,
    kind: str | None = None,
    args: dict[str, dict] | None = None,
    inputs: int | tuple[int, int | None] | None = None,
    infer: dict[str, Callable[[list[Shape]], Any]] | None = None,
    doc: str = "",
    registry: Registry | None = None,
) -> OpDef:
    """Register a user op. For an nn.Module class everything is read from its signature.

    >>> import torch
    >>> class Scale(torch.nn.Module):
    ...     def __init__(self, factor: float = 2.0):
    ...         super().__init__(); self.factor = factor
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> register_op("DocScale", Scale).kind
    'module'
    """
    from .ops import module_opdef

    reg = registry or REGISTRY
    reg._ensure()  # built-in names first, so a plugin cannot silently shadow them
    if kind in (None, "module") and isinstance(target, type):
        op = module_opdef(name, target, source=getattr(target, "__module__", "plugin"))
        if infer:
            op = _replace(op, infer={**op.infer, **infer})
    elif callable(target) or kind == "method":
        n = 1 if inputs is None else inputs
        lo, hi = n if isinstance(n, tuple) else (n, n)
        argdefs = {k: ArgDef(k, schema=v) for k, v in (args or {}).items()}
        op = OpDef(
            name, kind or "function", target, argdefs, lo, hi, infer=infer or {},
            open_args=args is None, doc=doc, source=getattr(target, "__module__", "plugin"),
        )  # fmt: skip
    else:
        raise PluginError(f"register_op('{name}'): target must be an nn.Module class or callable")
    reg.add(op)
    return op


def _replace(op: OpDef, **changes) -> OpDef:
    from dataclasses import replace

    return replace(op, **changes)


def load_plugins(modules: Iterable[str]) -> None:
    """Import plugin modules named on the command line (`--plugin MODULE`)."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported
            raise PluginError(f"cannot load plugin '{mod}': {type(err).__name__}: {err}") from err


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="yamlnet.ops"):
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001
            raise PluginError(f"cannot load plugin entry point '{ep.name}' ({ep.value}): {err}") from err
        if callable(obj) and not isinstance(obj, type):
            obj(REGISTRY)
