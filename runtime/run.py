"""The run's state and its folder: the position and everything the loop works with
(`Run`), where a run's files go, what a checkpoint holds, and how a run resumes from one,
on 1..N ranks (rank 0 reads and writes the folder; every rank hears the outcome)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..compiler.compile import Compiled
from ..compiler.lockfile import lockfile_text
from . import package_version, shards
from .checkpoint import (
    CheckpointDir,
    atomic_write,
    capture_rng,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_safetensors,
)
from .config import RunConfig
from .data import Loaders
from .distributed import (
    Env,
    broadcast,
    gather,
)
from .errors import CheckpointError, ConfigError, TrainingError, first_line
from .optim import Schedule
from .sharding import check_weights_fit, is_sharded, load_full_state
from .tasks import Task

EXIT_SIGNAL_BASE = 128  # a run stopped by signal S exits with 128 + S, after saving


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns: where the run is, how it ended, and its last metrics."""

    out: Path
    metrics: dict[str, float]
    last: Path | None
    best: Path | None
    step: int
    epoch: int
    stopped: str  # finished | max_steps | early_stopping | pruned | SIGTERM | SIGINT
    seconds: float = float("nan")  # the loop's own time, setup excluded (nan on ranks > 0)

    @property
    def exit_code(self) -> int:
        sig = getattr(signal.Signals, self.stopped, None) if self.stopped.startswith("SIG") else None
        return EXIT_SIGNAL_BASE + int(sig) if sig else 0


@dataclass
class Position:
    """Where the run is, and the loop state that must survive a restart."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    batch: int = 0  # micro-batches done in the current epoch
    best: float | None = None
    best_step: int = -1
    stale: int = 0  # validations since the monitored metric last improved
    loss_sum: float = 0.0  # training loss since the last logged row
    loss_count: int = 0
    skipped: int = 0  # non-finite micro-batches skipped (on_nonfinite: skip)
    val_step: int = -1  # step of the last validation
    samples: int = 0  # samples of this epoch consumed by all ranks together
    term_sums: list = field(default_factory=list)  # each loss term since the last row (several terms)


@dataclass
class Run:
    """Everything the loop works with, built by `prepare`."""

    cfg: RunConfig
    env: Env
    compiled: Compiled
    model: torch.nn.Module
    forward: Any  # what trains: the model, compiled or not, wrapped in DDP on several ranks
    evaluate: Any  # what validates: the model, compiled or not (no DDP: no collectives)
    loaders: Loaders
    task: Task
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: Any
    autocast: Any
    out: Path | None
    ckpts: CheckpointDir | None
    monitor: str | None
    mode: str
    epoch_batches: int  # micro-batches of this rank in the current epoch
    total_steps: int
    variables: dict = field(default_factory=dict)  # the spec's vars overridden for this run
    pos: Position = field(default_factory=Position)
    log: Any = None
    lock: str | None = None  # lockfile text of the network, made on first use
    stop: Any = None  # the StopSignals of the run
    stopping: str | None = None  # a stop signal every rank has seen (SIGTERM, SIGINT)
    last_save: float = 0.0  # perf_counter() at the last resumable checkpoint (or the start)
    save_due: bool = False  # rank 0's clock asks for a checkpoint (every rank has seen it)
    pending: list = field(default_factory=list)  # losses of the accumulation group so far
    pending_terms: list = field(default_factory=list)  # and their terms (several terms)
    folder_lock: FolderLock | None = None  # rank 0's hold on the run folder while it trains
    on_validate: Any = None  # (step, values) -> True to end the run as pruned (yamlnet tune)

    def release_folder(self) -> None:
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None


LOCK_FILE = ".training.lock"  # in the run folder: held by the process training it


class FolderLock:
    """An exclusive OS lock (flock) on a run folder's `.training.lock` while a process
    trains in it, so a second trainer, or a second --resume, is refused instead of
    interleaving metrics.csv and overwriting checkpoints. The kernel releases it when the
    process ends in any way (kill -9 included), so it is never stale: the file that
    stays behind holds only the last holder's pid and host, for the message. Where the
    OS has no flock (Windows) nothing is locked."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self._fh = None
        try:
            import fcntl
        except ImportError:
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the run's length
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            said = "".join(c for c in fh.read(200) if c.isprintable()).strip()  # echoed: no controls
            holder = said or "another process"
            fh.close()
            raise ConfigError(f"{folder} is being trained by {holder}",
                              hint="wait for it to end, or choose another --out") from None  # fmt: skip
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the lock
            self._fh = None


