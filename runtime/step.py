"""One optimizer step on 1..N processes: forward and backward of each micro-batch (DDP's
no_sync while accumulating), the ranks agreeing on the losses, a non-finite loss and the
stop signals (riding with the gradient all-reduce), then clipping and the optimizer's step."""

from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext

import torch

from ..compiler.compile import Compiled
from . import faults
from .config import RunConfig
from .distributed import (
    Env,
    GradientRider,
    all_sum,
    all_sum_started,
    comm_failure,
    is_comm_error,
)
from .errors import TrainingError, first_line
from .run import (
    Position,
    Run,
)
from .sharding import accumulating, is_sharded
from .tasks import as_tuple, to_device


def steps_now(run: Run, batch: int) -> bool:
    """Whether the epoch's `batch`-th micro-batch ends an accumulation group (or the epoch)."""
    return batch % run.cfg.train["grad_accum"] == 0 or batch == run.epoch_batches


def guarded_micro_step(run: Run, batch: dict) -> None:
    """A failure inside PyTorch at some step (a label out of range for the head, say) ends
    the run with one line naming the step; the last good checkpoint stays."""
    try:
        micro_step(run, batch)
    except (RuntimeError, IndexError, ValueError) as err:
        pos = run.pos
        if run.env.distributed and is_comm_error(err):
            raise TrainingError(comm_failure(run.env, f"step {pos.step + 1}", err)) from None
        said = first_line(err).rstrip(".")
        if "more than 1 value per channel when training" in said:  # BatchNorm on a batch of one
            said += " (a batch of one sample: set data.drop_last: true, or another batch_size)"
        failure = TrainingError(f"step {pos.step + 1} (epoch {pos.epoch + 1}, batch {pos.batch + 1}): "
                                f"{said}; {kept_checkpoint_text(run)}")  # fmt: skip
        failure.exit_code = 2  # what the data or the configuration gave PyTorch, not a fault of ours
        raise failure from err


def kept_checkpoint_text(run: Run) -> str:
    run.ckpts.wait()  # the newest checkpoint may still be on its way to the disk
    last = run.ckpts.last if run.ckpts.last.exists() else None
    return f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"


def micro_step(run: Run, batch: dict) -> None:
    """Forward and backward of one micro-batch; a non-finite loss stops or is skipped.
    On several ranks, the ranks' losses and pending stop signals are shared (one small
    all-reduce, travelling while backward runs), so every rank takes the same decision
    at the same step. A batch that may be skipped waits for it before backward."""
    batch = to_device(run.env.device, batch, run.task.fields)
    # a skipped batch must leave no trace, but its forward pass has already moved the
    # BatchNorm running statistics (to NaN): keep the buffers to put them back
    skip = run.cfg.train["on_nonfinite"] == "skip"
    kept = [b.detach().clone() for b in run.model.buffers()] if skip else []
    syncs = steps_now(run, run.pos.batch + 1)  # DDP all-reduces the gradients in this backward only
    with no_sync(run, syncs), run.autocast():
        loss, parts = run.task.loss(as_tuple(run.forward(*run.task.inputs(batch))), batch)
    terms = torch.stack([p.detach().float() for p in parts]) if len(parts) > 1 else None
    if faults.fault_at("nan_at_step", run.pos.step + 1, run.env.rank):
        loss = loss * float("nan")
    if run.env.distributed and not skip and hasattr(run.forward, "rider"):  # DDP
        ddp_backward(run, loss, syncs, terms)
        return
    shared = share_losses(run, loss, terms)
    if not skip:
        scaled_backward(run, loss, syncs)  # (a NaN stops the run below: its gradients go unused)
    values, term_values = shared()
    bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        non_finite(run, values[bad[0]], kept, bad)
        if syncs and run.env.distributed:
            average_gradients(run)  # the skipped backward would have done it
        return
    run.pos.loss_sum += sum(values) / len(values)
    run.pos.loss_count += 1
    add_terms(run.pos, term_values)
    if skip:
        scaled_backward(run, loss, syncs)


def add_terms(pos: Position, values: list[float] | None) -> None:
    """Each loss term's (rank-mean) value into its running sum, for the logged rows."""
    if values is not None:
        pos.term_sums = [a + b for a, b in zip(pos.term_sums or [0.0] * len(values), values, strict=True)]


def ddp_backward(run: Run, loss: torch.Tensor, syncs: bool, terms: torch.Tensor | None) -> None:
    """Backward on several ranks. The losses of an accumulation group, and any stop
    signal, ride with the group's gradient all-reduce (GradientRider); the decisions
    (stop on a NaN, log the mean loss) are taken at the group's end, alike on all ranks."""
    env = run.env
    run.pending.append(loss.detach())
    if terms is not None:
        run.pending_terms.append(terms)
    if syncs:
        group_terms = torch.stack(run.pending_terms).sum(0) if run.pending_terms else None
        run.forward.rider.carry(step_extras(run, torch.stack(run.pending).sum(), group_terms))
    scaled_backward(run, loss, syncs)
    if not syncs:
        return
    shared = run.forward.rider.take().tolist()
    count = len(run.pending)
    run.pending.clear()
    run.pending_terms.clear()
    note_shared(run, shared)
    values = shared[: env.world_size]
    bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        non_finite(run, values[bad[0]], [], bad)  # stops (skipping takes the other path)
    run.pos.loss_sum += sum(values) / env.world_size
    run.pos.loss_count += count
    add_terms(run.pos, shared_terms(shared, env.world_size))


