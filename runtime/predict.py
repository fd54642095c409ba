"""Run a trained model on new samples: `yamlnet predict SPEC --checkpoint C --input PATH`.

Inputs are read the way training read its data, so a model sees what it was trained on:
- images (a file, or a folder searched recursively, so a class-folder test set works as
  it is): decoded to float32 in [0, 1] (RGB or grayscale as the spec's input has 3 or 1
  channels), then the run's `val_transforms`; each row is named by the file's path
  relative to the folder;
- a CSV with or without a header: when the run trained on a table, the table's saved
  encoding (column order, categories, standardisation) is applied to it; rows are named
  by their number;
- .npz / .pt arrays: one array per spec input (by the input's or its field's name; `x`,
  or the only array, for a one-input spec);
- from Python, tensors or arrays: one for a one-input spec, or a dict by input name.

What comes back depends on the output the run's (first) loss reads: class scores give
the class, its probability and its name; dense scores [N, classes, H, W] give a mask of
class ids (written as PNGs by the CLI); anything else gives one column per value.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_tensors, loaded_problem
from .data import ImageTooLarge, build_transforms, open_image
from .errors import ConfigError
from .evaluate import IMAGE_EXTENSIONS, output_index, session
from .tasks import as_tuple, loss_items

__all__ = ["predict", "Predictions", "read_samples", "CLASSIFICATION_LOSSES"]

CLASSIFICATION_LOSSES = ("CrossEntropyLoss", "NLLLoss", "MultiMarginLoss")


@dataclass(frozen=True)
class Predictions:
    """Every output of the model for every sample, in input order."""

    samples: list[str]  # a file's relative path, or a row number
    outputs: torch.Tensor  # (samples, ...) of the output the run's loss reads
    output_name: str
    kind: str  # classes | masks | values
    class_names: list[str] | None = None
    all_outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample: `sample`, then the class, its probability and its name
        (classes); the mask's file name (masks, see `masks`); or one column per value."""
        if self.kind == "classes":
            return self._class_rows()
        if self.kind == "masks":
            return [{"sample": s, "mask": mask_file(s)} for s in self.samples]
        flat = self.outputs.reshape(len(self.outputs), -1)
        keys = [self.output_name] if flat.shape[1] == 1 else \
            [f"{self.output_name}_{i}" for i in range(flat.shape[1])]  # fmt: skip
        return [{"sample": s, **{k: round(float(v), 7) for k, v in zip(keys, row, strict=True)}}
                for s, row in zip(self.samples, flat, strict=True)]  # fmt: skip

    def _class_rows(self) -> list[dict[str, Any]]:
        p, k = self.outputs.float().softmax(dim=1).max(dim=1)
        names = self.class_names if self.class_names and len(self.class_names) == self.outputs.shape[1] else None
        rows = []
        for s, c, q in zip(self.samples, k.tolist(), p.tolist(), strict=True):
            row = {"sample": s, "class": c, "probability": round(q, 6)}
            if names:
                row["class_name"] = str(names[c])
            rows.append(row)
        return rows

    def masks(self) -> torch.Tensor:
        """Class ids per pixel, (samples, H, W)."""
        return self.outputs.argmax(dim=1)


def mask_file(sample: str) -> str:
    """The PNG a sample's mask is written to, relative to the masks folder."""
    return str(Path(sample).with_suffix(".png"))


def predict(spec: str | os.PathLike, checkpoint: str | os.PathLike, inputs: Any, *,
            batch_size: int = 256, config=None, plugins=(), device: str | None = None,
            **overrides: Any) -> Predictions:  # fmt: skip
    """Run a checkpoint (or a plain weights file) on `inputs`: a path (images, a folder of
    them, .csv, .npz, .pt), a tensor or array, or a dict of them by input name.

        >>> yamlnet.predict("specs/digits_cnn.yaml", "runs/digits", "test_images/").rows()[0]  # doctest: +SKIP
        {'sample': '3/img_001.png', 'class': 3, 'probability': 0.998}
    """
    cfg, compiled, model, dev, state = session(spec, checkpoint, config, plugins, overrides, device)
    info = state.get("data_info") or {}
    first = loss_items(cfg)[0]
    with cfg.located():
        index = output_index(compiled, cfg, first.get("output"))
    samples, feeds = read_samples(inputs, compiled, cfg, info)
    names = [n for n, _ in compiled.spec.outputs]
    parts: list[tuple] = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = [t[start : start + batch_size].to(dev) for t in feeds]
            parts.append(tuple(o.float().cpu() for o in as_tuple(model(*chunk))))
    outs = {n: torch.cat([p[i] for p in parts]) for i, n in enumerate(names)}
    main = outs[names[index]]
    classes = (compiled.spec.meta or {}).get("class_names") or info.get("classes")
    return Predictions(samples, main, names[index], _kind(first, main), classes, outs)


def _kind(term: dict, out: torch.Tensor) -> str:
    if term["name"] not in CLASSIFICATION_LOSSES or int(term.get("class_dim", 1)) != 1:
        return "values"
    return {2: "classes", 4: "masks"}.get(out.dim(), "values")


# -- reading the samples ---------------------------------------------------------------


