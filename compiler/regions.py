"""Block instances as modules that run: activation checkpointing (`checkpoint: true`)
and FSDP's units (`compile_spec(block_modules=True)`).

A checkpointed layer is called through `checkpointed`. A checkpointed block instance (or
repeat copy) has its nodes moved out of the model's graph into a GraphModule of its own,
which takes the place of the instance's container: the same children at the same names,
so the state_dict keys do not change; the model's graph calls it through `checkpointed`
with the values its nodes read from outside. In training with gradients that call keeps
only those inputs and runs the instance again during backward (torch.utils.checkpoint,
non-reentrant, with the RNG state restored: dropout draws the same masks); in eval it is
a plain call, so exports and TorchScript see the model as it would be without it.
"""

from __future__ import annotations

import heapq

import networkx as nx
import torch
import torch.fx as fx
from torch.utils.checkpoint import checkpoint

from .codegen import _getitem, _module_class, _py_name, hoist_lookups
from .errors import SpecError

__all__ = ["checkpointed", "outline_region", "finish_regions", "RegionTracer", "STANDALONE_CHECKPOINTED"]


def checkpointed(module, *args, **kwargs):
    """`module(*args)`, in training with gradients keeping only its inputs and recomputing
    its inside during backward (torch.utils.checkpoint, non-reentrant); a plain call in
    eval or under no_grad, so inference and export never see it."""
    if module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)


# `checkpointed` as `compile --emit-python` writes it, needing only torch
STANDALONE_CHECKPOINTED = """\
def {name}(module, *args, **kwargs):
    # checkpoint: true -- in training, keep the inputs and run `module` again in backward
    if module.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)
"""


class RegionTracer(fx.Tracer):
    """fx's tracer with `checkpointed` kept as one call. fx pickles a GraphModule as its
    code and traces that code again when loading, with the tracer class the graph names:
    this one, so a loaded model still checkpoints."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autowrap_functions", (checkpointed,))
        super().__init__(*args, **kwargs)


def outline_region(graph, root, prefix: str, typed: nx.DiGraph, checkpoint: bool = False) -> None:
    """A block instance's nodes as a GraphModule of their own in its container's place,
    called by the model's graph (through `checkpointed` when `checkpoint`): a module that
    runs, so hooks on it run (FSDP's all-gathers), where a container of layers never does.
    A layer is one already: with `checkpoint` its call goes through `checkpointed`. Call
    `finish_regions` once after the last."""
    if prefix in typed and not checkpoint:
        return

    def inside(name: str | None) -> bool:
        return name is not None and (name == prefix or name.startswith(prefix + "."))

    owned = {n for n in graph.nodes if n.op != "placeholder" and inside(n.meta.get("spec_node"))}
    for n in reversed(list(graph.nodes)):  # the getitem/size nodes made for one user go with it
        if n not in owned and "spec_node" not in n.meta and n.op not in ("placeholder", "output"):
            if n.users and all(u in owned for u in n.users):
                owned.add(n)
    members = [n for n in graph.nodes if n in owned]
    spec_node = typed.nodes[prefix]["spec"] if prefix in typed else None
    if spec_node is not None:  # one op node
        call = next((n for n in members if n.op == "call_module" and n.target == prefix), None)
        if call is None:
            raise SpecError("checkpoint: applies to a layer or a block; this node is "
                            f"'{spec_node.op}', which holds nothing to recompute", spec_node.loc,
                            spec_node.path, "group the nodes to recompute in a block or inline nodes:")  # fmt: skip
        with graph.inserting_before(call):
            wrapped = graph.create_node("call_function", checkpointed, (graph.get_attr(prefix), *call.args),
                                        dict(call.kwargs), call.name)  # fmt: skip
        wrapped.meta.update(call.meta)
        call.replace_all_uses_with(wrapped)
        graph.erase_node(call)
        return
    inputs: list = []
    for n in members:
        for value in n.all_input_nodes:
            if value not in owned and value not in inputs:
                inputs.append(value)
    results = [n for n in members if any(u not in owned for u in n.users)]
    sub = fx.Graph()
    mapping: dict = {}
    for k, value in enumerate(inputs):
        mapping[value] = sub.placeholder(f"{value.name}_{k}" if value.name in mapping else value.name)
    for n in members:
        mapping[n] = sub.node_copy(n, lambda v: mapping[v])
        if n.op in ("call_module", "get_attr"):
            mapping[n].target = n.target[len(prefix) + 1:]
    sub.output(mapping[results[0]] if len(results) == 1 else tuple(mapping[r] for r in results))
    container = root.get_submodule(prefix)
    sub.on_generate_code(lambda _previous: hoist_lookups)
    region = _module_class()(container, sub, class_name="Checkpointed" if checkpoint else "Block")
    for attr in ("_modules", "_parameters", "_buffers"):  # the container's own, in its order
        setattr(region, attr, dict(getattr(container, attr)))
    region._non_persistent_buffers_set = set(container._non_persistent_buffers_set)
    parent, _, leaf = prefix.rpartition(".")
    root.get_submodule(parent)._modules[leaf] = region
    name = _py_name(prefix.replace(".", "_"))
    with graph.inserting_after(members[-1]):
        if checkpoint:
            handle = graph.create_node("get_attr", prefix, (), {}, name + "_layer")
            with graph.inserting_after(handle):
                call = graph.create_node("call_function", checkpointed, (handle, *inputs), {}, name)
        else:
            call = graph.create_node("call_module", prefix, tuple(inputs), {}, name)
    call.meta["spec_node"] = prefix
    picks = [call]
    if len(results) > 1:
        picks = []
        for k in range(len(results)):
            with graph.inserting_after(picks[-1] if picks else call):
                picks.append(graph.call_function(_getitem(), (call, k)))
    for result, pick in zip(results, picks, strict=True):
        result.replace_all_uses_with(pick, delete_user_cb=lambda user: user not in owned)
    for n in reversed(members):
        graph.erase_node(n)


def finish_regions(graph) -> None:
    """After the regions are outlined: the model's graph in an order where each node comes
    after its inputs, moving as few as the original order allows (a block's outputs may
    have had users between its nodes), and pickled with `RegionTracer`."""
    graph._tracer_cls = RegionTracer  # pickled by name: loading traces `checkpointed` as one call
    nodes = list(graph.nodes)
    index = {n: k for k, n in enumerate(nodes)}
    waiting = {n: len(set(n.all_input_nodes)) for n in nodes}
    ready = [(index[n], n.name, n) for n in nodes if waiting[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, n = heapq.heappop(ready)
        order.append(n)
        for user in n.users:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (index[user], user.name, user))
    if len(order) < len(nodes):  # a value leaves a region and comes back into it
        placed = set(order)
        stuck = next((n.meta["spec_node"] for n in nodes if n not in placed and n.meta.get("spec_node")), "a block")
        raise SpecError(f"checkpoint: '{stuck}' cannot be run on its own: a value it makes comes back "
                        "into it from outside", hint="checkpoint the block around both")  # fmt: skip
    for before, n in zip(order, order[1:], strict=False):
        before.append(n)
