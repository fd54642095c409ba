"""Pictures of a compiled spec: Graphviz DOT and Mermaid flowchart text.

A box per node (name, op, output shape with symbolic dims kept: `N×64×56×56`), an edge
per tensor, a cluster per block instance (the dotted prefixes of node names:
`layer1`, `layer1.0`), the spec's inputs and outputs as ovals. `depth` collapses every
block deeper than `depth` levels into one box that says how many nodes it holds; the
edges into and out of it stay. Frozen nodes (`freeze:`) are grey and dashed in DOT, of
class `frozen` in Mermaid; a collapsed block is frozen when all its nodes are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .graph import topological_order
from .shapes import format_type
from .weights import is_frozen

__all__ = ["Drawing", "drawing", "to_dot", "to_mermaid"]


@dataclass
class Box:
    id: str
    lines: list[str]
    cluster: tuple[str, ...]  # the block path it sits in
    kind: str  # input | op | block | output
    frozen: bool = False  # its weights get no gradients (freeze:)


@dataclass
class Drawing:
    name: str
    boxes: dict[str, Box] = field(default_factory=dict)  # by node (or collapsed block) name
    edges: list[tuple[str, str]] = field(default_factory=list)
    clusters: list[tuple[str, ...]] = field(default_factory=list)


def shape_text(t) -> str:
    """[N, 64, H/2, W/2] -> 'N×64×H/2×W/2' (tuples of tensors joined by ', ')."""
    text = format_type(t)
    return re.sub(r"\[([^\]]*)\]", lambda m: "×".join(p.strip() for p in m.group(1).split(",")), text)


def drawing(result, depth: int | None = None) -> Drawing:
    """The boxes, edges and clusters of `result` (a Compiled), blocks below `depth`
    collapsed."""
    g = result.graph
    d = Drawing(result.spec.name)
    owner: dict[str, str] = {}  # node -> the box that shows it
    counts: dict[str, int] = {}
    for name in topological_order(g):
        data = g.nodes[name]
        parts = name.split(".")
        if data["kind"] == "input":
            d.boxes[name] = Box(_id(len(d.boxes)), [name, shape_text(_input_type(data["spec"]))], (), "input")
            owner[name] = name
            continue
        path = tuple(parts[:-1])
        if depth is not None and len(path) > depth:
            key = ".".join(parts[: depth + 1])
            counts[key] = counts.get(key, 0) + 1
            box = d.boxes.get(key)
            if box is None:
                box = d.boxes[key] = Box(_id(len(d.boxes)), [parts[depth]], tuple(parts[:depth]), "block")
            box.lines[1:] = [f"{counts[key]} nodes", shape_text(data["type"])]  # shape of its last node
            box.frozen = is_frozen(name, result.spec.frozen) and (counts[key] == 1 or box.frozen)
            owner[name] = key
        else:
            op = data["spec"].op
            head = [parts[-1]] if op == parts[-1] else [parts[-1], op]  # `add: {op: add}` once
            d.boxes[name] = Box(_id(len(d.boxes)), [*head, shape_text(data["type"])], path, "op",
                                is_frozen(name, result.spec.frozen))
            owner[name] = name
    seen = set()
    for u, v in g.edges:
        a, b = owner[u], owner[v]
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            d.edges.append((a, b))
    for k, (out_name, ref) in enumerate(g.graph["outputs"]):
        key = f"output:{out_name}"
        train = k >= len(result.spec.outputs)  # a train output: computed in training only
        d.boxes[key] = Box(_id(len(d.boxes)), [out_name, *(["(training only)"] if train else [])], (), "output")
        d.edges.append((owner[ref.node], key))
    paths = {box.cluster[:k] for box in d.boxes.values() for k in range(1, len(box.cluster) + 1)}
    d.clusters = sorted(paths, key=lambda p: (len(p), p))
    return d


def _id(i: int) -> str:
    return f"n{i}"


def _input_type(inp):
    from .shapes import TensorType

    return TensorType(tuple(inp.shape), inp.dtype)


def _tree(d: Drawing):
    """cluster path -> (its direct sub-clusters, its boxes)."""
    subs: dict[tuple, list[tuple]] = {(): []}
    for c in d.clusters:
        subs.setdefault(c, [])
        subs.setdefault(c[:-1], []).append(c)
    boxes: dict[tuple, list[Box]] = {}
    for box in d.boxes.values():
        boxes.setdefault(box.cluster, []).append(box)
    return subs, boxes


def to_dot(d: Drawing) -> str:
    subs, boxes = _tree(d)
    out = [f'digraph "{_esc(d.name)}" {{', "  rankdir=TB;", '  graph [fontname="Helvetica", fontsize=11];',
           '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];',
           '  edge [color="#555555", arrowsize=0.6];']  # fmt: skip
    style = {"input": 'shape=oval, fillcolor="#e3f4e1"', "output": 'shape=oval, fillcolor="#fbe9d7"',
             "block": 'fillcolor="#dde3ee", style="filled,bold"', "op": ""}  # fmt: skip
    frozen = {"block": 'fillcolor="#e4e4e4", style="filled,bold,dashed", color="#777777"',
              "op": 'fillcolor="#e4e4e4", style="rounded,filled,dashed", color="#777777"'}  # fmt: skip

    def emit(path: tuple, indent: str) -> None:
        for box in boxes.get(path, []):
            label = "\\n".join(_esc(line) for line in box.lines)
            look = frozen[box.kind] if box.frozen else style[box.kind]
            extra = f", {look}" if look else ""

            out.append(f'{indent}{box.id} [label="{label}"{extra}];')
        for sub in subs.get(path, []):
            out.append(f'{indent}subgraph "cluster_{_esc(".".join(sub))}" {{')
            out.append(f'{indent}  label="{_esc(sub[-1])}"; style="rounded"; color="#9aa7bd";')
            emit(sub, indent + "  ")
            out.append(f"{indent}}}")

    emit((), "  ")
    out += [f"  {d.boxes[a].id} -> {d.boxes[b].id};" for a, b in d.edges]
    out.append("}")
    return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_mermaid(d: Drawing) -> str:
    subs, boxes = _tree(d)
    out = ["flowchart TB"]
    shape = {"input": ("([", "])"), "output": ("([", "])"), "block": ("[[", "]]"), "op": ("[", "]")}

    def emit(path: tuple, indent: str) -> None:
        for box in boxes.get(path, []):
            left, right = shape[box.kind]
            label = "<br/>".join(_mermaid_text(line) for line in box.lines)
            out.append(f'{indent}{box.id}{left}"{label}"{right}')
        for sub in subs.get(path, []):
            out.append(f'{indent}subgraph c_{_cluster_id(sub)}["{_mermaid_text(sub[-1])}"]')
            emit(sub, indent + "  ")
            out.append(f"{indent}end")

    emit((), "  ")
    out += [f"  {d.boxes[a].id} --> {d.boxes[b].id}" for a, b in d.edges]
    frozen = [box.id for box in d.boxes.values() if box.frozen]
    if frozen:
        out += ["  classDef frozen fill:#e4e4e4,stroke:#777777,stroke-dasharray:4 3",
                f"  class {','.join(frozen)} frozen"]
    return "\n".join(out) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _cluster_id(path: tuple) -> str:
    return re.sub(r"\W", "_", "_".join(path))