def open_run(run: Run, out, resume, force) -> None:
    """The run folder and its checkpoints; the resumed state when resuming."""
    env, compiled = run.env, run.compiled
    if env.restart and not resume:
        resume = True  # the elastic launcher restarted the workers: go on from the checkpoint
    if env.restart and env.is_main:
        limit = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")
        print(f"restart {env.restart} of {limit}: a worker failed; the workers start again",
              flush=True)  # fmt: skip

    def folder() -> Path:
        path = resolve_out_dir(out, compiled, resume)
        run.folder_lock = FolderLock(path)
        return path

    run.out = on_main(env, folder)
    sharded = is_sharded(run.model)  # each rank writes its shards, over a process group of their own
    run.ckpts = CheckpointDir(run.out / "checkpoints", keep=run.cfg.train["keep_checkpoints"],
                              background=run.env.device.type != "cpu", sharded=sharded,
                              group=checkpoint_group(env) if sharded else None, rank=env.rank)  # fmt: skip
    check_not_stopped(run)
    start_or_resume(run, resume, force)


def checkpoint_group(env: Env):
    """A Gloo process group for the writer threads of sharded checkpoints: their
    collectives then never meet the training's (every rank calls it, at the same point)."""
    import datetime

    import torch.distributed as dist

    # its last collective waits for the slowest rank's write: longer than a training step's
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=max(4 * env.timeout, 1800)))


def resolve_out_dir(out, compiled: Compiled, resume) -> Path:
    """--out as given; resuming from a checkpoint path, that checkpoint's run folder; by
    default runs/NAME/version_K (a new K, or the newest to resume). A folder holding a
    run is never trained into again without --resume."""
    if out is None and is_path(resume):
        out = run_folder_of(Path(resume))
    if out is None:
        base = Path("runs") / compiled.spec.name
        versions = sorted(int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit())
        k = versions[-1] if (resume and versions) else (versions[-1] + 1 if versions else 0)
        out = base / f"version_{k}"
    out = Path(out)
    ckpts = out / "checkpoints"
    if ckpts.exists() and not ckpts.is_dir():
        raise ConfigError(f"cannot use {out} as the run folder: {ckpts} is a file, not a folder",
                          hint="move it aside, or choose another --out")  # fmt: skip
    if not resume and CheckpointDir(ckpts).exists():
        raise ConfigError(f"{out} already holds a run", hint="pass --resume to continue it, "
                          "or choose another --out")  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot use {out} as the run folder: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot use {out} as the run folder: it cannot be written "
                          f"({'read-only file system' if _read_only(out) else 'permission denied'})")  # fmt: skip
    return out


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# file-system failures in the words a user acts on
DISK_WORDS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.ENOENT: "it is gone (was the run folder deleted or moved?)",
              errno.ENOTDIR: "a folder on its path is gone or is a file", errno.EIO: "an I/O error (a failing disk?)"}  # fmt: skip


def disk_failure(err: OSError, run: Run) -> TrainingError | None:
    """A file-system error while training as one line: which file, what happened in plain
    words, and the last good checkpoint (a failed write never replaces one). None for
    other errors."""
    words = DISK_WORDS.get(err.errno)
    if words is None:
        return None
    try:
        run.ckpts.wait()
    except OSError:
        pass  # the same failure, met by the checkpoint writer
    last = run.ckpts.last if run.ckpts.last.exists() else None
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    if run.out is not None and not run.out.exists():
        kept = "the run folder is gone, and its checkpoints with it"
    what = f"cannot write {err.filename}" if err.filename else "cannot write to the run folder"
    failure = TrainingError(f"step {run.pos.step}: {what}: {words}; {kept}")
    failure.exit_code = 2
    failure.all_ranks = getattr(err, "shared", False)  # every rank met it, in a sharded save: rank 0 says it
    return failure


def is_path(resume) -> bool:
    return isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool)


