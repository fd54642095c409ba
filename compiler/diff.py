"""What differs between two compiled specs, node by node, and which tensors of a
checkpoint load into the second: `yamlnet diff A.yaml B.yaml [--checkpoint C]`.

Nodes are matched by their hierarchical name (`layer1.0.conv1`). A node in both is
changed when its op, inputs, resolved arguments, `call:`, ties, inferred output type
or parameter count differ; the rows come from `summary_rows`, the arguments from the
typed graph (the ones `yamlnet expand` prints). The specs' own inputs and outputs are
compared too. A renamed node reads as one removed and one added: names are how
weights are matched, so that is what a rename does to a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .shapes import TensorType, format_type
from .summary import summary_rows

__all__ = ["NodeInfo", "Change", "NodeChange", "SpecSide", "CheckpointFit", "SpecDiff",
           "diff_specs", "checkpoint_fit", "format_diff", "diff_document"]  # fmt: skip

ABSENT = "(none)"  # a field one side does not have (an argument only B sets)


@dataclass(frozen=True)
class NodeInfo:
    """One op node as `yamlnet summary` shows it."""

    name: str
    op: str
    output: str
    params: int


@dataclass(frozen=True)
class Change:
    """One field of a node (or of the spec's interface) in A and in B; ABSENT where missing."""

    # op, in, an argument's name, call, tie, output shape, param count (names with a space
    # are never an argument's); for the interface: input x, output y, train_output z
    field: str
    a: Any
    b: Any


@dataclass(frozen=True)
class NodeChange:
    name: str
    op: str  # B's op
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class SpecSide:
    """What is compared: the spec file, the variables set for it, its totals."""

    file: str
    overrides: tuple[str, ...]  # VAR=VALUE as given on the command line
    name: str
    hash: str
    nodes: int
    params: int

    @property
    def label(self) -> str:
        return self.file + (f" ({', '.join(self.overrides)})" if self.overrides else "")


@dataclass(frozen=True)
class CheckpointFit:
    """Which tensors of a checkpoint load into a model (same name and shape)."""

    path: str
    loads: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, in C, in B)
    new: tuple[str, ...]  # in B, not in C: initialised fresh
    dropped: tuple[str, ...]  # in C, not in B: left unused

    @property
    def total(self) -> int:
        return len(self.loads) + len(self.mismatched) + len(self.dropped)


@dataclass(frozen=True)
class SpecDiff:
    a: SpecSide
    b: SpecSide
    added: tuple[NodeInfo, ...]  # in B's execution order
    removed: tuple[NodeInfo, ...]  # in A's execution order
    changed: tuple[NodeChange, ...]  # in B's execution order
    interface: tuple[Change, ...]  # the specs' inputs and outputs
    checkpoint: CheckpointFit | None = None

    @property
    def equal(self) -> bool:
        return not (self.added or self.removed or self.changed or self.interface)

    @property
    def params_delta(self) -> int:
        return self.b.params - self.a.params


def diff_specs(a, b, overrides_a: tuple[str, ...] = (), overrides_b: tuple[str, ...] = (),
               checkpoint: CheckpointFit | None = None) -> SpecDiff:  # fmt: skip
    """Compare two `Compiled` results (build=False is enough).

    >>> d = diff_specs(compile_spec("net.yaml"), compile_spec("net.yaml", {"classes": 10}))
    >>> [c.name for c in d.changed]
    ['fc']
    """
    na, nb = _nodes(a), _nodes(b)
    return SpecDiff(
        a=_side(a, na, overrides_a), b=_side(b, nb, overrides_b),
        added=tuple(nb[k]["info"] for k in nb if k not in na),
        removed=tuple(na[k]["info"] for k in na if k not in nb),
        changed=_changed(na, nb),
        interface=_interface(a.spec, b.spec), checkpoint=checkpoint,
    )  # fmt: skip


SHOWN = ("name", "op", "output", "params")  # the summary row's fields that NodeInfo keeps


