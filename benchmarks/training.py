"""Rows 5-7: training speed against a plain PyTorch loop and `lightning.Trainer`, time to
the first step, and peak memory.

The sides train the same compiled model (same initial weights), on the same samples,
batch, optimizer and loss; each reports the time of its loop alone (setup excluded).
Steps/s is the steady rate inside one run: the steps between step `short` and step
`steps` over the time between them — yamlnet's from the `time` column of its
metrics.csv, the plain loop's and Lightning's (`on_train_batch_end`) from a clock read
after those steps. What a run pays once (the first steps' warm-up, the final checkpoint)
stays out; what recurs (logging, checkpoints) counts: the windows hold their share of
epoch ends (2 in 30 steps, at 16 steps an epoch; 6 in 180, at 29).

The same work: every side keeps a resumable checkpoint each epoch. yamlnet runs as a
user gets it — deterministic algorithms, metrics.csv and TensorBoard rows every 10
steps, checkpoints every epoch and every 10 minutes, the loss checked for NaN every step —
only validation is off, because the plain loop has none. The plain loop is the one
written by hand: `loss.item()` each step for the log, and `torch.save` of the model's
and optimizer's state at each epoch's end. Lightning runs with its defaults (its logger,
a checkpoint every epoch) and no progress bar, as yamlnet off a terminal. Rows 5a0 and
5b0 take the checkpoints out of both yamlnet and the plain loop: the loop's own cost.

    python -m benchmarks.training --peak-rss yamlnet|plain   # row 7's child process
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .common import SPECS, Goal, Row, Side, process_seconds, rounds, run_process, yamlnet_cmd


@dataclass(frozen=True)
class Work:
    """One training job, said the way `yamlnet train --set` says it; `steps` is the long
    run, `short` the short one (the rate is measured between them)."""

    name: str
    spec: Path
    overrides: dict
    steps: int
    short: int = 0
    rounds: int = 3  # in the full run

    def window(self, times: dict[int, float]) -> float:
        """Steps per second between the ends of step `short` and step `steps`."""
        return (self.steps - self.short) / (times[self.steps] - times[self.short])

    def sets(self) -> list[str]:
        out = []
        for key, value in self.overrides.items():
            out += ["--set", f"{key}={'null' if value is None else value}"]
        return out


NO_VAL = {"train.scheduler": None, "train.metrics": [], "train.val_every_n_epochs": None,
          "train.device": "cpu"}  # the CPU rows stay on the CPU where a GPU is present too


def light(quick: bool) -> Work:
    """digits_cnn on the bundled digits, batch 64, AdamW (the quick-start job, no validation)."""
    return Work("digits CNN", SPECS / "digits_cnn.yaml", {"data.val_fraction": 0.0, **NO_VAL,
                **_logged(quick)}, *((20, 5) if quick else (230, 50)), rounds=9)  # fmt: skip


def heavy(quick: bool) -> Work:
    """resnet18 on synthetic 3x64x64 images (10 classes), batch 32, SGD with momentum."""
    size, batch = (8, 4) if quick else (512, 32)
    return Work("resnet18 3x64x64", SPECS / "resnet18.yaml", {
        "classes": 10, "size": 64, "data.dataset": "synthetic", "data.shape": [3, 64, 64], "data.size": size,
        "data.val_size": 0, "data.batch_size": batch, "train.loss": "CrossEntropyLoss",
        "data.transforms": [], "data.val_transforms": [], "data.num_workers": 0,  # not the spec's image-folder recipe
        "train.optimizer": {"name": "SGD", "lr": 0.01, "momentum": 0.9}, **NO_VAL, **_logged(quick),
    }, *((3, 1) if quick else (40, 10)), rounds=5)  # fmt: skip


def _logged(quick: bool) -> dict:
    """yamlnet's metrics.csv must have a row at both ends of the window (the full windows
    end on multiples of the default cadence, 10)."""
    return {"train.log_every_n_steps": 1} if quick else {}


# -- the three sides: each returns the seconds of its loop ---------------------------------


def yamlnet_side(work: Work) -> float:
    import csv

    import yamlnet

    with tempfile.TemporaryDirectory() as tmp:
        result = yamlnet.train(work.spec, out=Path(tmp) / "run", stream=io.StringIO(),
                               **{**work.overrides, "train.max_steps": work.steps})  # fmt: skip
        with open(result.out / "metrics.csv", newline="") as fh:
            times = {int(r["step"]): float(r["time"]) for r in csv.DictReader(fh)}
    assert result.step == work.steps, result
    return work.window(times)


def _model(work: Work):
    """What every hand-written side starts from: the compiled model with the initial
    weights `train` gives it, the run's checked config, and an optimizer factory."""
    import torch
    from yamlnet.runtime.config import load_run
    from yamlnet.runtime.optim import build_optimizer

    import yamlnet

    _, cfg, variables = load_run(work.spec, None, work.overrides)
    torch.manual_seed(cfg.train["seed"])  # what `train` does before it builds the model
    device = torch.device("cpu" if cfg.train["device"] == "auto" else cfg.train["device"])
    model = yamlnet.compile(work.spec, **{**cfg.vars, **variables}).to(device)
    return model, cfg, lambda params: build_optimizer(cfg.train["optimizer"], params)


