"""Sharded checkpoints: what an FSDP run writes, each process its own part.

A sharded checkpoint is a folder, `step-00000050.dcp/`, written by
torch.distributed.checkpoint (DCP): every process writes the shards it holds of the
weights and of the optimizer's state (`__R_K.distcp`), and rank 0 the index of them
(`.metadata`). Nothing is gathered on one process, and a run resumes on any number of
processes (DCP cuts the saved shards to the new ones).

Beside DCP's files, rank 0 writes `yamlnet.pt`: an ordinary checkpoint file (checksummed,
read with weights_only) holding all the rest (position, schedule, every rank's RNG state,
spec, configuration), the parameter names in the optimizer's order, and a CRC-32 of each
of DCP's files. The folder's rules are the single file's:
- it is written as `.step-00000050.dcp.tmp/` and renamed only once every process's files
  are fsync'ed and `yamlnet.pt` names them all, so a checkpoint under its name is complete;
- reading one checks every file against its CRC-32 first, so a damaged shard refuses the
  checkpoint and resuming falls back to the previous one;
- DCP's `.metadata` is a Python pickle; it is read by an unpickler that builds DCP's own
  index classes and nothing else, and DCP's non-tensor records with weights_only, so
  loading a checkpoint never runs code from it.

Saving is asynchronous: the step waits only while the shards are copied to CPU memory
(`dcp.async_save`), and a writer thread does the rest over a process group of its own.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import zlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from . import faults
from .errors import CheckpointError

__all__ = ["SUFFIX", "STATE_FILE", "is_sharded_checkpoint", "start_save", "finish_save", "verify",
           "consolidate", "consolidate_to", "load_into", "publish", "numbered", "named", "parameter_names"]  # fmt: skip

SUFFIX = ".dcp"
STATE_FILE = "yamlnet.pt"
_CHUNK = 1 << 22
_saves = 0  # sharded checkpoints this process started (for fault injection)


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path.suffix == SUFFIX or (path / STATE_FILE).is_file())


def crc_file(path: Path) -> str:
    value = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


# -- the parameter-number form a single-file checkpoint keeps the optimizer state in ---------


def numbered(by_name: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter name (DCP's, FSDP's) keyed by number, as
    `optimizer.state_dict()` is: `names` lists the parameters in the optimizer's order."""
    number = {name: k for k, name in enumerate(names)}
    groups, k = [], 0
    for group in by_name["param_groups"]:
        size = len(group["params"])
        groups.append({**{key: v for key, v in group.items() if key != "params"}, "params": list(range(k, k + size))})
        k += size
    return {"state": {number[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def named(state: dict, names: list[str]) -> dict:
    """The converse of `numbered`."""
    groups = [{**{key: v for key, v in group.items() if key != "params"}, "params": [names[k] for k in group["params"]]}
              for group in state["param_groups"]]  # fmt: skip
    return {"state": {names[k]: value for k, value in state["state"].items()}, "param_groups": groups}


def parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


# -- writing -------------------------------------------------------------------------------


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This process's shards of the weights and the optimizer state, keyed by name (views:
    DCP's staging copies them)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


class Stager:
    """Copies the shards to CPU memory for an asynchronous save, into the buffers of the
    previous copy where the state has the same structure (DCP's own cache pins its
    buffers, which needs a GPU): for the GPT of benchmarks/ row 18 (110 MiB a process),
    fresh memory took 150-200 ms a save. The previous save must be on disk first
    (CheckpointDir waits for it)."""

    should_synchronize_after_execute = False

    def __init__(self, pin: bool = False) -> None:
        self.buffers: dict | None = None
        self.pin = pin  # page-locked buffers: a GPU run's (faster copies from the device)

    def stage(self, state: dict) -> dict:
        from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

        if self.buffers is not None:
            try:
                return _copy_state_dict(state, self.buffers, type_check=False)
            except Exception:  # noqa: BLE001 - another structure (new optimizer state): fresh buffers
                self.buffers = None
        self.buffers = _create_cpu_state_dict(state, pin_memory=self.pin)
        return _copy_state_dict(state, self.buffers, type_check=False)

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        self.buffers = None


def start_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tmp: Path, group,
               stager: Stager | None = None) -> Future:  # fmt: skip
    """Begin writing this process's shards into `tmp` (every process calls it, at the same
    step): returns once they are copied to CPU memory; the future ends when every process's
    files and DCP's index are on disk."""
    import torch.distributed.checkpoint as dcp

    global _saves
    _saves += 1
    writer = dcp.FileSystemWriter(str(tmp), sync_files=True)
    return dcp.async_save(_sharded_state(model, optimizer), storage_writer=writer, process_group=group,
                          async_stager=stager or Stager())  # fmt: skip


def finish_save(future: Future, tmp: Path, final: Path, rest: dict | None, names: list[str], group,
                rank: int) -> bool:  # fmt: skip
    """On the writer thread of every process: wait for DCP, checksum this process's files,
    and on rank 0 write `yamlnet.pt` and rename the folder to `final`. Every rank ends the
    same way: True on rank 0 once the checkpoint is under its name, or the same error on
    every rank (marked `shared`), so all of them stop at the same `wait()`."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.api import CheckpointException

    from .checkpoint import _commit, _nearly_full, _write_temp

    try:
        future.result()
    except CheckpointException as err:  # a failure on some rank, which every rank hears of
        # torch.save into DCP's file reports a short write as RuntimeError("unexpected pos"):
        # every rank looks at its own disk before any space is given back, and all decide alike
        full = [False] * dist.get_world_size(group)
        dist.all_gather_object(full, bool(_failures(err, RuntimeError)) and _nearly_full(tmp.parent), group=group)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # what was written gives its space back
        met = _failures(err, OSError)
        if not met and any(full):
            met = [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))]
        raise _shared(met[0] if met else err) from None
    try:
        mine: Any = {p.name: crc_file(p) for p in tmp.glob(f"__{rank}_*")}
    except OSError as err:  # said to rank 0 through the gather: no rank is left waiting in it
        mine = err
    everyone: list | None = [None] * dist.get_world_size(group) if rank == 0 else None
    dist.gather_object(mine, everyone, dst=0, group=group)
    outcome: BaseException | None = None
    if rank == 0:
        try:
            failed = next((part for part in everyone if isinstance(part, BaseException)), None)
            if failed is not None:
                raise failed
            files = {name: crc for part in everyone for name, crc in part.items()}
            files[".metadata"] = crc_file(tmp / ".metadata")
            if faults.fault_at("kill_in_checkpoint", _saves):  # the crash tests: die with the folder unnamed
                faults.die()
            payload = {**rest, "sharded": {"files": files, "param_names": names}}
            _commit(_write_temp(payload, tmp / STATE_FILE), tmp / STATE_FILE)
            publish(tmp, final)
        except Exception as err:  # noqa: BLE001 - every rank hears of it below
            shutil.rmtree(tmp, ignore_errors=True)
            outcome = err
    said = [outcome]
    dist.broadcast_object_list(said, src=0, group=group)
    if said[0] is not None:
        raise _shared(said[0])
    return rank == 0


def _shared(err: BaseException) -> BaseException:
    """Mark an error every rank of a sharded save raises alike (rank 0 reports it)."""
    err.shared = True
    return err


def _failures(err, kind: type) -> list:
    """The errors of a kind that the ranks of a failed DCP save met."""
    found = []
    for failure in getattr(err, "failures", {}).values():
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, kind):
            found.append(inner)
    return found


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` to `final`. A folder cannot be renamed over
    another, so one already there is first moved aside as `.NAME.old` and removed after;
    a crash in between leaves it there, and `recover` puts it back."""
    from .checkpoint import _fsync_dir

    _fsync_dir(tmp)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: Path) -> None:
    """After a crash: a sharded checkpoint moved aside by `publish` whose new one never got
    its name goes back; unfinished folders go."""
    for old in folder.glob(".*.old"):
        final = folder / old.name[1:-4]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    for tmp in folder.glob(f".*{SUFFIX}.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


# -- reading -------------------------------------------------------------------------------


class _IndexUnpickler(pickle.Unpickler):
    """Builds what DCP's `.metadata` holds (its dataclasses, torch.Size, dtypes and a few
    builtins) and refuses any other global, so a crafted index cannot run code."""

    ALLOWED = {("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("collections", "OrderedDict"),
        ("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not part of a checkpoint index")


def _reader(path: Path):
    import torch.distributed.checkpoint as dcp

    class Reader(dcp.FileSystemReader):
        """DCP's reader, its index read by `_IndexUnpickler`."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            from torch.distributed.checkpoint.metadata import StorageMeta

            with open(path / ".metadata", "rb") as fh:
                metadata = _IndexUnpickler(fh).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(str(path))


def _weights_only_bytes(planner_class):
    """`planner_class` with DCP's non-tensor records read by torch.load(weights_only=True)
    (DCP's own planners unpickle them freely)."""

    class Planner(planner_class):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._nested_dict import set_element

            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Planner


def verify(path: Path) -> dict:
    """The checkpoint's `yamlnet.pt` (everything but the shards), once every file it names
    matches its CRC-32; `CheckpointError` in one line otherwise."""
    from .checkpoint import load_checkpoint

    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete sharded checkpoint: it has no {STATE_FILE}")
    state = load_checkpoint(state_file)
    info = state.get("sharded")
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or \
            not isinstance(info.get("param_names"), list):  # fmt: skip
        raise CheckpointError(f"{state_file} does not describe a sharded checkpoint")
    for name, crc in sorted(info["files"].items(), key=str):
        if not isinstance(name, str) or "/" in name or os.sep in name or name in ("", ".", ".."):
            raise CheckpointError(f"{state_file} names a file {str(name)[:80]!r} that is not in the folder")
        file = path / name
        if not file.is_file() or file.is_symlink():
            raise CheckpointError(f"{path} is incomplete: {name} is missing")
        try:
            matches = crc_file(file) == crc
        except OSError as err:
            raise CheckpointError(f"{file} cannot be read: {err.strerror or err}") from None
        if not matches:
            raise CheckpointError(f"{file} is corrupt: its CRC-32 does not match the one {STATE_FILE} recorded")
    _check_index(path, info["files"])
    return state


def _first_words(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:160] if lines else type(err).__name__


def _metadata(path: Path):
    try:
        return _reader(path).read_metadata()
    except Exception as err:  # noqa: BLE001 - any unreadable index: one line
        raise CheckpointError(f"{path / '.metadata'} cannot be read: {_first_words(err)}") from None


MAX_INDEX = 10_000  # list positions in the index's key paths (param_groups: a handful)


def _check_index(path: Path, files: dict) -> None:
    """What DCP will do with the index, checked before it reads anything: every record
    points into a file the manifest names, inside its size, untransformed; the key paths
    are short names and small positions; the tensors claim no more bytes than the files
    hold (with slack). A damaged or crafted index then cannot make the reader open
    another file, hang on a pipe, or allocate gigabytes."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    metadata = _metadata(path)
    bad = f"{path} is not a checkpoint yamlnet wrote: its index"
    sizes = {name: (path / name).stat().st_size for name in files if name != ".metadata"}
    items, storage = getattr(metadata, "state_dict_metadata", None), getattr(metadata, "storage_data", None)
    if not isinstance(items, dict) or not isinstance(storage, dict):
        raise CheckpointError(f"{bad} has no records")
    claimed = 0
    for item in items.values():
        if isinstance(item, TensorStorageMetadata):
            dims = tuple(item.size)
            if not all(isinstance(d, int) and d >= 0 for d in dims) or not isinstance(item.properties.dtype, torch.dtype):
                raise CheckpointError(f"{bad} holds a tensor of size {dims}")
            count = 1
            for d in dims:
                count *= d
            claimed += count * item.properties.dtype.itemsize
        elif not isinstance(item, BytesStorageMetadata):
            raise CheckpointError(f"{bad} holds a record of type {type(item).__name__}")
    for info in storage.values():
        if not isinstance(info, _StorageInfo) or info.relative_path not in sizes or info.transform_descriptors or \
                not (isinstance(info.offset, int) and isinstance(info.length, int) and 0 <= info.offset and
                     0 <= info.length and info.offset + info.length <= sizes[info.relative_path]):  # fmt: skip
            where = getattr(info, "relative_path", "?")
            raise CheckpointError(f"{bad} points outside the files it names ({str(where)[:80]})")
    for key in (getattr(metadata, "planner_data", None) or {}).values():
        if not isinstance(key, (tuple, list)) or not key or key[0] not in ("model", "optimizer") or not all(
                isinstance(k, str) or (isinstance(k, int) and 0 <= k < MAX_INDEX) for k in key):  # fmt: skip
            raise CheckpointError(f"{bad} holds a key path {str(key)[:80]}")
    stored = sum(sizes.values())
    if claimed > 2 * stored + (1 << 20):
        raise CheckpointError(f"{bad} claims {claimed} bytes of tensors in {stored} bytes of files")


def consolidate(path: Path) -> dict:
    """A verified sharded checkpoint as one process's whole checkpoint: what a
    single-file checkpoint holds (the weights as one state_dict, the optimizer state
    keyed by parameter number), read on this process alone."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state = verify(path)
    whole: dict = {}
    try:
        _load_state_dict(whole, storage_reader=_reader(path), planner=_weights_only_bytes(_EmptyStateDictLoadPlanner)(),
                         no_dist=True)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - verified files that still do not read: one line
        raise CheckpointError(f"{path} cannot be read: {_first_words(err)}") from None
    info = state.pop("sharded")
    if not isinstance(whole.get("model"), dict) or not isinstance(whole.get("optimizer"), dict):
        raise CheckpointError(f"{path} holds no model and optimizer state")
    state["model"] = whole["model"]
    try:
        state["optimizer"] = numbered(whole["optimizer"], info["param_names"])
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: its optimizer state does not match the parameters it names ({_first_words(err)})") from None
    return state


def check_fits(path: Path, model: torch.nn.Module) -> None:
    """One line if the checkpoint's weights are not the model's (names and whole shapes,
    read from its index)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .sharding import check_weights_fit

    index = {k[len("model."):]: tuple(v.size) for k, v in _metadata(path).state_dict_metadata.items()
             if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}  # fmt: skip
    check_weights_fit(model, index, path)


def load_into(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Each process reads its part of a sharded checkpoint (every process calls it; the
    number of processes may differ from the saving run's)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _sharded_state(model, optimizer)  # (its fit checked by rank 0 before: `check_fits`)
    try:
        dcp.load(state, storage_reader=_reader(path), planner=_weights_only_bytes(DefaultLoadPlanner)())
    except Exception as err:  # noqa: BLE001 - verified files that still do not read (a crafted index): one line
        raise CheckpointError(f"{path} cannot be read: {_first_words(err)}") from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def consolidate_to(source: Path, out: Path | None = None) -> tuple[Path, Path, int]:
    """`yamlnet checkpoint consolidate`: a sharded checkpoint (or a run folder's newest good
    one) as one file: a whole checkpoint (.pt: resumes and serves as any other) or the
    weights alone (.safetensors). Returns (what was read, what was written, its step)."""
    from .checkpoint import CheckpointDir, save_checkpoint, save_safetensors
    from .run import run_folder_of

    if not source.exists():
        raise CheckpointError(f"no run folder or checkpoint at {source}")
    if is_sharded_checkpoint(source):
        path, state = source, consolidate(source)
    elif source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        ckpts = CheckpointDir(folder)
        if not any(p.suffix == SUFFIX for _, p in ckpts.steps()):
            raise CheckpointError(f"{folder} holds no sharded checkpoint (step-N{SUFFIX})",
                                  hint="single-file checkpoints (.pt) need no consolidating")  # fmt: skip
        found = ckpts.latest_good(lambda text: print(f"warning: {text}", flush=True), suffix=SUFFIX)
        if found is None:
            raise CheckpointError(f"no sharded checkpoint in {folder} verifies")
        path, state = found
    else:
        raise CheckpointError(f"{source} is not a sharded checkpoint (a step-N{SUFFIX} folder) nor a run folder")
    if out is None:  # beside the run's files, not among its checkpoints (which rotate them away)
        real = path.resolve()  # (last.dcp: the step folder it links to)
        out = run_folder_of(real) / f"{real.stem}.pt"
    if out.suffix not in (".pt", ".safetensors"):
        raise CheckpointError(f"--out {out}: write a .pt (a whole checkpoint) or a .safetensors file (the weights)")
    position = state.get("position")
    step = position.get("step", -1) if isinstance(position, dict) else -1
    step = step if isinstance(step, int) else -1
    if out.suffix == ".safetensors":
        spec = state.get("spec", {})
        save_safetensors(state["model"], out, {"spec_name": str(spec.get("name", "")),
                                               "spec_hash": str(spec.get("hash", "")), "step": str(step)})  # fmt: skip
    else:
        save_checkpoint(state, out)
    return path, out, step
