"""A spec as a `lightning.LightningModule`, for people who already train with
`lightning.Trainer` (the optional extra `yamlnet[lightning]`).

    import lightning as L
    from yamlnet.lightning import SpecModule

    module = SpecModule("specs/digits_cnn.yaml", **{"train.optimizer.lr": 0.003})
    L.Trainer(max_epochs=5).fit(module)

The model, optimizer, LR schedule (with warmup), loss, metrics and data are the ones
`yamlnet train` builds from the spec's `data:` and `train:` sections (and `config=` /
keyword overrides, as with `yamlnet.train`). Lightning owns the loop: epochs, devices,
precision, checkpoints and logging are the Trainer's arguments. Its checkpoints carry the
run configuration, so `yamlnet eval SPEC --checkpoint FILE.ckpt` reads them.

With several processes, pass `use_distributed_sampler=False` to the Trainer: the loaders
already deal out samples by rank (and their per-sample augmentation seeding needs their
own sampler).
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from .runtime.config import load_run
from .runtime.data import build_loaders
from .runtime.optim import build_optimizer, build_scheduler
from .runtime.tasks import as_tuple, build_task, sample_batch
from .runtime.train import compile_model

__all__ = ["SpecModule"]


class SpecModule(L.LightningModule):
    """The spec's network (`self.model`, the generated GraphModule) with its `train:`
    section's loss, metrics, optimizer and schedule, and its `data:` section's loaders."""

    def __init__(self, spec: str | os.PathLike, *, config: str | os.PathLike | None = None,
                 **overrides: Any):  # fmt: skip
        super().__init__()
        self._loaders = None
        source, self.cfg, var_over = load_run(spec, config, overrides)
        with self.cfg.located():
            torch.manual_seed(self.cfg.train["seed"])  # the weights `yamlnet train` starts from
            self.compiled = compile_model(source, self.cfg, var_over)
            self.model = self.compiled.module
            loaders = build_loaders(self.cfg.data, seed=self.cfg.train["seed"])  # (its fields only)
            self.task = build_task(self.compiled, self.cfg, loaders.fields,
                                   sample_batch(loaders.train.dataset), torch.device("cpu"))
            for i, term in enumerate(self.task.terms):  # moved with the module to its device
                self.add_module(f"loss_{i}", term.fn)
            self._metrics = None
            build_optimizer(self.cfg.train["optimizer"], self.model.parameters())  # its errors now
        self.variables = {**self.cfg.vars, **var_over}

    def forward(self, *inputs):
        return self.model(*inputs)

    def _loss(self, batch):
        outs = as_tuple(self.model(*self.task.inputs(batch)))
        loss, _ = self.task.loss(outs, batch)
        return outs, loss, len(batch[self.task.feeds[0]])

    def training_step(self, batch, batch_idx):
        _, loss, n = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._metrics = self.task.new_metrics(self.device)

    def validation_step(self, batch, batch_idx):
        outs, loss, n = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.task.update(self._metrics, outs, batch)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self._metrics.items():  # torchmetrics gathers over ranks itself
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "accuracy")

    def configure_optimizers(self):
        tcfg = self.cfg.train
        optimizer = build_optimizer(tcfg["optimizer"], self.model.parameters())
        if tcfg["scheduler"] is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        monitor = tcfg["monitor"] or "val/loss"
        schedule = build_scheduler(tcfg["scheduler"], optimizer, steps_per_epoch=per_epoch,
                                   total_steps=total, mode=tcfg["mode"] or "min")  # fmt: skip
        interval = {"val": "epoch"}.get(schedule.interval, schedule.interval)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule.scheduler, "interval": interval, "monitor": monitor}}  # fmt: skip

    def _build_loaders(self):
        if self._loaders is None:
            rank = self.global_rank if self._trainer is not None else 0
            world = self.trainer.world_size if self._trainer is not None else 1
            self._loaders = build_loaders(self.cfg.data, seed=self.cfg.train["seed"], rank=rank, world=world)
        return self._loaders

    def train_dataloader(self):
        return self._build_loaders().train

    def val_dataloader(self):
        val = self._build_loaders().val
        return [] if val is None else val

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What `yamlnet eval` needs to rebuild the model: the run configuration."""
        checkpoint["yamlnet"] = {"config": {"data": self.cfg.data, "train": self.cfg.train,
                                            "vars": self.variables},
                                 "spec": {"name": self.compiled.spec.name, "hash": self.compiled.hash}}  # fmt: skip
