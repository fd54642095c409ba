"""Running the traced graph on sample inputs, and the small tests of fx nodes and the error
messages that tracing uses."""

from __future__ import annotations

import operator

from .common import ImportFailure, _first, _is_node


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
    return isinstance(value, tuple) and not isinstance(value, _Tuple) and (value == () or _ints(value))


def _ints(v) -> bool:
    """Sizes: a non-empty tuple or list of ints (or of such tuples), no tensor in it."""
    return isinstance(v, (tuple, list)) and bool(v) and all(type(x) is int or _ints(x) for x in v)


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
        if isinstance(v, torch.Size) or _ints(v):
            return tuple(summary(x) for x in v)  # a shape, or sizes computed from one
        if isinstance(v, (tuple, list)):
            return _Tuple(summary(x) for x in v)
        return v

    class Recorder(fx.Interpreter):
        def fetch_args_kwargs_from_env(self, n):
            args, kwargs = super().fetch_args_kwargs_from_env(n)
            return _mutable(args), _mutable(kwargs)  # the module's code may change its lists

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


def _mutable(v):
    """fx's immutable_list / immutable_dict as the plain list / dict the code was written for."""
    if isinstance(v, list):
        return [_mutable(x) for x in v]
    if isinstance(v, tuple) and type(v) is tuple:
        return tuple(_mutable(x) for x in v)
    if isinstance(v, dict):
        return {k: _mutable(x) for k, x in v.items()}
    return v


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


def _returned(out) -> list:
    """(name, value) of what forward returns: a tensor, a tuple or a dict of them, or a
    namedtuple, which fx may record as a call of its class (GoogLeNetOutputs)."""
    if _is_node(out) and _is_namedtuple_call(out):
        out = out.target(*out.args, **out.kwargs)
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items()]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return list(zip(out._fields, out, strict=True))
    if isinstance(out, (tuple, list)):
        return [(f"output_{k}", v) for k, v in enumerate(out)]
    return [("output", out)]


def _is_namedtuple_call(n) -> bool:
    t = n.target
    return n.op == "call_function" and isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields")


def _scope_of(n) -> str:
    """The path of the module whose forward made fx node `n` (a layer's call: its caller)."""
    stack = n.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
    paths = [p for p in paths if p and not (n.op == "call_module" and p == n.target)]
    return paths[-1] if paths else ""


def _trace_error(err: Exception, tracer, module, mode: str = "") -> ImportFailure:
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
    return ImportFailure(f"cannot trace {type(module).__name__}{where}{mode}: {why}",
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
