"""The whole pipeline, stage by stage: text -> Document -> checked spec -> ExpandedSpec
-> graph -> checked graph -> typed graph -> nn.Module.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import networkx as nx

from .checks import check_graph
from .codegen import generate_module
from .errors import ChangedBy, Location, SpecError
from .expand import ExpandedSpec, WeightsOverlay, expand
from .graph import build_graph
from .load import SpecSource, load_spec_source
from .registry import REGISTRY, load_plugins
from .shapes import ShapeOracle, infer_shapes
from .validate import validate

__all__ = ["Compiled", "compile_spec", "spec_hash"]


@dataclass(frozen=True)
class Compiled:
    """Everything the pipeline produced, for the CLI, the runtime and tests."""

    source: SpecSource
    spec: ExpandedSpec
    graph: nx.DiGraph  # typed: every node has type/args/params (see shapes.py)
    module: Any  # torch.fx.GraphModule, or None when built with build=False

    @property
    def hash(self) -> str:
        return spec_hash(self.spec)


def compile_spec(
    source: str | os.PathLike | SpecSource,
    overrides: dict[str, Any] | None = None,
    *,
    plugins: tuple[str, ...] = (),
    build: bool = True,
    registry=REGISTRY,
    checkpoint_blocks: tuple[str, ...] = (),
    block_modules: bool = False,
    overlay: WeightsOverlay | None = None,
) -> Compiled:
    """Run every stage; `build=False` stops before weights are allocated. Every instance
    of the blocks in `checkpoint_blocks` is checkpointed (see `expand`). `block_modules`
    makes each outermost block instance a module that runs (a GraphModule of its own in
    its container's place, the state_dict unchanged): the unit FSDP shards. `overlay`
    holds a run configuration's `init:` and `freeze:`, in place of the spec's."""
    with _collector_paused():
        return _compile(source, overrides, plugins, build, registry, tuple(checkpoint_blocks), block_modules,
                        overlay)


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while compiling. A compile allocates many
    long-lived objects (nodes, modules, weights), and each full collection walks all of
    them: at 10,000 nodes that made compile time grow faster than the graph (10k / 1k
    nodes: 13x). What the compile leaves as garbage is collected afterwards as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _compile(source, overrides, plugins, build, registry, checkpoint_blocks=(), block_modules=False,
             overlay=None) -> Compiled:
    load_plugins(plugins)
    src = source if isinstance(source, SpecSource) else load_spec_source(source)
    validate(src, registry)
    oracle = ShapeOracle(registry)  # answers shape() while expanding; reused below
    with _overrides_named(overrides):
        spec = expand(src, overrides, registry=registry, shape_of=oracle, checkpoint_blocks=checkpoint_blocks,
                      overlay=overlay)
        graph = build_graph(spec)
        check_graph(graph)
        typed = infer_shapes(graph, registry, oracle)
        if any(n.tie for n in spec.nodes):
            from .weights import check_ties

            check_ties(typed, registry)
        module = generate_module(typed, registry, block_modules=block_modules) if build else None
    if module is not None and (spec.init or spec.frozen):
        from .weights import apply_freeze, apply_init

        apply_init(module, spec)
        apply_freeze(module, spec)
    return Compiled(src, spec, typed, module)


@contextmanager
def _overrides_named(overrides: dict | None):
    """An error located in the spec file of a spec compiled with overridden variables
    names the overrides after its position (`net.yaml:20:25, with classes=0: ...`): the
    line shows the spec as written, not the value that failed."""
    try:
        yield
    except SpecError as err:
        if not overrides:
            raise
        items = ("with " + ", ".join(f"{k}={_short(v)}" for k, v in overrides.items()),)
        located = [replace(d, loc=ChangedBy(d.loc.file, d.loc.line, d.loc.col, items))
                   if type(d.loc) is Location else d for d in err.diagnostics]  # fmt: skip
        raise type(err)(diagnostics=located) from None


def _short(value: Any, n: int = 40) -> str:
    text = str(value).lower() if isinstance(value, bool) or value is None else str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def spec_hash(spec: ExpandedSpec) -> str:
    """sha256 of the resolved network (nodes, args, wiring, inputs, outputs)."""
    canon = {
        "inputs": [[i.name, list(i.shape), i.dtype] for i in spec.inputs],
        "nodes": [[n.name, n.op, [str(r) for r in n.inputs], n.args, n.call, *([list(n.tie)] if n.tie else [])]
                  for n in spec.nodes],  # fmt: skip
        "outputs": [[k, str(r)] for k, r in spec.outputs],
        **({"train_outputs": [[k, str(r)] for k, r in spec.train_outputs]} if spec.train_outputs else {}),
        # what trains is part of the network a checkpoint belongs to: resuming with another
        # freeze would put the optimizer's state onto other parameters
        **({"frozen": sorted(spec.frozen)} if spec.frozen else {}),
    }
    text = json.dumps(canon, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
