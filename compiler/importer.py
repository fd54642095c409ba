"""`yamlnet import`: an nn.Module -> a spec that rebuilds it.

The module is traced with torch.fx. Layers yamlnet knows as ops (every torch.nn layer,
a few torchvision.ops, plugin ops) stay single nodes; the user's own modules are traced
through. The traced graph is then cut back into the module tree it came from — every
node knows the stack of modules whose `forward` made it — so each submodule becomes a
scope with the same name, and the written spec has the module's state_dict keys.

Readable structure comes from three rules, applied bottom up:

- every instance of one class becomes a use of one **block** (`BasicBlock` ->
  `basic_block`). Instances are merged when their bodies have the same nodes in the same
  order; a node only some instances have gets `if: "${use_NAME}"`, and an argument that
  differs becomes a block parameter (arguments that always agree share one);
- an `nn.Sequential`/`ModuleList` whose children are chained uses of one block (or one
  op) becomes one node with `repeat: n`; values that change along it become expressions
  of `i` (`"${2 if i == 0 else 1}"`);
- arguments the compiler infers from shapes (`in_channels`, ...) and arguments equal to
  their defaults are left out.

The written spec is then compiled, loaded with the module's state_dict (strict) and run
beside it on sample inputs; `ImportResult.check` says how close the outputs are.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import operator
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .registry import REGISTRY
from .schema import DTYPES

__all__ = ["ImportFailure", "ImportResult", "import_module", "load_target", "parse_input", "snake_case"]


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
    from .expand import parse_override

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




# ---- the public entry point -----------------------------------------------------------------
def import_module(
    module,
    inputs: list[tuple[str | None, list, str]],
    *,
    name: str | None = None,
    dims: dict[str, int] | None = None,
    check: bool = True,
    header: str = "",
) -> ImportResult:
    """Write a spec for `module`, given its inputs as (name, shape, dtype)."""

    module = module.eval()
    decls = _input_decls(module, inputs)
    names = [n for n, _, _ in decls]
    sample = _samples(decls, dims or {})
    examples = [_example(shape, dtype, sample) for _, shape, dtype in decls]
    traced = _Traced(module, names, examples, decls, sample)
    tree = _Tree(traced)
    name = name or snake_case(type(module).__name__)
    writer = _Writer(tree, decls, name, header)
    text = writer.text()
    result = None
    if check:
        diff, compiled = _check(text, module, examples)
        if diff is None:  # a dropped argument the compiler could not infer: write them all
            writer = _Writer(tree, decls, name, header, keep_inferred=True)
            text = writer.text()
            diff, compiled = _check(text, module, examples, final=True)
        result = ImportResult(
            text, name, len(compiled.spec.nodes), _count(compiled.module), diff, sample
        )
    else:
        result = ImportResult(
            text, name, 0, _count(module), None, sample
        )
    return result


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check(text: str, module, examples, final: bool = False):
    """Compile `text`, load the module's weights strictly, compare outputs on examples."""
    import torch

    from .compile import compile_spec

    try:
        compiled = compile_spec(text)
    except SpecError as err:
        if not final:
            return None, None
        raise ImportFailure(
            f"the written spec does not compile: {err}", hint="please report this"
        ) from err
    built = compiled.module
    result = built.load_state_dict(module.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ImportFailure(
            "the written spec's state_dict differs from the module's: "
            f"missing {_few(result.missing_keys)}, unexpected {_few(result.unexpected_keys)}"
        )
    built.eval()
    with torch.no_grad():
        want = _flat(module(*examples))
        got = _flat(built(*examples))
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got, strict=False)):
        raise ImportFailure(
            "the written spec's outputs differ in number or shape from the module's"
        )
    diff = max((float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                for a, b in zip(want, got, strict=True)), default=0.0)  # fmt: skip
    scale = max((float(a.double().abs().max()) for a in want if a.numel()), default=1.0)
    if not math.isfinite(diff) or diff > 1e-4 * max(1.0, scale):
        raise ImportFailure(
            f"the written spec's outputs differ from the module's (max abs diff {diff:.3g})"
        )
    return diff, compiled


