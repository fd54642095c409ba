"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over a compiled spec.

The spec says where the units are: each outermost block instance (each repeat copy, each
block node) is sharded on its own, and the root takes the rest (embeddings, a head, the
weights tied to them). A block instance is a module that runs when the spec is compiled
with `block_modules=True` (compiler/regions.py): FSDP all-gathers a unit's parameters in
the hooks of its forward, and frees them after; a container of layers never runs, so its
hooks never would.

`train.strategy: fsdp` stands on it. The units can be changed: `shard: false` on a
block node leaves its instances to the unit around them, `shard: true` on a node makes it
a unit, and `train.fsdp.units` names the units outright. A unit sharing a weight with a
module outside it (`tie:`) is sharded with that module, in one group.

A sharded run's checkpoints are sharded too (runtime/shards.py). A whole checkpoint (a
DDP run's, or one consolidated) still resumes a sharded run: every process reads it and
takes its part (`load_full_state`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..compiler.compile import Compiled
from ..compiler.expand import outermost

__all__ = ["shard_units", "unit_problem", "unit_groups", "shard_model", "local_bytes", "is_sharded",
           "load_full_state", "accumulating", "check_weights_fit"]


def shard_units(compiled: Compiled, units: list[str] | None = None) -> tuple[str, ...]:
    """The module paths FSDP shards one by one, before the root, deeper ones first (FSDP
    wants a unit's inner units sharded before it). By default the outermost block
    instances of the spec, each repeat copy apart, less those under a node written with
    `shard: false`, and with each node written with `shard: true`. `units` (the run
    configuration's train.fsdp.units) replaces that: block names (their outermost
    instances) and module paths."""
    spec = compiled.spec
    if units is None:
        off = [path for path, on in spec.sharding if not on]
        chosen = [p for p in outermost(list(spec.block_instances)) if not any(p == o or p.startswith(o + ".") for o in off)]
        chosen += [path for path, on in spec.sharding if on]
    else:
        of_block: dict[str, list[str]] = {}
        for path, block in zip(spec.block_instances, spec.block_names, strict=True):
            of_block.setdefault(block, []).append(path)
        chosen = [p for name in units for p in (outermost(of_block[name]) if name in of_block else [name])]
    return tuple(sorted(dict.fromkeys(chosen), key=lambda p: -p.count(".")))


def unit_problem(model: torch.nn.Module, path: str) -> str | None:
    """Why `path` cannot be an FSDP unit of `model` (built with block_modules=True), or
    None: a unit is a module whose forward runs (FSDP gathers its weights in its hooks)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return f"the spec has no block and the model no module '{path}'"
    if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)) or type(module) is torch.nn.Module:
        inside = ", ".join(f"{path}.{name}" for name, _ in list(module.named_children())[:3])
        return f"'{path}' holds layers ({inside}, ...) but never runs itself, so it cannot be a unit"
    return None


def unit_groups(model: torch.nn.Module, units: tuple[str, ...]) -> list[list[str]]:
    """Each unit, with the modules outside it that share a weight with it (`tie:`): FSDP
    shards a tied weight once, so they go in one group. ValueError if the sharer is in
    another unit."""
    owners: dict[int, list[str]] = {}
    for path, module in model.named_modules():
        for _, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(path)

    def within(path: str, unit: str) -> bool:
        return path == unit or path.startswith(unit + ".")

    groups = []
    for unit in units:
        members = [unit]
        for param in model.get_submodule(unit).parameters():
            for other in owners[id(param)]:
                if any(within(other, m) for m in members):
                    continue
                clash = next((u for u in units if u != unit and within(other, u)), None)
                if clash:
                    raise ValueError(f"units '{unit}' and '{clash}' share a weight (tie:), and FSDP shards a "
                                     "weight in one unit only")  # fmt: skip
                members.append(other)
        groups.append(members)
    return groups


def shard_model(model: torch.nn.Module, compiled: Compiled, device_type: str = "cpu", *, units: list[str] | None = None,
                reshard_after_forward: bool = True, precision: str = "32",
                cpu_offload: bool = False) -> tuple[str, ...]:  # fmt: skip
    """Shard `model` (built from `compiled` with block_modules=True) over the default
    process group, unit by unit, then the root; returns the units. Build the optimizer
    afterwards: sharding replaces each parameter by a DTensor holding this rank's part.
    A mixed `precision` gathers the weights for compute in bfloat16 or float16, and
    reduces the gradients in float32; `cpu_offload` keeps the shards in CPU memory."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    chosen = shard_units(compiled, units)
    compute = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None),
               "offload_policy": CPUOffloadPolicy(pin_memory=device_type == "cuda") if cpu_offload else OffloadPolicy()}  # fmt: skip
    for path in chosen:
        problem = unit_problem(model, path)
        if problem:
            raise ValueError(problem)
    for members in unit_groups(model, chosen):
        fully_shard([model.get_submodule(m) for m in members] if len(members) > 1 else model.get_submodule(members[0]),
                    **options)  # fmt: skip
    fully_shard(model, **options)
    return chosen


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


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, weights: dict,
                    optim_state: dict | None = None) -> None:  # fmt: skip
    """Each rank's part of a whole state_dict (and of the optimizer's whole state, keyed
    by parameter number), every rank holding the whole."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from .shards import named, parameter_names

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer is None or optim_state is None:
        return
    set_optimizer_state_dict(model, optimizer, named(optim_state, parameter_names(model, optimizer)), options=options)


@contextmanager
def accumulating(model: torch.nn.Module):
    """Backward without reduce-scattering the gradients (they add up locally until the
    accumulation group's last micro-batch): FSDP's counterpart of DDP's no_sync."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def check_weights_fit(model: torch.nn.Module, shapes: dict[str, tuple], path) -> None:
    """What `load_weights` says of a state_dict that does not fit, for a sharded model
    (whose state_dict holds DTensors of the whole shapes), from the checkpoint's names and
    whole shapes: one line."""
    from .errors import CheckpointError

    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f'missing key "{k}"' for k in want if k not in shapes]
    problems += [f'unexpected key "{k}"' for k in shapes if k not in want]
    problems += [f"size mismatch for {k}: {list(shapes[k])} in the checkpoint, {list(want[k])} in the model"
                 for k in want if k in shapes and tuple(shapes[k]) != want[k]]  # fmt: skip
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path} does not fit the model: {problems[0]}{more}")
