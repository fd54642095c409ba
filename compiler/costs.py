"""What each node of a compiled spec costs at given input sizes: multiply-accumulates
(MACs) and the bytes of its output (activation memory).

MACs come from `torch.utils.flop_counter.FlopCounterMode` (convolutions, matrix
products, attention; it counts 2 FLOPs per multiply-accumulate) while the generated
module runs once on zero inputs, node by node through a `torch.fx.Interpreter`, so every
count lands on the spec node that did the work. Elementwise ops, normalisation and
pooling count 0 MACs, the common convention (ResNet-18 at 224x224: 1.81 GMACs).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError

__all__ = ["NodeCost", "node_costs", "missing_dims"]


@dataclass(frozen=True)
class NodeCost:
    macs: int
    activation_bytes: int


def missing_dims(result, dims: dict[str, int]) -> list[str]:
    """Symbolic input dims that have no size: `N` is 1 unless given, others need one."""
    dims = {"N": 1, **dims}
    return sorted({d for i in result.spec.inputs for d in i.shape if isinstance(d, str) and d not in dims})


def node_costs(result, dims: dict[str, int]) -> dict[str, NodeCost]:
    """Spec node name -> its cost, with the inputs at `dims` (see `input_sizes`)."""
    import torch
    import torch.fx as fx
    from torch.utils.flop_counter import FlopCounterMode

    missing = missing_dims(result, dims)
    if missing:
        raise SpecError(f"costs need a size for {', '.join(missing)}", hint="give it with --dim NAME=SIZE")
    sizes = {"N": 1, **dims}
    module = result.module
    # inputs where the weights are: a module built on the meta device (as `summary` builds
    # it) is counted without allocating a byte, whatever the sizes
    device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    inputs = [torch.zeros([sizes[d] if isinstance(d, str) else d for d in inp.shape],
                          dtype=getattr(torch, inp.dtype), device=device) for inp in result.spec.inputs]  # fmt: skip
    flops: dict[str, int] = {}
    act: dict[str, int] = {}

    from .regions import checkpointed

    class Counter(fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_function" and n.target is checkpointed:
                (region, *args), kwargs = self.fetch_args_kwargs_from_env(n)
                if isinstance(region, fx.GraphModule):  # a block instance: its nodes one by one
                    return Counter(region).run(*args)
            before = mode.get_total_flops()
            out = super().run_node(n)
            name = n.meta.get("spec_node")
            if name is not None and n.op != "placeholder":
                extra = 0
                if n.op == "call_module":
                    args, _ = self.fetch_args_kwargs_from_env(n)
                    extra = 2 * _recurrent_macs(self.module.get_submodule(n.target), args)
                flops[name] = flops.get(name, 0) + mode.get_total_flops() - before + extra
                act[name] = _bytes(out)
            return out

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as mode:
            Counter(module).run(*inputs)
    finally:
        module.train(was_training)
    return {name: NodeCost(flops[name] // 2, act[name]) for name in flops}


def _recurrent_macs(module, args) -> int:
    """MACs of an nn.RNN/LSTM/GRU, which the flop counter does not see: per time step,
    sample, layer and direction, gates x hidden x (input + hidden)."""
    import torch

    if not isinstance(module, torch.nn.RNNBase) or not args or not isinstance(args[0], torch.Tensor):
        return 0
    if args[0].dim() != 3:
        return 0
    steps_samples = args[0].shape[0] * args[0].shape[1]
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    dirs = 2 if module.bidirectional else 1
    h = module.hidden_size
    total = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else h * dirs
        total += dirs * gates * h * (width + h)
    return steps_samples * total


def _bytes(out) -> int:
    import torch

    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_bytes(o) for o in out)
    return 0