def _flat(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    return []


def _few(keys: list) -> str:
    keys = list(keys)
    return (
        "none"
        if not keys
        else ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    )


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _input_decls(module, inputs) -> list[tuple[str, list, str]]:
    """(name, shape, dtype) of each input, in forward's order."""
    import inspect

    cls = type(module).__name__
    if _leaf_op(module) is not None:
        raise ImportFailure(
            f"{cls} is itself a layer: write {{op: {_leaf_op(module)}, ...}} in a spec"
        )
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


# ---- tracing ------------------------------------------------------------------------------------
_TV_LEAVES = {"StochasticDepth", "Permute", "FrozenBatchNorm2d", "DropBlock2d", "DropBlock3d"}


def _leaf_op(module) -> str | None:
    """The registry op a module instance is, or None when it is to be traced through."""
    name = REGISTRY.module_op(type(module))
    if name is None:
        return None
    if REGISTRY.get(name).source == "torchvision.ops" and name not in _TV_LEAVES:
        return None  # compositions of torch.nn layers: traced, so their layers keep their names
    return name


def _is_container(module) -> bool:
    import torch.nn as nn

    return type(module) in (nn.Sequential, nn.ModuleList, nn.ModuleDict)


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
        leaf = _leaf_op

        class Tracer(fx.Tracer):
            def is_leaf_module(self, m, qualname):
                return leaf(m) is not None

        _refuse_sharing(module)
        tracer = Tracer()
        import inspect

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
        try:
            self.graph = tracer.trace(module, concrete_args=concrete or None)
        except ImportFailure:
            raise
        except Exception as err:  # noqa: BLE001 - explain fx's failure, name the submodule
            raise _trace_error(err, tracer, module) from err
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
            elif n.op == "call_module":
                self._call_module(n)
            elif n.op == "get_attr":
                self._get_attr(n)
            else:
                self._function(n)

    def val(self, arg) -> _Val:
        return self.alias.get(arg) or _Val(arg)

    def _scope_of(self, n) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
        paths = [p for p in paths if p and not (n.op == "call_module" and p == n.target)]
        return paths[-1] if paths else ""

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
                raise ImportFailure(f"'{n.target}' is a constant tensor of the module, which a spec cannot hold "
                                    "(register it as a buffer)") from None  # fmt: skip
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

    def _value(self, v: _Val):
        value = self.values.get(v.node)
        for k in v.index:
            value = value[k] if isinstance(value, (tuple, list)) else None
        return value

    def _shape(self, v: _Val):
        value = self._value(v)
        return value.shape if isinstance(value, _T) else None

    def _outputs(self, out) -> list:
        if isinstance(out, dict):
            pairs = [(str(k), v) for k, v in out.items()]
        elif isinstance(out, (tuple, list)):
            pairs = [(f"output_{k}", v) for k, v in enumerate(out)]
        else:
            pairs = [("output", out)]
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
        owner = self._scope_of(n)
        target = n.target
        where = f" (in {owner}: {type(self.modules[owner]).__name__})" if owner else ""
        # tuple indexing and sizes make no node
        if target is operator.getitem and isinstance(self.values.get(n.args[0]), _Tuple):
            base = self.val(n.args[0])
            if not isinstance(n.args[1], int):
                raise ImportFailure(f"{n.format_node()}: a tuple indexed by {n.args[1]!r}{where}")
            self.alias[n] = _Val(base.node, base.index + (n.args[1],))
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
            raise _Unsupported(f"uses {arg.name}, a value computed in forward", _SIZE_HINT)
        a = self.values.get(arg)
        if isinstance(a, tuple):
            raise _Unsupported(f"uses {arg.name}, a shape computed in forward", _SIZE_HINT)
        if not self._varies(arg):
            return a
        if size and _is_size_leaf(arg, self.sizes):
            b = self._second_run().get(arg)
            hits = [s for s, v in self.sample.items() if v == a and 2 * v == b]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise _Unsupported(f"uses a size that could be {' or '.join(hits)}",
                                   "give those dims different sizes with --dim")  # fmt: skip
        raise _Unsupported(f"computes {arg.name} from the symbolic dims; a spec can name a symbolic "
                           "dim, not a number computed from one", _SIZE_HINT)  # fmt: skip

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


def _is_size_leaf(n, sizes) -> bool:
    """x.size(d), x.shape, x.shape[d], x.dim(): read off a tensor, not computed."""
    if n.op == "call_method" and n.target in ("size", "dim"):
        return True
    if n.op == "call_function" and n.target is getattr:
        return True
    return n.op == "call_function" and n.target is operator.getitem and n.args[0] in sizes \
        and _is_size_leaf(n.args[0], sizes)  # fmt: skip


def _flat_args(n) -> list:
    out = []

    def walk(v):
        if isinstance(v, (tuple, list)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif _is_node(v):
            out.append(v)

    walk(n.args)
    walk(n.kwargs)
    return out


def torch_assert():
    import torch

    return torch._assert


def _is_scalar(value) -> bool:
    if isinstance(value, (bool, int, float)) or value is None:
        return True
    return (
        isinstance(value, tuple)
        and not isinstance(value, _Tuple)
        and all(isinstance(v, int) for v in value)
    )


class _T:  # a recorded tensor: shape and dtype only
    def __init__(self, t):
        self.shape = tuple(t.shape)
        self.dtype = t.dtype


class _Tuple(tuple):
    pass


def _record(gm, examples) -> dict:
    """Run the traced module once; keep each node's result (tensors as shapes)."""
    import torch
    import torch.fx as fx

    values = {}

    def summary(v):
        if isinstance(v, torch.Tensor):
            return _T(v)
        if isinstance(v, (tuple, list)) and not isinstance(v, torch.Size):
            return _Tuple(summary(x) for x in v)
        if isinstance(v, torch.Size):
            return tuple(v)
        return v

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n] = summary(out)
            return out

    try:
        with torch.no_grad():
            Recorder(gm).run(*examples)
    except Exception as err:  # noqa: BLE001 - the module itself fails on these inputs
        raise ImportFailure(f"the module fails on inputs of the given shapes: {type(err).__name__}: {_first(err)}",
                            hint="check --input (and --dim for symbolic dims)") from err  # fmt: skip
    return values


def _refuse_sharing(module) -> None:
    """One tensor or layer under two names: a spec gives each its own place."""
    seen: dict = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            raise ImportFailure(f"'{seen[id(p)]}' and '{name}' are one tensor (tied weights); a spec "
                                "cannot tie weights yet")  # fmt: skip
        seen[id(p)] = name
    seen = {}
    for name, m in module.named_modules(remove_duplicate=False):
        if id(m) in seen and any(True for _ in m.parameters()):
            raise ImportFailure(f"'{seen[id(m)]}' and '{name}' are one module; a spec gives each module "
                                "one name")  # fmt: skip
        seen.setdefault(id(m), name)


def _has_param(module, target: str) -> bool:
    try:
        module.get_parameter(target)
        return True
    except AttributeError:
        return False


def _trace_error(err: Exception, tracer, module) -> ImportFailure:
    stack = list(getattr(tracer, "module_stack", {}).values())
    where = ""
    if stack:
        path, cls = stack[-1] if isinstance(stack[-1], tuple) else (stack[-1], None)
        if path:
            cls_name = getattr(cls, "__name__", None) or type(module.get_submodule(path)).__name__
            where = f" in submodule '{path}' ({cls_name})"
    text = _first(err)
    if "control flow" in text or "iterated" in text or "bool" in text.lower():
        why = ("its forward branches or loops on a traced value (a tensor or its size), "
               "which tracing cannot follow (torch.fx: " + text + ")")  # fmt: skip
    else:
        why = f"torch.fx cannot trace it: {type(err).__name__}: {text}"
    return ImportFailure(f"cannot trace {type(module).__name__}{where}: {why}",
                         hint="make that forward independent of tensor values, or register the "
                         "submodule's class as an op with a plugin (--plugin) so it stays one node")  # fmt: skip


def _describe(n) -> str:
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    t = n.target
    mod = getattr(t, "__module__", None) or ""
    mod = {
        "torch._C._nn": "torch.nn.functional",
        "_operator": "operator",
        "torch._C._VariableFunctions": "torch",
    }.get(mod, mod)
    return f"{mod}.{getattr(t, '__name__', t)}" if mod else str(getattr(t, "__name__", t))


# ---- module arguments ---------------------------------------------------------------------------
_ATTR = {  # constructor argument -> how to read it where the attribute has another name
    ("MultiheadAttention", "bias"): lambda m: m.in_proj_bias is not None,
    ("MultiheadAttention", "add_bias_kv"): lambda m: m.bias_k is not None,
    ("FrozenBatchNorm2d", "num_features"): lambda m: m.weight.shape[0],
    ("MultiheadAttention", "kdim"): lambda m: None if m.kdim == m.embed_dim else m.kdim,
    ("MultiheadAttention", "vdim"): lambda m: None if m.vdim == m.embed_dim else m.vdim,
}


def _module_args(m, op: str, shapes: list, path: str) -> tuple[dict, frozenset]:
    """The constructor arguments of a layer, read off the instance, and which of them
    the compiler would infer from the input shapes."""
    import torch

    opdef = REGISTRY.get(op)
    args = {}
    for key, argdef in opdef.args.items():
        if key.startswith("_"):
            continue
        reader = _ATTR.get((op, key))
        if (
            key == "stride"
            and argdef.default is None
            and getattr(m, "stride", 0) == getattr(m, "kernel_size", 1)
        ):
            value = None  # pools: stride defaults to kernel_size
        elif reader is not None:
            value = reader(m)
        elif hasattr(m, key):
            value = getattr(m, key)
            if (
                isinstance(value, torch.Tensor)
                or value is None
                and argdef.schema.get("type") == "boolean"
            ):
                value = value is not None  # bias=True <-> a bias parameter
        else:
            if argdef.required or (argdef.inferred and argdef.default is None):
                raise ImportFailure(
                    f"cannot read argument '{key}' of '{path}' ({op}): the layer does not keep it"
                )
            continue
        value = _plain(value, argdef.schema)
        if value is _NOT_PLAIN:
            if argdef.default is None and not argdef.required:
                continue  # a callable or module argument left at its default (checked later)
            raise ImportFailure(f"argument '{key}' of '{path}' ({op}) cannot be written in YAML")
        args[key] = value
    droppable = set()
    if shapes and all(s is not None for s in shapes):
        for key, rule in opdef.infer.items():
            try:
                inferred = rule([tuple(s) for s in shapes])
            except (IndexError, TypeError):
                continue
            if key in args and _plain(inferred, opdef.args[key].schema) == args[key]:
                droppable.add(key)
    return args, frozenset(droppable)


_NOT_PLAIN = object()


def _plain(value, schema: dict | None = None):
    """A Python value as YAML writes it: tuples as lists, (3, 3) as 3 where an int is
    accepted; _NOT_PLAIN for what YAML cannot hold."""
    import torch

    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_PLAIN
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if any(v is _NOT_PLAIN for v in items):
            return _NOT_PLAIN
        if items and all(v == items[0] and type(v) is int for v in items) and _takes_int(schema):
            return items[0]
        return items
    return _NOT_PLAIN


def _takes_int(schema: dict | None) -> bool:
    if not schema:
        return False
    if schema.get("type") == "integer":
        return True
    return any(_takes_int(s) for s in schema.get("anyOf", ()))


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


_ALIASES = {"axis": "dim", "split_size": "split_size_or_sections", "self": "input"}


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


def _is_node(v) -> bool:
    return hasattr(v, "op") and hasattr(v, "target")


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
    add([torch.transpose, "transpose"], simple("transpose", ["input", "dim0", "dim1"]))
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
    add([F.interpolate], simple("interpolate", ["input", "size", "scale_factor", "mode", "align_corners",
                                                "recompute_scale_factor", "antialias"],
                                {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                                 "recompute_scale_factor": None, "antialias": False}))  # fmt: skip

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
    if handler is None:
        raise _Unsupported("has no yamlnet op")
    return handler(n, tr)


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


# ---- the module tree ------------------------------------------------------------------------
@dataclass
class _Scope:
    """One module instance: its items and child scopes, in forward order."""

    path: str
    module: Any
    parent: _Scope | None
    children: list = field(default_factory=list)  # _Item | _Scope
    inputs: list = field(default_factory=list)  # _Val keys crossing in, in first-use order
    outputs: list = field(default_factory=list)  # _Val keys crossing out
    names: set = field(default_factory=set)
    block: str = ""  # block id, once its class is merged
    params: dict = field(default_factory=dict)  # this instance's parameter values

    @property
    def local(self) -> str:
        return self.path.rpartition(".")[2]

    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth()


class _Tree:
    """Items cut back into the module tree; values crossing scopes become their
    inputs and outputs."""

    def __init__(self, traced: _Traced):
        self.traced = traced
        module = traced.module
        self.root = _Scope("", module, None)
        self.root.names = {n for n, _ in module.named_children()}
        self.root.names |= {n for n, _ in module.named_parameters(recurse=False)}
        self.root.names |= {n for n, _ in module.named_buffers(recurse=False)}
        self.scopes = {"": self.root}
        for path, _ in module.named_modules():
            for part in path.split(".") if path else ():
                if not (part.isidentifier() or part.isdigit()):
                    raise ImportFailure(f"submodule '{path}' has a name a spec cannot use ('{part}': "
                                        "letters, digits and _ only)", hint="rename it in the Python class")  # fmt: skip
        # the spec's input names: forward's, unless a layer of the same name needs it
        self.input_names = {}
        for n in traced.names:
            spec_name = n
            while spec_name in self.root.names or spec_name in _RESERVED_NAMES:
                spec_name += "_in"
            self.input_names[n] = spec_name
            self.root.names.add(spec_name)
        self.closed: set = set()
        self.producer: dict = {}  # fx node -> scope
        open_chain = [self.root]
        used_leaf: dict = {}
        for item in traced.items:
            chain = _prefixes(item.owner)
            # close scopes not on this item's chain, open the new ones
            k = 1
            while k < len(open_chain) and k - 1 < len(chain) and open_chain[k].path == chain[k - 1]:
                k += 1
            for s in open_chain[k:]:
                self.closed.add(s.path)
            open_chain = open_chain[:k]
            for path in chain[k - 1 :]:
                if path in self.closed:
                    m = traced.modules[path]
                    what = f"'{path}' ({type(m).__name__})"
                    if _is_container(m):
                        raise ImportFailure(f"the layers of {what} are used with other nodes between them; "
                                            "a spec keeps a container's layers together")  # fmt: skip
                    raise ImportFailure(f"{what} is called twice, or its layers are used between other "
                                        "modules' layers; a spec gives each module one place")  # fmt: skip
                parent = open_chain[-1]
                scope = _Scope(path, traced.modules[path], parent)
                scope.names = {n for n, _ in scope.module.named_children()}
                scope.names |= {n for n, _ in scope.module.named_parameters(recurse=False)}
                scope.names |= {n for n, _ in scope.module.named_buffers(recurse=False)}
                parent.children.append(scope)
                self.scopes[path] = scope
                open_chain.append(scope)
            scope = open_chain[-1]
            item.name = self._name(item, scope, used_leaf)
            scope.children.append(item)
            self.producer[item.fx] = scope
        self._unused()
        self._wire()
        for scope in self.scopes.values():
            if scope.parent is not None and not scope.inputs:
                raise ImportFailure(f"'{scope.path}' ({type(scope.module).__name__}) takes no tensor from "
                                    "forward; a spec's blocks take at least one input")  # fmt: skip

    def _name(self, item: _Item, scope: _Scope, used_leaf: dict) -> str:
        if item.fx.op in ("call_module", "get_attr"):
            key = item.fx.target
            if key in used_leaf:
                m = self.traced.modules.get(key)
                if m is None or any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                    raise ImportFailure(
                        f"'{key}' is used twice (shared weights); a spec cannot share a layer yet"
                    )
                return self._fresh(item.base, scope)
            used_leaf[key] = item
            scope.names.add(item.base)
            return item.base
        return self._fresh(item.base, scope)

    @staticmethod
    def _fresh(base: str, scope: _Scope) -> str:
        from .expand import _module_attributes

        name, k = base, 1
        while name in scope.names or name in _module_attributes() or name in _RESERVED_NAMES:
            name = f"{base}_{k}"
            k += 1
        scope.names.add(name)
        return name

    def _unused(self):
        used = {
            item.fx.target
            for item in self.traced.items
            if item.fx.op in ("call_module", "get_attr")
        }
        lost = []
        for name, _ in list(self.traced.module.named_parameters()) + list(
            self.traced.module.named_buffers()
        ):
            if not any(p in used for p in _prefixes(name)):
                lost.append(name)
        if lost:
            raise ImportFailure(f"forward never uses {_few(lost)}; the spec would lose those weights",
                                hint="import a module whose forward uses all its layers")  # fmt: skip

    def _wire(self):
        """Inputs and outputs of every scope: the values that cross its border."""

        def cross(val: _Val, user: _Scope):
            src = self.producer.get(val.node, self.root)
            up_src, up_user = _ancestors(src), _ancestors(user)
            common = next(s for s in up_src if s in up_user)
            for s in up_src:
                if s is common:
                    break
                if val.key() not in s.outputs:
                    s.outputs.append(val.key())
            for s in up_user:
                if s is common:
                    break
                if val.key() not in s.inputs:
                    s.inputs.append(val.key())

        for item in self.traced.items:
            scope = self.producer[item.fx]
            for v in item.inputs:
                cross(v, scope)
        for _, v in self.traced.outputs:
            cross(v, self.root)


_RESERVED_NAMES = {"i", "shape", "input", "true", "false", "none", "self"}


def _ancestors(scope) -> list:
    out = []
    while scope is not None:
        out.append(scope)
        scope = scope.parent
    return out


def _prefixes(path: str) -> list[str]:
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[: k + 1]) for k in range(len(parts))]


