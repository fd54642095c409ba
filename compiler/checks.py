"""Stage 5 — checks: structural problems of the graph, each naming its culprit.

- a cycle is reported as the cycle itself (`a -> b -> a`), at its first node;
- a node whose output reaches no output is dead code (it would still own weights);
- an input that nothing reads is almost surely a typo in an `in:`.
Unknown names and duplicate names are caught while expanding, where scopes are known.
"""

from __future__ import annotations

import networkx as nx

from .errors import Diagnostic, GraphError

__all__ = ["check_graph"]


def check_graph(g: nx.DiGraph) -> None:
    """Raise `GraphError` for a cycle, or listing every dead node and unused input."""
    _check_cycles(g)
    problems = _dead_nodes(g)
    if problems:
        raise GraphError(diagnostics=problems)


def _check_cycles(g: nx.DiGraph) -> None:
    if nx.is_directed_acyclic_graph(g):  # linear time; find_cycle only when there is one
        return
    try:
        edges = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    names = [u for u, _ in edges] + [edges[0][0]]
    first = min(names[:-1], key=lambda n: g.nodes[n]["order"])
    start = names.index(first)
    ordered = names[start:-1] + names[:start] + [first]
    spec = g.nodes[first]["spec"]
    raise GraphError(f"cycle: {' -> '.join(ordered)}", spec.loc, getattr(spec, "path", ""),
                     "a node cannot depend on its own output")


def _dead_nodes(g: nx.DiGraph) -> list[Diagnostic]:
    live: set[str] = set()
    for _, ref in g.graph["outputs"]:
        live.add(ref.node)
        live |= nx.ancestors(g, ref.node)
    out = []
    for name in sorted(set(g) - live, key=lambda n: g.nodes[n]["order"]):
        data = g.nodes[name]
        spec = data["spec"]
        if data["kind"] == "input":
            out.append(Diagnostic(f"input '{name}' is never used", spec.loc, f"inputs.{name}",
                                  "read it with in: or remove it"))
        else:
            out.append(Diagnostic(f"node '{name}' is never used: its output reaches no output",
                                  spec.loc, spec.path,
                                  "use it as an input, list it under outputs:, or remove it"))
    return out
