"""Checkpoints that lose nothing.

A checkpoint is one `torch.save` file of plain data (tensors, dicts, lists, numbers,
strings), so `torch.load(path, weights_only=True)` reads it and loading never unpickles
code. It holds the model, optimizer, scheduler and scaler states, every RNG state, the
run's position (step, epoch, batch within the epoch), the resolved spec and its hash, and
a checksum over all of that, so a truncated or corrupted file is refused instead of
silently resuming from garbage.

The checksum is a CRC-32 of the content (each tensor's dtype, shape and bytes, every
other value's repr), checked against what `torch.load` returned. It finds corruption,
not tampering (`weights_only` guards against that). The zip CRCs torch.save writes are
not enough: they cover the bytes a zip reader finds, and torch's reader can return other
bytes without an error (one flipped bit in the zip directory made it hand back an
uninitialised tensor while every record's CRC held). So torch.save is told not to
compute them (an option since torch 2.6; no loader reads them): resnet18 with momentum
(90 MB) saves in 78 ms instead of 130, and its CRC-32 takes 40 ms where the sha256 of
format version 1 took 63. Files of earlier versions still load; a file of a later version
(a newer yamlnet's) is refused with a line saying so.

Files are written to a temporary name in the same folder, fsync'ed, then renamed: a
crash at any moment leaves either the old file or the new one under the final name.

Layout of `RUN/checkpoints/`: `step-00000050.pt` (the newest `keep` are kept),
`last.pt` (a hard link to the newest), `best.pt` (best monitored metric). A sharded run
(FSDP) writes folders instead, `step-00000050.dcp/`, `last.dcp` (a symbolic link to the
newest) and `best.dcp/`: runtime/shards.py.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import os
import random
import re
import shutil
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compiler.errors import not_a_regular_file
from . import faults, shards
from .errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "NotACheckpoint", "load_weights", "digest", "capture_rng",
           "restore_rng", "CheckpointDir", "atomic_write", "save_safetensors"]  # fmt: skip

FORMAT = "yamlnet-checkpoint"
# 1: a sha256 checksum; 2: a CRC-32, written "crc32:<8 hex digits>"; 3: Python's RNG state
# as a tensor of its words (a tuple of ints before)
VERSION = 3
_STEP_FILE = re.compile(r"^step-(\d+)\.(pt|dcp)$")
_writes = 0  # checkpoint files written by this process (for fault injection)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` (plain data) atomically, with a checksum over its content; `torch.save`
    streams straight into the temp file (no copy of the whole file in memory)."""
    _commit(_write_temp(state, path), path)


def _write_temp(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """The checkpoint, checksummed, in a temp file beside `path`: handed to the OS, not yet
    fsync'ed nor under its name (`_commit` does both)."""
    global _writes
    payload = {**state, "format": FORMAT, "version": VERSION}
    payload["checksum"] = "crc32:" + digest(payload, "crc32")
    _writes += 1
    if faults.fault_at("kill_in_checkpoint", _writes):  # the crash tests: die half-way
        buf = io.BytesIO()
        _save_without_zip_crcs(payload, buf)
        atomic_write(path, buf.getvalue(), fault=True)
    return _to_temp(path, lambda fh: _save_without_zip_crcs(payload, fh))


def _save_without_zip_crcs(payload: dict, fh) -> None:
    """`torch.save`, skipping its per-record CRC-32s (the checkpoint has its own). The
    option is global: a save on another thread meanwhile skips them too, which changes
    nothing torch.load reads."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    if get is None:  # torch < 2.6 always computes them
        torch.save(payload, fh)
        return
    was = get()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(payload, fh)
    finally:
        torch.serialization.set_crc32_options(was)


def _commit(tmp: Path, path: str | os.PathLike) -> None:
    """fsync the finished temp file, rename it to `path`, fsync the folder; a temp file
    that cannot be renamed is removed."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(Path(path).parent)


class NotACheckpoint(CheckpointError):
    """A readable torch file that is not a yamlnet checkpoint (a plain state_dict, say)."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint; `CheckpointError` if unreadable or corrupt. A sharded
    checkpoint (a folder) is verified and read whole on this process."""
    path = Path(path)
    if shards.is_sharded_checkpoint(path):
        return shards.consolidate(path)
    if not path.is_file():
        kind = not_a_regular_file(path)
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file" if kind else f"no checkpoint at {path}")
    try:
        payload = load_tensors(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is "corrupt", said once
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120] if str(err) else 'unreadable'})") from None  # fmt: skip
    if not is_checkpoint(payload):
        raise NotACheckpoint(f"{path} is not a yamlnet checkpoint",
                             hint="eval/predict also accept a run folder")  # fmt: skip
    return verified(payload, path)


