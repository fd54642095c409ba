"""Where this process stands: its rank, the world size, and its device — decided in one
place, so the training loop reads the same for 1 or N processes.

World size comes from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, as
`torch.distributed.run` sets them); without a launcher it is one process. The loop only
asks `env.is_main` (rank 0 owns logs, progress and checkpoints) and calls `all_sum`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["Env", "setup_env", "pick_device", "all_sum"]


@dataclass(frozen=True)
class Env:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_env(device: str = "auto") -> Env:
    """The process's rank and device (one device per local rank)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world != 1:
        raise ConfigError(f"WORLD_SIZE={world}: multi-process training is not supported yet",
                          hint="run one process")  # fmt: skip
    return Env(rank, world, local, pick_device(device, local))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}  # fmt: skip
    if not available[kind]:
        raise ConfigError(f"device '{name}' is not available on this machine",
                          path="train.device", hint="use auto or cpu")  # fmt: skip
    if kind == "cuda" and ":" not in name:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def all_sum(tensor: torch.Tensor, env: Env) -> torch.Tensor:
    """Sum over ranks (identity for one process)."""
    return tensor