# ---- bodies: what a scope says, before merging ---------------------------------------------
class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = _Sentinel("<absent>")  # a value of a node that one instance does not have


class _PerI(tuple):
    """The values of one argument along a repeat (index i)."""


@dataclass
class _Entry:
    name: str
    kind: str  # op | block | inline
    what: str  # op name or block id ("" inline)
    slots: dict  # key -> value (an instance) | list of values per member (a template)
    refs: list  # reference texts
    body: Any = None  # _Body for inline
    repeat: Any = None  # None, an int, or (template) a list per member
    droppable: frozenset = frozenset()
    present: list | None = None  # template: per member
    call: dict = field(default_factory=dict)
    named: bool = False  # a repeat whose copies are named by name: (an expression of i)


@dataclass
class _Body:
    inputs: list  # names
    entries: list  # _Entry
    outputs: list  # reference texts


def _body_of(tree: _Tree, scope: _Scope) -> _Body:
    """A scope as a body of entries with concrete values."""
    traced = tree.traced
    if scope.parent is None:
        local = {(ph, ()): tree.input_names[ph.target] for ph in traced.graph.nodes
                 if ph.op == "placeholder" and ph.target in traced.names}  # fmt: skip
        in_names = [tree.input_names[n] for n in traced.names]
    else:
        in_names = _block_inputs(scope)
        local = dict(zip(scope.inputs, in_names, strict=True))

    def ref(v: _Val) -> str:
        key = v.key()
        if key in local:
            return local[key]
        for base_len in range(len(v.index), -1, -1):  # the tuple itself may be local
            k = (v.node, v.index[:base_len])
            if k in local and base_len < len(v.index):
                return local[k] + "".join(f"[{i}]" for i in v.index[base_len:])
        raise ImportFailure(
            f"internal: value {v.node.name}{list(v.index)} not visible in '{scope.path}'"
        )

    entries = []
    for child in scope.children:
        if isinstance(child, _Item):
            refs = [ref(v) for v in child.inputs]
            local[(child.fx, ())] = child.name
            entries.append(
                _Entry(
                    child.name,
                    "op",
                    child.op,
                    dict(child.args),
                    refs,
                    droppable=child.droppable,
                    call=dict(child.call),
                )
            )
            continue
        refs = [ref(_Val(*k)) for k in child.inputs]
        entry = _child_entry(tree, child, refs)
        entries.append(entry)
        if len(child.outputs) == 1:
            local[child.outputs[0]] = child.local
        else:
            for k, key in enumerate(child.outputs):
                local[key] = f"{child.local}[{k}]"
    if scope.parent is None:
        outputs = [ref(v) for _, v in traced.outputs]
    else:
        outputs = [ref(_Val(*k)) for k in scope.outputs]
    return _Body(in_names, entries, outputs)


