"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over a compiled spec.

The spec says where the units are: each outermost block instance (each repeat copy, each
block node) is sharded on its own, and the root takes the rest (embeddings, a head, the
weights tied to them). A block instance is a module that runs when the spec is compiled
with `block_modules=True` (compiler/regions.py): FSDP all-gathers a unit's parameters in
the hooks of its forward, and frees them after; a container of layers never runs, so its
hooks never would.

`train.strategy: fsdp` stands on it. Checkpoints stay what they are on one process (a
whole state_dict, and the optimizer's state keyed by parameter number): gathered from the
shards for writing (`full_state`), and each process takes its part when resuming
(`load_full_state`), so a run may change strategy or number of processes on resuming.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..compiler.compile import Compiled
from ..compiler.expand import outermost

__all__ = ["shard_units", "shard_model", "local_bytes", "is_sharded", "full_weights", "full_state", "load_full_state",
           "accumulating", "check_weights_fit"]


def shard_units(compiled: Compiled) -> tuple[str, ...]:
    """The module paths FSDP shards one by one, before the root: the outermost block
    instances of the spec, each repeat copy apart."""
    return outermost(list(compiled.spec.block_instances))


def shard_model(model: torch.nn.Module, compiled: Compiled, device_type: str = "cpu", *,
                reshard_after_forward: bool = True) -> tuple[str, ...]:  # fmt: skip
    """Shard `model` (built from `compiled` with block_modules=True) over the default
    process group, unit by unit, then the root; returns the units. Build the optimizer
    afterwards: sharding replaces each parameter by a DTensor holding this rank's part."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    units = shard_units(compiled)
    for path in units:
        module = model.get_submodule(path)
        if not isinstance(module, torch.fx.GraphModule):
            raise ValueError(f"'{path}' is not a module that runs: compile the spec with block_modules=True")
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return units


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds of the parameters, their gradients and the optimizer's
    state (a DTensor counted by its local part)."""

    def size(t) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    out = {"params": sum(size(p) for p in model.parameters()),
           "grads": sum(size(p.grad) for p in model.parameters() if p.grad is not None), "optimizer": 0}  # fmt: skip
    if optimizer is not None:
        out["optimizer"] = sum(size(v) for state in optimizer.state.values() for v in state.values())
    return out


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether fully_shard was applied to `model` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_weights(model: torch.nn.Module) -> dict:
    """The whole state_dict, as one process has it, on rank 0 (empty elsewhere). A
    collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """`full_weights`, and the optimizer's whole state as one process has it (keyed by
    parameter number), on rank 0 (empty elsewhere). A collective: every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    weights = full_weights(model)
    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))  # fmt: skip
    if dist.get_rank() != 0:
        return {}, {}
    names = _names(model, optimizer)
    number = {name: k for k, name in enumerate(names)}
    state = {number[name]: value for name, value in by_name["state"].items()}
    groups, k = [], 0
    for group, ours in zip(by_name["param_groups"], optimizer.param_groups, strict=True):
        groups.append({**{key: v for key, v in group.items() if key != "params"},
                       "params": list(range(k, k + len(ours["params"])))})  # fmt: skip
        k += len(ours["params"])
    return weights, {"state": state, "param_groups": groups}


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, weights: dict,
                    optim_state: dict | None = None) -> None:  # fmt: skip
    """Each rank's part of a whole state_dict (and of the optimizer's whole state, keyed
    by parameter number), every rank holding the whole."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer is None or optim_state is None:
        return
    names = _names(model, optimizer)
    state = {names[k]: value for k, value in optim_state["state"].items()}
    groups = [{**{key: v for key, v in group.items() if key != "params"}, "params": [names[k] for k in group["params"]]}
              for group in optim_state["param_groups"]]  # fmt: skip
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)


@contextmanager
def accumulating(model: torch.nn.Module):
    """Backward without reduce-scattering the gradients (they add up locally until the
    accumulation group's last micro-batch): FSDP's counterpart of DDP's no_sync."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def check_weights_fit(model: torch.nn.Module, weights: dict, path) -> None:
    """What `load_weights` says of a state_dict that does not fit, for a sharded model
    (whose state_dict holds DTensors of the whole shapes): one line."""
    from .errors import CheckpointError

    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f'missing key "{k}"' for k in want if k not in weights]
    problems += [f'unexpected key "{k}"' for k in weights if k not in want]
    problems += [f"size mismatch for {k}: {list(weights[k].shape)} in the checkpoint, {list(want[k])} in the model"
                 for k in want if k in weights and tuple(getattr(weights[k], "shape", ())) != want[k]]  # fmt: skip
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path} does not fit the model: {problems[0]}{more}")