def read_samples(inputs: Any, compiled, cfg, info: dict) -> tuple[list[str], list[torch.Tensor]]:
    """(sample names, one batch tensor per spec input, in the spec's order)."""
    specs = compiled.spec.inputs
    if isinstance(inputs, (str, os.PathLike)):
        names, arrays = _read_path(Path(inputs), specs, cfg, info)
    else:
        arrays = inputs if isinstance(inputs, dict) else {specs[0].name: inputs}
        names = None
    tensors = [_pick(arrays, inp, len(specs)) for inp in specs]
    tensors = [t.unsqueeze(0) if t.dim() == len(inp.shape) - 1 else t for t, inp in zip(tensors, specs, strict=True)]
    for t, inp in zip(tensors, specs, strict=True):
        _check(t, inp)
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ConfigError("the inputs differ in their number of samples: "
                          + ", ".join(f"{i.name} {len(t)}" for i, t in zip(specs, tensors, strict=True)))  # fmt: skip
    return names or [str(i) for i in range(n)], tensors


def _pick(arrays: dict, inp, n_inputs: int) -> torch.Tensor:
    if inp.name in arrays:
        value = arrays[inp.name]
    elif n_inputs == 1 and len(arrays) == 1:
        value = next(iter(arrays.values()))
    elif n_inputs == 1 and "x" in arrays:
        value = arrays["x"]
    else:
        raise ConfigError(f"no array for the spec's input '{inp.name}'",
                          hint="arrays: " + ", ".join(map(str, arrays)))  # fmt: skip
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    return t.float() if t.is_floating_point() else t.long()


def _check(x: torch.Tensor, inp) -> None:
    want = inp.shape[1:]
    fits = x.dim() == len(inp.shape) and all(isinstance(w, str) or w == s
                                             for w, s in zip(want, x.shape[1:], strict=True))  # fmt: skip
    if not fits or len(x) == 0:
        raise ConfigError(f"inputs have shape {list(x.shape)}; the spec's input '{inp.name}' takes "
                          f"[{', '.join(map(str, inp.shape))}]")  # fmt: skip
    if x.is_floating_point() != inp.dtype.startswith(("float", "bfloat")):
        raise ConfigError(f"inputs are {x.dtype}; the spec's input '{inp.name}' is {inp.dtype}")


def _read_path(path: Path, specs, cfg, info: dict) -> tuple[list[str] | None, dict]:
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        channels = specs[0].shape[1] if len(specs[0].shape) == 4 else None
        names, images = read_images(path, cfg.data["val_transforms"], channels)
        return names, {specs[0].name: images}
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    ext = path.suffix.lower()
    if ext not in (".pt", ".pth", ".npz", ".csv"):
        raise ConfigError(f"cannot read '{ext}' files", hint="use .pt, .npz, .csv or images")
    if ext == ".csv":
        return _read_csv(path, specs, cfg, info)
    try:
        return None, _read_arrays(path, ext)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError, EOFError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:  # fmt: skip
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else err!r}") from None


def _read_arrays(path: Path, ext: str) -> dict:
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    obj = load_tensors(path)
    problem = loaded_problem(obj)
    if problem:
        raise ValueError(problem)
    arrays = obj if isinstance(obj, dict) else {"x": obj}
    for key, value in arrays.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise ValueError(f"it holds {type(value).__name__} under {str(key)[:40]!r}, not a tensor")
    return arrays


def _read_csv(path: Path, specs, cfg, info: dict) -> tuple[list[str], dict]:
    """A CSV through the run's table encoding when it has one (what the `tensors` source
    saved), else as numbers (a first row that is not numbers is a header)."""
    encoding = info.get("encoding")
    if encoding is not None:
        from .data import Fields
        from .tables import encode_table
        from .tasks import resolve_feeds

        fields = encode_table(path, encoding, where=str(path))
        names = list(encoding.get("inputs", fields))
        feeds = resolve_feeds([i.name for i in specs], Fields(tuple(names), ()), cfg.data)
        arrays = {inp.name: fields[f] for inp, f in zip(specs, feeds, strict=True)}
    else:
        arrays = {specs[0].name: _numbers(path)}
    n = len(next(iter(arrays.values())))
    return [str(i + 1) for i in range(n)], arrays


def _numbers(path: Path) -> np.ndarray:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
        if rows and not _numeric(rows[0]):
            rows = rows[1:]  # a header
        return np.array(rows, dtype=np.float32).reshape(len(rows), -1)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def read_images(path: Path, transforms: list[dict], channels) -> tuple[list[str], torch.Tensor]:
    """Images under `path` (recursively, sorted by relative path), or the one image it
    names, decoded as training decodes them and passed through `transforms` (the run's
    val_transforms)."""
    from PIL import UnidentifiedImageError

    from .sources import to_tensor

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
        if path.is_dir() else [path]  # fmt: skip
    if not files:
        raise ConfigError(f"no images in {path}", hint=f"images are {', '.join(IMAGE_EXTENSIONS)} files")
    mode = {1: "L", 3: "RGB"}.get(channels)
    transform = build_transforms(transforms, "data.val_transforms")
    decode = to_tensor()
    out = []
    for f in files:
        try:
            with open_image(str(f)) as img:
                img = img.convert(mode) if mode else img.copy()
        except ImageTooLarge as err:
            raise ConfigError(str(err)) from None
        except (OSError, UnidentifiedImageError) as err:
            raise ConfigError(f"cannot read image {f}: {err}") from None
        x = decode(img)
        out.append(transform(x).as_subclass(torch.Tensor) if transform else x.as_subclass(torch.Tensor))
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise ConfigError(f"the images in {path} differ in size ({len(sizes)} sizes)",
                          hint="add a Resize to data.val_transforms")  # fmt: skip
    root = path if path.is_dir() else path.parent
    return [str(f.relative_to(root)) for f in files], torch.stack(out)
