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

import math
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..compiler.compile import Compiled, compile_spec
from ..compiler.errors import did_you_mean
from ..compiler.validate import collect_blocks
from . import faults
from .checkpoint import (
    digest,
    save_safetensors,
)
from .config import RunConfig, load_run
from .data import DataFailure, Loaders, batches, build_loaders
from .distributed import (
    Env,
    barrier,
    same_everywhere,
    setup_env,
    shutdown,
    sync_buffers,
)
from .errors import ConfigError, TrainingError, first_line
from .evaluate import Evaluator, autocast_for
from .log import NullLog, RunLog, banner, end_summary, last_metrics, log_columns
from .optim import build_optimizer, build_scheduler, check_optimizer, check_schedule
from .process import (
    StopSignals,
    set_determinism,
    setup_objects_frozen,
    torch_settings_restored,
)
from .run import (
    EXIT_SIGNAL_BASE,
    Position,
    Run,
    TrainResult,
    all_ready,
    disk_failure,
    mark_stopped,
    open_run,
    rank_seed,
    resolve_out_dir,
    save_best,
    save_checkpoint_now,
    seed_all,
    weights_meta,
    write_lock,
)
from .sharding import shard_model, shard_units, unit_groups, unit_problem
from .step import (
    clock_says_save,
    guarded_micro_step,
    kept_checkpoint_text,
    optimizer_step,
    seed_epoch,
    steps_now,
    wrap_ddp,
)
from .tasks import Task, as_tuple, build_task, sample_batch, to_device
from .trackers import check_loggers, open_trackers

__all__ = ["train", "TrainResult", "Position", "prepare", "plan", "Run",
           "resolve_out_dir", "EXIT_SIGNAL_BASE"]  # fmt: skip


def train(spec: str | os.PathLike, *, config: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None, resume: bool | str = False, force: bool = False,
          plugins: tuple[str, ...] = (), stream=None, on_validate=None,
          **overrides: Any) -> TrainResult:  # fmt: skip
    """Train a spec from its `data:`/`train:` sections. Keyword overrides use `--set` keys:
    dotted ones for the run (`**{"train.epochs": 3}`), plain names for variables.
    `on_validate(step, values)`, if given, hears every validation; when it returns True
    the run ends there, saved, as "pruned" (what `yamlnet tune`'s pruner does).

        >>> result = yamlnet.train("specs/digits_cnn.yaml", **{"train.epochs": 2})  # doctest: +SKIP
        >>> result.metrics["val/accuracy"]                                          # doctest: +SKIP
    """
    with torch_settings_restored():
        run = prepare(spec, config=config, out=out, resume=resume, force=force, plugins=plugins,
                      overrides=overrides)  # fmt: skip
        together = True  # every rank ends here alike, unless an error of one rank's own
        status = "FAILED"  # what the trackers are told at the end (MLflow's run status)
        try:
            with StopSignals() as stop, setup_objects_frozen():
                run.stop, run.on_validate = stop, on_validate
                run.log = (RunLog(run.out, log_columns(run), run.total_steps, resume_step=run.pos.step,
                                  stream=stream) if run.env.is_main else NullLog())  # fmt: skip
                if run.env.is_main:  # started once the log can close them (MLflow: the run's status)
                    run.log.trackers = open_trackers(run)
                result = _loop(run)
            status = "KILLED" if result.stopped.startswith("SIG") else "FINISHED"
            if result.stopped.startswith("SIG"):
                mark_stopped(run, result.exit_code, f"stopped by {result.stopped}")
            return result
        except OSError as err:
            failure = disk_failure(err, run)
            if failure is None:
                raise
            raise failure from None
        except DataFailure as err:  # a bad sample met while training: the checkpoints stay
            said = err.diagnostics[0]
            hint = f" ({said.hint})" if said.hint else ""
            failure = TrainingError(f"{said.message}{hint}; {kept_checkpoint_text(run)}")
            failure.exit_code = 2
            raise failure from None
        except BaseException as err:
            together = getattr(err, "all_ranks", False)
            if together and isinstance(err, TrainingError):
                mark_stopped(run, 1, str(err))
            raise
        finally:
            if run.log is not None:
                run.log.close(status)
            run.ckpts.close()  # whatever happened, a checkpoint being written gets finished
            run.release_folder()
            shutdown(run.env, together)


