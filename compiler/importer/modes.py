"""Eval against training: the module is traced in both modes, and the outputs an
`if self.training:` branch adds (GoogLeNet's and Inception's aux heads) become the spec's
train_outputs; any other difference between the modes is refused, naming the module whose
forward branches.

Nodes of the two graphs are matched by what they compute: the op, its target, its constant
arguments and the nodes it reads (a function's `training=` argument, which follows the mode
in the spec as well, left out)."""

from __future__ import annotations

import functools
import inspect

from .common import ImportFailure, _is_node
from .record import _returned, _scope_of

_HINT = "make training compute what eval computes, and return the extra outputs after eval's"


def _split_modes(eval_graph, train_graph, module) -> tuple:
    """(graph to import, how many of its outputs are train outputs, their names): the eval
    graph, 0 and eval's names when training computes nothing else, else the training graph
    and its extra outputs."""
    table: dict = {}
    ekeys, tkeys = _keys(eval_graph, table, module), _keys(train_graph, table, module)
    e_names, e_out = _returns(eval_graph)
    t_names, t_out = _returns(train_graph)
    if set(ekeys.values()) == set(tkeys.values()) and len(e_out) == len(t_out):
        return eval_graph, 0, list(e_names)
    k = len(e_out)
    wanted, given = [_key(v, ekeys) for v in e_out], [_key(v, tkeys) for v in t_out]
    if given[:k] != wanted and all(w in given for w in wanted):
        raise ImportFailure(f"{type(module).__name__}.forward returns eval's outputs in another order "
                            "in training; a spec returns its train_outputs after them", hint=_HINT)  # fmt: skip
    e_main, t_main = _ancestors(e_out), _ancestors(t_out[:k])
    e_seen = {ekeys[n] for n in e_main}
    t_seen = {tkeys[n] for n in t_main}
    for n in train_graph.nodes:  # training computes an eval output otherwise
        if n in t_main and tkeys[n] not in e_seen:
            raise _branch(n, module)
    for n in eval_graph.nodes:
        if n in e_main and ekeys[n] not in t_seen:
            raise _branch(n, module)
    if given[:k] != wanted:
        raise ImportFailure(f"{type(module).__name__}.forward returns other outputs in training than "
                            "in eval; a spec returns eval's, then its train_outputs", hint=_HINT)  # fmt: skip
    extra = _ancestors(t_out[k:])
    every = set(ekeys.values())
    end = train_graph.output_node()
    ends = {end} | ({end.args[0]} if _is_node(end.args[0]) else set())  # a namedtuple's call
    for n in train_graph.nodes:  # what training alone computes feeds its extra outputs only
        if n not in ends and n not in t_main and n not in extra and tkeys[n] not in every:
            raise _branch(n, module)
    if e_names == ("output",):  # one tensor in eval: the name training gives it, if any
        e_names = ("output",) if t_names[0] == "output_0" else t_names[:1]
    return train_graph, len(t_out) - k, [*e_names, *t_names[k:]]


def _branch(n, module) -> ImportFailure:
    path = _scope_of(n)
    where = f"'{path}' ({type(module.get_submodule(path)).__name__})" if path else type(module).__name__
    return ImportFailure(f"forward of {where} computes otherwise in training than in eval (an `if "
                         "self.training:` branch); a spec's training mode can only add outputs",
                         hint=_HINT)  # fmt: skip


def _returns(graph) -> tuple[tuple, tuple]:
    pairs = _returned(graph.output_node().args[0])
    return tuple(n for n, _ in pairs), tuple(v for _, v in pairs)


def _ancestors(values: list) -> set:
    seen: set = set()
    todo = [v for v in values if _is_node(v)]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _key(v, keys: dict):
    return ("node", keys[v]) if _is_node(v) else _freeze(v, keys)


def _keys(graph, table: dict, module) -> dict:
    """fx node -> an int that two nodes share when they compute the same (in either graph)."""
    keys: dict = {}
    for n in graph.nodes:
        if n.op == "output":
            continue
        if n.op == "get_attr" and n.target.startswith("_tensor_constant"):
            t = getattr(module, n.target)  # made in forward: each trace names its own copy
            raw = ("constant", str(t.dtype), tuple(t.shape), t.detach().cpu().numpy().tobytes())
        else:
            args, kwargs = _mode_free(n)
            raw = (n.op, _freeze(n.target, keys), _freeze(args, keys), _freeze(kwargs, keys))
        keys[n] = table.setdefault(raw, len(table))
    return keys


def _mode_free(n) -> tuple:
    """A call's arguments without `training=` (F.dropout(x, p, self.training))."""
    args, kwargs = n.args, dict(n.kwargs)
    kwargs.pop("training", None)
    k = _training_position(n.target) if n.op == "call_function" else None
    if k is not None and k < len(args):
        args = args[:k] + ("<mode>",) + args[k + 1 :]
    return args, kwargs


@functools.cache
def _training_position(target) -> int | None:
    try:
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("training") if "training" in names else None


def _freeze(v, keys: dict):
    if _is_node(v):
        return ("node", keys[v])
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, *(_freeze(x, keys) for x in v))
    if isinstance(v, dict):
        return ("dict", *((k, _freeze(x, keys)) for k, x in v.items()))
    if isinstance(v, slice):
        return ("slice", _freeze(v.start, keys), _freeze(v.stop, keys), _freeze(v.step, keys))
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return v