def _nodes(result) -> dict[str, dict]:
    """name -> {"info": NodeInfo, "fields": what else a change can be in}, in execution order."""
    g = result.graph
    out = {}
    for row in summary_rows(result):
        data = g.nodes[row["name"]]
        node = data["spec"]
        ins = [str(r) for r in node.inputs]
        fields = {"op": row["op"], "in": ins[0] if len(ins) == 1 else ins, **data["args"],
                  "call": node.call or ABSENT, "tie": [list(t) for t in node.tie] or ABSENT,
                  "output shape": row["output"], "param count": row["params"]}  # fmt: skip
        fields.update((k, v) for k, v in row.items() if k not in SHOWN)  # frozen, and what comes
        info = NodeInfo(row["name"], row["op"], row["output"], row["params"])
        out[row["name"]] = {"info": info, "fields": {k: _plain(v) for k, v in fields.items()}}
    return out


def _side(result, nodes: dict, overrides: tuple[str, ...]) -> SpecSide:
    params = sum(n["info"].params for n in nodes.values())
    return SpecSide(str(result.spec.file), tuple(overrides), result.spec.name, result.hash,
                    len(nodes), params)  # fmt: skip


def _changed(na: dict, nb: dict) -> tuple[NodeChange, ...]:
    """The nodes of both whose fields differ, in B's order."""
    out = []
    for name in nb:
        if name in na and na[name]["fields"] != nb[name]["fields"]:
            out.append(NodeChange(name, nb[name]["info"].op, _field_changes(na[name]["fields"], nb[name]["fields"])))
    return tuple(out)


def _field_changes(fa: dict, fb: dict) -> tuple[Change, ...]:
    """Each field whose value differs, B's order first; ABSENT for a side without it."""
    keys = list(fb) + [k for k in fa if k not in fb]
    return tuple(Change(k, fa.get(k, ABSENT), fb.get(k, ABSENT)) for k in keys
                 if fa.get(k, ABSENT) != fb.get(k, ABSENT))  # fmt: skip


def _interface(a, b) -> tuple[Change, ...]:
    """Changes to the inputs (shape, dtype) and outputs (the tensor each names)."""

    def table(spec):
        ins = {f"input {i.name}": format_type(TensorType(tuple(i.shape), i.dtype)) for i in spec.inputs}
        outs = {f"output {k}": str(r) for k, r in spec.outputs}
        trains = {f"train_output {k}": str(r) for k, r in spec.train_outputs}
        return {**ins, **outs, **trains}

    return _field_changes(table(a), table(b))


