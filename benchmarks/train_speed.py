"""Training steps/s of `yamlnet train` next to a plain hand-written PyTorch loop doing the
same work: the same compiled model, the same digits samples, batch size, optimizer
(AdamW, lr 0.002, weight decay 0.01) and loss, one `loss.item()` per step.

    python benchmarks/train_speed.py                 # 3 rounds of 230 steps each side
    python benchmarks/train_speed.py --steps 460 --rounds 5

The yamlnet side is the real loop (`prepare` + the loop `train` runs), with its
progress, metrics.csv/TensorBoard rows every 10 steps and the final checkpoint and
safetensors file, once with the default checkpoints (every 50 steps and every epoch)
and once without them; only validation is off (no held-out split), because the plain
loop does none. Both sides run in this one process, interleaved,
after a warm-up of each. Timings on shared machines are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_cnn.yaml"
OVERRIDES = {"data.val_fraction": 0.0, "train.scheduler": None, "train.metrics": []}


def yamlnet_steps(steps: int, checkpoints: bool = True) -> float:
    """Steps/s of yamlnet's loop (setup excluded); without checkpoints but the last one."""
    from yamlnet.runtime.log import RunLog
    from yamlnet.runtime.train import _loop, _StopSignals, prepare

    with tempfile.TemporaryDirectory() as tmp:
        off = {} if checkpoints else {"train.checkpoint_every_n_steps": None,
                                      "train.checkpoint_every_n_epochs": None}  # fmt: skip
        run = prepare(SPEC, out=Path(tmp) / "run",
                      overrides={**OVERRIDES, **off, "train.max_steps": steps})  # fmt: skip
        run.log = RunLog(run.out, [], run.total_steps, stream=io.StringIO(), bar=False)
        t0 = time.perf_counter()
        with _StopSignals() as stop:
            run.stop = stop
            _loop(run)
        took = time.perf_counter() - t0
        run.log.close()
    return steps / took


def plain_steps(steps: int) -> float:
    """Steps/s of a hand-written loop over the same data and model (setup excluded)."""
    import torch
    from sklearn.datasets import load_digits

    import yamlnet

    torch.manual_seed(0)
    model = yamlnet.compile(SPEC)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=230)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    yamlnet_steps(20), plain_steps(20)  # warm-up: imports, allocator, kernels
    ours, bare, plain = [], [], []
    for _ in range(args.rounds):
        ours.append(yamlnet_steps(args.steps))
        bare.append(yamlnet_steps(args.steps, checkpoints=False))
        plain.append(plain_steps(args.steps))
    print(f"{args.rounds} rounds of {args.steps} steps, digits_cnn, batch 64, CPU threads "
          f"{__import__('torch').get_num_threads()}")  # fmt: skip
    print("| side | min | median | max (steps/s) |\n|---|---|---|---|")
    sides = (("yamlnet train (default checkpoints)", ours),
             ("yamlnet train (only the final checkpoint)", bare), ("plain PyTorch loop", plain))  # fmt: skip
    for name, xs in sides:
        print(f"| {name} | {min(xs):.1f} | {statistics.median(xs):.1f} | {max(xs):.1f} |")
    for name, xs in sides[:2]:
        print(f"ratio {name} / plain (medians): {statistics.median(xs) / statistics.median(plain):.3f}")


if __name__ == "__main__":
    main()
