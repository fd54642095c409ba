"""FSDP2 over a compiled spec (runtime/sharding.py), on 2 CPU processes with Gloo.

Oracles: the same model trained by one process on the whole batch (what DDP on 2
processes computes, see test_distributed.py), compared after 3 steps of SGD with
momentum (Adam's first steps turn float rounding in near-zero gradients into whole
learning-rate steps, for DDP as much as for FSDP); the bytes each process holds, against
the unsharded model's.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
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
        torch.save({"units": units, "bytes": held, "state": full if rank == 0 else None,
                    "bf16": mixed_precision_dtypes()}, f"{out}.{rank}")  # fmt: skip
    finally:
        dist.destroy_process_group()


def mixed_precision_dtypes() -> dict[str, str]:
    """With precision bf16-mixed: the dtype of a unit's weight as its forward sees it,
    of its shard, and of the shard's gradient."""
    from yamlnet.runtime.sharding import shard_model

    compiled = compile_spec(GPT, SIZES, block_modules=True)
    model = compiled.module
    shard_model(model, compiled, precision="bf16-mixed")
    seen = {}
    fc = model.get_submodule("blocks.0.mlp.c_fc")
    fc.register_forward_hook(lambda mod, args, out: seen.update(compute=str(mod.weight.dtype)))
    lm_loss(model, batches()[0]).backward()
    return {**seen, "shard": str(fc.weight.dtype), "grad": str(fc.weight.grad.dtype)}


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


def test_bf16_mixed_gathers_bfloat16_weights_and_keeps_float32_shards(sharded):
    assert sharded[1]["bf16"] == {"compute": "torch.bfloat16", "shard": "torch.float32", "grad": "torch.float32"}


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
    state = load_checkpoint(cwd / "fsdp" / "checkpoints" / "last.dcp")  # read whole: what DDP writes
    ddp = load_checkpoint(cwd / "ddp" / "checkpoints" / "last.pt")
    assert state["model"].keys() == ddp["model"].keys()
    assert state["optimizer"]["param_groups"] == ddp["optimizer"]["param_groups"]
    momentum = {k: v["momentum_buffer"] for k, v in state["optimizer"]["state"].items()}
    assert max_diff(momentum, {k: v["momentum_buffer"] for k, v in ddp["optimizer"]["state"].items()}) <= 1e-6
    assert state["config"]["train"]["strategy"] == "fsdp"
    assert {**state["position"], "best": 0} == {**ddp["position"], "best": 0}  # (the loss to float rounding)
    assert state["rng_by_rank"][1]["torch"].equal(ddp["rng_by_rank"][1]["torch"])


def test_each_process_writes_its_shards_into_one_folder(gpt_runs):
    """Checkpoints at steps 4, 8 and 12 (2 kept), best.dcp; no gathered weights file."""
    ckpts = gpt_runs[0] / "fsdp" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.dcp", "last.dcp", "step-00000008.dcp", "step-00000012.dcp"]
    assert os.readlink(ckpts / "last.dcp") == "step-00000012.dcp"
    files = sorted(p.name for p in (ckpts / "step-00000012.dcp").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "yamlnet.pt"]
    assert not (gpt_runs[0] / "fsdp" / "last.safetensors").exists()
    recorded = load_checkpoint(ckpts / "step-00000012.dcp" / "yamlnet.pt")["sharded"]["files"]
    assert sorted(recorded) == files[:3]
    assert all(recorded[name] == f"{zlib.crc32((ckpts / 'step-00000012.dcp' / name).read_bytes()):08x}" for name in recorded)