def _setup(work: Work):
    """What the plain and Lightning sides build: the model, a loader of the samples
    yamlnet trains on as (input, target) pairs, the optimizer."""
    import torch
    from yamlnet.runtime.data import build_splits

    model, cfg, optimizer = _model(work)
    splits = build_splits(cfg.data)
    x, y = splits.fields.inputs[0], splits.fields.targets[0]
    samples = [splits.train[i] for i in range(len(splits.train))]
    data = torch.utils.data.TensorDataset(torch.stack([s[x] for s in samples]),
                                          torch.stack([s[y] for s in samples]))  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.data["batch_size"], shuffle=True)
    return model, loader, optimizer


def _autocast(work: Work):
    """The plain loop's autocast for the run's precision (bf16-mixed on the GPU rows)."""
    import contextlib

    import torch

    device = work.overrides.get("train.device", "cpu")
    if work.overrides.get("train.precision") == "bf16-mixed":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_side(work: Work, saves: bool = True) -> float:
    """The plain loop over the samples yamlnet trains on, with `nn.CrossEntropyLoss`."""
    import torch

    model, loader, optimizer = _setup(work)
    return plain_loop(work, model, optimizer(model.parameters()), loader, torch.nn.CrossEntropyLoss(), saves)


def plain_loop(work: Work, model, opt, loader, loss_fn, saves: bool = True) -> float:
    """The loop one writes by hand over `loader`'s (input, target) batches, an epoch a
    pass: `loss.item()` each step for the log and, with `saves`, the model's and
    optimizer's state saved at each epoch's end. Steps/s of `work`'s window."""
    import torch

    device = next(model.parameters()).device
    model.train()
    done, epoch, times = 0, 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        while done < work.steps:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(work):
                    loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
                done += 1
                times[done] = time.perf_counter()
                if done == work.steps:
                    break
            else:
                epoch += 1
                if saves:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "epoch": epoch, "step": done}, Path(tmp) / "checkpoint.pt")  # fmt: skip
    return work.window(times)


def lightning_side(work: Work) -> float:
    import lightning as L

    from .lightning_script import classifier

    model, loader, optimizer = _setup(work)

    class Clock(L.Callback):
        times: dict[int, float] = {}

        def on_train_batch_end(self, trainer, *_):
            self.times[trainer.global_step] = time.perf_counter()

    clock = Clock()
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with tempfile.TemporaryDirectory() as tmp, quiet[0], quiet[1]:
        trainer = L.Trainer(max_steps=work.steps, accelerator="cpu", devices=1, callbacks=[clock],
                            default_root_dir=tmp, enable_progress_bar=False,
                            enable_model_summary=False, log_every_n_steps=10)  # fmt: skip
        trainer.fit(classifier(model, optimizer), loader)
    assert trainer.global_step == work.steps
    return work.window(clock.times)


NO_CHECKPOINTS = {"train.checkpoint_every_n_steps": None, "train.checkpoint_every_n_epochs": None,
                  "train.checkpoint_every_n_minutes": None}