def _block_inputs(scope: _Scope) -> list[str]:
    """Names for a scope's inputs: input, input_1, ... (x, x_1, ... where a layer is
    called input; an inline container's one input must be input)."""
    base = "input"
    if base in scope.names:
        if _is_container(scope.module):
            raise ImportFailure(
                f"'{scope.path}' has a layer named 'input', the name of its input in a spec"
            )
        base = "x"
    names = [base] + [f"{base}_{k}" for k in range(1, len(scope.inputs))]
    if any(n in scope.names for n in names):
        raise ImportFailure(f"'{scope.path}' has layers named like its inputs ({', '.join(names)})")
    return names


def _child_entry(tree: _Tree, child: _Scope, refs: list) -> _Entry:
    if not _is_container(child.module):
        return _Entry(child.local, "block", child.block, dict(child.params), refs)
    body = _body_of(tree, child)
    rep = _as_repeat(body)
    if rep is not None:
        rep.name, rep.refs = child.local, refs
        return rep
    rep = _as_repeat(body, numbered=False)
    if rep is not None:  # children named layer_0, layer_1, ...: one node of a list, name: with i
        rep.name, rep.refs, rep.named = _named_copies(body), list(body.inputs[:1]), True
        return _Entry(child.local, "inline", "", {}, refs, body=_Body(list(body.inputs), [rep], [rep.name]))
    if len(child.inputs) > 1 or len(child.outputs) != 1:
        raise ImportFailure(f"'{child.path}' ({type(child.module).__name__}) takes {len(child.inputs)} inputs "
                            f"and gives {len(child.outputs)} outputs; a container must take and give one")  # fmt: skip
    return _Entry(child.local, "inline", "", {}, refs, body=body)


