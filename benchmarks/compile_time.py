"""Compile time of a spec next to constructing the torchvision model it mirrors.

    python benchmarks/compile_time.py                  # specs/resnet18.yaml vs resnet18()
    python benchmarks/compile_time.py --repeat 15

Both sides run in this one process, interleaved, after a warm-up of each; the table
gives min/median/max seconds and the ratio of medians. Timings on shared machines are
noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "resnet18.yaml"))
    parser.add_argument("--model", default="resnet18", help="torchvision.models constructor")
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()

    import torch
    import torchvision

    import yamlnet

    torch.set_num_threads(2)
    build = getattr(torchvision.models, args.model)
    sides = {"yamlnet.compile(spec)": lambda: yamlnet.compile(args.spec),
             f"torchvision.models.{args.model}()": build}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():  # warm-up: imports, registry, caches
        fn()
    for _ in range(args.repeat):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print("| side | min s | median s | max s |\n|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.4f} | {statistics.median(ts):.4f} | {max(ts):.4f} |")
    a, b = (statistics.median(ts) for ts in times.values())
    print(f"\nratio of medians (yamlnet / torchvision): {a / b:.2f}  ({args.repeat} interleaved runs)")


if __name__ == "__main__":
    main()
