"""Where this process stands: its rank, the world size and its device, and the few
collectives the loop needs, decided in one place so the loop reads the same for 1 or N
processes.

World size comes from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT, as `torch.distributed.run` sets them); without a launcher it is one
process, and every collective here is the identity.

Two things about the process group are deliberate:
- Its store is prefixed with the elastic restart count. Under torchrun's default agent
  store (TORCHELASTIC_USE_AGENT_STORE=True) every attempt's workers share one TCPStore
  server, and torch does not prefix the default group's keys by attempt. A restarted
  worker could then read the Gloo address a dead worker of the previous attempt left
  there, and retry connecting to it until the group timeout (30 minutes by default):
  the restart "hangs". With the prefix each attempt only ever sees its own keys.
- It has a timeout (`train.dist_timeout`, seconds): a rank that dies or hangs makes the
  others' next collective fail with a clear error instead of waiting forever.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from . import faults
from .errors import ConfigError, TrainingError, first_line

__all__ = ["Env", "setup_env", "pick_device", "all_sum", "all_sum_started", "GradientRider",
           "broadcast", "gather", "same_everywhere", "sync_buffers", "barrier", "shutdown",
           "is_comm_error"]  # fmt: skip


@dataclass(frozen=True)
class Env:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    restart: int = 0  # elastic restarts so far (TORCHELASTIC_RESTART_COUNT)
    timeout: float = 300.0  # seconds a collective may wait for the other ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))  # fmt: skip
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None


def setup_env(device: str = "auto", timeout: float = 300.0) -> Env:
    """The process's rank and device (one device per local rank); joins the process
    group when a launcher started several processes."""
    rank, world, local = launched_world()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)
    dev = pick_device(device, local)
    env = Env(rank, world, local, dev, restart, float(timeout))
    if env.distributed:
        _join_group(env)
    return env


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available() and int(os.environ.get("WORLD_SIZE", 1)) == 1:
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


def _join_group(env: Env) -> None:
    import torch.distributed as dist

    if env.device.type not in ("cpu", "cuda"):
        raise ConfigError(f"distributed training runs on cpu or cuda, not {env.device.type}",
                          path="train.device")  # fmt: skip
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ConfigError(f"WORLD_SIZE={env.world_size} but {var} is not set",
                              hint="start the processes with --nproc N or torchrun")  # fmt: skip
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    backend = "nccl" if env.device.type == "cuda" else "gloo"
    wait = timedelta(seconds=env.timeout)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    time.sleep(faults.join_delay(env.rank))
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=wait))
        store = dist.PrefixStore(f"yamlnet/attempt_{env.restart}", store)
        dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                                timeout=wait)  # fmt: skip
        # the first collective also proves every rank joined, within the timeout
        barrier(env)
    except (RuntimeError, ValueError) as err:
        raise TrainingError(f"rank {env.rank}: could not join the {env.world_size} processes "
                            f"at {where} within {env.timeout:g} s: {first_line(err, 200)}") from None  # fmt: skip


def is_comm_error(err: BaseException) -> bool:
    """Whether `err` came from the process group (a dead or hung peer), not the model."""
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, dist.DistError) or any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed",
                            "Timed out", "timed out", "timeout", "pair closure", "Broken pipe",
                            "ProcessGroup"))  # fmt: skip


def _collective(env: Env, what: str, fn, *args):
    """Run a collective; a failure (a peer died, or hung past the timeout) is one line."""
    try:
        return fn(*args)
    except (RuntimeError, ValueError) as err:
        if not is_comm_error(err):
            raise
        raise TrainingError(comm_failure(env, what, err)) from None


def comm_failure(env: Env, what: str, err: BaseException) -> str:
    """One line for a collective that failed: a peer that went away, or a timeout."""
    text = first_line(err, 200)
    text = re.sub(r"^\[[^\]]*\] ", "", text)  # gloo's [source:line] prefix
    text = text.split(". This is typically")[0].rstrip(".")
    if re.search(r"[Tt]imed? ?out", text):
        return (f"rank {env.rank}: {what}: no answer from the other processes within "
                f"{env.timeout:g} s (train.dist_timeout): one of them hangs ({text})")  # fmt: skip
    return f"rank {env.rank}: {what}: lost contact with another process, which died or left ({text})"


def all_sum(tensor: torch.Tensor, env: Env, what: str = "summing over ranks") -> torch.Tensor:
    """Sum over ranks, in place (the identity for one process)."""
    if env.distributed:
        import torch.distributed as dist

        _collective(env, what, dist.all_reduce, tensor)
    return tensor


def all_sum_started(tensor: torch.Tensor, env: Env, what: str = "summing over ranks"):
    """Start summing `tensor` over ranks in place; returns the function that waits for
    it (so the sum travels while the caller computes)."""
    if not env.distributed:
        return lambda: tensor
    import torch.distributed as dist

    work = _collective(env, what, dist.all_reduce, tensor, dist.ReduceOp.SUM, None, True)

    def wait() -> torch.Tensor:
        _collective(env, what, work.wait)
        return tensor

    return wait


class GradientRider:
    """A DDP communication hook: all-reduces each gradient bucket as DDP's default hook
    does (the mean over ranks), and lets a few numbers ride along with the first bucket
    (`carry(tensor)` before backward, `take()` after: their sum over ranks). The loop
    shares each step's losses and stop signals this way without a collective of its
    own, whose latency (~2 ms with Gloo on a small machine) would add to every step."""

    def __init__(self, env: Env):
        self.env = env
        self._extras: torch.Tensor | None = None
        self._result: torch.Tensor | None = None

    def carry(self, extras: torch.Tensor) -> None:
        self._extras, self._result = extras, None

    def take(self) -> torch.Tensor:
        """The carried numbers summed over ranks (all-reduced here if no bucket took them)."""
        result, extras = self._result, self._extras
        self._extras = self._result = None
        if result is None:
            result = all_sum(extras, self.env, "sharing the step's losses")
        return result

    @staticmethod
    def hook(rider: GradientRider, bucket):
        import torch.distributed as dist

        grads = bucket.buffer()
        grads.div_(rider.env.world_size)
        # (the extras stay exact in a float32 bucket; any other is left alone: take()
        # then all-reduces them on their own)
        extras = rider._extras if bucket.index() == 0 and grads.dtype == torch.float32 else None
        flat = grads if extras is None else torch.cat([grads, extras])
        future = dist.all_reduce(flat, async_op=True).get_future()

        def done(fut):
            out = fut.value()[0]
            if extras is None:
                return out
            rider._result = out[grads.numel() :].clone()
            return out[: grads.numel()]

        return future.then(done)


def broadcast(value: Any, env: Env, what: str = "sharing rank 0's state") -> Any:
    """Rank 0's `value` on every rank (picklable; our own processes only)."""
    if not env.distributed:
        return value
    import torch.distributed as dist

    box = [value if env.is_main else None]
    _collective(env, what, dist.broadcast_object_list, box)
    return box[0]