def _named_copies(body: _Body) -> str | None:
    """For chained children named PREFIX0, PREFIX1, ... (or from 1): the name: template
    that names them (`encoder_layer_${i}`, `denselayer${i + 1}`), else None."""
    es = body.entries
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*?)(\d+)$", es[0].name) if len(es) >= 2 else None
    if m is None or m.group(2) not in ("0", "1"):
        return None
    prefix, start = m.group(1), int(m.group(2))
    if [e.name for e in es] != [f"{prefix}{start + k}" for k in range(len(es))]:
        return None
    return f"{prefix}${{i}}" if start == 0 else f"{prefix}${{i + 1}}"


def _as_repeat(body: _Body, numbered: bool = True) -> _Entry | None:
    """n >= 2 chained uses of one block (or op) named 0..n-1 (or, not `numbered`, named
    as _named_copies says): one repeated node."""
    es = body.entries
    if not es:
        return None
    if numbered and [e.name for e in es] != [str(k) for k in range(len(es))]:
        return None
    if not numbered and _named_copies(body) is None:
        return None
    first = es[0]
    if len(es) == 1 and first.kind != "block":
        return None
    if first.kind not in ("block", "op") or any(
        e.kind != first.kind or e.what != first.what for e in es
    ):
        return None
    if len(body.inputs) != 1 or first.refs != [body.inputs[0]]:
        return None
    for prev, e in zip(es, es[1:], strict=False):
        if e.refs != [prev.name] or e.call != prev.call:
            return None
    if body.outputs != [es[-1].name]:
        return None
    keys = list(first.slots)
    if any(list(e.slots) != keys for e in es):
        return None
    slots = {}
    for k in keys:
        vals = [e.slots[k] for e in es]
        slots[k] = vals[0] if all(_same(v, vals[0]) for v in vals) else _PerI(vals)
    drop = frozenset.intersection(*(e.droppable for e in es)) if first.kind == "op" else frozenset()
    return _Entry("", first.kind, first.what, slots, [], repeat=len(es), droppable=drop)