def run_folder_of(path: Path) -> Path:
    """The run folder of a checkpoint (file or sharded folder), a checkpoints/ folder or a
    run folder."""
    if path.is_dir() and not shards.is_sharded_checkpoint(path):
        return path.parent if path.name == "checkpoints" else path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


STOPPED = "stopped.json"  # in the run folder: a run under the elastic launcher that ended on purpose


def mark_stopped(run: Run, code: int, reason: str) -> None:
    """Under the elastic launcher, say in the run folder that the run ended on purpose
    (a NaN stop, a stop signal), so restarted workers do not train it on."""
    if run.env.is_main and os.environ.get("TORCHELASTIC_RUN_ID") and run.out is not None:
        atomic_write(run.out / STOPPED, json.dumps({"code": code, "reason": reason}).encode())


def check_not_stopped(run: Run) -> None:
    """A restarted worker whose run ended on purpose exits with that run's code."""
    env = run.env

    def read():
        path = run.out / STOPPED
        if not env.restart:
            path.unlink(missing_ok=True)
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    note = on_main(env, read)
    if note:
        err = TrainingError(f"not restarting: the run ended on purpose in the previous attempt "
                            f"({note.get('reason', '?')})")  # fmt: skip
        err.all_ranks, err.exit_code = True, int(note.get("code", 1))
        raise err


def start_or_resume(run: Run, resume: bool | str | os.PathLike, force: bool) -> None:
    """Rank 0 picks and reads the checkpoint and hands it to every rank, so all resume
    from the same one (and other machines need not see the run folder, except for a
    sharded checkpoint: each rank reads its own part of it)."""
    env = run.env

    def find():
        run.ckpts.clean_temporaries()
        source = resume
        if env.restart and run.ckpts.exists():
            source = True  # restarted: what the previous attempt saved, not --resume-from's file
        if not source:
            return None
        found = resume_source(run, Path(source) if is_path(source) else None)
        if found is None and is_path(source):  # a checkpoint was named: it must be there
            raise CheckpointError(f"nothing to resume in {source}: it holds no checkpoint",
                                  hint="name a checkpoint file or a run folder that has one")  # fmt: skip
        if found is None:
            warn(f"nothing to resume in {run.out}: starting from the beginning")
        elif "sharded" in found[1] and "model" not in found[1]:  # checked here, once: no rank goes on alone
            shards.check_fits(found[0], run.model)
        return found

    found = on_main(env, find)
    if found is None:
        return
    path, state = found
    restore(run, state, path, force)
    if env.is_main:
        print(f"resuming from {path} (step {run.pos.step}, epoch {run.pos.epoch + 1}"
              + (f", {state.get('world_size', 1)} -> {env.world_size} processes"
                 if state.get("world_size", 1) != env.world_size else "") + ")", flush=True)  # fmt: skip


def resume_source(run: Run, path: Path | None) -> tuple[Path, dict] | None:
    """The checkpoint to resume from: the newest good one of the run (or of the folder
    given), or the file given. A run whose every checkpoint is damaged is an error, not
    a fresh start."""
    whole = not is_sharded(run.model)  # a sharded run reads its shards on every rank
    if path is not None and shards.is_sharded_checkpoint(path):
        return path, (load_checkpoint(path) if whole else shards.verify(path))
    if path is not None and not path.is_dir():
        return path, load_checkpoint(path)
    ckpts = run.ckpts if path is None else CheckpointDir(run_folder_of(path) / "checkpoints")
    found = ckpts.latest_good(warn, whole=whole)
    if found is None and ckpts.exists():
        raise CheckpointError(f"no checkpoint in {ckpts.folder} verifies",
                              hint="move the folder aside to start afresh")  # fmt: skip
    return found


def note_changes(saved: dict, run: Run) -> None:
    """Say which data:/train: settings differ from the checkpoint's (allowed, but the
    resumed run is then no longer the same run)."""
    changed = [f"{sec}.{k} ({saved[sec].get(k)!r} -> {v!r})" for sec, now in
               (("data", run.cfg.data), ("train", run.cfg.train)) if sec in saved
               for k, v in now.items() if saved[sec].get(k) != v]  # fmt: skip
    if changed:
        warn(f"resuming with changed settings: {', '.join(changed)}")


def warn(text: str) -> None:
    print(f"warning: {text}", flush=True)