def prepare(spec, *, config=None, out=None, resume: bool | str = False, force: bool = False,
            plugins=(), overrides=None, folder: bool = True) -> Run:  # fmt: skip
    """Compile the spec, check the run config, build data, model and optimizer, and
    restore a checkpoint when resuming. `folder=False` opens no run folder (run.out and
    run.ckpts stay None): what `lr-find` trains on, leaving no trace on disk."""
    source, cfg, var_over = load_run(spec, config, overrides)
    with cfg.located():  # builders name a spec path; this adds its file:line:col
        env = setup_env(cfg.train["device"], cfg.train["dist_timeout"])
        try:
            failure, run = None, None
            try:  # what each rank does alone; then all agree it went well
                seed = cfg.train["seed"]
                seed_all(seed)  # every rank builds the same initial weights
                set_determinism(cfg.train["deterministic"], env, cfg.train["compile"])
                compiled = compile_model(source, cfg, var_over, plugins)
                run = _build(cfg, env, compiled, var_over)
            except Exception as err:  # noqa: BLE001 - every rank must hear of it, or they wait
                failure = err
            all_ready(env, failure)
            same_everywhere(compiled.hash, env, "network (graph hash)")
            same_everywhere(digest({"data": cfg.data, "train": cfg.train}), env, "run configuration")
            if env.rank:
                seed_all(rank_seed(seed, env.rank))  # dropout differs across ranks
            run.forward = wrap_ddp(run.evaluate, compiled, cfg, env)
            if folder:
                open_run(run, out, resume, force)
            return run
        except BaseException as err:
            if run is not None:
                run.release_folder()
            shutdown(env, getattr(err, "all_ranks", False))
            raise


def plan(spec, *, config=None, out=None, resume: bool | str = False, plugins=(),
         overrides=None) -> Path:  # fmt: skip
    """What a launcher checks before it starts workers: the spec compiles and the run
    configuration is valid (a mistake is one error here, not one per worker). Returns the
    run folder, made now, so that restarted workers resume this run."""
    source, cfg, var_over = load_run(spec, config, overrides)
    with cfg.located():
        compiled = compile_model(source, cfg, var_over, plugins)
        loaders = build_loaders(cfg.data, seed=cfg.train["seed"])
        build_task(compiled, cfg, loaders.fields, _first_batch(loaders, cfg), torch.device("cpu"))
        build_optimizer(cfg.train["optimizer"], compiled.module.parameters())
        return resolve_out_dir(out, compiled, resume)


def compile_model(source, cfg: RunConfig, var_over: dict, plugins=()) -> Compiled:
    """The spec compiled for this run: its variables, the run's `init:` and `freeze:` (in
    place of the spec's), and the blocks that `train.activation_checkpointing` names
    checkpointed (each named one checked here)."""
    blocks = cfg.train["activation_checkpointing"]
    if blocks:
        defined = collect_blocks(source)
        for k, name in enumerate(blocks):
            if name not in defined:
                raise ConfigError(f"the spec defines no block '{name}'", None, f"train.activation_checkpointing[{k}]",
                                  did_you_mean(name, list(defined)) or
                                  f"its blocks: {', '.join(sorted(defined)) or 'none'}")  # fmt: skip
    return compile_spec(source, {**cfg.vars, **var_over}, plugins=tuple(plugins), checkpoint_blocks=tuple(blocks),
                        block_modules=cfg.train["strategy"] == "fsdp", overlay=cfg.weights_overlay())  # fmt: skip


