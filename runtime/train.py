"""The training loop, top to bottom: setup -> data -> model -> optimizer -> one loop
(accumulate, clip, step, log, validate, checkpoint).

Exact resume is a property of the whole loop, so it is stated here once: everything
that decides the next step is either in the checkpoint (weights, optimizer, scheduler,
scaler, every RNG state, the position in the epoch, the best metric and early-stopping
count, the partial sums of the logged loss) or a pure function of the seed and the
epoch (sample order, augmentation, loader worker seeds). Checkpoints are taken only at
optimizer-step boundaries, and nothing between two of them draws from the global RNG
except the model itself (dropout). So a run resumed from any checkpoint performs the
same float operations, in the same order, as the run that was never stopped.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..compiler.compile import Compiled, compile_spec
from ..compiler.errors import did_you_mean
from ..compiler.lockfile import lockfile_text
from . import faults, package_version
from .checkpoint import (
    CheckpointDir,
    atomic_write,
    capture_rng,
    digest,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_safetensors,
)
from .config import RunConfig, load_run
from .data import Loaders, build_loaders
from .distributed import (
    Env,
    GradientRider,
    all_sum,
    all_sum_started,
    barrier,
    broadcast,
    comm_failure,
    gather,
    is_comm_error,
    launched_world,
    same_everywhere,
    setup_env,
    shutdown,
    sync_buffers,
)
from .errors import CheckpointError, ConfigError, TrainingError, first_line
from .evaluate import Evaluator, autocast_for
from .log import NullLog, RunLog, format_duration
from .optim import Schedule, build_optimizer, build_scheduler
from .tasks import Task, as_tuple, build_task, sample_batch, to_device

__all__ = ["train", "TrainResult", "Position", "prepare", "plan", "Run",
           "resolve_out_dir", "EXIT_SIGNAL_BASE"]  # fmt: skip

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
    stopped: str  # finished | max_steps | early_stopping | SIGTERM | SIGINT
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
    stop: Any = None  # the _StopSignals of the run
    stopping: str | None = None  # a stop signal every rank has seen (SIGTERM, SIGINT)
    last_save: float = 0.0  # perf_counter() at the last resumable checkpoint (or the start)
    save_due: bool = False  # rank 0's clock asks for a checkpoint (every rank has seen it)
    pending: list = field(default_factory=list)  # losses of the accumulation group so far
    pending_terms: list = field(default_factory=list)  # and their terms (several terms)


def train(spec: str | os.PathLike, *, config: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None, resume: bool | str = False, force: bool = False,
          plugins: tuple[str, ...] = (), stream=None, **overrides: Any) -> TrainResult:  # fmt: skip
    """Train a spec from its `data:`/`train:` sections. Keyword overrides use `--set` keys:
    dotted ones for the run (`**{"train.epochs": 3}`), plain names for variables.

        >>> result = yamlnet.train("specs/digits_cnn.yaml", **{"train.epochs": 2})  # doctest: +SKIP
        >>> result.metrics["val/accuracy"]                                          # doctest: +SKIP
    """
    with _torch_settings_restored():
        run = prepare(spec, config=config, out=out, resume=resume, force=force, plugins=plugins,
                      overrides=overrides)  # fmt: skip
        together = True  # every rank ends here alike, unless an error of one rank's own
        try:
            with _StopSignals() as stop, _setup_objects_frozen():
                run.stop = stop
                run.log = (RunLog if run.env.is_main else NullLog)(
                    run.out, _columns(run), run.total_steps, resume_step=run.pos.step, stream=stream)
                result = _loop(run)
            if result.stopped.startswith("SIG"):
                _mark_stopped(run, result.exit_code, f"stopped by {result.stopped}")
            return result
        except BaseException as err:
            together = getattr(err, "all_ranks", False)
            if together and isinstance(err, TrainingError):
                _mark_stopped(run, 1, str(err))
            raise
        finally:
            if run.log is not None:
                run.log.close()
            run.ckpts.close()  # whatever happened, a checkpoint being written gets finished
            shutdown(run.env, together)


@contextmanager
def _torch_settings_restored():
    """A run sets torch's global determinism switches; a caller's are put back after."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)  # fmt: skip
    try:
        yield
    finally:
        _use_deterministic(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.utils.deterministic.fill_uninitialized_memory = saved[3]


@contextmanager
def _setup_objects_frozen():
    """The objects alive when the loop starts (torch's and every imported module's, the
    model, the caller's: hundreds of thousands) moved out of the garbage collector's reach
    while it runs, as `gc.freeze` does. Python's full collections scan every tracked
    object; the loop's own allocations (a checkpoint's above all) set one off now and then,
    and with ~420k objects each took 180 ms, in a digits CNN benchmark whose 180 measured
    steps take 1.4 s. Frozen, a collection scans only what the loop made.
    The price: one collection first (50 ms with torch alone loaded, 180 ms at 420k
    objects), so the setup's garbage is not kept alive; and frozen objects that become
    garbage in a reference cycle during training are freed only after it (without a
    cycle they are freed at once, as ever). Afterwards everything is unfrozen,
    whatever froze it. Skipped when the caller froze objects itself (its arrangement
    stands) or switched the collector off."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _use_deterministic(on: bool, *, warn_only: bool, compiled: bool = False) -> None:
    """`torch.use_deterministic_algorithms`, which also sets TorchInductor's own flag and
    so imports TorchInductor: 1.5 s of a 6 s quick start. A run that does not compile
    (and a process that has not loaded TorchInductor) needs only the flag the eager
    kernels read; TorchInductor, loaded later, starts from its own default."""
    if compiled or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(on, warn_only=warn_only)


# -- setup -----------------------------------------------------------------------------


def prepare(spec, *, config=None, out=None, resume: bool | str = False, force: bool = False,
            plugins=(), overrides=None) -> Run:  # fmt: skip
    """Compile the spec, check the run config, build data, model and optimizer, and
    restore a checkpoint when resuming."""
    source, cfg, var_over = load_run(spec, config, overrides)
    with cfg.located():  # builders name a spec path; this adds its file:line:col
        env = setup_env(cfg.train["device"], cfg.train["dist_timeout"])
        try:
            failure, run = None, None
            try:  # what each rank does alone; then all agree it went well
                seed = cfg.train["seed"]
                _seed_all(seed)  # every rank builds the same initial weights
                _set_determinism(cfg.train["deterministic"], env, cfg.train["compile"])
                compiled = compile_spec(source, {**cfg.vars, **var_over}, plugins=tuple(plugins))
                run = _build(cfg, env, compiled, var_over)
            except Exception as err:  # noqa: BLE001 - every rank must hear of it, or they wait
                failure = err
            _all_ready(env, failure)
            same_everywhere(compiled.hash, env, "network (graph hash)")
            same_everywhere(digest({"data": cfg.data, "train": cfg.train}), env, "run configuration")
            if env.rank:
                _seed_all(_rank_seed(seed, env.rank))  # dropout differs across ranks
            run.forward = _wrap_ddp(run.evaluate, compiled, cfg, env)
            _open_run(run, out, resume, force)
            return run
        except BaseException as err:
            shutdown(env, getattr(err, "all_ranks", False))
            raise


def _all_ready(env: Env, failure: BaseException | None) -> None:
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
    err = (TrainingError if training else _Reported)(f"rank {rank}: {text}")
    err.all_ranks = True  # rank 0 prints it; the others exit quietly with its code
    raise err


def _rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for what the model draws (dropout); rank 0 keeps the run's seed, so
    one process draws what a single-process run draws."""
    return (seed + 1_000_003 * rank) % 2**32


def plan(spec, *, config=None, out=None, resume: bool | str = False, plugins=(),
         overrides=None) -> Path:  # fmt: skip
    """What a launcher checks before it starts workers: the spec compiles and the run
    configuration is valid (a mistake is one error here, not one per worker). Returns the
    run folder, made now, so that restarted workers resume this run."""
    source, cfg, var_over = load_run(spec, config, overrides)
    with cfg.located():
        compiled = compile_spec(source, {**cfg.vars, **var_over}, plugins=tuple(plugins))
        loaders = build_loaders(cfg.data, seed=cfg.train["seed"])
        build_task(compiled, cfg, loaders.fields, _first_batch(loaders, cfg), torch.device("cpu"))
        build_optimizer(cfg.train["optimizer"], compiled.module.parameters())
        return resolve_out_dir(out, compiled, resume)


def _build(cfg: RunConfig, env: Env, compiled: Compiled, var_over) -> Run:
    """Data, model, optimizer, schedule, checked on two samples (each rank alone)."""
    tcfg = cfg.train
    model = compiled.module.to(env.device)
    if tcfg["sync_batchnorm"] and env.device.type != "cuda":
        raise cfg.error("SyncBatchNorm runs on CUDA devices only", ("train", "sync_batchnorm"),
                        "set it to false on CPU (each process then normalises its own batch)")  # fmt: skip
    if env.distributed and tcfg["sync_batchnorm"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loaders = build_loaders(cfg.data, seed=tcfg["seed"], rank=env.rank, world=env.world_size,
                            pin_memory=_pin_memory(cfg, env))  # fmt: skip
    task = build_task(compiled, cfg, loaders.fields, _first_batch(loaders, cfg), env.device)
    batches = len(loaders.train)
    steps_per_epoch = -(-batches // tcfg["grad_accum"])
    total = tcfg["max_steps"] or tcfg["epochs"] * steps_per_epoch
    optimizer = build_optimizer(tcfg["optimizer"], model.parameters())
    monitor, mode = _monitor(cfg, loaders, task)
    inner = torch.compile(model) if tcfg["compile"] else model
    run = Run(
        cfg=cfg, env=env, compiled=compiled, model=model,
        forward=inner, evaluate=inner,  # DDP wraps it once every rank is ready
        loaders=loaders, task=task, optimizer=optimizer,
        schedule=build_scheduler(tcfg["scheduler"], optimizer, steps_per_epoch=steps_per_epoch,
                                 total_steps=total, mode=mode),
        scaler=torch.amp.GradScaler(env.device.type, enabled=tcfg["precision"] == "16-mixed"),
        autocast=autocast_for(tcfg["precision"], env.device), out=None,
        ckpts=None, monitor=monitor, mode=mode,
        epoch_batches=batches, total_steps=total, variables={**cfg.vars, **var_over},
    )  # fmt: skip
    _preflight(run)  # before the run folder exists: a run that cannot start leaves none
    return run


def _open_run(run: Run, out, resume, force) -> None:
    """The run folder and its checkpoints; the resumed state when resuming."""
    env, compiled = run.env, run.compiled
    if env.restart and not resume:
        resume = True  # the elastic launcher restarted the workers: go on from the checkpoint
    if env.restart and env.is_main:
        limit = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")
        print(f"restart {env.restart} of {limit}: a worker failed; the workers start again",
              flush=True)  # fmt: skip
    run.out = _on_main(env, lambda: resolve_out_dir(out, compiled, resume))
    run.ckpts = CheckpointDir(run.out / "checkpoints", keep=run.cfg.train["keep_checkpoints"],
                              background=run.env.device.type != "cpu")  # fmt: skip
    _check_not_stopped(run)
    _start_or_resume(run, resume, force)


STOPPED = "stopped.json"  # in the run folder: a run under the elastic launcher that ended on purpose


def _mark_stopped(run: Run, code: int, reason: str) -> None:
    """Under the elastic launcher, say in the run folder that the run ended on purpose
    (a NaN stop, a stop signal), so restarted workers do not train it on."""
    if run.env.is_main and os.environ.get("TORCHELASTIC_RUN_ID") and run.out is not None:
        atomic_write(run.out / STOPPED, json.dumps({"code": code, "reason": reason}).encode())


def _check_not_stopped(run: Run) -> None:
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

    note = _on_main(env, read)
    if note:
        err = TrainingError(f"not restarting: the run ended on purpose in the previous attempt "
                            f"({note.get('reason', '?')})")  # fmt: skip
        err.all_ranks, err.exit_code = True, int(note.get("code", 1))
        raise err


def _wrap_ddp(module: torch.nn.Module, compiled: Compiled, cfg: RunConfig, env: Env):
    """DistributedDataParallel on several ranks (it averages the gradients, so a step on
    N ranks with batch B is a step with batch N*B); the module itself on one."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    unused = cfg.train["find_unused_parameters"]
    if unused is None:  # a spec with several outputs may leave parameters out of the loss
        unused = len(compiled.spec.outputs) > 1
    ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)
    ddp.rider = GradientRider(env)
    ddp.register_comm_hook(ddp.rider, GradientRider.hook)
    return ddp


def _on_main(env: Env, fn):
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
        err = (TrainingError if said[0] else _Reported)(said[1])
        err.all_ranks = True
        raise err
    return result


class _Reported(ConfigError):
    """Another rank's user error, which every rank stops on (rank 0 prints it)."""

    all_ranks = True


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _set_determinism(on: bool, env: Env, compiled: bool) -> None:
    """Deterministic kernels, without the NaN fill of every new tensor that PyTorch's switch
    also turns on: the fill guards against kernels that read memory they never wrote,
    cost up to 4% of a digits CNN step on CPU (0-4% across runs), and the exact-resume
    tests (bitwise equal weights) pass without it."""
    if on and env.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
    _use_deterministic(on, warn_only=True, compiled=compiled)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not on


def _pin_memory(cfg: RunConfig, env: Env) -> bool:
    pin = cfg.data["pin_memory"]
    return env.device.type == "cuda" if pin is None else pin


def _first_batch(loaders: Loaders, cfg: RunConfig) -> dict:
    """Two training samples, collated: what the task is sized from and the preflight runs."""
    try:
        return sample_batch(loaders.train.dataset)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise cfg.error(f"cannot load a training sample: {first_line(err)}", ("data", "transforms"),
                        "do the transforms fit the samples?") from None  # fmt: skip


def _preflight(run: Run) -> None:
    """One forward pass and loss on two training samples before any step, so a loss that
    does not fit the outputs or the targets is reported up front, not at step 1. (Eval
    mode: no dropout draws, no BatchNorm statistics touched.)"""
    batch = to_device(run.env.device, _first_batch(run.loaders, run.cfg), run.task.fields)
    name = " + ".join(t.fn.__class__.__name__ for t in run.task.terms)
    outs = None
    run.model.eval()
    try:
        with torch.no_grad(), run.autocast(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = as_tuple(run.model(*run.task.inputs(batch)))
            loss, _ = run.task.loss(outs, batch)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        shapes = [list(outs[t.output].shape) for t in run.task.terms] if outs is not None else "?"
        targets = [f"{list(batch[t.target].shape)} {batch[t.target].dtype}" for t in run.task.terms]
        raise run.cfg.error(f"{name} cannot take outputs {', '.join(map(str, shapes))} and targets "
                            f"{', '.join(targets)}: {first_line(err)}", ("train", "loss"),
                            _class_dim_hint(run, outs)) from None  # fmt: skip
    finally:
        run.model.train()
    pred = outs[run.task.terms[0].output]
    y = batch[run.task.terms[0].target]
    if any("target size" in str(w.message) for w in caught):
        raise run.cfg.error(f"{name} got outputs {list(pred.shape)} but targets {list(y.shape)}; it "
                            "would broadcast them", ("train", "loss"),
                            "make the targets the output's shape") from None  # fmt: skip
    if loss.dim() != 0:
        raise run.cfg.error(f"{name} gives a tensor of shape {list(loss.shape)}, not one number",
                            ("train", "loss"), "use reduction: mean or sum")  # fmt: skip


def _class_dim_hint(run: Run, outs) -> str:
    """For scores whose classes are not at dim 1 ([N, T, vocab]): say class_dim."""
    if outs is None:
        return ""
    shapes = [tuple(outs[t.output].shape) for t in run.task.terms]
    if any(len(s) > 2 and t.class_dim == 1 for s, t in zip(shapes, run.task.terms, strict=True)):
        return "for scores shaped [N, T, classes] set class_dim: -1 on the loss"
    return ""


def _monitor(cfg: RunConfig, loaders: Loaders, task: Task) -> tuple[str | None, str]:
    tcfg = cfg.train
    modes = {f"val/{k}": v for k, v in task.modes().items()}
    names = list(modes)
    monitor = tcfg["monitor"] or ("val/accuracy" if "val/accuracy" in names else "val/loss")
    if monitor not in names:
        raise cfg.error(f"cannot monitor '{monitor}'", ("train", "monitor"),
                        did_you_mean(monitor, names) or "measured: " + ", ".join(names))  # fmt: skip
    if monitor.startswith("val/") and loaders.val is None:
        if tcfg["early_stopping"] or tcfg["monitor"]:
            raise cfg.error(f"'{monitor}' needs validation data; this dataset has none",
                            ("train", "monitor"))  # fmt: skip
        monitor = None
    return monitor, tcfg["mode"] or (modes[monitor] if monitor else "min")


def resolve_out_dir(out, compiled: Compiled, resume) -> Path:
    """--out as given; resuming from a checkpoint path, that checkpoint's run folder; by
    default runs/NAME/version_K (a new K, or the newest to resume). A folder holding a
    run is never trained into again without --resume."""
    if out is None and _is_path(resume):
        out = run_folder_of(Path(resume))
    if out is None:
        base = Path("runs") / compiled.spec.name
        versions = sorted(int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit())
        k = versions[-1] if (resume and versions) else (versions[-1] + 1 if versions else 0)
        out = base / f"version_{k}"
    out = Path(out)
    if not resume and CheckpointDir(out / "checkpoints").exists():
        raise ConfigError(f"{out} already holds a run", hint="pass --resume to continue it, "
                          "or choose another --out")  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot use {out} as the run folder: {err.strerror or err}") from None
    return out


def _is_path(resume) -> bool:
    return isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool)


def run_folder_of(path: Path) -> Path:
    """The run folder of a checkpoint file, a checkpoints/ folder or a run folder."""
    if path.is_dir():
        return path.parent if path.name == "checkpoints" else path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _start_or_resume(run: Run, resume: bool | str | os.PathLike, force: bool) -> None:
    """Rank 0 picks and reads the checkpoint and hands it to every rank, so all resume
    from the same one (and other machines need not see the run folder)."""
    env = run.env

    def find():
        run.ckpts.clean_temporaries()
        source = resume
        if env.restart and run.ckpts.exists():
            source = True  # restarted: what the previous attempt saved, not --resume-from's file
        if not source:
            return None
        found = _resume_source(run, Path(source) if _is_path(source) else None)
        if found is None:
            _warn(f"nothing to resume in {run.out}: starting from the beginning")
        return found

    found = _on_main(env, find)
    if found is None:
        return
    path, state = found
    _restore(run, state, path, force)
    if env.is_main:
        print(f"resuming from {path} (step {run.pos.step}, epoch {run.pos.epoch + 1}"
              + (f", {state.get('world_size', 1)} -> {env.world_size} processes"
                 if state.get("world_size", 1) != env.world_size else "") + ")", flush=True)  # fmt: skip


def _resume_source(run: Run, path: Path | None) -> tuple[Path, dict] | None:
    """The checkpoint to resume from: the newest good one of the run (or of the folder
    given), or the file given. A run whose every checkpoint is damaged is an error, not
    a fresh start."""
    if path is not None and not path.is_dir():
        return path, load_checkpoint(path)
    ckpts = run.ckpts if path is None else CheckpointDir(run_folder_of(path) / "checkpoints")
    found = ckpts.latest_good(_warn)
    if found is None and ckpts.exists():
        raise CheckpointError(f"no checkpoint in {ckpts.folder} verifies",
                              hint="move the folder aside to start afresh")  # fmt: skip
    return found


def _note_changes(saved: dict, run: Run) -> None:
    """Say which data:/train: settings differ from the checkpoint's (allowed, but the
    resumed run is then no longer the same run)."""
    changed = [f"{sec}.{k} ({saved[sec].get(k)!r} -> {v!r})" for sec, now in
               (("data", run.cfg.data), ("train", run.cfg.train)) if sec in saved
               for k, v in now.items() if saved[sec].get(k) != v]  # fmt: skip
    if changed:
        _warn(f"resuming with changed settings: {', '.join(changed)}")


def _warn(text: str) -> None:
    print(f"warning: {text}", flush=True)


def _restore(run: Run, state: dict, path: Path, force: bool) -> None:
    if state["spec"]["hash"] != run.compiled.hash and not force:
        raise CheckpointError(f"the spec changed since {path} was written (hash "
                              f"{state['spec']['hash'][:12]} -> {run.compiled.hash[:12]})",
                              hint="pass --force to resume anyway")  # fmt: skip
    load_weights(run.model, state["model"], path)
    _note_changes(state.get("config", {}), run)
    saved_total = state.get("total_steps", run.total_steps)
    if run.cfg.train["scheduler"] and saved_total != run.total_steps and not force:
        raise CheckpointError(f"the run's length changed since {path} ({saved_total} -> "
                              f"{run.total_steps} steps), and its LR schedule was built for "
                              f"{saved_total}", hint="pass --force to resume anyway")  # fmt: skip
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["scheduler"])
    if state["scaler"]:
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
        _seed_all(_rank_seed(run.cfg.train["seed"] + run.pos.step, env.rank))
    if saved_world != env.world_size:
        # the epoch goes on from the same sample (the samples all ranks had consumed),
        # rounded down to a whole optimizer step of the new world
        accum = run.cfg.train["grad_accum"]
        steps_in = run.pos.samples // (batch * env.world_size) // accum
        run.pos.batch = steps_in * accum
        run.pos.samples = min(run.pos.samples, run.pos.batch * batch * env.world_size)


# -- the loop --------------------------------------------------------------------------


def _loop(run: Run) -> TrainResult:
    tcfg, pos, log = run.cfg.train, run.pos, run.log
    _write_lock(run)
    log.say(_banner(run))
    n_train = run.loaders.sizes[0]
    run.last_save = time.perf_counter()
    ending = _ending(run)
    while ending is None:
        run.loaders.train_sampler.set_epoch(pos.epoch, start=pos.samples)
        run.loaders.train.generator.manual_seed((tcfg["seed"] * 100_003 + pos.epoch) % 2**63)
        run.epoch_batches = pos.batch + len(run.loaders.train)
        first = run.task.feeds[0]
        for batch in run.loaders.train:
            _guarded_micro_step(run, batch)
            pos.batch += 1
            pos.samples = min(n_train, pos.samples + len(batch[first]) * run.env.world_size)
            if not _steps_now(run, pos.batch):
                continue  # accumulating
            _optimizer_step(run)
            ending = _after_step(run)
            if ending is not None:
                break
        else:
            ending = _after_epoch(run)
    return _finish(run, ending)


def _steps_now(run: Run, batch: int) -> bool:
    """Whether the epoch's `batch`-th micro-batch ends an accumulation group (or the epoch)."""
    return batch % run.cfg.train["grad_accum"] == 0 or batch == run.epoch_batches


def _ending(run: Run) -> str | None:
    pos, tcfg = run.pos, run.cfg.train
    if tcfg["max_steps"] and pos.step >= tcfg["max_steps"]:
        return "max_steps"
    if not tcfg["max_steps"] and pos.epoch >= tcfg["epochs"]:
        return "finished"
    return None


def _guarded_micro_step(run: Run, batch: dict) -> None:
    """A failure inside PyTorch at some step (a label out of range for the head, say) ends
    the run with one line naming the step; the last good checkpoint stays."""
    try:
        _micro_step(run, batch)
    except (RuntimeError, IndexError, ValueError) as err:
        pos = run.pos
        if run.env.distributed and is_comm_error(err):
            raise TrainingError(comm_failure(run.env, f"step {pos.step + 1}", err)) from None
        raise TrainingError(f"step {pos.step + 1} (epoch {pos.epoch + 1}, batch {pos.batch + 1}): "
                            f"{first_line(err).rstrip('.')}; {_kept(run)}") from err  # fmt: skip


def _kept(run: Run) -> str:
    run.ckpts.wait()  # the newest checkpoint may still be on its way to the disk
    last = run.ckpts.last if run.ckpts.last.exists() else None
    return f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"


def _micro_step(run: Run, batch: dict) -> None:
    """Forward and backward of one micro-batch; a non-finite loss stops or is skipped.
    On several ranks, the ranks' losses and pending stop signals are shared (one small
    all-reduce, travelling while backward runs), so every rank takes the same decision
    at the same step. A batch that may be skipped waits for it before backward."""
    batch = to_device(run.env.device, batch, run.task.fields)
    # a skipped batch must leave no trace, but its forward pass has already moved the
    # BatchNorm running statistics (to NaN): keep the buffers to put them back
    skip = run.cfg.train["on_nonfinite"] == "skip"
    kept = [b.detach().clone() for b in run.model.buffers()] if skip else []
    syncs = _steps_now(run, run.pos.batch + 1)  # DDP all-reduces the gradients in this backward only
    with _no_sync(run, syncs), run.autocast():
        loss, parts = run.task.loss(as_tuple(run.forward(*run.task.inputs(batch))), batch)
    terms = torch.stack([p.detach().float() for p in parts]) if len(parts) > 1 else None
    if faults.fault_at("nan_at_step", run.pos.step + 1, run.env.rank):
        loss = loss * float("nan")
    if run.env.distributed and not skip:
        _ddp_backward(run, loss, syncs, terms)
        return
    shared = _share_losses(run, loss, terms)
    if not skip:
        _backward(run, loss, syncs)  # (a NaN stops the run below: its gradients go unused)
    values, term_values = shared()
    bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        _non_finite(run, values[bad[0]], kept, bad)
        if syncs and run.env.distributed:
            _average_gradients(run)  # the skipped backward would have done it
        return
    run.pos.loss_sum += sum(values) / len(values)
    run.pos.loss_count += 1
    _add_terms(run.pos, term_values)
    if skip:
        _backward(run, loss, syncs)


def _add_terms(pos: Position, values: list[float] | None) -> None:
    """Each loss term's (rank-mean) value into its running sum, for the logged rows."""
    if values is not None:
        pos.term_sums = [a + b for a, b in zip(pos.term_sums or [0.0] * len(values), values, strict=True)]


def _ddp_backward(run: Run, loss: torch.Tensor, syncs: bool, terms: torch.Tensor | None) -> None:
    """Backward on several ranks. The losses of an accumulation group, and any stop
    signal, ride with the group's gradient all-reduce (GradientRider); the decisions
    (stop on a NaN, log the mean loss) are taken at the group's end, alike on all ranks."""
    env = run.env
    run.pending.append(loss.detach())
    if terms is not None:
        run.pending_terms.append(terms)
    if syncs:
        group_terms = torch.stack(run.pending_terms).sum(0) if run.pending_terms else None
        run.forward.rider.carry(_step_extras(run, torch.stack(run.pending).sum(), group_terms))
    _backward(run, loss, syncs)
    if not syncs:
        return
    shared = run.forward.rider.take().tolist()
    count = len(run.pending)
    run.pending.clear()
    run.pending_terms.clear()
    _note_shared(run, shared)
    values = shared[: env.world_size]
    bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        _non_finite(run, values[bad[0]], [], bad)  # stops (skipping takes the other path)
    run.pos.loss_sum += sum(values) / env.world_size
    run.pos.loss_count += count
    _add_terms(run.pos, _shared_terms(shared, env.world_size))


def _step_extras(run: Run, loss_sum: torch.Tensor, terms: torch.Tensor | None = None) -> torch.Tensor:
    """[this rank's loss in its slot, SIGTERM seen, SIGINT seen, a checkpoint due by rank
    0's clock, then each loss term (several terms)], to sum over ranks."""
    env = run.env
    k = 0 if terms is None else len(terms)
    extras = torch.zeros(env.world_size + 3 + k, dtype=torch.float32, device=env.device)
    extras[env.rank] = loss_sum.float()
    if k:
        extras[env.world_size + 3 :] = terms
    signum = run.stop.signum if run.stop is not None else None
    if signum is not None:
        extras[env.world_size + (signum == signal.SIGINT)] = 1
    if env.rank == 0 and _clock_says_save(run):
        extras[env.world_size + 2] = 1
    return extras


def _note_shared(run: Run, shared: list[float]) -> None:
    """Take the stop signals and rank 0's checkpoint request from the shared extras."""
    world = run.env.world_size
    if shared[world]:
        run.stopping = "SIGTERM"
    elif shared[world + 1]:
        run.stopping = "SIGINT"
    run.save_due = bool(shared[world + 2])


def _backward(run: Run, loss: torch.Tensor, syncs: bool) -> None:
    group = _group_size(run)
    with _no_sync(run, syncs):
        run.scaler.scale(loss / group if group > 1 else loss).backward()


def _no_sync(run: Run, syncs: bool):
    """DDP's no_sync while accumulating: gradients are all-reduced once per step."""
    if run.env.distributed and not syncs:
        return run.forward.no_sync()
    return nullcontext()


def _share_losses(run: Run, loss: torch.Tensor, terms: torch.Tensor | None):
    """Start sharing this micro-batch's loss (and its terms) and any pending stop signal;
    returns the function giving every rank's loss and the terms' rank-mean (and setting
    run.stopping when one must stop)."""
    env = run.env
    if not env.distributed:
        return lambda: ([loss.item()], None if terms is None else terms.tolist())
    pos = run.pos
    wait = all_sum_started(_step_extras(run, loss.detach(), terms), env,
                           f"step {pos.step + 1} (epoch {pos.epoch + 1})")  # fmt: skip

    def values() -> tuple[list[float], list[float] | None]:
        out = wait().tolist()
        _note_shared(run, out)
        return out[: env.world_size], _shared_terms(out, env.world_size)

    return values


def _shared_terms(shared: list[float], world: int) -> list[float] | None:
    terms = shared[world + 3 :]
    return [v / world for v in terms] if terms else None


def _average_gradients(run: Run) -> None:
    world = run.env.world_size
    for p in run.model.parameters():
        if p.grad is not None:
            all_sum(p.grad, run.env, "averaging gradients").div_(world)


def _group_size(run: Run) -> int:
    """Micro-batches in the current accumulation group (the epoch's last may be short),
    so the step's gradient is the mean over the batches it saw."""
    accum = run.cfg.train["grad_accum"]
    first = run.pos.batch // accum * accum
    return min(accum, run.epoch_batches - first)


def _non_finite(run: Run, value: float, kept: list[torch.Tensor], ranks: list[int]) -> None:
    pos = run.pos
    on = f", on rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}" if run.env.distributed else ""
    where = f"step {pos.step + 1} (epoch {pos.epoch + 1}, batch {pos.batch + 1}{on})"
    if run.cfg.train["on_nonfinite"] == "skip":
        with torch.no_grad():
            for buf, old in zip(run.model.buffers(), kept, strict=True):
                buf.copy_(old)
        pos.skipped += 1
        run.log.say(f"warning: {where}: loss is {value}; skipping this batch")
        return
    err = TrainingError(f"{where}: loss is {value}; stopping ({_kept(run)}; set "
                        "train.on_nonfinite: skip to skip such batches)")  # fmt: skip
    err.all_ranks = True  # every rank stops here with this message; rank 0 prints it
    raise err


def _optimizer_step(run: Run) -> None:
    clip = run.cfg.train["grad_clip"]
    if clip is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.schedule.step("step")
    run.pos.step += 1


def _after_step(run: Run) -> str | None:
    """Log, validate, checkpoint as due; the reason to stop, if any."""
    pos, tcfg = run.pos, run.cfg.train
    if faults.fault_at("kill_after_step", pos.step, run.env.rank):
        run.ckpts.wait()  # the fault point: after step N, every earlier checkpoint on disk
        faults.die()
    if faults.fault_at("hang_after_step", pos.step, run.env.rank):
        faults.hang()
    due = pos.step % tcfg["log_every_n_steps"] == 0
    run.log.progress(pos.step, pos.epoch, tcfg["epochs"], pos.loss_sum / max(pos.loss_count, 1), due)
    if due:
        _log_train(run)
    ending = None
    if tcfg["val_every_n_steps"] and pos.step % tcfg["val_every_n_steps"] == 0:
        ending = _validate(run)
    ending = ending or _ending(run)
    every = tcfg["checkpoint_every_n_steps"]
    stopping = _stop_signal(run)
    if stopping is not None:
        ending = stopping
    # at an epoch's last step, _after_epoch validates first and then saves (if due)
    deferred = pos.batch == run.epoch_batches and _epoch_checkpoint_due(run, pos.epoch + 1)
    if ending is None and not deferred and (every and pos.step % every == 0 or _time_to_save(run)):
        _checkpoint(run)
    return ending


def _time_to_save(run: Run) -> bool:
    """`checkpoint_every_n_minutes` since the last checkpoint. On several ranks rank 0's
    clock decides, its answer riding with the step's all-reduce: every rank saves at the
    same step (a checkpoint is a collective)."""
    return run.save_due if run.env.distributed else _clock_says_save(run)


def _clock_says_save(run: Run) -> bool:
    minutes = run.cfg.train["checkpoint_every_n_minutes"]
    return bool(minutes) and time.perf_counter() - run.last_save >= 60 * minutes


def _stop_signal(run: Run) -> str | None:
    """SIGTERM/SIGINT if one asked the run to stop (on any rank: all stop together)."""
    if run.env.distributed:
        return run.stopping
    signum = run.stop.signum if run.stop is not None else None
    return signal.Signals(signum).name if signum is not None else None


def _after_epoch(run: Run) -> str | None:
    pos, tcfg = run.pos, run.cfg.train
    pos.epoch += 1
    pos.batch = pos.samples = 0
    run.schedule.step("epoch")
    ending = None
    every = tcfg["val_every_n_epochs"]
    if every and pos.epoch % every == 0 and pos.val_step != pos.step:
        ending = _validate(run)
    ending = ending or _ending(run)
    if ending is None and _epoch_checkpoint_due(run, pos.epoch):
        _checkpoint(run)
    return ending


def _epoch_checkpoint_due(run: Run, epochs_done: int) -> bool:
    every = run.cfg.train["checkpoint_every_n_epochs"]
    return bool(every) and epochs_done % every == 0


def _log_train(run: Run) -> None:
    pos = run.pos
    if pos.loss_count:
        lr = run.optimizer.param_groups[0]["lr"]
        row = {"train/loss": pos.loss_sum / pos.loss_count, "lr": lr}
        for label, total in zip(run.task.loss_labels(), pos.term_sums, strict=False):
            row[f"train/{label}"] = total / pos.loss_count
        run.log.write(pos.step, pos.epoch, row)
    pos.loss_sum, pos.loss_count, pos.term_sums = 0.0, 0, []


def _validate(run: Run) -> str | None:
    """Evaluate, log, keep best.pt, step a plateau schedule; 'early_stopping' if due."""
    pos = run.pos
    pos.val_step = pos.step
    if run.loaders.val is None:
        return None
    sync_buffers(run.model, run.env)  # every rank validates the model rank 0 saves
    values = _evaluator(run)(run.loaders.val)
    run.log.write(pos.step, pos.epoch, values)
    improved = _is_better(run, values.get(run.monitor)) if run.monitor else False
    text = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
    run.log.say(f"epoch {pos.epoch + (pos.batch > 0)} step {pos.step}: {text}"
                + (" (best)" if improved else ""))  # fmt: skip
    if improved:
        pos.best, pos.best_step, pos.stale = values[run.monitor], pos.step, 0
        _save_best(run)
    elif run.monitor:
        pos.stale += 1
    run.schedule.step("val", values.get(run.monitor))
    es = run.cfg.train["early_stopping"]
    return "early_stopping" if es and pos.stale >= es["patience"] else None


def _evaluator(run: Run) -> Evaluator:
    return Evaluator(run.model, run.evaluate, run.task, run.autocast, run.env)


def _is_better(run: Run, value: float | None) -> bool:
    if value is None or not math.isfinite(value):
        return False
    best = run.pos.best
    if best is None:
        return True
    delta = (run.cfg.train["early_stopping"] or {}).get("min_delta", 0)
    return value < best - delta if run.mode == "min" else value > best + delta


# -- checkpoints and the end -----------------------------------------------------------


def _state(run: Run) -> dict[str, Any] | None:
    """The checkpoint's content on rank 0 (None elsewhere). Every rank calls it: each
    rank's RNG state goes in, so a resume on as many ranks restores each stream. The
    weights are the unwrapped model's, so no key carries DDP's `module.` prefix."""
    rngs = gather(capture_rng(), run.env, "gathering the ranks' RNG states for a checkpoint")
    if not run.env.is_main:
        return None
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rngs[0],
        "rng_by_rank": rngs if run.env.distributed else None,
        "position": asdict(run.pos),
        "spec": {"name": run.compiled.spec.name, "hash": run.compiled.hash,
                 "lock": _lock_text(run)},
        "config": {"data": run.cfg.data, "train": run.cfg.train, "vars": run.variables},
        "data_info": run.loaders.fields.info,  # what serving needs of the data (a tokenizer)
        "world_size": run.env.world_size,
        "total_steps": run.total_steps,
        "yamlnet_version": package_version(),
    }  # fmt: skip


def _lock_text(run: Run) -> str:
    """The resolved network as text (the same for the whole run: made once)."""
    if run.lock is None:
        run.lock = lockfile_text(run.compiled)
    return run.lock


def _checkpoint(run: Run) -> Path | None:
    state = _state(run)  # a collective: every rank is here, at the same step
    run.last_save, run.save_due = time.perf_counter(), False
    if not run.env.is_main:
        return None
    return run.ckpts.save(state, run.pos.step)


def _save_best(run: Run) -> None:
    state = _state(run)
    if run.env.is_main:
        run.ckpts.save_best(state)
        save_safetensors(run.model.state_dict(), run.out / "best.safetensors", _weights_meta(run))


def _weights_meta(run: Run) -> dict[str, str]:
    return {"spec_name": run.compiled.spec.name, "spec_hash": run.compiled.hash,
            "step": str(run.pos.step)}  # fmt: skip


def _finish(run: Run, ending: str) -> TrainResult:
    pos = run.pos
    if ending in ("finished", "max_steps") and pos.val_step != pos.step:
        _validate(run)
    if pos.loss_count and not ending.startswith("SIG"):  # a resumed run logs these itself
        _log_train(run)
    last = _checkpoint(run)
    run.ckpts.close()
    barrier(run.env, "waiting for the last checkpoint")  # no rank leaves before it is on disk
    if run.env.is_main:
        save_safetensors(run.model.state_dict(), run.out / "last.safetensors", _weights_meta(run))
    metrics = _last_metrics(run)
    seconds = time.perf_counter() - run.log.t0 if hasattr(run.log, "t0") else float("nan")
    run.log.say(_summary(run, ending, metrics, seconds))
    best = run.ckpts.best if run.ckpts.best.exists() else None
    return TrainResult(run.out, metrics, last and run.ckpts.last, best, pos.step, pos.epoch, ending,
                       seconds)  # fmt: skip


def _last_metrics(run: Run) -> dict[str, float]:
    """The newest value of each column of metrics.csv."""
    import csv

    out: dict[str, float] = {}
    path = run.out / "metrics.csv"
    if run.env.is_main and path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out.update({k: float(v) for k, v in row.items() if v and k not in ("step", "epoch", "time")})
    return out


def _write_lock(run: Run) -> None:
    if not run.env.is_main:
        return
    sections = yaml.safe_dump({"data": run.cfg.data, "train": run.cfg.train}, sort_keys=False)
    text = _lock_text(run) + "# the run configuration, defaults filled in\n" + sections
    atomic_write(run.out / "spec.lock.yaml", text.encode())


def _columns(run: Run) -> list[str]:
    cols = ["train/loss", "lr", *(f"train/{label}" for label in run.task.loss_labels())]
    if run.loaders.val is not None:
        cols += [f"val/{m}" for m in run.task.modes()]
    return cols


def _banner(run: Run) -> str:
    n_train, n_val = run.loaders.sizes
    t, spec = run.cfg.train, run.compiled.spec
    params = sum(p.numel() for p in run.model.parameters())
    batch, world, accum = run.cfg.data["batch_size"], run.env.world_size, t["grad_accum"]
    per_step = batch * world * accum
    sizes = f"{batch}" + (f" x {world} processes" if world > 1 else "") + (f" x {accum} accumulated" if accum > 1 else "")
    return (f"run {run.out}: {spec.name} ({params:,} parameters, hash {run.compiled.hash[:12]})\n"
            f"device {run.env.device}, precision {t['precision']}, {world} process(es); "
            f"data {run.cfg.data['dataset']}: {n_train} train / {n_val} val, batch "
            f"{sizes}{f' = {per_step} per step' if per_step != batch else ''}; {run.total_steps} steps")  # fmt: skip


def _summary(run: Run, ending: str, metrics: dict[str, float], seconds: float) -> str:
    took = f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
    best = (f"; best {run.monitor} {run.pos.best:.4f} at step {run.pos.best_step}"
            if run.pos.best is not None else "")  # fmt: skip
    return f"{ending} at step {run.pos.step} in {took}: {shown}{best}; saved in {run.out}"


class _StopSignals:
    """SIGTERM/SIGINT ask the loop to save and stop at the next step boundary; a second
    SIGINT raises KeyboardInterrupt at once (a second SIGTERM terminates). Python lets only
    the main thread set handlers: `train` called from another thread leaves them alone."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        self.quiet = launched_world()[0] != 0  # rank 0 alone says it

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        again = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, again)
        if self.quiet:
            return
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "and stopping" + (" (again to abort now)" if signum == signal.SIGINT else ""),
              flush=True)  # fmt: skip

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
