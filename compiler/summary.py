"""Per-node summary of a compiled spec: name, op, output shape, parameters, whether
they are frozen (`freeze:`), and, when the module is built and every symbolic input dim
has a size, MACs and activation bytes (compiler/costs.py)."""

from __future__ import annotations

import csv
import io
import json

from .graph import topological_order
from .shapes import format_type
from .weights import is_frozen

__all__ = ["summary_rows", "format_summary"]


def summary_rows(result, costs: dict | None = None) -> list[dict]:
    """One row per op node, in execution order; with `costs` (costs.node_costs), its
    MACs and output bytes too."""
    g, frozen = result.graph, result.spec.frozen
    # a frozen node's tied weight is its owner's too (one Parameter): that node is frozen
    frozen += tuple(target.rsplit(".", 1)[0] for n in result.spec.nodes if n.tie and is_frozen(n.name, frozen)
                    for _, target in n.tie)  # fmt: skip
    rows = []
    for name in topological_order(g):
        data = g.nodes[name]
        if data["kind"] == "op":
            row = {"name": name, "op": data["spec"].op, "output": format_type(data["type"]),
                   "params": data["params"], "frozen": is_frozen(name, frozen)}  # fmt: skip
            if costs is not None:
                cost = costs.get(name)
                row["macs"] = cost.macs if cost else 0
                row["activation_bytes"] = cost.activation_bytes if cost else 0
            rows.append(row)
    return rows


def format_summary(result, rows: list[dict], fmt: str = "table", sizes: dict | None = None,
                   note: str = "") -> str:  # fmt: skip
    """`sizes`: the symbol sizes the costs were measured at; `note`: why there are none."""
    total = sum(r["params"] for r in rows)
    frozen = sum(r["params"] for r in rows if r["frozen"])
    costed = bool(rows) and "macs" in rows[0]
    keys = (["name", "op", "output", "params"] + (["frozen"] if any(r["frozen"] for r in rows) else [])
            + (["macs", "activation_bytes"] if costed else []))  # fmt: skip
    if fmt == "json":
        inputs = {i.name: {"shape": list(i.shape), "dtype": i.dtype} for i in result.spec.inputs}
        doc = {"name": result.spec.name, "hash": result.hash, "inputs": inputs, "nodes": rows,
               "total_params": total, "trainable_params": total - frozen, "frozen_params": frozen}  # fmt: skip
        if costed:
            doc.update(sizes=sizes, total_macs=sum(r["macs"] for r in rows),
                       total_activation_bytes=sum(r["activation_bytes"] for r in rows))  # fmt: skip
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    head = {"name": "name", "op": "op", "output": "output", "params": "params", "frozen": "frozen",
            "macs": "MACs", "activation_bytes": "activations"}  # fmt: skip
    cells = [head] + [{**r, "params": f"{r['params']:,}", "frozen": "frozen" if r["frozen"] else "",
                       "macs": _si(r.get("macs", 0)),
                       "activation_bytes": _bytes(r.get("activation_bytes", 0))} for r in rows]  # fmt: skip
    w = {k: max(len(str(c[k])) for c in cells) for k in keys}
    right = {"params", "macs", "activation_bytes"}
    fmt_row = lambda c: "  ".join(  # noqa: E731
        f"{c[k]:>{w[k]}}" if k in right else f"{c[k]:<{w[k]}}" for k in keys).rstrip()
    inputs = ", ".join(f"{i.name} {format_type(_type(i))}" for i in result.spec.inputs)
    lines = [f"{result.spec.name}: inputs {inputs}", fmt_row(head)]
    lines.append("-" * len(lines[-1]))
    lines += [fmt_row(c) for c in cells[1:]]
    lines.append("-" * len(lines[1]))
    foot = f"{len(rows)} nodes, {total:,} parameters" + (f" ({total - frozen:,} trainable, {frozen:,} frozen)"
                                                         if frozen else "")  # fmt: skip
    if costed:
        at = ", ".join(f"{k}={v}" for k, v in (sizes or {}).items())
        foot += (f", {_si(sum(r['macs'] for r in rows))}MACs and "
                 f"{_bytes(sum(r['activation_bytes'] for r in rows))} of activations at {at}")  # fmt: skip
    lines.append(foot)
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def _si(n: int) -> str:
    """1_814_000_000 -> '1.81 G'; small counts as they are."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} "


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _type(inp):
    from .shapes import TensorType

    return TensorType(tuple(inp.shape), inp.dtype)
