"""Run a trained checkpoint: `evaluate` on a split of the spec's data, `predict` on a file.

The model is rebuilt from the spec with the variables the run was trained with (kept in
the checkpoint), and the checkpoint's `data:`/`train:` sections are the defaults, so
`yamlnet eval spec.yaml --checkpoint runs/x` measures exactly what training measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..compiler.compile import compile_spec
from ..compiler.load import load_spec_source
from .checkpoint import CheckpointDir, load_checkpoint, load_weights
from .config import load_run_config, split_overrides
from .data import EpochSampler, build_loaders, build_transforms
from .distributed import pick_device
from .errors import CheckpointError, ConfigError
from .metrics import build_metrics
from .optim import build_loss

__all__ = ["evaluate", "predict", "resolve_checkpoint", "Predictions", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """A checkpoint file, or a run folder (its best.pt, else its newest good checkpoint)."""
    path = Path(path)
    if path.is_dir():
        ckpts = CheckpointDir(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        if ckpts.best.exists():
            return ckpts.best, load_checkpoint(ckpts.best)
        found = ckpts.latest_good(lambda text: print(f"warning: {text}", flush=True))
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}")
        return found
    return path, load_checkpoint(path)


def _session(spec, checkpoint, config, plugins, overrides, device: str | None):
    """Config, compiled model with the checkpoint's weights, device."""
    path, state = resolve_checkpoint(checkpoint)
    run_over, var_over = split_overrides(dict(overrides))
    source = load_spec_source(Path(spec))
    saved = state.get("config", {})
    base = _with_saved_sections(source.main, saved)
    cfg = load_run_config(base, config, run_over)
    variables = {**saved.get("vars", {}), **cfg.vars, **var_over}
    compiled = compile_spec(source, variables, plugins=tuple(plugins))
    load_weights(compiled.module, state["model"], path)
    dev = pick_device(device or "auto")
    return cfg, compiled, compiled.module.to(dev).eval(), dev, path


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
    from .train import _autocast, evaluate_loader

    cfg, compiled, model, dev, _ = _session(spec, checkpoint, config, plugins, overrides, device)
    loaders = build_loaders(cfg.data, seed=cfg.train["seed"])
    loader = loaders.val if split == "val" else _ordered(loaders.train)
    if loader is None:
        raise ConfigError(f"dataset '{cfg.data['dataset']}' has no validation split",
                          path="data", hint="use --split train")  # fmt: skip
    names = [n for n, _ in compiled.spec.outputs]
    out_name = cfg.train["output"]
    ctx = SimpleNamespace(
        model=model, forward=model, env=SimpleNamespace(device=dev, world_size=1),
        autocast=_autocast(cfg.train["precision"], SimpleNamespace(device=dev)),
        loss_fn=build_loss(cfg.train["loss"]).to(dev),
        metrics=build_metrics(cfg.train["metrics"], cfg.error),
        output_index=names.index(out_name) if out_name else 0,
    )  # fmt: skip
    values = evaluate_loader(ctx, loader)
    return {k.replace("val/", f"{split}/", 1): v for k, v in values.items()}


def _ordered(loader):
    """The same loader over its dataset in order (evaluation needs no shuffling)."""
    sampler = EpochSampler(len(loader.dataset), shuffle=False, seed=0)
    return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)


@dataclass(frozen=True)
class Predictions:
    """Model outputs for every input sample, in file order."""

    outputs: torch.Tensor  # (samples, ...) of the chosen output
    output_name: str
    class_names: list[str] | None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample: class index, its probability and name when the output is
        (samples, classes) logits; the raw values otherwise."""
        out = self.outputs
        if out.dim() != 2:
            return [{"index": i, "output": v.tolist()} for i, v in enumerate(out)]
        probs = out.float().softmax(dim=1)
        p, k = probs.max(dim=1)
        rows = [{"index": i, "class": int(c), "probability": round(float(q), 6)} for i, (c, q) in enumerate(zip(k, p, strict=True))]
        if self.class_names:
            for row in rows:
                row["name"] = self.class_names[row["class"]]
        return rows


def predict(spec: str | os.PathLike, checkpoint: str | os.PathLike, inputs: str | os.PathLike, *,
            batch_size: int = 256, config=None, plugins=(), device: str | None = None,
            **overrides: Any) -> Predictions:  # fmt: skip
    """Run a checkpoint on the samples in `inputs`: a .pt/.npz/.csv file of inputs (one per
    row, with or without the batch dim), an image, or a folder of images."""
    cfg, compiled, model, dev, _ = _session(spec, checkpoint, config, plugins, overrides, device)
    inp = compiled.spec.inputs[0]
    x = read_inputs(Path(inputs), cfg, channels=inp.shape[1] if len(inp.shape) == 4 else None)
    if x.dim() == len(inp.shape) - 1:
        x = x.unsqueeze(0)  # a single sample
    _check_inputs(x, inp)
    names = [n for n, _ in compiled.spec.outputs]
    index = names.index(cfg.train["output"]) if cfg.train["output"] else 0
    chunks = []
    with torch.no_grad():
        for part in x.split(batch_size):
            out = model(part.to(dev))
            chunks.append((out[index] if isinstance(out, tuple) else out).float().cpu())
    meta = compiled.spec.meta or {}
    return Predictions(torch.cat(chunks), names[index], meta.get("class_names"))


def _check_inputs(x: torch.Tensor, inp) -> None:
    want = inp.shape[1:]
    fits = x.dim() == len(inp.shape) and all(isinstance(w, str) or w == s for w, s in zip(want, x.shape[1:], strict=True))
    if not fits:
        raise ConfigError(f"inputs have shape {list(x.shape)}; the spec's input '{inp.name}' takes "
                          f"[{', '.join(map(str, inp.shape))}]")  # fmt: skip


def read_inputs(path: Path, cfg, channels: int | str | None = None) -> torch.Tensor:
    """Inputs from a file or a folder of images; images get the spec's val_transforms."""
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return _read_images(path, cfg, channels)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    ext = path.suffix.lower()
    try:
        if ext in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            x = obj["x"] if isinstance(obj, dict) else obj
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                x = arrays["x"] if "x" in arrays.files else arrays[arrays.files[0]]
        elif ext == ".csv":
            x = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise ConfigError(f"cannot read '{ext}' files", hint="use .pt, .npz, .csv or images")
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    x = torch.as_tensor(x)
    return x.float() if x.is_floating_point() else x


def _read_images(path: Path, cfg, channels) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    mode = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels, ImageReadMode.UNCHANGED)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
        if path.is_dir() else [path]  # fmt: skip
    if not files:
        raise ConfigError(f"no images in {path}")
    transform = build_transforms(cfg.data["val_transforms"], "data.val_transforms")
    out = []
    for f in files:
        try:
            img = decode_image(str(f), mode=mode).float() / 255.0
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"cannot read image {f}: {err}") from None
        out.append(transform(img) if transform else img)
    return torch.stack(out)

