"""The "lockfile" view of a compiled spec: every node flat, with its final arguments
(inferred ones included), its inputs and its output shape. `yamlnet expand` prints it;
diffing two of them shows exactly what a change to a spec did to the network. The
weights loaded (`init:`) and the node paths frozen close it, whether the spec or the run
configuration gave them: a run's spec.lock.yaml says which model it trained.
"""

from __future__ import annotations

import yaml

from .graph import topological_order
from .shapes import format_type

__all__ = ["lockfile_text"]


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def lockfile_text(result) -> str:
    """YAML text of the resolved network (see module docstring)."""
    spec, g = result.spec, result.graph
    lines = [
        f"# yamlnet expand of {spec.file}; spec hash {result.hash}",
        "yamlnet: 1",
        f"name: {_flow(spec.name)}",
    ]
    if spec.vars:
        lines.append(f"vars: {_flow(spec.vars)}")
    lines.append("inputs:")
    for inp in spec.inputs:
        lines.append(f"  {inp.name}: {_flow({'shape': list(inp.shape), 'dtype': inp.dtype})}")
    lines.append("nodes:")
    for name in topological_order(g):
        data = g.nodes[name]
        if data["kind"] != "op":
            continue
        node = data["spec"]
        entry = {"op": node.op}
        if node.inputs:
            ins = [str(r) for r in node.inputs]
            entry["in"] = ins[0] if len(ins) == 1 else ins
        entry.update(data["args"])
        if node.call:
            entry["call"] = node.call
        lines.append(f"  {name}: {_flow(entry)}  # -> {format_type(data['type'])}")
    outs = {k: str(r) for k, r in spec.outputs}
    lines.append(f"outputs: {_flow(outs)}")
    if spec.train_outputs:
        lines.append(f"train_outputs: {_flow({k: str(r) for k, r in spec.train_outputs})}")
    if spec.init:
        lines.append(f"init: {_flow([_init_entry(item) for item in spec.init])}")
    if spec.frozen:  # the node paths frozen, by freeze: true and the freeze: patterns
        lines.append(f"freeze: {_flow(list(spec.frozen))}")
    return "\n".join(lines) + "\n"


def _init_entry(item) -> dict:
    entry = {"torchvision": item.torchvision, "weights": item.weights or "DEFAULT"} if item.torchvision else {
        "file": item.file}
    keys = (("into", item.into), ("from", item.source), ("exclude", list(item.exclude)))
    return {**entry, **{k: v for k, v in keys if v}}
