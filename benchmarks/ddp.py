"""Row 8: DistributedDataParallel over Gloo, 2 CPU processes, against one process.

Speed: `yamlnet train --nproc 2` with batch 32 per process next to one process with batch
64 (the same global batch), the digits CNN on synthetic 1x8x8 samples; the time is each
run's loop, from its closing line. Two processes share the 2 cores, one thread each; the
single process has both. Exactness: one SGD step of the MLP on 2 processes x batch 16
against one process x batch 32, the gradients recovered from the weights
(w1 = w0 - lr * g) and compared.
"""

from __future__ import annotations

import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import SPECS, Goal, Row, Side, rounds, run_process, yamlnet_cmd

DIGITS = SPECS / "digits_cnn.yaml"
MLP = SPECS / "mlp.yaml"
SPEED = ["data.dataset=synthetic", "data.shape=[1, 8, 8]", "data.size=8192", "data.val_size=0",
         "train.scheduler=null", "train.metrics=[]", "train.checkpoint_every_n_steps=null",
         "train.checkpoint_every_n_epochs=null", "train.checkpoint_every_n_minutes=null",
         "train.log_every_n_steps=50"]  # fmt: skip
ONE_STEP = ["data.flatten=true", "dropout=0", "train.optimizer={name: SGD, lr: 0.5}",
            "train.scheduler=null", "train.max_steps=1", "train.val_every_n_epochs=null"]  # fmt: skip
LR = 0.5


def _train(spec: Path, sets: list[str], nproc: int, threads: int, cwd: Path, out: str) -> str:
    cmd = yamlnet_cmd("train", str(spec), "--out", out)
    for item in sets:
        cmd += ["--set", item]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return run_process(cmd, env={"OMP_NUM_THREADS": str(threads)}, cwd=cwd).stdout


def steps_per_second(nproc: int, batch: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = _train(DIGITS, [*SPEED, f"data.batch_size={batch}", f"train.max_steps={steps}"],
                     nproc, 2 // nproc, Path(tmp), "run")  # fmt: skip
    return _rate(out, steps)


def _rate(output: str, steps: int) -> float:
    """Steps per second of a run, from its closing line (its loop's time, not its setup)."""
    took = re.search(r"max_steps at step \d+ in ([\d.]+) s", output)
    if took is None:
        raise RuntimeError(f"no timing in the output of yamlnet train:\n{output}")
    return steps / max(float(took.group(1)), 0.05)  # the line rounds to 0.1 s


def gradient_difference() -> tuple[float, float, dict[str, float]]:
    """(max |g_ddp - g_single|, max |g_single|) after one step on the same global batch,
    and the two runs' steps/s (what the quick run shows as row 8a, meaningless but cheap:
    the two ran at the same time)."""
    import torch
    from safetensors.torch import load_file

    import yamlnet

    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor(2) as pool:  # at once: only the weights matter here
            two = pool.submit(_train, MLP, [*ONE_STEP, "data.batch_size=16"], 2, 1, Path(tmp), "two")
            one = pool.submit(_train, MLP, [*ONE_STEP, "data.batch_size=32"], 1, 2, Path(tmp), "one")
        two, one = two.result(), one.result()
        torch.manual_seed(0)  # the run's seed: `train` builds the model right after it
        w0 = yamlnet.compile(MLP, dropout=0).state_dict()
        w1, w2 = (load_file(Path(tmp) / run / "last.safetensors") for run in ("one", "two"))
    g1 = {k: (w0[k].double() - w1[k].double()) / LR for k in w0}
    g2 = {k: (w0[k].double() - w2[k].double()) / LR for k in w0}
    diff = max((g1[k] - g2[k]).abs().max().item() for k in g1)
    return diff, max(g.abs().max().item() for g in g1.values()), {"two": _rate(two, 1), "one": _rate(one, 1)}


def ddp_rows(quick: bool) -> list[Row]:
    diff, scale, one_step = gradient_difference()
    if quick:  # two launches fewer: the one-step runs' own rates stand in
        steps, rates = 1, {k: (v,) for k, v in one_step.items()}
    else:
        steps = 300
        rates = rounds({"two": lambda: steps_per_second(2, 32, steps),
                        "one": lambda: steps_per_second(1, 64, steps)}, 3, warmup=0)  # fmt: skip
    what = "mlp.yaml, 1 step, 2 x 16 vs 1 x 32" if quick else f"digits CNN, {steps} steps, 2 x 32 vs 1 x 64"
    return [
        Row("8a", f"DDP training steps/s, 2 Gloo processes vs 1, same global batch ({what})",
            Side("2 processes", rates["two"], "steps/s"), Side("1 process", rates["one"], "steps/s"),
            note="2 cores: the two processes have one thread each"),
        Row("8b", "DDP gradient difference, 2 x batch 16 vs 1 x batch 32, one SGD step (mlp.yaml)",
            Side("max abs difference", (diff,), ""), goal=Goal("<=", 1e-6, on="value"),
            note=f"largest gradient {scale:.3g}"),
    ]  # fmt: skip
