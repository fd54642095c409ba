"""Run a trained checkpoint: `evaluate` on a split of the spec's data (`predict` and
`generate`, in their own modules, start from the same `session`).

The model is rebuilt from the spec with the variables the run was trained with (kept in
the checkpoint), and the checkpoint's `data:`/`train:` sections are the defaults, so
`yamlnet eval spec.yaml --checkpoint runs/x` measures exactly what training measured.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compiler.compile import Compiled, compile_spec
from ..compiler.errors import did_you_mean
from ..compiler.load import SpecSource, load_spec_source
from .checkpoint import (
    CheckpointDir,
    NotACheckpoint,
    load_checkpoint,
    load_tensors,
    load_weights,
    loaded_problem,
)
from .config import load_run_config, split_overrides
from .data import DataFailure, EpochSampler, Transformed, batches, build_splits, build_transforms
from .distributed import Env, all_sum, broadcast, pick_device
from .errors import CheckpointError, ConfigError, first_line
from .sharding import is_sharded
from .shards import SUFFIX, is_sharded_checkpoint
from .tasks import Task, as_tuple, build_task, sample_batch, to_device

__all__ = ["Evaluator", "evaluate", "session", "resolve_checkpoint", "compile_checkpoint",
           "plain_weights", "autocast_for", "output_index", "IMAGE_EXTENSIONS"]  # fmt: skip

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Evaluator:
    """A model with its task: mean loss (and each term's) and the task's metrics over a
    loader. Losses are summed on the device and reduced over ranks; the torchmetrics
    metrics gather their own state over ranks. The training loop and `yamlnet eval`
    share it."""

    model: torch.nn.Module
    forward: Any  # the model, or its torch.compile'd form
    task: Task
    autocast: Any
    env: Env

    @torch.no_grad()
    def __call__(self, loader, prefix: str = "val") -> dict[str, float]:
        self.model.eval()
        dev = self.env.device
        labels = ["loss", *self.task.loss_labels(evaluating=True)]
        sums = torch.zeros(len(labels) + 1, device=dev)  # every rank sums (a rank may have no batches)
        metrics = self.task.new_metrics(dev)
        batches_done = 0
        lockstep = self.env.distributed and is_sharded(self.model)
        most, spare = self._lockstep(loader) if lockstep else (0, None)
        try:
            for batch in batches(loader, lambda: f"{prefix}: batch {batches_done + 1}"):  # noqa: B023 - the count now
                if lockstep and spare is None:
                    spare = batch  # what this rank runs again, if the others have more batches
                try:
                    sums += self._batch(to_device(dev, batch, self.task.fields), metrics)
                except (RuntimeError, IndexError, ValueError) as err:  # a label past the classes, say
                    raise DataFailure(f"{prefix}: batch {batches_done + 1}: {first_line(err)}") from None
                batches_done += 1
            for _ in range(most - batches_done):  # forwards the other ranks' all-gathers need
                with self.autocast():
                    self.forward(*self.task.inputs(to_device(dev, spare, self.task.fields)))
        finally:
            self.model.train()
        sums = all_sum(sums, self.env)
        if not torch.isfinite(sums).all():
            raise DataFailure(f"{prefix}: the loss over the {prefix} set is {float(sums[0])}: one of its "
                              "batches gives a non-finite loss", hint="do its inputs hold NaN or inf?")  # fmt: skip
        values = {label: float(v / sums[-1]) for label, v in zip(labels, sums[:-1], strict=True)}
        values.update({k: _value(m.compute()) for k, m in metrics.items()})
        return {f"{prefix}/{k}": v for k, v in values.items()}

    def _lockstep(self, loader) -> tuple[int, dict | None]:
        """FSDP all-gathers each unit's weights in every forward, so every rank must run as
        many as the others: the most batches any rank has of the split, and for a rank
        without a batch of its own, rank 0's first to run instead (a rank with fewer runs
        its first again, kept in the loop), unrecorded."""
        counts = torch.zeros(self.env.world_size, device=self.env.device)
        counts[self.env.rank] = len(loader)
        counts = all_sum(counts, self.env, "counting the validation batches").tolist()
        most, least = int(max(counts)), int(min(counts))
        given = None
        if least == 0 and most:  # every rank joins the broadcast
            given = broadcast(next(iter(loader), None) if self.env.is_main else None, self.env,
                              "sharing a batch for the lockstep")  # fmt: skip
        return most, given if len(loader) == 0 else None

    def _batch(self, batch: dict, metrics: dict) -> torch.Tensor:
        """[loss, each term's loss (several terms), samples], the losses times the samples."""
        with self.autocast():
            outs = as_tuple(self.forward(*self.task.inputs(batch)))
            total, parts = self.task.loss(outs, batch)
        self.task.update(metrics, outs, batch)
        n = float(len(batch[self.task.feeds[0]]))
        values = [total, *parts] if len(parts) > 1 else [total]
        return torch.stack([v.detach().float() * n for v in values] + [total.new_tensor(n).float()])


def _value(result) -> float:
    """A metric's value as a number (a one-element tensor); what is not one is refused
    where the metric is built."""
    return float(result)


def autocast_for(precision: str, device: torch.device):
    """A context factory: autocast for the mixed precisions, a no-op for 32."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def output_index(compiled: Compiled, cfg, wanted: str | None = None) -> int:
    """Which of the spec's outputs `wanted` or else `train.output` names (default: the first)."""
    names = [name for name, _ in compiled.spec.outputs]
    wanted = wanted or cfg.train["output"]
    if wanted is None:
        return 0
    if wanted not in names:
        raise cfg.error(f"the spec has no output '{wanted}'", ("train", "output"),
                        did_you_mean(wanted, names) or "outputs: " + ", ".join(names))  # fmt: skip
    return names.index(wanted)


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """A checkpoint file, a run folder (its best.pt, else its newest good checkpoint), a
    Lightning checkpoint of a SpecModule, or a plain weights file (see `plain_weights`)."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        ckpts = CheckpointDir(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        warn = lambda text: print(f"warning: {text}", flush=True)  # noqa: E731
        for best in (ckpts.folder / "best.pt", ckpts.folder / f"best{SUFFIX}"):  # (a sharded run's is a folder)
            if not best.exists():
                continue
            try:
                return best, load_checkpoint(best)
            except CheckpointError as err:
                warn(f"refusing {err}; using the newest good checkpoint instead")
        found = ckpts.latest_good(warn)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}")
        return found
    if path.suffix == ".ckpt":
        state = lightning_checkpoint(path)
        if state is not None:
            return path, state
    if path.suffix == ".safetensors":
        return path, plain_weights(path)
    try:
        return path, load_checkpoint(path)
    except NotACheckpoint:
        return path, plain_weights(path)


def plain_weights(path: Path) -> dict:
    """A state_dict file as eval/predict/export/generate take it: what `yamlnet compile
    --out` writes (torch.save of a state_dict, read with weights_only), a .safetensors
    file (the run folder's last/best.safetensors) or torchvision's weights. The run
    configuration is then the spec's own."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(path))
        else:
            weights = load_tensors(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file: one line
        raise CheckpointError(f"cannot read {path} as weights: {str(err).splitlines()[0][:160] if str(err) else type(err).__name__}") from None
    problem = loaded_problem(weights)
    if problem:
        raise CheckpointError(f"cannot read {path} as weights: {problem}")
    for key in ("state_dict", "model"):  # {"model": {...}} and Lightning-like wrappers
        if isinstance(weights, dict) and isinstance(weights.get(key), dict):
            weights = weights[key]
    if not isinstance(weights, dict) or not weights or \
            not all(isinstance(v, torch.Tensor) for v in weights.values()):  # fmt: skip
        raise CheckpointError(f"{path} is neither a yamlnet checkpoint nor a state_dict of tensors")
    return {"model": dict(weights), "config": {}}


def lightning_checkpoint(path: Path) -> dict | None:
    """A checkpoint `lightning.Trainer` wrote for `yamlnet.lightning.SpecModule`, as the
    model weights and run configuration eval/predict need (None if it is not one). Read
    with weights_only: no code is unpickled."""
    try:
        payload = load_tensors(path)
    except Exception:  # noqa: BLE001 - not a Lightning checkpoint we can read: say so below
        return None
    if not isinstance(payload, dict) or "pytorch-lightning_version" not in payload:
        return None
    problem = loaded_problem(payload)
    if problem:
        raise CheckpointError(f"cannot read {path}: {problem}")
    weights = payload.get("state_dict", {})
    model = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    return {"model": model, "config": payload.get("yamlnet", {}).get("config", {})}


def compile_checkpoint(source: SpecSource, path: Path, state: dict, variables: dict,
                       plugins=()) -> Compiled:  # fmt: skip
    """The spec compiled with the variables the checkpoint was trained with (`variables`
    win over them), holding the checkpoint's weights."""
    saved = state.get("config", {}).get("vars", {})
    compiled = compile_spec(source, {**saved, **variables}, plugins=tuple(plugins))
    load_weights(compiled.module, state["model"], path)
    return compiled


def session(spec, checkpoint, config, plugins, overrides, device: str | None):
    """Config, compiled model with the checkpoint's weights (in eval mode, on the device),
    the device, and the checkpoint's content."""
    path, state = resolve_checkpoint(checkpoint)
    run_over, var_over = split_overrides(dict(overrides))
    source = load_spec_source(Path(spec))
    cfg = load_run_config(_with_saved_sections(source.main, state.get("config", {})), config,
                          run_over)  # fmt: skip
    compiled = compile_checkpoint(source, path, state, {**cfg.vars, **var_over}, plugins)
    dev = pick_device(device or "auto")
    return cfg, compiled, compiled.module.to(dev).eval(), dev, state


def _with_saved_sections(doc, saved: dict):
    """The spec document with the checkpoint's resolved data:/train: in place of its own
    (locations of the spec's values are kept for messages)."""
    from dataclasses import replace

    data = dict(doc.data)
    for key in ("data", "train"):
        if key in saved:
            data[key] = saved[key]
    return replace(doc, data=data)


def evaluate(spec: str | os.PathLike, checkpoint: str | os.PathLike, *, split: str = "val",
             config=None, plugins=(), device: str | None = None, **overrides: Any) -> dict[str, float]:  # fmt: skip
    """Loss and metrics of a checkpoint on the 'val' or 'train' split.

        >>> yamlnet.evaluate("specs/digits_cnn.yaml", "runs/digits")  # doctest: +SKIP
        {'val/loss': 0.08, 'val/accuracy': 0.98}
    """
    if split not in ("val", "train"):
        raise ConfigError(f"unknown split '{split}'", hint="use val or train")
    cfg, compiled, model, dev, _ = session(spec, checkpoint, config, plugins, overrides, device)
    with cfg.located():
        loader, fields = _split_loader(cfg, split)
        task = build_task(compiled, cfg, fields, sample_batch(loader.dataset), dev)
        evaluator = Evaluator(model, model, task, autocast_for(cfg.train["precision"], dev),
                              Env(0, 1, 0, dev))  # fmt: skip
    return evaluator(loader, prefix=split)


def _split_loader(cfg, split: str):
    """The split in order, with the validation transforms (no augmentation)."""
    splits = build_splits(cfg.data)
    ds = splits.val if split == "val" else splits.train
    if ds is None:
        raise ConfigError(f"dataset '{cfg.data['dataset']}' has no validation split",
                          path="data.dataset", hint="use --split train")  # fmt: skip
    tf = build_transforms(cfg.data["val_transforms"], "data.val_transforms")
    sampler = EpochSampler(len(ds), shuffle=False, seed=0)
    size = cfg.data["val_batch_size"] or cfg.data["batch_size"]
    loader = torch.utils.data.DataLoader(Transformed(ds, tf, 0, splits.fields), batch_size=size,
                                         sampler=sampler)  # fmt: skip
    return loader, splits.fields