def speed_rows(quick: bool) -> list[Row]:
    """Row 5: steps/s of yamlnet / plain loop (>= 0.97) and / Lightning (> 1), light and
    heavy; and yamlnet / plain loop with no checkpoints on either side (>= 0.97)."""
    _quiet_lightning()
    rows = []
    for tag, work in (("a", light(quick)), ("b", heavy(quick))):
        bare = replace(work, overrides={**work.overrides, **NO_CHECKPOINTS})
        sides = {"yamlnet": lambda w=work: yamlnet_side(w), "plain": lambda w=work: plain_side(w),
                 "lightning": lambda w=work: lightning_side(w),
                 "yamlnet_bare": lambda w=bare: yamlnet_side(w),
                 "plain_bare": lambda w=work: plain_side(w, saves=False)}  # fmt: skip
        rate = rounds(sides, 1 if quick else work.rounds, warmup=0 if quick else 1)
        ours = Side("yamlnet train", rate["yamlnet"], "steps/s")
        what = f"training steps/s, {work.name} (steps {work.short + 1}-{work.steps})"
        rows += [
            Row(f"5{tag}", f"{what}; each checkpoints every epoch", ours,
                Side("plain loop", rate["plain"], "steps/s"), Goal(">=", 0.97)),
            Row(f"5{tag}L", what, ours, Side("lightning.Trainer", rate["lightning"], "steps/s"), Goal(">", 1.0)),
            Row(f"5{tag}0", f"{what}; no checkpoints", Side("yamlnet train", rate["yamlnet_bare"], "steps/s"),
                Side("plain loop", rate["plain_bare"], "steps/s"), Goal(">=", 0.97)),
        ]  # fmt: skip
    return rows


def first_step_row(quick: bool) -> Row:
    """Row 6: whole process of a one-step run, `yamlnet train` / the Lightning script."""
    ours = yamlnet_cmd("train", str(SPECS / "digits_cnn.yaml"), "--max-steps", "1", *light(quick).sets())
    theirs = [sys.executable, "-m", "benchmarks.lightning_script", "--max-steps", "1"]
    with tempfile.TemporaryDirectory() as tmp:  # both make new versioned run folders in it
        secs = process_seconds({"ours": ours, "theirs": theirs}, 1 if quick else 5,
                               warmup=0 if quick else 1, cwd=Path(tmp), together=quick)  # fmt: skip
    return Row("6", "time to the first training step (whole process, digits CNN, 1 step)",
               Side("yamlnet train", secs["ours"], "s"),
               Side("Lightning script", secs["theirs"], "s"), Goal("<", 1.0))  # fmt: skip


def memory_row(quick: bool) -> Row:
    """Row 7: peak RSS of a process training the heavy job (the light one when quick),
    yamlnet / plain loop: the peak from after the imports (which both share) to the end."""
    cmds = {side: [sys.executable, "-m", "benchmarks.training", "--peak-rss", side]
            + (["--quick"] if quick else []) for side in ("yamlnet", "plain")}  # fmt: skip
    peaks = rounds({k: (lambda c=c: _peak_of(c)) for k, c in cmds.items()}, 1 if quick else 3,
                   warmup=0, together=quick)
    work = _memory_work(quick)
    return Row("7", f"peak RSS, building and training {work.name} ({work.steps} steps; imports excluded)",
               Side("yamlnet train", peaks["yamlnet"], "MB"),
               Side("plain loop", peaks["plain"], "MB"), Goal("<=", 1.05))  # fmt: skip


def _memory_work(quick: bool) -> Work:
    """What row 7's child processes train."""
    return light(quick) if quick else heavy(quick)


def _peak_of(cmd: list[str]) -> float:
    return float(run_process(cmd).stdout.strip().splitlines()[-1])


def _quiet_lightning() -> None:
    """Lightning's info lines and warnings off (after its import, which sets its levels)."""
    import logging
    import warnings

    import lightning  # noqa: F401

    warnings.filterwarnings("ignore", module="lightning")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-rss", choices=["yamlnet", "plain"], required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import torch
    import yamlnet.runtime.train  # noqa: F401  (imports before the peak is reset: not training)

    torch.set_num_threads(2)
    work = _memory_work(args.quick)
    reset = _reset_peak_rss()
    {"yamlnet": yamlnet_side, "plain": plain_side}[args.peak_rss](work)  # both checkpoint
    if reset:  # the peak since the reset: building the model and data, and training
        status = Path("/proc/self/status").read_text()
        print(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)
    else:  # the whole process's peak (imports included)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux -> MB
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