def _plain(value: Any) -> Any:
    """Arguments as JSON sees them: tuples as lists, anything unusual as its text."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def checkpoint_fit(path: str, tensors: dict[str, tuple[int, ...]],
                   model: dict[str, tuple[int, ...]]) -> CheckpointFit:  # fmt: skip
    """Match a checkpoint's tensor shapes against a model's state_dict shapes, by name.

    >>> checkpoint_fit("c.pt", {"fc.weight": (10, 4), "old": (3,)}, {"fc.weight": (2, 4)}).dropped
    ('old',)
    """
    both = [k for k in model if k in tensors]
    return CheckpointFit(
        path=path,
        loads=tuple(k for k in both if tuple(tensors[k]) == tuple(model[k])),
        mismatched=tuple((k, tuple(tensors[k]), tuple(model[k])) for k in both
                         if tuple(tensors[k]) != tuple(model[k])),
        new=tuple(k for k in model if k not in tensors),
        dropped=tuple(k for k in tensors if k not in model),
    )  # fmt: skip


def format_diff(diff: SpecDiff, fmt: str = "table") -> str:
    """The diff as text tables (`table`) or one JSON document (`json`)."""
    if fmt == "json":
        return json.dumps(diff_document(diff), indent=2) + "\n"
    lines = [f"A: {_about(diff.a)}", f"B: {_about(diff.b)}"]
    lines += _node_section("added", "+", diff.added) + _node_section("removed", "-", diff.removed)
    lines += _changed_section(diff.changed) + _interface_section(diff.interface)
    if diff.checkpoint is not None:
        lines += _checkpoint_section(diff.checkpoint)
    return "\n".join(lines + ["", _verdict(diff)]) + "\n"


def diff_document(diff: SpecDiff) -> dict:
    """The JSON form: every name in full."""
    side = lambda s: {"spec": s.file, "set": list(s.overrides), "name": s.name, "hash": s.hash,  # noqa: E731
                      "nodes": s.nodes, "params": s.params}  # fmt: skip
    change = lambda c: {"field": c.field, "a": c.a, "b": c.b}  # noqa: E731
    doc = {
        "a": side(diff.a), "b": side(diff.b), "equal": diff.equal, "params_delta": diff.params_delta,
        "added": [vars(n) for n in diff.added], "removed": [vars(n) for n in diff.removed],
        "changed": [{"name": c.name, "op": c.op, "changes": [change(x) for x in c.changes]}
                    for c in diff.changed],
        "interface": [change(c) for c in diff.interface],
    }  # fmt: skip
    fit = diff.checkpoint
    if fit is not None:
        doc["checkpoint"] = {
            "path": fit.path, "tensors": fit.total, "loads": list(fit.loads),
            "shape_mismatch": [{"name": k, "checkpoint": list(c), "model": list(m)} for k, c, m in fit.mismatched],
            "new": list(fit.new), "dropped": list(fit.dropped),
        }  # fmt: skip
    return doc


NAMES_SHOWN = 6  # names a table line lists before "... (+K more)"; JSON lists them all
CELL = 48  # widest cell of the changed table; JSON has the whole value


def _about(side: SpecSide) -> str:
    return f"{side.label}: {side.name}, {side.nodes} nodes, {side.params:,} parameters"


def _node_section(title: str, sign: str, nodes: tuple[NodeInfo, ...]) -> list[str]:
    if not nodes:
        return []
    rows = [[sign, n.name, n.op, n.output, f"{n.params:,}"] for n in nodes]
    return ["", f"{title} ({len(nodes)} node{'s' * (len(nodes) != 1)}):"] + _columns(rows, right=(4,))


def _changed_section(changed: tuple[NodeChange, ...]) -> list[str]:
    if not changed:
        return []
    rows = [["node", "what", "A", "B"]]
    for node in changed:
        rows += [[node.name if i == 0 else "", c.field, _cell(c.a, c.field), _cell(c.b, c.field)]
                 for i, c in enumerate(node.changes)]  # fmt: skip
    return ["", f"changed ({len(changed)} node{'s' * (len(changed) != 1)}):"] + _columns(rows)


def _interface_section(interface: tuple[Change, ...]) -> list[str]:
    if not interface:
        return []
    rows = [[c.field, _cell(c.a, c.field), "->", _cell(c.b, c.field)] for c in interface]
    return ["", "inputs and outputs:"] + _columns(rows)


def _checkpoint_section(fit: CheckpointFit) -> list[str]:
    wrong = [f"{k} {list(c)} vs {list(m)}" for k, c, m in fit.mismatched]
    rows = [["loads", f"{len(fit.loads):,}", _names(fit.loads)],
            ["shape differs", f"{len(fit.mismatched):,}", _names(wrong)],
            ["new in B", f"{len(fit.new):,}", _names(fit.new)],
            ["dropped", f"{len(fit.dropped):,}", _names(fit.dropped)]]  # fmt: skip
    head = f"checkpoint {fit.path} ({fit.total:,} tensors) into B, by name and shape:"
    return ["", head] + _columns(rows, right=(1,))


def _verdict(diff: SpecDiff) -> str:
    if diff.equal:
        return f"same network: {diff.b.nodes} nodes, {diff.b.params:,} parameters"
    what = f"nodes {len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
    io = f"; inputs and outputs {len(diff.interface)} changed" if diff.interface else ""
    return (f"different: {what}{io}; parameters {diff.params_delta:+,} "
            f"({diff.a.params:,} -> {diff.b.params:,})")  # fmt: skip


def _columns(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cell = lambda r, i: r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i])  # noqa: E731
    return ["  " + "  ".join(cell(r, i) for i in range(len(r))).rstrip() for r in rows]


def _cell(value: Any, field: str) -> str:
    if field == "param count" and isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text if len(text) <= CELL else text[: CELL - 3] + "..."


def _names(names) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" ... (+{len(names) - NAMES_SHOWN:,} more)" if len(names) > NAMES_SHOWN else "")
