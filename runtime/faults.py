"""Fault injection for the crash tests: the process kills itself at an exact point, so a
test can land a SIGKILL mid-epoch or in the middle of a checkpoint write every time.

Set `YAMLNET_FAULTS` to a comma-separated list of `name=N`:
- `kill_after_step=N`: SIGKILL right after optimizer step N, once the checkpoints before
  it are on disk (before any checkpoint of step N itself);
- `kill_in_checkpoint=N`: SIGKILL half-way through writing the N-th checkpoint file.

Unset (the normal case) nothing happens. Not a user feature: it exists for tests.
"""

from __future__ import annotations

import os
import signal
from functools import lru_cache

__all__ = ["fault_at", "die"]


@lru_cache(maxsize=1)
def _faults() -> dict[str, int]:
    text = os.environ.get("YAMLNET_FAULTS", "")
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): int(v) for k, v in pairs}


def fault_at(name: str, count: int) -> bool:
    """True when fault `name` is set to fire at `count`."""
    return _faults().get(name) == count


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
