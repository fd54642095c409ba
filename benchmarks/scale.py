"""Rows 17, 18 and 19: activation checkpointing and FSDP on the zoo's GPT (specs/zoo/gpt.yaml).

17a counts the bytes autograd keeps for backward during one training forward (each
storage once, through torch.autograd.graph.saved_tensors_hooks), with every
`decoder_block` checkpointed / without: the activations checkpointing saves, measured
exactly rather than through the allocator. 17b is what it costs: the time of a training
step (forward, backward) with it / without, the two measured round by round.

18 is `train.strategy: fsdp` against ddp on 2 Gloo processes: the bytes each process
holds of parameters, gradients and optimizer state (from the tensors' local parts,
`runtime/sharding.local_bytes`), the peak RSS of each worker of a `yamlnet train` run
under torchrun (each says its own: benchmarks/rss.py), with glibc's default heap and with
big blocks unmapped when freed, the steps/s, and what a checkpoint of the sharded model
makes the step wait: a sharded one (DCP, each process its part, written on by a thread)
against the shards gathered whole on rank 0 and written as one file. 19 is 18b and 18c
on 2 GPUs, for a machine that has them.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .common import ROOT, Goal, Row, Side, interleaved

ZOO_GPT = "specs/zoo/gpt.yaml"


def _model(checkpoint: bool, quick: bool):
    import torch
    from yamlnet.compiler.compile import compile_spec

    sizes = {"dim": 64, "layers": 2, "context": 64} if quick else {"dim": 256, "layers": 8, "context": 256}
    torch.manual_seed(0)
    compiled = compile_spec(ROOT / ZOO_GPT, sizes, checkpoint_blocks=("decoder_block",) if checkpoint else ())
    model = compiled.module.train()
    batch = (4, 64) if quick else (8, 256)
    tokens = torch.randint(0, 512, batch, generator=torch.Generator().manual_seed(0))
    return model, tokens, sizes, batch


def kept_for_backward(loss_of) -> int:
    """Bytes of the tensors autograd keeps for backward while `loss_of()` runs (each
    storage once), then its backward."""
    import torch

    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of()
    loss.backward()
    return total


def _saved_bytes(model, tokens) -> int:
    total = kept_for_backward(lambda: model(tokens).float().mean())
    model.zero_grad()
    return total


def checkpointing_rows(quick: bool) -> list[Row]:
    ours, tokens, sizes, batch = _model(True, quick)
    plain, _, _, _ = _model(False, quick)
    work = (f"zoo GPT dim {sizes['dim']}, {sizes['layers']} layers, batch {batch[0]} x {batch[1]} tokens, "
            "every decoder_block checkpointed")  # fmt: skip
    mib = 2**20
    memory = Row("17a", f"activations kept for backward, {work}",
                 Side("checkpoint", (_saved_bytes(ours, tokens) / mib,), "MiB"),
                 Side("plain", (_saved_bytes(plain, tokens) / mib,), "MiB"), Goal("<=", 0.5))  # fmt: skip

    def step(model):
        def run():
            model(tokens).float().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    t = interleaved({"ours": step(ours), "plain": step(plain)}, 1 if quick else 7, warmup=1)
    time = Row("17b", f"training step time (forward and backward), {work}",
               Side("checkpoint", t["ours"], "s"), Side("plain", t["plain"], "s"),
               note="the price of 17a: the checkpointed blocks run forward twice")  # fmt: skip
    return [memory, time]


# -- row 18: FSDP against DDP on 2 CPU processes -----------------------------------------------


def _gpt_sizes(quick: bool) -> dict:
    return {"dim": 64, "layers": 2, "heads": 2, "context": 32} if quick else \
        {"dim": 768, "layers": 12, "heads": 12, "context": 64}  # fmt: skip


BATCH = 2  # per process: the weights, not the activations, are what row 18 is about
GLIBC_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}  # big blocks mapped and unmapped, not kept in the heap


def _held_worker(rank: int, init: str, quick: bool, out: str) -> None:
    """One of 2 Gloo processes: the GPT after one AdamW step, the bytes this process holds
    of parameters, gradients and optimizer state, sharded (FSDP) and whole (what DDP
    holds on every process); then a checkpoint each way and what it blocked the step."""
    import time

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from yamlnet.compiler.compile import compile_spec
    from yamlnet.runtime.checkpoint import CheckpointDir
    from yamlnet.runtime.sharding import local_bytes, shard_model

    gathered = StateDictOptions(full_state_dict=True, cpu_offload=True)

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    sizes = _gpt_sizes(quick)
    tokens = torch.randint(0, 512, (BATCH, sizes["context"]), generator=torch.Generator().manual_seed(rank))
    result = {}
    for sharded in (True, False):
        torch.manual_seed(0)
        compiled = compile_spec(ROOT / ZOO_GPT, sizes, block_modules=sharded)
        model = compiled.module
        if sharded:
            shard_model(model, compiled)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model(tokens).float().mean().backward()
        optimizer.step()
        model(tokens).float().mean().backward()  # gradients held, as between two steps
        result["fsdp" if sharded else "ddp"] = sum(local_bytes(model, optimizer).values())
        group = dist.new_group(backend="gloo") if sharded else None
        if not sharded:
            continue
        for way in ("sharded", "gathered"):
            ckpts = CheckpointDir(Path(out) / way, sharded=way == "sharded", group=group, rank=rank)
            blocked, total = [], []
            for step in range(1, 5):
                dist.barrier()
                start = time.perf_counter()
                if way == "sharded":
                    ckpts.save_sharded({"position": {"step": step}} if rank == 0 else None, model, optimizer, step)
                else:  # the shards gathered whole on rank 0, which writes one file
                    whole = {"model": get_model_state_dict(model, options=gathered),
                             "optimizer": get_optimizer_state_dict(model, optimizer, options=gathered)}  # fmt: skip
                    if rank == 0:
                        ckpts.save(whole, step)
                blocked.append(time.perf_counter() - start)
                ckpts.wait()
                dist.barrier()
                total.append(time.perf_counter() - start)
            ckpts.close()
            result[f"{way}_save"] = (blocked[1:], total[1:])  # the first sets up (buffers, planning caches)
    if rank == 0:
        torch.save(result, Path(out) / "held.pt")
    dist.destroy_process_group()


def _held(quick: bool) -> dict:
    import tempfile

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_held_worker, args=(f"{tmp}/init", quick, tmp), nprocs=2, join=True, start_method="spawn")
        return torch.load(Path(tmp) / "held.pt")


def _train_run(strategy: str, sizes: dict, steps: int, root: Path, env: dict | None = None,
               extra: tuple[str, ...] = ()) -> tuple[float, float]:  # fmt: skip
    """`yamlnet train` of the GPT on 2 processes started by torchrun: (steps/s of its loop,
    the larger of the 2 workers' peak RSS in MiB, each worker saying its own; on GPUs,
    their peak memory allocated instead)."""
    import re
    import sys

    from .common import run_process
    from .ddp import _rate

    sets = [f"{k}={v}" for k, v in sizes.items()] + [
        f"data.path={root / 'text.txt'}", f"data.cache_dir={root / 'tokens'}", f"data.block_size={sizes['context']}",
        f"data.batch_size={BATCH}", "data.val_fraction=0.0", "train.val_every_n_steps=null", "train.monitor=null",
        "train.val_every_n_epochs=null", "train.checkpoint_every_n_epochs=null", "train.checkpoint_every_n_minutes=null",
        f"train.max_steps={steps}", f"train.strategy={strategy}", "train.log_every_n_steps=1000"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "benchmarks.rss", "train", str(ROOT / ZOO_GPT), "--out", str(root / strategy)]  # fmt: skip
    for item in [*sets, *extra]:
        cmd += ["--set", item]
    out = run_process(cmd, env={"OMP_NUM_THREADS": "1", **(env or {})}).stdout
    import shutil

    shutil.rmtree(root / strategy)
    peaks = [int(kib) for kib in re.findall(r"peak_cuda rank \d+ (\d+)", out) or
             re.findall(r"peak_rss rank \d+ (\d+)", out)]  # fmt: skip
    if len(peaks) != 2:
        raise RuntimeError(f"expected 2 workers' peak RSS lines in:\n{out}")
    return _rate(out, steps), max(peaks) / 1024


def fsdp_rows(quick: bool) -> list[Row]:
    import tempfile

    from .common import rounds
    from .tasks import _ascii_text

    sizes, steps = _gpt_sizes(quick), 2 if quick else 8
    held = _held(quick)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "text.txt").write_bytes(_ascii_text(200_000))
        runs: dict[str, list] = {"fsdp": [], "ddp": [], "fsdp mmap": [], "ddp mmap": []}

        def side(strategy, env=None):
            def run():
                rate, peak = _train_run(strategy, sizes, steps, root, env)
                runs[strategy + (" mmap" if env else "")].append(peak)
                return rate

            return run

        rate = rounds({"fsdp": side("fsdp"), "ddp": side("ddp")}, 1 if quick else 2, warmup=0)
        mapped = rounds({"fsdp": side("fsdp", GLIBC_MMAP), "ddp": side("ddp", GLIBC_MMAP)}, 1, warmup=0)
    work = f"zoo GPT dim {sizes['dim']}, {sizes['layers']} layers, context {sizes['context']}, AdamW, 2 Gloo processes"
    mib = 2**20
    blocked = {k: held[f"{k}_save"][0] for k in ("sharded", "gathered")}
    total = {k: held[f"{k}_save"][1] for k in ("sharded", "gathered")}
    return [
        Row("18a", f"parameters + gradients + optimizer state held per process, {work}",
            Side("fsdp", (held["fsdp"] / mib,), "MiB"), Side("ddp", (held["ddp"] / mib,), "MiB"), Goal("<=", 0.6)),
        Row("18b", f"peak RSS of a worker (the larger of the 2), `yamlnet train` under torchrun, {steps} steps, "
            f"batch {BATCH} per process, {work}",
            Side("fsdp", tuple(runs["fsdp"]), "MiB"), Side("ddp", tuple(runs["ddp"]), "MiB"),
            note="the whole process, PyTorch's own ~520 MiB included; glibc keeps the freed gather buffers in its "
                 "heap (18d)"),
        Row("18c", f"training steps/s, the runs of 18b, {work}",
            Side("fsdp", rate["fsdp"], "steps/s"), Side("ddp", rate["ddp"], "steps/s"),
            note="what sharding costs: each unit's weights gathered for forward and again for backward"),
        Row("18d", f"18b with MALLOC_MMAP_THRESHOLD_=1048576 (glibc maps every block over 1 MiB and unmaps it when "
            f"freed), {work}",
            Side("fsdp", tuple(runs["fsdp mmap"]), "MiB"), Side("ddp", tuple(runs["ddp mmap"]), "MiB"),
            note=f"steps/s then {statistics.median(mapped['fsdp']):.3g} fsdp, {statistics.median(mapped['ddp']):.3g} "
                 "ddp: every big block is fresh, zeroed pages"),
        Row("18e", f"checkpoint of the FSDP model: time the step waits, {work}",
            Side("sharded (each process its part, async)", tuple(blocked["sharded"]), "s"),
            Side("gathered (one file, rank 0)", tuple(blocked["gathered"]), "s"), Goal("<=", 0.5),
            note=f"until on disk: {statistics.median(total['sharded']):.3f} s sharded, "
                 f"{statistics.median(total['gathered']):.3f} s gathered"),
    ]  # fmt: skip


def fsdp_gpu_rows(quick: bool):
    """Row 19: 18b and 18c on 2 CUDA devices in bf16-mixed (NCCL), peak memory allocated
    on each GPU; measured only where 2 are present."""
    import tempfile

    import torch

    from .common import rounds
    from .tasks import _ascii_text

    if torch.cuda.device_count() < 2:
        return ("Row 19 (FSDP against DDP on 2 GPUs with NCCL in bf16-mixed: steps/s, peak memory allocated per "
                "GPU): not measured — it needs 2 CUDA devices (NCCL takes one per process).")  # fmt: skip
    sizes, steps = ({"dim": 64, "layers": 2, "heads": 2, "context": 32}, 2) if quick else \
        ({"dim": 1024, "layers": 24, "heads": 16, "context": 256}, 20)  # fmt: skip
    gpu = ("train.device=cuda", "train.precision=bf16-mixed")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "text.txt").write_bytes(_ascii_text(2_000_000))
        peaks: dict[str, list] = {"fsdp": [], "ddp": []}

        def side(strategy):
            def run():
                rate, peak = _train_run(strategy, sizes, steps, root, extra=gpu)
                peaks[strategy].append(peak)
                return rate

            return run

        rate = rounds({"fsdp": side("fsdp"), "ddp": side("ddp")}, 1 if quick else 3, warmup=0)
    name = torch.cuda.get_device_name(0)
    work = f"zoo GPT dim {sizes['dim']}, {sizes['layers']} layers, context {sizes['context']}, AdamW, bf16-mixed, 2 GPUs"
    return [Row("19a", f"GPU ({name}) peak memory allocated per GPU, {work}", Side("fsdp", tuple(peaks["fsdp"]), "MiB"),
                Side("ddp", tuple(peaks["ddp"]), "MiB"), Goal("<=", 0.6)),
            Row("19b", f"GPU ({name}) training steps/s, {work}", Side("fsdp", rate["fsdp"], "steps/s"),
                Side("ddp", rate["ddp"], "steps/s"))]  # fmt: skip