def is_checkpoint(payload: Any) -> bool:
    """Whether what torch.load returned is a yamlnet checkpoint (to be verified)."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


MAX_NESTING = 64  # levels of dicts and lists in a checkpoint (ours use under ten)


def load_tensors(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with the warnings torch prints
    while reading what it holds (sparse invariants, quantized storages) silenced: what
    it holds is judged by `loaded_problem`, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def loaded_problem(obj: Any) -> str | None:
    """What is wrong with what torch.load returned, walked without recursion before
    anything reads it whole (None when nothing is): nesting deeper than MAX_NESTING, or a
    tensor with more elements than its storage holds. A tensor saved with stride 0
    (`torch.zeros(1).expand(10**9)`: a few bytes on disk) would otherwise become
    gigabytes at the first contiguous copy (a checksum's, a stack's, a model's)."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"it nests deeper than {MAX_NESTING} levels"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, torch.Tensor) and item.layout != torch.strided:
            return f"it holds a tensor of layout {str(item.layout).removeprefix('torch.')}; only dense tensors are read"
        elif isinstance(item, torch.Tensor) and (item.is_quantized or item.is_complex()):
            return f"it holds a tensor of dtype {str(item.dtype).removeprefix('torch.')}; only real, unquantized tensors are read"
        elif isinstance(item, torch.Tensor) and item.numel():
            have = item.untyped_storage().nbytes()
            if item.numel() * item.element_size() > have or min(item.stride(), default=1) < 0:
                return f"it holds a tensor of shape {list(item.shape)} over {have} bytes of storage (a stride-0 view)"
    return None


def verified(payload: dict, path: str | os.PathLike) -> dict[str, Any]:
    """A loaded checkpoint, its checksum checked (and taken out); `CheckpointError` if
    it does not match."""
    problem = loaded_problem(payload)
    if problem:
        raise CheckpointError(f"{path} is not a checkpoint yamlnet wrote: {problem}")
    version = payload.get("version")
    if isinstance(version, int) and version > VERSION:  # (or a damaged version number)
        raise CheckpointError(f"{path} was written by a newer yamlnet (checkpoint format {version}; "
                              f"this one reads up to {VERSION}), or is corrupt", hint="upgrade yamlnet")  # fmt: skip
    expected = payload.pop("checksum", None)
    kind, value = ("crc32", expected[6:]) if str(expected).startswith("crc32:") else ("sha256", expected)
    if value != digest(payload, kind):
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its content")
    return payload


def load_weights(model: torch.nn.Module, state_dict: dict, path: str | os.PathLike) -> None:
    """`model.load_state_dict(state_dict)` (strict), or one line saying what differs."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        # torch's first line is only "Error(s) in loading state_dict for X:"; the first
        # mismatch below it says what differs
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["?"]
        first = lines[1] if len(lines) > 1 else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise CheckpointError(f"{path} does not fit the model: {first}{more}") from None


def digest(obj: Any, kind: str = "sha256") -> str:
    """A hash of nested plain data, tensors by dtype, shape and bytes: sha256, or CRC-32
    (`kind="crc32"`, 8 hex digits: as fast as memory reads, for checkpoints)."""
    h = hashlib.sha256() if kind == "sha256" else _Crc32()
    _feed(h, obj)
    return h.hexdigest()


class _Crc32:
    """zlib's CRC-32 with hashlib's update/hexdigest."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _feed(h, obj: Any) -> None:
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key in sorted(obj, key=str):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, not a copy of them
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def atomic_write(path: str | os.PathLike, data: bytes, *, fault: bool = False) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder."""
    if fault:  # the crash tests: die with half a file written

        def half(fh) -> None:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            faults.die()

        _atomic(path, half)
    _atomic(path, lambda fh: fh.write(data))


def _to_temp(path: str | os.PathLike, write) -> Path:
    """`write(file)` into a temp file beside `path`; returns the temp file's path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
    except BaseException as err:
        # torch.save reports a full disk as RuntimeError("... unexpected pos ..."): say it
        full = isinstance(err, RuntimeError) and _nearly_full(path.parent)
        tmp.unlink(missing_ok=True)  # a failed write gives its space back
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    return tmp


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows): leave torch's words
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _atomic(path: str | os.PathLike, write) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename, fsync the folder."""
    _commit(_to_temp(path, write), path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """Every RNG state, as plain data: python's as (version, int64 tensor of its 625 words,
    gauss), numpy's key and torch's state as tensors. Tensors, not lists of ints: one
    record each to checksum and pickle, not 625 objects."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    if isinstance(internal, torch.Tensor):  # a tensor since format 3, a tuple of ints before
        internal = internal.tolist()
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            import warnings

            warnings.warn(f"the checkpoint has RNG states of {len(state['cuda'])} GPUs, this "
                          f"machine {torch.cuda.device_count()}: GPU random draws will differ",
                          stacklevel=2)  # fmt: skip
            return
        torch.cuda.set_rng_state_all(state["cuda"])


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str]) -> None:  # fmt: skip
    """Weights alone, as safetensors (tied weights are written once per name)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
    atomic_write(path, save(tensors, metadata=metadata))


def _snapshot(obj: Any, spare: Any, memo: dict[int, torch.Tensor], used: set[int]) -> Any:
    """A copy of plain data `obj` with every tensor copied to CPU memory, into the tensor at
    the same place in `spare` where it fits (same shape and dtype, not already filled);
    a tensor met twice (tied weights) is copied once, as a deep copy would."""
    if isinstance(obj, torch.Tensor):
        if id(obj) in memo:
            return memo[id(obj)]
        fits = (isinstance(spare, torch.Tensor) and id(spare) not in used and spare.device.type == "cpu"
                and spare.shape == obj.shape and spare.dtype == obj.dtype)  # fmt: skip
        copy_ = spare.copy_(obj.detach()) if fits else obj.detach().to("cpu", copy=True)
        memo[id(obj)] = copy_
        used.add(id(copy_))
        return copy_
    if isinstance(obj, dict):
        old = spare if isinstance(spare, dict) else {}
        out = copy.copy(obj)  # the same type and attributes (a state_dict's _metadata)
        for key, value in obj.items():
            out[key] = _snapshot(value, old.get(key), memo, used)
        return out
    if type(obj) in (list, tuple):
        old = spare if type(spare) is type(obj) and len(spare) == len(obj) else [None] * len(obj)
        return type(obj)(_snapshot(v, o, memo, used) for v, o in zip(obj, old, strict=True))
    return copy.deepcopy(obj)


class CheckpointDir:
    """The checkpoints of one run: step files, `last.pt`, `best.pt`.

    Writing one is two parts: checksum and serialise the state into a temp file (CPU
    work), then fsync it and rename it to its name (waiting on the disk). The second part
    always runs on a writer thread, so the loop never waits for the disk. Where the first
    runs depends on what trains:
    - on the CPU (`background=False`) the loop does it: the cores are busy training, and a
      thread doing that work beside them costs the training more than the loop doing it
      between steps (resnet18 on 2 cores, 3 checkpoints in 24 steps, in one measurement:
      +14% time with the writer doing all, +31% with it at a low priority, +11% so).
    - on a GPU (`background=True`) the loop only copies the state to CPU memory — into the
      buffers of the previous snapshot, already written, where they fit: 5 ms for
      resnet18 with momentum (90 MB), where fresh memory took 45 ms — and the writer does
      the rest while the GPU computes; no second copy of the state is held on the GPU.
    One write is in flight at a time; `wait()` (also called by the next save and by
    `close()`) returns when it is on disk and raises its error, if any. A crash mid-write
    is the same as ever: a temp file, old names intact."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2, *, background: bool = False,
                 sharded: bool = False, group=None, rank: int = 0):  # fmt: skip
        self.folder, self.keep, self.background = Path(folder), keep, background
        self.sharded, self.group, self.rank = sharded, group, rank  # sharded: every rank saves
        self._pending: Future | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._spare: Any = None  # the last snapshot, once written: the next one's buffers
        self._stager: shards.Stager | None = None  # a sharded run's: the same, for DCP

    def _write(self, state: dict, path: Path, then=None) -> None:
        """Write `state` to `path` as the class docstring says; `then()` runs on the writer
        thread once the file is on disk under its name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.wait()
        if self.background:
            snapshot = _snapshot(state, self._spare, {}, set())
            self._spare = snapshot  # refilled only after wait(): this write is done with it
            self._submit(lambda: self._commit_then(_write_temp(snapshot, path), path, then))
        else:
            tmp = _write_temp(state, path)
            self._submit(lambda: self._commit_then(tmp, path, then))

    def _submit(self, fn) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = self._writer.submit(fn)

    @staticmethod
    def _commit_then(tmp: Path, path: Path, then) -> None:
        _commit(tmp, path)
        if then is not None:
            then()

    def wait(self) -> None:
        """Block until the checkpoint being written is on disk."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    @property
    def last(self) -> Path:
        return self.folder / ("last.dcp" if self.sharded else "last.pt")

    @property
    def best(self) -> Path:
        return self.folder / ("best.dcp" if self.sharded else "best.pt")

    def steps(self) -> list[tuple[int, Path]]:
        """(step, path) of the step files, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir()
                 if (m := _STEP_FILE.match(p.name))]  # fmt: skip
        return sorted(found, reverse=True)

    def exists(self) -> bool:
        return bool(self.steps()) or (self.folder / "last.pt").exists() or (self.folder / "last.dcp").exists()

    def save(self, state: dict, step: int) -> Path:
        """Write the step file, point last.pt at it, drop the oldest beyond `keep`."""
        path = self.folder / f"step-{step:08d}.pt"
        self._write(state, path, lambda: self._after_step_file(path))
        return path

    def _after_step_file(self, path: Path) -> None:
        tmp = self.folder / f".{self.last.name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        if path.is_dir():  # a sharded checkpoint: a folder, linked by name
            os.symlink(path.name, tmp)
        else:
            os.link(path, tmp)
        os.replace(tmp, self.last)
        self._drop_other_format("last")
        for _, old in self.steps()[self.keep :]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def save_best(self, state: dict) -> Path:
        self._write(state, self.best, lambda: self._drop_other_format("best"))
        return self.best

    def _drop_other_format(self, name: str) -> None:
        """A run that changed strategy on resuming leaves no best or last of the other
        format behind, for eval and resuming to take instead of the newer one."""
        other = self.folder / f"{name}{'.pt' if self.sharded else shards.SUFFIX}"
        if other.is_dir() and not other.is_symlink():
            shutil.rmtree(other)
        else:
            other.unlink(missing_ok=True)
        if self.sharded:  # a sharded run writes no weights file: an earlier one is of older weights
            (self.folder.parent / f"{name}.safetensors").unlink(missing_ok=True)

    def save_sharded(self, state: dict | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     step: int | None = None) -> Path:  # fmt: skip
        """Every rank: write a sharded checkpoint of `model` and `optimizer`, `state`
        (rank 0's; None elsewhere) holding the rest; as the step file of `step`, or as
        best.dcp. The step waits while the shards are copied to CPU memory; the writer
        thread of each rank does the rest (runtime/shards.py)."""
        final = self.best if step is None else self.folder / f"step-{step:08d}{shards.SUFFIX}"
        tmp = final.with_name(f".{final.name}.tmp")
        self.wait()
        if self.rank == 0:  # before any rank writes into it: DCP's planning waits for rank 0
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        names = shards.parameter_names(model, optimizer)
        self._stager = self._stager or shards.Stager(pin=self.background)  # background: a GPU run
        future = shards.start_save(model, optimizer, tmp, self.group, self._stager)
        then = (lambda: self._drop_other_format("best")) if step is None else (lambda: self._after_step_file(final))

        state = copy.deepcopy(state)  # (plain data, no weights) as it is now, not as the loop changes it

        def finish() -> None:
            if shards.finish_save(future, tmp, final, state, names, self.group, self.rank):
                then()

        self._submit(finish)
        return final

    def latest_good(self, warn, *, whole: bool = True, suffix: str | None = None) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads and verifies (of those named *`suffix`, if
        given); `warn(text)` for each refused. Of a sharded checkpoint, `whole=False`
        verifies it and reads all but the shards (which each process of a sharded run
        reads for itself)."""
        for _, path in self.steps():
            if suffix is not None and path.suffix != suffix:
                continue
            try:
                return path, (load_checkpoint(path) if whole or not path.is_dir() else shards.verify(path))
            except CheckpointError as err:
                warn(f"refusing {err}; trying an older checkpoint")
        return None

    def clean_temporaries(self) -> None:
        """Remove the temp files a crash left behind (never a finished checkpoint)."""
        if self.folder.is_dir():
            shards.recover(self.folder)
            for p in self.folder.glob(".*.tmp*"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
