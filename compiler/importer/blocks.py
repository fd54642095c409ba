"""Grouping scopes into bodies of entries, repeats (chained copies in a container), and block
templates merged from the instances of one class."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .common import MISSING, ImportFailure, _PerI, _same
from .trace import _Item, _Val
from .tree import _Scope, _Tree


# ---- bodies: what a scope says, before merging ---------------------------------------------
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
            f"internal: a value of {traced.origin(v.node)}{list(v.index)} not visible in '{scope.path}'"
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
        if scope.inline():
            raise ImportFailure(
                f"'{scope.path}' has a layer named 'input', the name of its input in a spec"
            )
        base = "x"
    names = [base] + [f"{base}_{k}" for k in range(1, len(scope.inputs))]
    if any(n in scope.names for n in names):
        raise ImportFailure(f"'{scope.path}' has layers named like its inputs ({', '.join(names)})")
    return names


def _child_entry(tree: _Tree, child: _Scope, refs: list) -> _Entry:
    if not child.inline():
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
