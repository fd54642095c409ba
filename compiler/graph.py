"""Stage 4 — graph: an `ExpandedSpec` -> `networkx.DiGraph`.

Attribute contract (what later stages may read):

    graph.graph["spec"]      the ExpandedSpec it was built from
    graph.graph["outputs"]   tuple of (output name, Ref): the outputs, then the train outputs
    graph.graph["train_outputs"]  how many of those (at the end) are computed in training only
    node attrs               kind: "input" | "op"
                             spec: InputSpec | NodeSpec
                             order: int (position in the spec; ties in sorting)
    edge attrs (u -> v)      slots: list of (argument position, tuple index) pairs —
                             `v` takes `u[index]` as its input number `position`

A tensor used twice by one node (`add: [x, x]`) is one edge with two slots.
"""

from __future__ import annotations

import networkx as nx

from .expand import ExpandedSpec

__all__ = ["build_graph", "topological_order"]


def build_graph(spec: ExpandedSpec) -> nx.DiGraph:
    """Nodes are spec inputs and ops; edges carry tensors."""
    g = nx.DiGraph(spec=spec, outputs=spec.outputs + spec.train_outputs, train_outputs=len(spec.train_outputs))
    for order, inp in enumerate(spec.inputs):
        g.add_node(inp.name, kind="input", spec=inp, order=order)
    base = len(spec.inputs)
    for order, node in enumerate(spec.nodes, start=base):
        g.add_node(node.name, kind="op", spec=node, order=order)
    for node in spec.nodes:
        for pos, ref in enumerate(node.inputs):
            assert ref.node in g, ref  # expand resolved every name in its scope
            if g.has_edge(ref.node, node.name):
                g.edges[ref.node, node.name]["slots"].append((pos, ref.index))
            else:
                g.add_edge(ref.node, node.name, slots=[(pos, ref.index)])
    return g


def topological_order(g: nx.DiGraph) -> list[str]:
    """A deterministic topological order: ties broken by position in the spec."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]))
