"""Distributed training speed: `yamlnet train --nproc 2` (DDP over Gloo on CPU) next to
one process, on the digits CNN with synthetic 1x8x8 samples (no validation; the only
checkpoint is the final one).

    python benchmarks/ddp_speed.py                  # 3 rounds of 300 steps per setting
    python benchmarks/ddp_speed.py --steps 600 --rounds 5

Three settings, each a real `yamlnet train` process (its startup excluded: the time is
the loop's own, from the run's closing line), run in interleaved rounds:
- `1 x 64`: one process, batch 64, every core (OMP_NUM_THREADS = cores);
- `2 x 32`: two processes of batch 32 (the same global batch 64), cores split between them;
- `1 x 32`: one process, batch 32, as many threads as one of the two DDP processes.

`2 x 32` / `1 x 64` is the speed-up at the same global batch; `2 x 32` - `1 x 32` is
what DDP adds to a step (the gradient all-reduce, the loss/stop all-reduce of each
micro-batch, the buffer broadcast). Timings on shared machines are noisy: compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_cnn.yaml"
SETS = ["data.dataset=synthetic", "data.shape=[1, 8, 8]", "data.size=8192", "data.val_size=0",
        "train.scheduler=null", "train.checkpoint_every_n_steps=null",
        "train.checkpoint_every_n_epochs=null", "train.log_every_n_steps=50"]  # fmt: skip


def step_seconds(nproc: int, batch: int, threads: int, steps: int) -> float:
    """Seconds per optimizer step of one `yamlnet train` run (its loop, not its startup)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "yamlnet", "train", str(SPEC), "--out", "run",
               "--max-steps", str(steps), "--set", f"data.batch_size={batch}"]  # fmt: skip
        for item in SETS:
            cmd += ["--set", item]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=True).stdout
    took = re.search(r"max_steps at step \d+ in ([\d.]+) s", out)
    if took is None:
        raise RuntimeError(f"no timing in the output:\n{out}")
    return float(took.group(1)) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 2
    settings = {"1 x 64": (1, 64, cores), "2 x 32": (2, 32, max(1, cores // 2)),
                "1 x 32": (1, 32, max(1, cores // 2))}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.rounds):
        for name, (nproc, batch, threads) in settings.items():
            times[name].append(step_seconds(nproc, batch, threads, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.rounds} rounds of {args.steps} steps, {cores} cores; ms per step (median, min-max):")
    for name, values in times.items():
        print(f"  {name:7s} {med[name] * 1e3:7.2f}  ({min(values) * 1e3:.2f}-{max(values) * 1e3:.2f})"
              f"   {1 / med[name]:7.1f} steps/s")
    print(f"same global batch: 2 processes / 1 process steps/s = {med['1 x 64'] / med['2 x 32']:.2f}")
    print(f"DDP overhead per step: {(med['2 x 32'] - med['1 x 32']) * 1e3:.2f} ms "
          f"({med['2 x 32'] / med['1 x 32']:.2f}x a 1-process step of the same per-process batch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