def gather(value: Any, env: Env, what: str = "gathering from ranks") -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not env.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world_size
    _collective(env, what, dist.all_gather_object, out, value)
    return out


def same_everywhere(value: Any, env: Env, what: str) -> None:
    """Refuse to go on unless every rank holds the same `value` (a hash, say)."""
    values = gather(value, env, f"comparing {what}")
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        err = ConfigError(f"rank {odd[0]} has a different {what} than rank 0 ({str(values[odd[0]])[:12]} "
                          f"vs {str(values[0])[:12]})", hint="every process must see the same spec, "
                          "config and --set values")  # fmt: skip
        err.all_ranks = True
        raise err


def sync_buffers(module: torch.nn.Module, env: Env) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, one broadcast per dtype,
    so every rank validates the model rank 0 saves."""
    if not env.distributed:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict = {}
    for buf in module.buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = _flatten_dense_tensors([b.detach() for b in bufs])
        _collective(env, "sharing rank 0's buffers", dist.broadcast, flat, 0)
        with torch.no_grad():
            for buf, value in zip(bufs, _unflatten_dense_tensors(flat, bufs), strict=True):
                buf.copy_(value)


def barrier(env: Env, what: str = "waiting for every rank") -> None:
    if env.distributed:
        import torch.distributed as dist

        # a barrier as a tiny all-reduce: Gloo's and NCCL's honour the group timeout alike
        _collective(env, what, dist.all_reduce, torch.zeros(1, device=env.device))


def shutdown(env: Env, together: bool = False) -> None:
    """Leave the process group (at the end of a run, also after a failure). `together`:
    every rank is leaving at this same point (the end, or an error all ranks raised), so
    they first wait for each other: no rank tears its connections down under another
    still using them."""
    if not env.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if together:
        try:
            barrier(env, "leaving together")
        except TrainingError:
            pass  # a rank already left: nothing to wait for
    dist.destroy_process_group()