def step_extras(run: Run, loss_sum: torch.Tensor, terms: torch.Tensor | None = None) -> torch.Tensor:
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
    if env.rank == 0 and clock_says_save(run):
        extras[env.world_size + 2] = 1
    return extras


def note_shared(run: Run, shared: list[float]) -> None:
    """Take the stop signals and rank 0's checkpoint request from the shared extras."""
    world = run.env.world_size
    if shared[world]:
        run.stopping = "SIGTERM"
    elif shared[world + 1]:
        run.stopping = "SIGINT"
    run.save_due = bool(shared[world + 2])


def scaled_backward(run: Run, loss: torch.Tensor, syncs: bool) -> None:
    group = group_size(run)
    with no_sync(run, syncs):
        run.scaler.scale(loss / group if group > 1 else loss).backward()


def no_sync(run: Run, syncs: bool):
    """DDP's no_sync while accumulating: gradients are all-reduced once per step."""
    if run.env.distributed and not syncs:
        if is_sharded(run.model):  # FSDP: gradients reduce-scattered at the group's last micro-batch
            return accumulating(run.model)
        return run.forward.no_sync()
    return nullcontext()


def share_losses(run: Run, loss: torch.Tensor, terms: torch.Tensor | None):
    """Start sharing this micro-batch's loss (and its terms) and any pending stop signal;
    returns the function giving every rank's loss and the terms' rank-mean (and setting
    run.stopping when one must stop)."""
    env = run.env
    if not env.distributed:
        return lambda: ([loss.item()], None if terms is None else terms.tolist())
    pos = run.pos
    wait = all_sum_started(step_extras(run, loss.detach(), terms), env,
                           f"step {pos.step + 1} (epoch {pos.epoch + 1})")  # fmt: skip

    def values() -> tuple[list[float], list[float] | None]:
        out = wait().tolist()
        note_shared(run, out)
        return out[: env.world_size], shared_terms(out, env.world_size)

    return values


def shared_terms(shared: list[float], world: int) -> list[float] | None:
    terms = shared[world + 3 :]
    return [v / world for v in terms] if terms else None


def average_gradients(run: Run) -> None:
    world = run.env.world_size
    for p in run.model.parameters():
        if p.grad is not None:
            all_sum(p.grad, run.env, "averaging gradients").div_(world)


def group_size(run: Run) -> int:
    """Micro-batches in the current accumulation group (the epoch's last may be short),
    so the step's gradient is the mean over the batches it saw."""
    accum = run.cfg.train["grad_accum"]
    first = run.pos.batch // accum * accum
    return min(accum, run.epoch_batches - first)


def non_finite(run: Run, value: float, kept: list[torch.Tensor], ranks: list[int]) -> None:
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
    err = TrainingError(f"{where}: loss is {value}; stopping ({kept_checkpoint_text(run)}; set "
                        "train.on_nonfinite: skip to skip such batches)")  # fmt: skip
    err.all_ranks = True  # every rank stops here with this message; rank 0 prints it
    raise err


def optimizer_step(run: Run) -> None:
    apply_gradients(run)
    run.schedule.step("step")
    run.pos.step += 1


def apply_gradients(run: Run) -> None:
    """Clip (unscaled), step the optimizer through the grad scaler, clear the gradients;
    the LR schedule and the position are the caller's (lr-find sets the LR itself)."""
    clip = run.cfg.train["grad_clip"]
    if clip is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def seed_epoch(run: Run, epoch: int, start: int = 0) -> None:
    """The training loader at `epoch`, from sample `start`: its order and its workers' seeds
    are a pure function of the seed and the epoch (so a resumed run draws the same batches)."""
    run.loaders.train_sampler.set_epoch(epoch, start=start)
    run.loaders.train.generator.manual_seed((run.cfg.train["seed"] * 100_003 + epoch) % 2**63)


def clock_says_save(run: Run) -> bool:
    minutes = run.cfg.train["checkpoint_every_n_minutes"]
    return bool(minutes) and time.perf_counter() - run.last_save >= 60 * minutes


def wrap_ddp(module: torch.nn.Module, compiled: Compiled, cfg: RunConfig, env: Env):
    """DistributedDataParallel on several ranks (it averages the gradients, so a step on
    N ranks with batch B is a step with batch N*B); the module itself on one."""
    if not env.distributed or is_sharded(getattr(module, "_orig_mod", module)):  # FSDP2 shards the module itself
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
