"""Per-node summary of a compiled spec: name, op, output shape, parameters."""

from __future__ import annotations

import csv
import io
import json

from .graph import topological_order
from .shapes import format_type

__all__ = ["summary_rows", "format_summary"]


def summary_rows(result) -> list[dict]:
    """One row per op node, in execution order."""
    g = result.graph
    rows = []
    for name in topological_order(g):
        data = g.nodes[name]
        if data["kind"] == "op":
            rows.append({"name": name, "op": data["spec"].op,
                         "output": format_type(data["type"]), "params": data["params"]})  # fmt: skip
    return rows


def format_summary(result, rows: list[dict], fmt: str = "table") -> str:
    total = sum(r["params"] for r in rows)
    if fmt == "json":
        inputs = {i.name: {"shape": list(i.shape), "dtype": i.dtype} for i in result.spec.inputs}
        doc = {"name": result.spec.name, "hash": result.hash, "inputs": inputs, "nodes": rows,
               "total_params": total}  # fmt: skip
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["name", "op", "output", "params"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    head = {"name": "name", "op": "op", "output": "output", "params": "params"}
    cells = [head] + [{**r, "params": f"{r['params']:,}"} for r in rows]
    w = {k: max(len(str(c[k])) for c in cells) for k in head}
    fmt_row = lambda c: (f"{c['name']:<{w['name']}}  {c['op']:<{w['op']}}  "  # noqa: E731
                         f"{c['output']:<{w['output']}}  {c['params']:>{w['params']}}").rstrip()  # fmt: skip
    inputs = ", ".join(f"{i.name} {format_type(_type(i))}" for i in result.spec.inputs)
    lines = [f"{result.spec.name}: inputs {inputs}", fmt_row(head)]
    lines.append("-" * len(lines[-1]))
    lines += [fmt_row(c) for c in cells[1:]]
    lines.append("-" * len(lines[1]))
    lines.append(f"{len(rows)} nodes, {total:,} parameters")
    return "\n".join(lines) + "\n"


def _type(inp):
    from .shapes import TensorType

    return TensorType(tuple(inp.shape), inp.dtype)