# ---- merging instances into templates ------------------------------------------------------
def _merge(bodies: list) -> _Body | None:
    """One template for several bodies (None where a member lacks it), or None when
    they do not have the same nodes in a compatible order and wiring."""
    present = [b for b in bodies if b is not None]
    if len({len(b.inputs) for b in present}) != 1:
        return None
    order = _merge_order([[e.name for e in b.entries] for b in present])
    if order is None:
        return None
    entries = []
    for name in order:
        per = [
            None if b is None else next((e for e in b.entries if e.name == name), None)
            for b in bodies
        ]
        got = [e for e in per if e is not None]
        e0 = got[0]
        if any(e.kind != e0.kind or e.what != e0.what or e.call != e0.call for e in got):
            return None
        if len({e.repeat is None for e in got}) > 1:
            return None
        body = None
        if e0.kind == "inline":
            body = _merge([e.body if e is not None else None for e in per])
            if body is None:
                return None
        keys = list(e0.slots)
        if any(list(e.slots) != keys for e in got):
            return None
        slots = {k: [(e.slots[k] if e is not None else MISSING) for e in per] for k in keys}
        if (
            e0.repeat is not None
        ):  # along a repeat: a value that varies in one member is a list in all
            for k, values in slots.items():
                if any(isinstance(v, _PerI) for v in values):
                    slots[k] = [v if v is MISSING or isinstance(v, _PerI) else _PerI([v] * e.repeat)
                                for v, e in zip(values, per, strict=True)]  # fmt: skip
        drop = frozenset.intersection(*(e.droppable for e in got))
        # wiring from the fullest member that has the node: its inputs are all there
        fullest = max(
            (k for k, e in enumerate(per) if e is not None), key=lambda k: len(bodies[k].entries)
        )
        fullest = per[fullest]
        entries.append(_Entry(
            name, e0.kind, e0.what, slots, list(fullest.refs), body,
            repeat=None if e0.repeat is None else [e.repeat if e is not None else MISSING for e in per],
            droppable=drop, present=[e is not None for e in per], call=e0.call, named=e0.named,
        ))  # fmt: skip
    fullest = max(present, key=lambda b: len(b.entries))
    merged = _Body(list(fullest.inputs), entries, list(fullest.outputs))
    _settle_commuting(merged, bodies)
    # the wiring of every member must be the template's, with its absent nodes passed through
    for k, b in enumerate(bodies):
        if b is None:
            continue
        if not _wiring_matches(merged, b, k):
            return None
    return merged


def _merge_order(lists: list[list[str]]) -> list[str] | None:
    order: list[str] = []
    for names in lists:
        merged, i = [], 0
        for n in names:
            if n in order:
                j = order.index(n)
                if j < i:
                    return None
                merged.extend(order[i : j + 1])
                i = j + 1
            else:
                merged.append(n)
        merged.extend(order[i:])
        order = merged
    return order


def _wiring_matches(t: _Body, b: _Body, k: int) -> bool:
    absent = {e.name: e for e in t.entries if not e.present[k]}

    def resolve(text: str, depth=0) -> str:
        name, idx = _split_ref(text)
        if name in absent and depth < 100:
            first = absent[name].refs[0] if absent[name].refs else None
            if first is None:
                return "?"
            return resolve(first + idx, depth + 1)
        return text

    mine = {e.name: e for e in b.entries}
    for e in t.entries:
        if not e.present[k]:
            if not e.refs:
                return False
            continue
        want = mine[e.name].refs
        got = [resolve(r) for r in e.refs]
        if got != want:
            if (
                e.kind == "op"
                and e.what in ("add", "mul")
                and len(e.refs) == 2
                and got[::-1] == want
            ):
                pass  # commutes: the order is settled below for the absent members
            else:
                return False
    if [resolve(r) for r in t.outputs] != b.outputs:
        return False
    return True


def _split_ref(text: str) -> tuple[str, str]:
    m = re.match(r"^([^\[]*)(.*)$", text)
    return m.group(1), m.group(2)


def _settle_commuting(t: _Body, bodies: list) -> None:
    """Put the input an absent residual `add` passes through first (a+b == b+a)."""
    for e in t.entries:
        if e.kind == "op" and e.what in ("add", "mul") and len(e.refs) == 2 and not all(e.present):
            for k, b in enumerate(bodies):
                if b is None or e.present[k]:
                    continue
                users = [x for x in t.entries if any(_split_ref(r)[0] == e.name for r in x.refs)]
                outs = [r for r in t.outputs if _split_ref(r)[0] == e.name]
                if not users and not outs:
                    continue
                if _passes(t, b, k, e, e.refs[::-1]) and not _passes(t, b, k, e, e.refs):
                    e.refs = e.refs[::-1]
                break
        if e.body is not None:
            _settle_commuting(e.body, [None if b is None else
                                       next((x.body for x in b.entries if x.name == e.name), None)
                                       for b in bodies])  # fmt: skip


def _passes(t: _Body, b: _Body, k: int, e: _Entry, refs: list) -> bool:
    old = e.refs
    e.refs = refs
    try:
        return _wiring_matches(t, b, k)
    finally:
        e.refs = old