RESUME_KEYS = {"model": dict, "optimizer": dict, "scheduler": dict, "position": dict, "spec": dict, "rng": dict}


def restore(run: Run, state: dict, path: Path, force: bool) -> None:
    in_shards = "sharded" in state and "model" not in state  # each rank reads its part below
    for key, kind in RESUME_KEYS.items():
        if in_shards and key in ("model", "optimizer"):
            continue  # a verified file may still be one no run wrote
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path} cannot be resumed from: it has no '{key}' (a checkpoint of "
                                  "weights only?)", hint="pass it to init: to start a new run from its weights")  # fmt: skip
    if not isinstance(state["spec"].get("hash"), str):
        raise CheckpointError(f"{path} cannot be resumed from: it does not say which spec it trained")
    if state["spec"]["hash"] != run.compiled.hash and not force:
        raise CheckpointError(f"the spec changed since {path} was written (hash "
                              f"{state['spec']['hash'][:12]} -> {run.compiled.hash[:12]})",
                              hint="pass --force to resume anyway")  # fmt: skip
    sharded = is_sharded(run.model)
    if in_shards:
        pass  # rank 0 checked its fit (start_or_resume); each rank reads its part below
    elif sharded:
        check_weights_fit(run.model, {k: tuple(getattr(v, "shape", ())) for k, v in state["model"].items()}, path)
    else:
        load_weights(run.model, state["model"], path)
    if run.env.is_main:
        note_changes(state.get("config", {}), run)
    saved_total = state.get("total_steps", run.total_steps)
    if run.cfg.train["scheduler"] and saved_total != run.total_steps and not force:
        raise CheckpointError(f"the run's length changed since {path} ({saved_total} -> "
                              f"{run.total_steps} steps), and its LR schedule was built for "
                              f"{saved_total}", hint="pass --force to resume anyway")  # fmt: skip
    saved = ((state.get("config") or {}).get("train") or {}).get("optimizer") or {}
    now = run.cfg.train["optimizer"]["name"]
    if isinstance(saved, dict) and saved.get("name") not in (None, now):
        raise CheckpointError(f"{path} holds {saved['name']}'s optimizer state; this run uses {now}",
                              hint="resume with the same optimizer, or start a new run from its weights "
                                   "with init:")  # fmt: skip
    try:
        if in_shards:  # every rank reads its part of the saved shards (cut anew if the world changed)
            shards.load_into(run.model, run.optimizer, path)
        elif sharded:  # every rank has the whole (broadcast by rank 0) and takes its part
            load_full_state(run.model, run.optimizer, state["model"], state["optimizer"])
        else:
            run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:  # torch: "loaded state dict has a different number ..."
        raise CheckpointError(f"{path}: its optimizer state does not fit this run's optimizer: {first_line(err)}",
                              hint="resume with the same optimizer and frozen parts, or start anew with init:") from None  # fmt: skip
    run.schedule.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.pos = Position(**state["position"])
    env, saved_world = run.env, state.get("world_size", 1)
    batch = run.cfg.data["batch_size"]
    if "samples" not in state["position"]:  # a checkpoint written before `samples` existed
        run.pos.samples = min(run.loaders.sizes[0], run.pos.batch * batch * saved_world)
    by_rank = state.get("rng_by_rank") or [state["rng"]]
    same = saved_world == env.world_size and len(by_rank) == env.world_size
    restore_rng(by_rank[env.rank] if same else state["rng"])  # same ranks: each its own stream
    if not same and env.rank:  # a rank the saved run did not have: a fresh stream, from the seed
        seed_all(rank_seed(run.cfg.train["seed"] + run.pos.step, env.rank))
    if saved_world != env.world_size:
        # the epoch goes on from the same sample (the samples all ranks had consumed),
        # rounded down to a whole optimizer step of the new world
        accum = run.cfg.train["grad_accum"]
        steps_in = run.pos.samples // (batch * env.world_size) // accum
        run.pos.batch = steps_in * accum
        run.pos.samples = min(run.pos.samples, run.pos.batch * batch * env.world_size)