def test_consolidate_writes_one_file_that_resumes_and_serves(gpt_runs, tmp_path):
    cwd, spec = gpt_runs
    proc = yamlnet(cwd, "checkpoint", "consolidate", "fsdp", "--out", str(tmp_path / "whole.pt"))
    assert proc.returncode == 0 and "from fsdp/checkpoints/step-00000012.dcp" in proc.stdout, proc.stderr
    whole, sharded = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(cwd / "fsdp" / "checkpoints" / "last.dcp")
    assert max_diff(whole["model"], sharded["model"]) == 0 and "sharded" not in whole
    assert whole["optimizer"]["param_groups"] == sharded["optimizer"]["param_groups"]
    sets = [a for s in SETS for a in ("--set", s)]
    evals = [yamlnet(cwd, "eval", str(spec), "--checkpoint", run, "--format", "json", *sets) for run in ("fsdp", "ddp")]
    assert [p.returncode for p in evals] == [0, 0], evals[0].stderr
    assert json.loads(evals[0].stdout) == pytest.approx(json.loads(evals[1].stdout), rel=1e-5)


@LONG
def test_a_sharded_checkpoint_serves_and_consolidates_to_weights(gpt_runs, tmp_path):
    cwd, spec = gpt_runs
    sets = [a for s in SETS for a in ("--set", s)]
    proc = yamlnet(cwd, "checkpoint", "consolidate", "fsdp/checkpoints/best.dcp", "--out", str(tmp_path / "w.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert max_diff(load_file(tmp_path / "w.safetensors"), weights(cwd / "ddp", "best")) <= 1e-6
    assert yamlnet(cwd, "checkpoint", "consolidate", "fsdp", "--out", str(tmp_path / "whole.pt")).returncode == 0
    said = [yamlnet(cwd, "generate", str(spec), "--checkpoint", str(c), "--prompt", "The ", "--max-new-tokens", "8",
                    *sets).stdout for c in (cwd / "fsdp" / "checkpoints" / "last.dcp", tmp_path / "whole.pt")]  # fmt: skip
    assert said[0] == said[1] and said[0].startswith("The ")
    proc = yamlnet(cwd, "checkpoint", "consolidate", "ddp")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "holds no sharded checkpoint" in proc.stderr


def copy_run(cwd, name: str) -> Path:
    import shutil

    shutil.copytree(cwd / "fsdp", cwd / name, symlinks=True)
    (cwd / name / ".training.lock").unlink(missing_ok=True)
    return cwd / name


def flip_a_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shard_refuses_its_checkpoint(gpt_runs):
    """One flipped byte in rank 1's shard of step 12: resuming takes step 8, with a warning."""
    from yamlnet.runtime.checkpoint import CheckpointDir

    run = copy_run(gpt_runs[0], "damaged")
    flip_a_byte(run / "checkpoints" / "step-00000012.dcp" / "__1_0.distcp", 1000)
    said = []
    path, state = CheckpointDir(run / "checkpoints").latest_good(said.append, whole=False)
    assert path.name == "step-00000008.dcp" and state["position"]["step"] == 8 and "model" not in state
    assert len(said) == 1 and "__1_0.distcp is corrupt: its CRC-32 does not match" in said[0]


def rewrite_index(folder: Path, change) -> None:
    """Replace a sharded checkpoint's .metadata by `change(bytes)`, and record its new
    CRC-32 in yamlnet.pt (as someone crafting a checkpoint would)."""
    from yamlnet.runtime.checkpoint import save_checkpoint

    index = folder / ".metadata"
    index.write_bytes(change(index.read_bytes()))
    state = load_checkpoint(folder / "yamlnet.pt")
    state["sharded"]["files"][".metadata"] = f"{zlib.crc32(index.read_bytes()):08x}"
    save_checkpoint(state, folder / "yamlnet.pt")


class RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_index_runs_no_code(gpt_runs, tmp_path):
    cwd, spec = gpt_runs
    folder = copy_run(cwd, "crafted") / "checkpoints" / "step-00000012.dcp"
    marker = tmp_path / "ran"
    rewrite_index(folder, lambda _: pickle.dumps(RunsCode(str(marker))))
    proc = yamlnet(cwd, "eval", str(spec), "--checkpoint", str(folder), *[a for s in SETS for a in ("--set", s)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot be read: 'posix.system' is not part of a checkpoint index" in proc.stderr
    assert not marker.exists()


def test_an_index_claiming_huge_tensors_is_refused(gpt_runs):
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from yamlnet.runtime.errors import CheckpointError
    from yamlnet.runtime.shards import consolidate

    folder = copy_run(gpt_runs[0], "huge") / "checkpoints" / "step-00000012.dcp"

    def grow(data: bytes) -> bytes:
        index = pickle.loads(data)
        item = next(v for v in index.state_dict_metadata.values() if isinstance(v, TensorStorageMetadata))
        item.size = torch.Size([10**6, 10**6])
        return pickle.dumps(index)

    rewrite_index(folder, grow)
    with pytest.raises(CheckpointError, match=r"its index claims 4000000\d{6} bytes of tensors in \d+ bytes of files"):
        consolidate(folder)


@LONG
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
def test_a_run_resumes_bitwise_past_a_damaged_shard(gpt_runs):
    cwd, spec = gpt_runs
    run = copy_run(cwd, "resumed")
    flip_a_byte(run / "checkpoints" / "step-00000012.dcp" / "__0_0.distcp", 500)
    proc = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", "resumed", "--resume", *GPT_RUN,
                   "--set", "train.strategy=fsdp")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refusing" in proc.stdout and "resuming from resumed/checkpoints/step-00000008.dcp (step 8" in proc.stdout
    assert max_diff(weights(run), weights(cwd / "fsdp")) == 0


@LONG
def test_a_run_killed_while_writing_a_checkpoint_resumes_bitwise(gpt_runs):
    """Rank 0 dies with step 8's folder written but not yet named: it is cleared away, and
    the restarted workers resume from step 4."""
    cwd, spec = gpt_runs
    proc = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--max-restarts", "1", "--out", "mid", *GPT_RUN,
                   "--set", "train.strategy=fsdp", faults="kill_in_checkpoint=2@0")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from mid/checkpoints/step-00000004.dcp (step 4" in proc.stdout
    assert max_diff(weights(cwd / "mid"), weights(cwd / "fsdp")) == 0
    assert not list((cwd / "mid" / "checkpoints").glob(".*"))


@LONG
def test_a_sharded_checkpoint_resumes_on_three_processes(gpt_runs):
    """DCP cuts the 2 processes' shards for 3; the run goes on from step 12's sample."""
    cwd, spec = gpt_runs
    copy_run(cwd, "three")
    more = [a for s in SETS for a in ("--set", s)]
    proc = yamlnet(cwd, "train", str(spec), "--nproc", "3", "--out", "three", "--resume", "--force", *more,
                   "--set", "train.max_steps=16", "--set", "train.strategy=fsdp")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(step 12, epoch 2, 2 -> 3 processes)" in proc.stdout and "max_steps at step 16" in proc.stdout
    files = sorted(p.name for p in (cwd / "three" / "checkpoints" / "step-00000016.dcp").glob("__*"))
    assert files == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]


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

    shutil.copytree(cwd / "fsdp", cwd / "moved", symlinks=True)
    more = [a for s in SETS for a in ("--set", s)]
    one = yamlnet(cwd, "train", str(spec), "--out", "moved", "--resume", "--force", *more, "--set", "train.max_steps=16")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "2 -> 1 processes" in one.stdout
    two = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", "moved", "--resume", "--force", *more,
                  "--set", "train.max_steps=20", "--set", "train.strategy=fsdp")  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    assert "1 -> 2 processes" in two.stdout and "max_steps at step 20" in two.stdout


@pytest.mark.parametrize("key, value", [("on_nonfinite", "skip")])
def test_what_fsdp_does_not_take_is_one_line(tmp_path, key, value):
    proc = yamlnet(tmp_path, "train", str(SPECS / "mlp.yaml"), "--out", "r", "--max-steps", "1",
                   "--set", "data.flatten=true", "--set", "train.strategy=fsdp", "--set", f"train.{key}={value}")  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"train.{key}: train.strategy: fsdp does not take {key}: {value}" in proc.stderr


# -- the units -------------------------------------------------------------------------------


def test_units_follow_the_spec_and_the_run_configuration(tmp_path):
    from yamlnet.runtime.sharding import shard_units, unit_groups, unit_problem

    compiled = compile_spec(GPT, SIZES, block_modules=True)
    assert shard_units(compiled) == ("blocks.0", "blocks.1", "blocks.2")
    assert shard_units(compiled, ["decoder_block", "tok_emb", "blocks.1.mlp.c_fc"]) == (
        "blocks.1.mlp.c_fc", "blocks.0", "blocks.1", "blocks.2", "tok_emb")  # fmt: skip
    model = compiled.module
    assert unit_groups(model, ("blocks.0", "tok_emb")) == [["blocks.0"], ["tok_emb", "head"]]  # tied: one group
    with pytest.raises(ValueError, match="units 'tok_emb' and 'head' share a weight"):
        unit_groups(model, ("tok_emb", "head"))
    assert "never runs itself" in unit_problem(model, "blocks")
    text = GPT.read_text()
    for written, want in (('repeat: "${layers}", shard: false}', ()), ('repeat: "${layers}", shard: "${layers > 2}"}',
                                                                           ("blocks.0", "blocks.1", "blocks.2"))):
        spec = tmp_path / "gpt.yaml"
        spec.write_text(text.replace('repeat: "${layers}"}', written).replace(
            "ln_f:    {op: LayerNorm}", "ln_f:    {op: LayerNorm, shard: true}"))  # fmt: skip
        assert shard_units(compile_spec(spec, SIZES, block_modules=True)) == (*want, "ln_f")


@pytest.mark.parametrize("units, said", [
    pytest.param("[blocks]", "train.fsdp.units[0]: 'blocks' holds layers (blocks.0, blocks.1, ...) but never runs "
                 "itself", marks=LONG),
    ("[decoder]", "train.fsdp.units[0]: the spec has no block and the model no module 'decoder' (did you mean "
                  "decoder_block?)"),
    pytest.param("[tok_emb, head]", "train.fsdp.units: units 'tok_emb' and 'head' share a weight (tie:)",
                 marks=LONG)])  # fmt: skip
def test_units_that_cannot_be_are_one_line(gpt_runs, units, said):
    cwd, spec = gpt_runs
    proc = yamlnet(cwd, "train", str(spec), "--out", "never", *GPT_RUN, "--set", "train.strategy=fsdp",
                   "--set", f"train.fsdp.units={units}")  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert said in proc.stderr and not (cwd / "never").exists()


@LONG
def test_fsdp_with_frozen_parts_offload_and_named_units_trains_as_ddp(gpt_runs):
    """The GPT with its position embedding and every attention frozen; FSDP with the
    shards in CPU memory, units named by block and by layer (the tied embedding)."""
    cwd, _ = gpt_runs
    spec = cwd / "frozen.yaml"
    spec.write_text((cwd / "gpt.yaml").read_text().replace(
        'embedding_dim: "${dim}"}\n  embed', 'embedding_dim: "${dim}", freeze: true}\n  embed').replace(
        "attn: {block: causal_self_attention}", "attn: {block: causal_self_attention, freeze: true}"))  # fmt: skip
    assert spec.read_text().count("freeze: true") == 2
    fsdp = ["--set", "train.strategy=fsdp", "--set", "train.fsdp={units: [decoder_block, tok_emb], cpu_offload: true}"]
    runs = {s: yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", f"frozen-{s}", *GPT_RUN, *extra)
            for s, extra in (("fsdp", fsdp), ("ddp", []))}  # fmt: skip
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    got, want = weights(cwd / "frozen-fsdp"), weights(cwd / "frozen-ddp")
    assert max_diff(got, want) <= 1e-6
    assert max_diff(got, weights(cwd / "fsdp")) > 1e-3  # the frozen parts changed the training
    earlier = load_checkpoint(cwd / "frozen-fsdp" / "checkpoints" / "step-00000008.dcp")["model"]
    assert got["pos_emb.weight"].equal(earlier["pos_emb.weight"])  # frozen: never stepped
    assert not got["blocks.0.mlp.c_fc.weight"].equal(earlier["blocks.0.mlp.c_fc.weight"])


@LONG
def test_fsdp_under_torch_compile_trains_as_ddp_does(gpt_runs):
    cwd, spec = gpt_runs
    runs = {s: yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", f"compiled-{s}", *GPT_RUN, "--compile",
                       "--set", f"train.strategy={s}") for s in ("fsdp", "ddp")}  # fmt: skip
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert max_diff(weights(cwd / "compiled-fsdp"), weights(cwd / "compiled-ddp")) <= 1e-5


# -- on CUDA (skipped without a device): `python -m pytest -q -m gpu tests/test_sharding.py` --------


def one_gpu_worker(rank: int, init_file: str, out: str) -> None:
    """A 1-process NCCL group on the GPU: the GPT sharded with bf16-mixed, one AdamW step,
    a sharded checkpoint (staged from GPU memory), read back whole."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from yamlnet.runtime.checkpoint import CheckpointDir
    from yamlnet.runtime.sharding import shard_model

    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=0, world_size=1,
                            device_id=torch.device("cuda:0"))  # fmt: skip
    try:
        torch.manual_seed(0)
        compiled = compile_spec(GPT, SIZES, block_modules=True)
        model = compiled.module.cuda()
        shard_model(model, compiled, "cuda", precision="bf16-mixed")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        seen = {}
        model.get_submodule("blocks.0.mlp.c_fc").register_forward_hook(
            lambda mod, args, out: seen.update(compute=str(mod.weight.dtype)))  # fmt: skip
        lm_loss(model, batches()[0].cuda()).backward()
        optimizer.step()
        ckpts = CheckpointDir(Path(out) / "checkpoints", sharded=True, group=dist.new_group(backend="gloo"))
        ckpts.save_sharded({"position": {"step": 1}}, model, optimizer, 1)
        ckpts.close()
        whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        torch.save({"whole": whole, **seen}, Path(out) / "whole.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_fsdp_on_one_gpu_computes_in_bf16_and_checkpoints_its_shards(tmp_path):
    mp.start_processes(one_gpu_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=1, join=True,
                       start_method="spawn")  # fmt: skip
    got = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert got["compute"] == "torch.bfloat16"
    saved = load_checkpoint(tmp_path / "checkpoints" / "step-00000001.dcp")
    assert max_diff(saved["model"], got["whole"]) == 0
    assert saved["position"] == {"step": 1} and saved["optimizer"]["state"]
    assert all(float(state["step"]) == 1 for state in saved["optimizer"]["state"].values())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL takes one per process)")
def test_fsdp_with_nccl_and_bf16_trains_as_ddp_does(gpt_runs):
    cwd, spec = gpt_runs
    runs = {s: yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", f"cuda-{s}", *GPT_RUN, "--device", "cuda",
                       "--precision", "bf16-mixed", "--set", f"train.strategy={s}") for s in ("fsdp", "ddp")}  # fmt: skip
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert max_diff(weights(cwd / "cuda-fsdp"), weights(cwd / "cuda-ddp")) <= 2e-2  # bf16 weights vs autocast
    resumed = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", "cuda-fsdp", "--resume", "--force", "--device",
                      "cuda", "--precision", "bf16-mixed", *[a for s in SETS for a in ("--set", s)],
                      "--set", "train.max_steps=16", "--set", "train.strategy=fsdp")  # fmt: skip
    assert resumed.returncode == 0 and "max_steps at step 16" in resumed.stdout, resumed.stdout + resumed.stderr


from .test_refusals import small_disk  # noqa: E402, F401 - a 4 MiB tmpfs (root only)


@LONG
@pytest.mark.parametrize("room_kib", [1100, 1500, 1800])
def test_a_full_disk_during_a_sharded_save_is_one_line_and_keeps_the_last_good(gpt_runs, small_disk,  # noqa: F811
                                                                               room_kib):  # fmt: skip
    """Whichever write meets the full disk (a shard inside torch.save, which says it as
    RuntimeError("unexpected pos"), DCP's index, yamlnet.pt, the run's logs), the run ends
    with one line and the last good checkpoint is whole."""
    import shutil

    cwd, spec = gpt_runs
    (small_disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(small_disk).free - room_kib * 1024))
    proc = yamlnet(cwd, "train", str(spec), "--nproc", "2", "--out", str(small_disk / "run"), *GPT_RUN,
                   "--set", "train.strategy=fsdp")  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert "no space left on the disk; the last good checkpoint is" in proc.stderr
    checkpoints = small_disk / "run" / "checkpoints"
    assert not list(checkpoints.glob(".*"))  # the failed save gave its space back
    assert load_checkpoint(checkpoints / "last.dcp")["position"]["step"] >= 4


def full_disk_worker(rank: int, world: int, init_file: str, disk: str, out: str) -> None:
    """A DCP save of a 2.3 MiB layer into a disk with 1.5 MiB left: what finish_save raises
    on this rank, and what DCP met (the failures of its CheckpointException). One process:
    with two, the other's small writes meet the full disk as OSError as often as not, and
    the short write inside torch.save would not be the only failure."""
    import torch.distributed as dist
    from yamlnet.runtime import shards

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.Linear(768, 768)
        optimizer = optimizer_for(model)
        tmp, final = Path(disk) / ".step-00000001.dcp.tmp", Path(disk) / "step-00000001.dcp"
        if rank == 0:
            tmp.mkdir()
        dist.barrier()
        names = shards.parameter_names(model, optimizer)
        future = shards.start_save(model, optimizer, tmp, dist.group.WORLD)
        try:
            shards.finish_save(future, tmp, final, {}, names, dist.group.WORLD, rank)
            said = None
        except OSError as err:
            said = {"errno": err.errno, "shared": getattr(err, "shared", False), "filename": err.filename}
        met = sorted({type(f[0] if isinstance(f, tuple) else f).__name__
                      for f in getattr(future.exception(), "failures", {}).values()})  # fmt: skip
        dist.barrier()
        torch.save({"said": said, "met": met, "left": sorted(p.name for p in Path(disk).iterdir())}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@LONG
def test_a_shard_cut_short_by_a_full_disk_is_said_as_a_full_disk(small_disk, tmp_path):  # noqa: F811
    """torch.save, writing a shard into DCP's file, says a short write as RuntimeError
    ("unexpected pos ..."), not as ENOSPC: the ranks look at their disks before the folder
    is removed, and raise ENOSPC (what CI once met as an internal error, on 2 processes)."""
    import errno
    import shutil

    # more room than "nearly full" (1 MiB): the disk is looked at before the cut shard is removed, or
    # its 1.5 MiB come back first and the failure is not seen as a full disk
    (small_disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(small_disk).free - 1536 * 1024))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init, out = str(tmp_path / "init"), str(tmp_path / "out")
    mp.start_processes(full_disk_worker, args=(1, init, str(small_disk), out), nprocs=1, join=True,
                       start_method="spawn")  # fmt: skip
    seen = torch.load(f"{out}.0", weights_only=False)
    assert seen["met"] == ["RuntimeError"], seen  # the case this is about
    assert seen["said"] == {"errno": errno.ENOSPC, "shared": True,
                            "filename": str(small_disk / ".step-00000001.dcp.tmp")}, seen  # fmt: skip
    assert seen["left"] == ["filler"]  # the failed save gave its space back


@pytest.mark.parametrize("change, said", [
    (lambda index: setattr(next(iter(index.storage_data.values())), "relative_path", "/dev/zero"),
     "its index points outside the files it names (/dev/zero)"),
    (lambda index: setattr(next(iter(index.storage_data.values())), "length", 10**12),
     "its index points outside the files it names (__0_0.distcp)"),
    (lambda index: index.planner_data.update({"x": ("optimizer", "param_groups", 10**10, "lr")}),
     "its index holds a key path ('optimizer', 'param_groups', 10000000000, 'lr')")])  # fmt: skip
def test_an_index_pointing_elsewhere_is_refused_before_anything_is_read(gpt_runs, change, said):
    from yamlnet.runtime.errors import CheckpointError
    from yamlnet.runtime.shards import consolidate

    folder = copy_run(gpt_runs[0], f"elsewhere{abs(hash(said)) % 1000}") / "checkpoints" / "step-00000012.dcp"

    def edit(data: bytes) -> bytes:
        index = pickle.loads(data)
        change(index)
        return pickle.dumps(index)

    rewrite_index(folder, edit)
    with pytest.raises(CheckpointError, match=re.escape(said)):
        consolidate(folder)


def test_consolidating_writes_beside_the_run_files_not_among_its_checkpoints(gpt_runs):
    from yamlnet.runtime.shards import consolidate_to

    run = copy_run(gpt_runs[0], "beside")
    read, wrote, step = consolidate_to(run / "checkpoints" / "last.dcp")
    assert (read.name, wrote, step) == ("last.dcp", run / "step-00000012.pt", 12)
    assert load_checkpoint(wrote)["position"]["step"] == 12


def test_a_sharded_checkpoint_of_another_network_does_not_fit_in_one_line(gpt_runs):
    from yamlnet.runtime.errors import CheckpointError
    from yamlnet.runtime.shards import check_fits

    folder = gpt_runs[0] / "fsdp" / "checkpoints" / "step-00000012.dcp"
    wider = compile_spec(gpt_runs[1], {"dim": 48, "heads": 2, "layers": 2, "context": 32}, block_modules=True).module
    with pytest.raises(CheckpointError, match=r"does not fit the model: size mismatch for tok_emb.weight: "
                                              r"\[512, 32\] in the checkpoint, \[512, 48\] in the model \(and \d+ more\)"):
        check_fits(folder, wider)
    check_fits(folder, compile_spec(gpt_runs[1], {"dim": 32, "heads": 2, "layers": 2, "context": 32},
                                    block_modules=True).module)  # the run's own network fits  # fmt: skip


@pytest.mark.parametrize("args, said", [
    (["nowhere"], "no run folder or checkpoint at nowhere"),
    (["gpt.yaml"], "gpt.yaml is not a sharded checkpoint (a step-N.dcp folder) nor a run folder"),
    (["fsdp", "--out", "w.txt"], "--out w.txt: write a .pt (a whole checkpoint) or a .safetensors file")])  # fmt: skip
def test_consolidate_refuses_what_it_cannot_read_or_write_in_one_line(gpt_runs, args, said):
    proc = yamlnet(gpt_runs[0], "checkpoint", "consolidate", *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert said in proc.stderr and not (gpt_runs[0] / "w.txt").exists()


@pytest.mark.parametrize("node, said", [
    ('repeat: "${layers}", shard: 3}', "nodes.blocks.shard: expected true or false or a string, got integer 3"),
    ('repeat: "${layers}", shard: "${layers}"}', "shard: must be true or false, got 3"),
    ('repeat: "${layers}", shard: true, splice: true}', "shard: needs a node of its own to shard")])  # fmt: skip
def test_a_shard_key_that_cannot_be_is_one_located_error(tmp_path, node, said):
    from yamlnet.compiler.errors import SpecError

    spec = tmp_path / "gpt.yaml"
    spec.write_text(GPT.read_text().replace('repeat: "${layers}"}', node))
    with pytest.raises(SpecError, match=re.escape(said)) as err:
        compile_spec(spec, SIZES, block_modules=True)
    assert "gpt.yaml:17:" in str(err.value)