# ---- writing --------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, tree: _Tree, decls, name: str, header: str, keep_inferred: bool = False):
        self.tree = tree
        self.decls = decls
        self.name = name
        self.header = header
        self.keep = keep_inferred
        self.blocks: dict[str, tuple] = {}  # id -> (template body, params decl)
        self.marks: dict = {}  # (id(entry), key) -> ("omit" | "literal" | "param", value)
        self._build()

    def _build(self):
        tree = self.tree
        scopes = [
            s for s in tree.scopes.values() if s.parent is not None and not _is_container(s.module)
        ]
        height: dict = {}

        def h(scope) -> int:
            if id(scope) in height:
                return height[id(scope)]
            kids = [c for c in scope.children if isinstance(c, _Scope)]
            value = 1 + max((h(c) for c in kids), default=0)
            height[id(scope)] = value
            return value

        def level(scope) -> int:  # a class nested in itself: one group per level
            return sum(1 for a in _ancestors(scope.parent) if type(a.module) is type(scope.module))

        by_class: dict = {}
        for s in scopes:
            by_class.setdefault((type(s.module), level(s)), []).append(s)
        order = sorted(by_class, key=lambda key: max(h(s) for s in by_class[key]))
        used_ids: set = set()
        place = {path: k for k, path in enumerate(tree.scopes)}  # forward order
        for cls in order:
            groups: list = []  # [members, bodies, their merged template]
            for s in sorted(by_class[cls], key=lambda s: place[s.path]):
                body = _body_of(tree, s)
                for group in groups:
                    merged = _merge(group[1] + [body])
                    if merged is not None:
                        group[0].append(s)
                        group[1].append(body)
                        group[2] = merged
                        break
                else:
                    groups.append([[s], [body], _merge([body])])
            base = snake_case(cls[0].__name__)
            for members, _, template in groups:
                bid = _unique(base, used_ids)
                params = self._params(template, len(members))
                for k, s in enumerate(members):
                    s.block = bid
                    s.params = {
                        p: _as_value(d if vals[k] is MISSING else vals[k])
                        for p, (vals, d) in params.items()
                    }
                self.blocks[bid] = (template, params)
        root_body = _body_of(tree, tree.root)
        self.root = _merge([root_body])
        self.root_params = self._params(self.root, 1)

    def _params(self, t: _Body, members: int) -> dict:
        """Decide, slot by slot, what is literal and what a block parameter; returns
        {param: (values per member, default or _NO_DEFAULT)} and marks the slots."""
        slots = []  # (entry, key, values)

        def walk(body: _Body, outer: list):
            for e in body.entries:
                # left out where its container is present: an if: (inside a left-out
                # container it needs none)
                if any(o and not p for o, p in zip(outer, e.present, strict=True)):
                    slots.append(
                        (
                            e,
                            "__if__",
                            [
                                bool(p) if o else MISSING
                                for o, p in zip(outer, e.present, strict=True)
                            ],
                        )
                    )
                if (
                    isinstance(e.repeat, list)
                    and len(set(map(_hashable, [r for r in e.repeat if r is not MISSING]))) > 1
                ):
                    slots.append((e, "__repeat__", e.repeat))
                for key, values in e.slots.items():
                    slots.append((e, key, values))
                if e.body is not None:
                    walk(e.body, e.present)

        walk(t, [True] * members)
        params: dict = {}
        for e, key, values in slots:
            defined = [v for v in values if v is not MISSING]
            if key not in ("__if__", "__repeat__"):
                default = self._default_of(e, key)
                if all(_same(v, default) for v in defined):
                    self.marks[(id(e), key)] = ("omit", None)
                    continue
                if e.kind == "op" and key in e.droppable and not self.keep:
                    self.marks[(id(e), key)] = ("omit", None)
                    continue
                if members == 1 or all(_same(v, defined[0]) for v in defined):
                    self.marks[(id(e), key)] = ("literal", defined[0])
                    continue
            pname = self._param_for(params, e, key, values)
            self.marks[(id(e), key)] = ("param", pname)
        out = {}
        for pname, values in params.items():
            defined = [v for v in values if v is not MISSING]
            common, count = Counter(map(_hashable, defined)).most_common(1)[0]
            default = next(v for v in defined if _hashable(v) == common)
            has_default = 2 * count >= members or any(v is MISSING for v in values)
            out[pname] = (values, default if has_default else _NO_DEFAULT)
        return out

    def _param_for(self, params: dict, e: _Entry, key: str, values: list) -> str:
        for pname, vals in params.items():
            if all(
                a is MISSING or b is MISSING or _same(a, b)
                for a, b in zip(vals, values, strict=True)
            ):
                # also the param's type must agree
                merged = [b if a is MISSING else a for a, b in zip(vals, values, strict=True)]
                params[pname] = merged
                return pname
        if key == "__if__":
            base = f"use_{e.name}"
        elif key == "__repeat__":
            base = f"{e.name}_depth"
        else:
            base = key
        base = re.sub(r"\W", "_", base)
        if not base.isidentifier() or base[0].isdigit():
            base = "p_" + base
        name = base
        if name in params or name in _RESERVED_NAMES or name in _NODE_KEYS:
            name = re.sub(r"\W", "_", f"{e.name}_{base}")
        k = 2
        while (
            name in params
            or name in _RESERVED_NAMES
            or name in _NODE_KEYS
            or not name.isidentifier()
        ):
            name = f"{base}_{k}"
            k += 1
        params[name] = list(values)
        return name

    def _default_of(self, e: _Entry, key: str):
        if e.kind == "op":
            argdef = REGISTRY.get(e.what).args.get(key)
            return (
                _NO_DEFAULT
                if argdef is None or argdef.required or argdef.inferred and argdef.default is None
                else _plain(argdef.default, argdef.schema)
            )
        if e.kind == "block":
            _, params = self.blocks[e.what]
            p = params.get(key)
            return _NO_DEFAULT if p is None else p[1]
        return _NO_DEFAULT

    # text -------------------------------------------------------------------------------
    def text(self) -> str:
        self.vars: dict = {}
        body = self._text_body()
        lines = []
        if self.header:
            lines += [f"# {line}" if line else "#" for line in self.header.splitlines()]
        lines += ["yamlnet: 1", f"name: {_scalar(self.name)}"]
        if self.vars:
            lines.append("vars:")
            lines += [f"  {k}: {_flow(v)}" for k, v in self.vars.items()]
        return "\n".join(lines + body) + "\n"

    def _text_body(self) -> list[str]:
        lines = ["inputs:"]
        for n, shape, dtype in self.decls:
            n = self.tree.input_names[n]
            if dtype == "float32":
                lines.append(f"  {n}: {_flow(shape)}")
            else:
                lines.append(f"  {n}: {{shape: {_flow(shape)}, dtype: {dtype}}}")
        lines.append("nodes:")
        lines += self._body_lines(self.root, 2, self.root.inputs[0] if self.root.inputs else None)
        outs = self.root.outputs
        names = [n for n, _ in self.tree.traced.outputs]
        last = self.root.entries[-1].name if self.root.entries else None
        if not (len(outs) == 1 and outs[0] == last):
            if len(outs) == 1:
                lines.append(f"outputs: {_scalar(outs[0])}")
            else:
                lines.append(
                    "outputs: {"
                    + ", ".join(f"{n}: {_scalar(r)}" for n, r in zip(names, outs, strict=True))
                    + "}"
                )
        if self.blocks:
            lines += ["", "blocks:"]
            for bid, (template, params) in self.blocks.items():
                lines.append(f"  {bid}:")
                if params:
                    decl = {
                        p: (_type_name(v) if d is _NO_DEFAULT else _param_default(d))
                        for p, (v, d) in params.items()
                    }
                    lines.append(f"    params: {_flow(decl)}")
                if template.inputs != ["input"]:
                    lines.append(f"    inputs: {_flow(template.inputs)}")
                lines.append("    nodes:")
                lines += self._body_lines(
                    template, 6, template.inputs[0] if template.inputs else None
                )
                last = template.entries[-1].name if template.entries else None
                if not (len(template.outputs) == 1 and template.outputs[0] == last):
                    out = template.outputs[0] if len(template.outputs) == 1 else template.outputs
                    lines.append(f"    outputs: {_flow(out)}")
        return lines

    def _body_lines(self, body: _Body, indent: int, first_input) -> list[str]:
        pad = " " * indent
        rows = []
        prev = first_input
        for e in body.entries:
            rows.append((e.name, self._node(e, prev)))
            prev = e.name
        # a list numbers its kept nodes like nn.Sequential, a repeat taking a number per
        # copy; a body with a repeat or an if: is written as a mapping ("1": {repeat: 3})
        listed = [e.name for e in body.entries] == [str(k) for k in range(len(body.entries))] and not any(
            "repeat" in node or "if" in node for _, node in rows
        )
        if any(e.named for e in body.entries):  # name: with i is written in a list
            listed = True
            rows = [(name, {"name": name, **node}) if e.named else (name, node)
                    for (name, node), e in zip(rows, body.entries, strict=True)]  # fmt: skip
        width = max((len(_scalar(n)) for n, _ in rows), default=0) + 1
        out = []
        for (name, node), e in zip(rows, body.entries, strict=True):
            if e.body is None:
                text = _flow(node)
                out.append(
                    f"{pad}- {text}"
                    if listed
                    else f"{pad}{(_scalar(name) + ':').ljust(width)} {text}"
                )
                continue
            head = f"{pad}- " if listed else f"{pad}{_scalar(name)}:"
            inner = " " * (indent + 2)
            keys = [(k, v) for k, v in node.items() if k != "nodes"]
            if listed:
                first = True
                for k, v in keys:
                    out.append(f"{head if first else inner}{k}: {_flow(v)}")
                    first = False
                out.append(f"{head if first else inner}nodes:")
            else:
                out.append(head)
                for k, v in keys:
                    out.append(f"{inner}{k}: {_flow(v)}")
                out.append(f"{inner}nodes:")
            out += self._body_lines(e.body, indent + 4, "input")
        return out

    def _node(self, e: _Entry, prev) -> dict:
        node: dict = {}
        if e.kind == "op":
            node["op"] = e.what
        elif e.kind == "block":
            node["block"] = e.what
        if e.refs and e.refs != ([prev] if prev is not None else []):
            node["in"] = e.refs[0] if len(e.refs) == 1 else list(e.refs)
        if e.repeat is not None:
            reps = e.repeat if isinstance(e.repeat, list) else [e.repeat]
            mark = self.marks.get((id(e), "__repeat__"))
            node["repeat"] = (
                f"${{{mark[1]}}}"
                if mark and mark[0] == "param"
                else next(r for r in reps if r is not MISSING)
            )
        mark = self.marks.get((id(e), "__if__"))
        if mark and mark[0] == "param":
            node["if"] = f"${{{mark[1]}}}"
        for key in e.slots:
            kind, value = self.marks.get((id(e), key), ("omit", None))
            if kind == "omit":
                continue
            if kind == "param":
                reps = e.repeat is not None
                node[key] = (
                    f"${{{value}[i]}}" if reps and _is_per_i(e.slots[key]) else f"${{{value}}}"
                )
            elif isinstance(value, _PerI):
                node[key] = _over_i(value)
                if len(node[key]) > 380 if isinstance(node[key], str) else False:
                    # past the length of one expression: a variable indexed by i
                    var = _unique(re.sub(r"\W", "_", f"{e.name}_{key}").lstrip("_0123456789") or "values",
                                  set(self.vars) | _RESERVED_NAMES)  # fmt: skip
                    self.vars[var] = list(value)
                    node[key] = f"${{{var}[i]}}"
            else:
                node[key] = value
        if e.call:
            node["call"] = dict(e.call)
        if e.kind == "inline":
            node["nodes"] = None
        return node


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


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b and type(a) is type(b))  # fmt: skip


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


def snake_case(name: str) -> str:
    """ResNet -> res_net, MLPBlock -> mlp_block: a class's name as a spec name."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower()
    s = re.sub(r"\W", "_", s)
    return s if s and not s[0].isdigit() else f"m_{s}"


def _unique(base: str, used: set) -> str:
    name, k = base, 2
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name
