"""Fault injection for the crash tests: the process kills itself at an exact point, so a
test can land a SIGKILL mid-epoch or in the middle of a checkpoint write every time.

Set `YAMLNET_FAULTS` to a comma-separated list of `name=N` or `name=N@R` (rank R only;
faults fire in the first attempt of an elastic job, not after a restart):
- `kill_after_step=N`: SIGKILL right after optimizer step N, once the checkpoints before
  it are on disk (before any checkpoint of step N itself);
- `kill_in_checkpoint=N`: SIGKILL half-way through writing the N-th checkpoint file;
- `nan_at_step=N`: the loss of step N is NaN;
- `hang_after_step=N`: stop responding after step N (a SIGTERM still ends the process);
- `join_delay=S`: in a restarted attempt, wait S seconds before joining the process group
  (so the other ranks read the store first: the case where stale keys made restarts hang).

Unset (the normal case) nothing happens. Not a user feature: it exists for tests.
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache

__all__ = ["fault_at", "die"]


@lru_cache(maxsize=1)
def _faults() -> dict[str, tuple[int, int | None]]:
    text = os.environ.get("YAMLNET_FAULTS", "")
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    out = {}
    for key, value in pairs:
        count, _, rank = value.partition("@")
        out[key.strip()] = (int(count), int(rank) if rank else None)
    return out


def _attempt() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def fault_at(name: str, count: int, rank: int = 0) -> bool:
    """True when fault `name` is set to fire at `count` on `rank` (first attempt only)."""
    want = _faults().get(name)
    return (want is not None and want[0] == count and want[1] in (None, rank)
            and _attempt() == 0)  # fmt: skip


def join_delay(rank: int) -> float:
    """Seconds this rank waits before joining the group, in a restarted attempt."""
    want = _faults().get("join_delay")
    return float(want[0]) if want and want[1] in (None, rank) and _attempt() > 0 else 0.0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hang() -> None:
    """Stop responding, as a deadlocked process would (a SIGTERM still kills it)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(3600)
