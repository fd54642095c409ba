"""FSDP2 over a compiled spec (runtime/sharding.py), on 2 CPU processes with Gloo.

Oracles: the same model trained by one process on the whole batch (what DDP on 2
processes computes, see test_distributed.py), compared after 3 steps of SGD with
momentum (Adam's first steps turn float rounding in near-zero gradients into whole
learning-rate steps, for DDP as much as for FSDP); the bytes each process holds, against
the unsharded model's.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from yamlnet.compiler.compile import compile_spec

from .conftest import SPECS

GPT = SPECS / "zoo" / "gpt.yaml"
SIZES = {"dim": 32, "layers": 3, "heads": 2, "context": 16, "dropout": 0.0}
STEPS = 3


def optimizer_for(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, 512, (4, 16), generator=gen) for _ in range(STEPS)]


def lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def train(model, tokens_per_step, optimizer) -> None:
    for tokens in tokens_per_step:
        lm_loss(model, tokens).backward()
        optimizer.step()
        optimizer.zero_grad()


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from yamlnet.runtime.sharding import local_bytes, shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        compiled = compile_spec(GPT, SIZES, block_modules=True)
        model = compiled.module
        units = shard_model(model, compiled)
        optimizer = optimizer_for(model)
        half = [t.chunk(world)[rank] for t in batches()]  # each rank its part of the batch
        train(model, half, optimizer)
        lm_loss(model, half[0]).backward()  # gradients held for the byte count
        held = local_bytes(model, optimizer)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        torch.save({"units": units, "bytes": held, "state": full if rank == 0 else None}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    init, out = str(folder / "init"), str(folder / "out")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(worker, args=(2, init, out), nprocs=2, join=True, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]


def test_a_sharded_step_equals_one_process_on_the_whole_batch(sharded):
    torch.manual_seed(0)
    model = compile_spec(GPT, SIZES).module  # as written: no block modules
    train(model, batches(), optimizer_for(model))
    want, got = model.state_dict(), sharded[0]["state"]
    assert list(got) == list(want)
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-6
    assert sharded[0]["units"] == ("blocks.0", "blocks.1", "blocks.2")


def test_each_process_holds_about_half(sharded):
    torch.manual_seed(0)
    model = compile_spec(GPT, SIZES).module
    optimizer = optimizer_for(model)
    train(model, batches()[:1], optimizer)
    lm_loss(model, batches()[0]).backward()
    from yamlnet.runtime.sharding import local_bytes

    whole = sum(local_bytes(model, optimizer).values())
    for rank in (0, 1):
        held = sharded[rank]["bytes"]
        assert held["params"] and held["grads"] and held["optimizer"]
        assert sum(held.values()) <= 0.55 * whole, (held, whole)