def _build(cfg: RunConfig, env: Env, compiled: Compiled, var_over) -> Run:
    """Data, model, optimizer, schedule, checked on two samples (each rank alone)."""
    tcfg = cfg.train
    model = compiled.module.to(env.device)
    if tcfg["sync_batchnorm"] and env.device.type != "cuda":
        raise cfg.error("SyncBatchNorm runs on CUDA devices only", ("train", "sync_batchnorm"),
                        "set it to false on CPU (each process then normalises its own batch)")  # fmt: skip
    if env.distributed and tcfg["sync_batchnorm"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if tcfg["strategy"] == "fsdp":
        _check_fsdp(cfg, model, compiled)
        if env.distributed:  # before the optimizer: its parameters become this rank's shards
            fsdp = tcfg["fsdp"]
            shard_model(model, compiled, env.device.type, units=fsdp["units"], precision=tcfg["precision"],
                        reshard_after_forward=fsdp["reshard_after_forward"], cpu_offload=fsdp["cpu_offload"])  # fmt: skip
    loaders = build_loaders(cfg.data, seed=tcfg["seed"], rank=env.rank, world=env.world_size,
                            pin_memory=_pin_memory(cfg, env))  # fmt: skip
    task = build_task(compiled, cfg, loaders.fields, _first_batch(loaders, cfg), env.device)
    batches = len(loaders.train)
    steps_per_epoch = -(-batches // tcfg["grad_accum"])
    total = tcfg["max_steps"] or tcfg["epochs"] * steps_per_epoch
    optimizer = build_optimizer(tcfg["optimizer"], model.parameters())
    check_optimizer(tcfg["optimizer"], env.device)
    check_loggers(cfg)
    monitor, mode = _monitor(cfg, loaders, task)
    check_schedule(tcfg["scheduler"], tcfg["optimizer"], steps_per_epoch=steps_per_epoch,
                   total_steps=total, mode=mode)  # fmt: skip
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


def _check_fsdp(cfg: RunConfig, model: torch.nn.Module, compiled: Compiled) -> None:
    """What train.strategy: fsdp does not do, and units that cannot be, refused in one line."""
    tcfg = cfg.train
    units = tcfg["fsdp"]["units"]
    for k, name in enumerate(units or []):
        paths = shard_units(compiled, [name])
        problem = next(filter(None, (unit_problem(model, path) for path in paths)), None)
        if problem:
            known = list(dict.fromkeys(compiled.spec.block_names)) + [n for n, _ in model.named_modules() if n]
            hint = None if name in known else did_you_mean(name, known)
            raise cfg.error(problem, ("train", "fsdp", "units", k), hint or "name blocks of the spec, outermost "
                            "block instances (blocks.0) or layers (blocks.0.mlp.fc)")  # fmt: skip
    if units is None:
        bad = next(((p, why) for p in shard_units(compiled) if (why := unit_problem(model, p))), None)
        if bad:
            raise cfg.error(f"shard: true on '{bad[0]}': {bad[1]}", ("train", "strategy"),
                            "write shard: on outermost block instances or on layers")  # fmt: skip
    try:
        unit_groups(model, shard_units(compiled, units))
    except ValueError as err:
        raise cfg.error(str(err), ("train", "fsdp", "units") if units else ("train", "strategy"),
                        "leave one of them to the units around it") from None  # fmt: skip
    for key, bad, why in (("on_nonfinite", "skip", "a skipped batch would leave the shards' gradient "
                           "reduction half done"),
                          ("sync_batchnorm", True, "FSDP2 does not convert BatchNorm")):  # fmt: skip
        if tcfg[key] == bad:
            raise cfg.error(f"train.strategy: fsdp does not take {key}: {str(bad).lower()} ({why})",
                            ("train", key), "use strategy: ddp for it")  # fmt: skip


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


def _shape(value) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


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
        shapes = [_shape(outs[t.output]) for t in run.task.terms] if outs is not None else "?"
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


def _loop(run: Run) -> TrainResult:
    pos, log = run.pos, run.log
    write_lock(run)
    log.say(banner(run))
    n_train = run.loaders.sizes[0]
    run.last_save = time.perf_counter()
    ending = _ending(run)
    while ending is None:
        seed_epoch(run, pos.epoch, start=pos.samples)
        run.epoch_batches = pos.batch + len(run.loaders.train)
        first = run.task.feeds[0]
        where = lambda: f"step {pos.step + 1} (epoch {pos.epoch + 1}, batch {pos.batch + 1})"  # noqa: E731
        for batch in batches(run.loaders.train, where):
            guarded_micro_step(run, batch)
            pos.batch += 1
            pos.samples = min(n_train, pos.samples + len(batch[first]) * run.env.world_size)
            if not steps_now(run, pos.batch):
                continue  # accumulating
            optimizer_step(run)
            ending = _after_step(run)
            if ending is not None:
                break
        else:
            ending = _after_epoch(run)
    return _finish(run, ending)


def _ending(run: Run) -> str | None:
    pos, tcfg = run.pos, run.cfg.train
    if tcfg["max_steps"] and pos.step >= tcfg["max_steps"]:
        return "max_steps"
    if not tcfg["max_steps"] and pos.epoch >= tcfg["epochs"]:
        return "finished"
    return None


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
        save_checkpoint_now(run)
    return ending


def _time_to_save(run: Run) -> bool:
    """`checkpoint_every_n_minutes` since the last checkpoint. On several ranks rank 0's
    clock decides, its answer riding with the step's all-reduce: every rank saves at the
    same step (a checkpoint is a collective)."""
    return run.save_due if run.env.distributed else clock_says_save(run)


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
        save_checkpoint_now(run)
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
        save_best(run)
    elif run.monitor:
        pos.stale += 1
    run.schedule.step("val", values.get(run.monitor))
    if run.on_validate is not None and run.on_validate(pos.step, values):
        return "pruned"
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


def _finish(run: Run, ending: str) -> TrainResult:
    pos = run.pos
    if ending in ("finished", "max_steps") and pos.val_step != pos.step:
        _validate(run)
    if pos.loss_count and not ending.startswith("SIG"):  # a resumed run logs these itself
        _log_train(run)
    last = save_checkpoint_now(run)
    run.ckpts.close()
    barrier(run.env, "waiting for the last checkpoint")  # no rank leaves before it is on disk
    if not run.ckpts.sharded and run.env.is_main:  # a sharded run gathers nothing: `checkpoint consolidate` does
        save_safetensors(run.model.state_dict(), run.out / "last.safetensors", weights_meta(run))
    metrics = last_metrics(run)
    seconds = time.perf_counter() - run.log.t0 if hasattr(run.log, "t0") else float("nan")
    run.log.say(end_summary(run, ending, metrics, seconds))
    best = run.ckpts.best if run.ckpts.best.exists() else None
    return TrainResult(run.out, metrics, last and run.ckpts.last, best, pos.step, pos.epoch, ending,
                       seconds)  # fmt: skip