def on_main(env: Env, fn):
    """`fn()` on rank 0; its result, or its error, on every rank (a user error is then
    printed by rank 0 alone)."""
    if not env.distributed:
        return fn()
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - the other ranks wait for word of it
            error = err
    result, said = broadcast((result, None if error is None else
                              (isinstance(error, TrainingError), str(error))), env)  # fmt: skip
    if error is not None:
        error.all_ranks = True
        raise error
    if said is not None:
        err = (TrainingError if said[0] else Reported)(said[1])
        err.all_ranks = True
        raise err
    return result


class Reported(ConfigError):
    """Another rank's user error, which every rank stops on (rank 0 prints it)."""

    all_ranks = True


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for what the model draws (dropout); rank 0 keeps the run's seed, so
    one process draws what a single-process run draws."""
    return (seed + 1_000_003 * rank) % 2**32


def checkpoint_state(run: Run) -> dict[str, Any] | None:
    """The checkpoint's content on rank 0 (None elsewhere). Every rank calls it: each
    rank's RNG state goes in, so a resume on as many ranks restores each stream. The
    weights are the unwrapped model's, so no key carries DDP's `module.` prefix. With
    sharded checkpoints, the weights and optimizer state are left out: each rank writes
    its shards of them."""
    rngs = gather(capture_rng(), run.env, "gathering the ranks' RNG states for a checkpoint")
    if not run.env.is_main:
        return None
    whole = {} if run.ckpts.sharded else {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}
    return {
        **whole,
        "scheduler": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rngs[0],
        "rng_by_rank": rngs if run.env.distributed else None,
        "position": asdict(run.pos),
        "spec": {"name": run.compiled.spec.name, "hash": run.compiled.hash,
                 "lock": lock_text(run)},
        "config": {"data": run.cfg.data, "train": run.cfg.train, "vars": run.variables},
        "data_info": run.loaders.fields.info,  # what serving needs of the data (a tokenizer)
        "world_size": run.env.world_size,
        "total_steps": run.total_steps,
        "yamlnet_version": package_version(),
    }  # fmt: skip


def lock_text(run: Run) -> str:
    """The resolved network as text (the same for the whole run: made once)."""
    if run.lock is None:
        run.lock = lockfile_text(run.compiled)
    return run.lock


def save_checkpoint_now(run: Run) -> Path | None:
    state = checkpoint_state(run)  # a collective: every rank is here, at the same step
    run.last_save, run.save_due = time.perf_counter(), False
    if run.ckpts.sharded:
        return run.ckpts.save_sharded(state, run.model, run.optimizer, run.pos.step)
    if not run.env.is_main:
        return None
    return run.ckpts.save(state, run.pos.step)


def save_best(run: Run) -> None:
    state = checkpoint_state(run)
    if run.ckpts.sharded:  # no gathered weights file: `yamlnet checkpoint consolidate` makes one
        run.ckpts.save_sharded(state, run.model, run.optimizer)
    elif run.env.is_main:
        run.ckpts.save_best(state)
        save_safetensors(state["model"], run.out / "best.safetensors", weights_meta(run))


def weights_meta(run: Run) -> dict[str, str]:
    return {"spec_name": run.compiled.spec.name, "spec_hash": run.compiled.hash,
            "step": str(run.pos.step)}  # fmt: skip


def write_lock(run: Run) -> None:
    if not run.env.is_main:
        return
    sections = yaml.safe_dump({"data": run.cfg.data, "train": run.cfg.train}, sort_keys=False)
    text = lock_text(run) + "# the run configuration, defaults filled in\n" + sections
    atomic_write(run.out / "spec.lock.yaml", text.encode())


def all_ready(env: Env, failure: BaseException | None) -> None:
    """On several ranks: go on only if every rank got ready; otherwise rank 0 reports the
    first failure (its own, or another rank's, named) and the others exit quietly."""
    if not env.distributed:
        if failure is not None:
            raise failure
        return
    said = None if failure is None else (isinstance(failure, TrainingError), first_line(failure))
    texts = gather(said, env, "checking every rank is ready")
    failed = [(r, t) for r, t in enumerate(texts) if t is not None]
    if not failed:
        return
    if failure is not None and env.is_main:
        failure.all_ranks = True  # rank 0's own: printed by rank 0 alone
        raise failure
    rank, (training, text) = failed[0]
    err = (TrainingError if training else Reported)(f"rank {rank}: {text}")
    err.all_ranks = True  # rank 0 prints it; the others exit quietly with its code
    raise err
