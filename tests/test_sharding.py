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
from yamlnet.runtime.checkpoint import load_checkpoint

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


# -- train.strategy: fsdp from the command line --------------------------------------------

from .test_distributed import max_diff, metrics, weights, yamlnet  # noqa: E402
from .test_tasks_runs import gpt_spec  # noqa: E402

LONG = pytest.mark.extended
SETS = ["dim=32", "heads=2", "layers=2", "dropout=0.1", "context=32", "data.block_size=32", "train.val_every_n_steps=6",
        "train.grad_accum=2", "train.grad_clip=1.0", "train.checkpoint_every_n_steps=4",
        "train.optimizer={name: SGD, lr: 0.1, momentum: 0.9}", "train.scheduler=null"]  # fmt: skip
GPT_RUN = [a for s in [*SETS, "train.max_steps=12"] for a in ("--set", s)]


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory):
    """The zoo GPT (2 decoder blocks, dropout, a tied head) on 2 processes for 12 steps
    of 2 accumulated micro-batches with clipping, by FSDP and by DDP."""
    cwd = tmp_path_factory.mktemp("gpt")
    spec, _ = gpt_spec(cwd)
    runs = {s: yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", s, *GPT_RUN, "--set", f"train.strategy={s}")
            for s in ("fsdp", "ddp")}  # fmt: skip
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd, spec


def test_fsdp_trains_as_ddp_does(gpt_runs):
    cwd, _ = gpt_runs
    assert max_diff(weights(cwd / "fsdp"), weights(cwd / "ddp")) <= 1e-6
    assert (cwd / "fsdp" / "metrics.csv").read_text().splitlines()[0] == (
        cwd / "ddp" / "metrics.csv").read_text().splitlines()[0]  # fmt: skip
    state = load_checkpoint(cwd / "fsdp" / "checkpoints" / "last.pt")  # a whole state_dict, as DDP writes
    ddp = load_checkpoint(cwd / "ddp" / "checkpoints" / "last.pt")
    assert state["model"].keys() == ddp["model"].keys()
    assert state["optimizer"]["param_groups"][0]["params"] == ddp["optimizer"]["param_groups"][0]["params"]
    assert state["config"]["train"]["strategy"] == "fsdp"


def test_a_validation_split_uneven_across_processes_runs_in_lockstep(tmp_path):
    """359 validation samples in batches of 179: 2 batches on rank 0, 1 on rank 1. Every
    FSDP forward all-gathers, so rank 1 runs one more, unrecorded; the result is DDP's."""
    args = [str(SPECS / "mlp.yaml"), "--nproc", "2", "--max-steps", "3", "--set", "data.flatten=true",
            "--set", "data.val_batch_size=179", "--set", "train.dist_timeout=60"]  # fmt: skip
    runs = {s: yamlnet(tmp_path, "train", *args, "--out", s, "--set", f"train.strategy={s}") for s in ("fsdp", "ddp")}
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    val = {s: [(r["step"], r["val/loss"], r["val/accuracy"]) for r in metrics(tmp_path / s) if r.get("val/loss")]
           for s in runs}  # fmt: skip
    assert val["fsdp"] == val["ddp"] and val["fsdp"]
    assert max_diff(weights(tmp_path / "fsdp"), weights(tmp_path / "ddp")) == 0


@LONG
def test_a_killed_fsdp_run_resumes_bitwise(gpt_runs, tmp_path):
    """Rank 1 killed after step 7; restarted, both resume from step 4's sharded state."""
    cwd, spec = gpt_runs
    proc = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--max-restarts", "1", "--out", "killed", *GPT_RUN,
                   "--set", "train.strategy=fsdp", faults="kill_after_step=7@1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from" in proc.stdout + proc.stderr
    assert max_diff(weights(cwd / "killed"), weights(cwd / "fsdp")) == 0


@LONG
def test_an_fsdp_checkpoint_resumes_on_one_process_and_back(gpt_runs):
    cwd, spec = gpt_runs
    import shutil

    shutil.copytree(cwd / "fsdp", cwd / "moved")
    more = [a for s in SETS for a in ("--set", s)]
    one = yamlnet(cwd, "train", str(spec), "--out", "moved", "--resume", "--force", *more, "--set", "train.max_steps=16")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "2 -> 1 processes" in one.stdout
    two = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", "moved", "--resume", "--force", *more,
                  "--set", "train.max_steps=20", "--set", "train.strategy=fsdp")  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    assert "1 -> 2 processes" in two.stdout and "max_steps at step 20" in two.stdout


@pytest.mark.parametrize("key, value", [("on_nonfinite", "skip"), ("compile", "true")])
def test_what_fsdp_does_not_take_is_one_line(tmp_path, key, value):
    proc = yamlnet(tmp_path, "train", str(SPECS / "mlp.yaml"), "--out", "r", "--max-steps", "1",
                   "--set", "data.flatten=true", "--set", "train.strategy=fsdp", "--set", f"train.{key}={value}")  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"train.{key}: train.strategy: fsdp does not take {key}: {value}" in proc.stderr
