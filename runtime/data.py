"""Data for training: a registry of dataset sources, transforms by name, and a sampler
that makes every epoch a pure function of (seed, epoch, rank).

A source is one registered `DatasetDef`: the JSON Schema of its arguments (checked with
the rest of `data:`, see config.py) and a builder that returns (train, val) datasets of
(input, target) pairs. Adding a source is one `register_dataset` call.

Why the sampler yields (epoch, index) pairs: random transforms are seeded per sample
from (seed, epoch, index), so the augmentation a sample gets does not depend on how
many workers there are, which worker loads it, or whether the run was resumed part-way
into the epoch. That, with the epoch-seeded shuffle and `start`, is what makes a
resumed run see exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import csv
import inspect
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..compiler.errors import did_you_mean
from .errors import ConfigError

__all__ = [
    "DatasetDef", "DATASETS", "register_dataset", "EpochSampler", "Transformed", "Loaders",
    "build_loaders", "build_datasets", "build_transforms", "read_tensor_file",
]  # fmt: skip


@dataclass(frozen=True)
class DatasetDef:
    """One dataset source: `build(args) -> (train, val | None)`; `args` maps each argument
    to its JSON Schema (with `default` where it has one)."""

    name: str
    build: Callable[[dict], tuple[Dataset, Dataset | None]]
    args: dict[str, dict] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    doc: str = ""


DATASETS: dict[str, DatasetDef] = {}


def register_dataset(name: str, *, args: dict | None = None, required=(), doc: str = ""):
    """Decorator: register `build(args) -> (train, val)` as the dataset source `name`."""

    def add(build):
        DATASETS[name] = DatasetDef(name, build, dict(args or {}), tuple(required), doc)
        return build

    return add


# -- the sources -----------------------------------------------------------------------

_FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
_SPLIT = {
    "val_fraction": {**_FRACTION, "default": 0.2, "description": "share held out for validation"},
    "split_seed": {"type": "integer", "default": 0, "description": "seed of the fixed split"},
}


@register_dataset("digits", args={**_SPLIT, "flatten": {"type": "boolean", "default": False,
                  "description": "samples as [64] instead of [1, 8, 8]"}},
                  doc="scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; offline)")  # fmt: skip
def _digits(args: dict):
    pixels, labels = digits_arrays()
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    x = x if args["flatten"] else x.view(-1, 1, 8, 8)
    y = torch.tensor(labels, dtype=torch.int64)
    return split(Pairs(x, y), args["val_fraction"], args["split_seed"])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ([1797, 64] pixels 0..16, [1797] labels).

    Read from the file scikit-learn ships (`datasets/data/digits.csv.gz`: 64 pixel
    columns, then the label), because importing `sklearn.datasets` costs about a second —
    a sixth of the quick start. Where that file is not found, `load_digits` reads it.
    """
    import importlib.util
    from pathlib import Path

    found = importlib.util.find_spec("sklearn")
    shipped = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz" if found else None
    if shipped is None or not shipped.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target
    table = np.loadtxt(shipped, delimiter=",")  # numpy reads .gz itself
    return table[:, :-1], table[:, -1].astype(np.int64)


@register_dataset("synthetic", required=("shape",), args={
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
              "description": "shape of one sample, e.g. [3, 64, 64]"},
    "classes": {"type": ["integer", "null"], "minimum": 1, "default": 10,
                "description": "integer targets in [0, classes); null: regression targets"},
    "target_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [1],
                     "description": "shape of one regression target (classes: null)"},
    "size": {"type": "integer", "minimum": 1, "default": 1024},
    "val_size": {"type": "integer", "minimum": 0, "default": 256},
    "seed": {"type": "integer", "default": 0},
}, doc="random normal inputs of a declared shape (for benchmarks and smoke tests)")  # fmt: skip
def _synthetic(args: dict):
    g = torch.Generator().manual_seed(args["seed"])
    n, n_val = args["size"], args["val_size"]
    if (n + n_val) * int(np.prod(args["shape"])) > 1 << 28:
        raise ConfigError("synthetic data over 2**28 values (1 GiB); lower size or shape",
                          path="data.size")  # fmt: skip
    x = torch.randn(n + n_val, *args["shape"], generator=g)
    if args["classes"] is None:
        y = torch.randn(n + n_val, *args["target_shape"], generator=g)
    else:
        y = torch.randint(0, args["classes"], (n + n_val,), generator=g)
    whole = Pairs(x, y)
    return Subset(whole, range(n)), (Subset(whole, range(n, n + n_val)) if n_val else None)


@register_dataset("tensors", required=("train",), args={
    "train": {"type": "string", "description": "a .pt, .npz or .csv file"},
    "val": {"type": ["string", "null"], "default": None,
            "description": "validation file; null: hold out val_fraction of train"},
    **_SPLIT,
    "x": {"type": "string", "default": "x", "description": "key of the inputs (.pt/.npz)"},
    "y": {"type": "string", "default": "y", "description": "key of the targets (.pt/.npz)"},
    "target_column": {"type": ["integer", "string"], "default": -1,
                      "description": ".csv: index or header name of the target column"},
}, doc="tensors from .pt (dict or (x, y)), .npz or .csv files")  # fmt: skip
def _tensors(args: dict):
    train = Pairs(*read_tensor_file(args["train"], args, "data.train"))
    if args["val"]:
        return train, Pairs(*read_tensor_file(args["val"], args, "data.val"))
    return split(train, args["val_fraction"], args["split_seed"])


@register_dataset("image_folder", required=("root",), args={
    "root": {"type": "string", "description": "a folder with one sub-folder per class"},
    "val_root": {"type": ["string", "null"], "default": None,
                 "description": "validation folder; null: hold out val_fraction of root"},
    **_SPLIT,
}, doc="images in class folders (torchvision ImageFolder), as float tensors in [0, 1]")  # fmt: skip
def _image_folder(args: dict):
    from torchvision.datasets import ImageFolder

    def folder(path: str, key: str):
        if not os.path.isdir(path):
            raise ConfigError(f"no such folder: {path}", path=f"data.{key}")
        try:
            return ImageFolder(path, transform=_to_tensor())
        except (FileNotFoundError, RuntimeError) as err:
            raise ConfigError(f"cannot read images under {path}: {err}", path=f"data.{key}") from None

    train = folder(args["root"], "root")
    if args["val_root"]:
        return train, folder(args["val_root"], "val_root")
    return split(train, args["val_fraction"], args["split_seed"])


TORCHVISION_SETS = ("MNIST", "FashionMNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100", "SVHN")


@register_dataset("torchvision", required=("name", "root"), args={
    "name": {"enum": list(TORCHVISION_SETS), "description": "a torchvision.datasets class"},
    "root": {"type": "string", "description": "where the files are (or go, with download)"},
    "download": {"type": "boolean", "default": False},
}, doc="a torchvision dataset by name: its train and test splits")  # fmt: skip
def _torchvision(args: dict):
    import torchvision.datasets as tvd

    cls = getattr(tvd, args["name"])
    split_kw = (lambda train: {"split": "train" if train else "test"}) if args["name"] == "SVHN" \
        else (lambda train: {"train": train})  # fmt: skip
    try:
        return tuple(cls(args["root"], download=args["download"], transform=_to_tensor(),
                         **split_kw(train)) for train in (True, False))  # fmt: skip
    except RuntimeError as err:  # torchvision says "Dataset not found ..." this way
        raise ConfigError(f"{args['name']}: {err}", path="data.root",
                          hint="set data.download: true where the network allows it") from None


def _to_tensor():
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


# -- datasets --------------------------------------------------------------------------


class Pairs(Dataset):
    """(x[i], y[i]) from two tensors of equal length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs but {len(y)} targets", path="data")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A fixed random split (its own seed, not the run's): the same validation set for
    every run and every rank."""
    n_val = int(round(len(ds) * val_fraction))
    if n_val == 0:
        return ds, None
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, sorted(order[n_val:])), Subset(ds, sorted(order[:n_val]))


def read_tensor_file(path: str, args: dict, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a .pt, .npz or .csv file; never unpickles code."""
    if not os.path.isfile(path):
        raise ConfigError(f"no such file: {path}", path=where)
    ext = os.path.splitext(path)[1].lower()
    readers = {".pt": _read_pt, ".pth": _read_pt, ".npz": _read_npz, ".csv": _read_csv}
    if ext not in readers:
        raise ConfigError(f"cannot read '{ext}' files", path=where, hint="use .pt, .npz or .csv")
    try:
        x, y = readers[ext](path, args)
        x, y = _as_float32(torch.as_tensor(x)), _target(torch.as_tensor(y))
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError("inputs and targets need a first (sample) dimension")
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EOFError, IndexError) as err:
        raise ConfigError(f"cannot read {path}: {err}", path=where) from None
    return x, y


def _read_pt(path: str, args: dict):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text is many lines and suggests weights_only=False
        raise ValueError("torch.load(weights_only=True) refused it: it holds more than tensors, "
                         "or is not a torch file") from None  # fmt: skip
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj
    if isinstance(obj, dict):
        return _pick(obj, args, path)
    raise ValueError("expected a dict of tensors or an (inputs, targets) pair")


def _read_npz(path: str, args: dict):
    with np.load(path, allow_pickle=False) as arrays:
        return _pick({k: arrays[k] for k in arrays.files}, args, path)


def _pick(arrays: dict, args: dict, path: str):
    for key in (args["x"], args["y"]):
        if key not in arrays:
            hint = did_you_mean(key, arrays) or "keys: " + ", ".join(map(str, arrays))
            raise ValueError(f"no array '{key}' ({hint})")
    return arrays[args["x"]], arrays[args["y"]]


def _read_csv(path: str, args: dict):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    header = rows[0] if rows and not _numeric(rows[0]) else None
    table = np.array(rows[1:] if header else rows, dtype=np.float64)
    if table.ndim != 2 or not table.size:
        raise ValueError("no rows of numbers")
    col = args["target_column"]
    if isinstance(col, str):
        if not header or col not in header:
            raise ValueError(f"no column named '{col}'")
        col = header.index(col)
    if not -table.shape[1] <= col < table.shape[1]:
        raise ValueError(f"no column {col}; the file has {table.shape[1]}")
    y = table[:, col]
    x = np.delete(table, col % table.shape[1], axis=1)
    # whole numbers are class labels (N,); other values regression targets (N, 1), the
    # shape of a one-unit output
    return x, (y.astype(np.int64) if np.all(y == np.round(y)) else y[:, None])


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x  # float64 files meet float32 weights


def _target(y: torch.Tensor) -> torch.Tensor:
    return y.float() if y.is_floating_point() else y.long()


# -- transforms ------------------------------------------------------------------------


def build_transforms(items: list[dict], where: str):
    """torchvision.transforms.v2 classes by name: [{name: RandomCrop, size: 8}, ...]."""
    if not items:
        return None
    from torchvision.transforms import v2

    known = {n: c for n, c in vars(v2).items()
             if isinstance(c, type) and issubclass(c, v2.Transform) and not n.startswith("_")}  # fmt: skip
    steps = [_transform(item, known, f"{where}[{i}]") for i, item in enumerate(items)]
    return v2.Compose(steps)


def _transform(item: dict, known: dict, where: str):
    kwargs = {k: v for k, v in item.items() if k != "name"}
    name = item["name"]
    if name not in known:
        raise ConfigError(f"unknown transform '{name}'", path=f"{where}.name",
                          hint=did_you_mean(name, known) or "see torchvision.transforms.v2")  # fmt: skip
    check_kwargs(known[name], kwargs, where)
    try:
        return known[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}", path=where) from None


def check_kwargs(target, kwargs: dict, where: str) -> None:
    """Refuse keyword arguments `target` does not take, with a did-you-mean hint."""
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            hint = did_you_mean(key, params) or "arguments: " + ", ".join(params)
            raise ConfigError(f"{getattr(target, '__name__', target)} takes no argument '{key}'",
                              path=f"{where}.{key}", hint=hint)  # fmt: skip


class Transformed(Dataset):
    """Applies `transform` to the input of each pair, seeded per (seed, epoch, index).

    Indexed by the (epoch, index) pairs `EpochSampler` yields. The fork keeps the
    caller's RNG stream (dropout, in a process without workers) untouched."""

    def __init__(self, base: Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        x, y = self.base[i]
        if self.transform is None:
            return x, y
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed every GPU's,
            # which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.transform(x), y


class EpochSampler(Sampler):
    """Yields (epoch, index): shuffled by (seed, epoch) and dealt out across ranks like
    `DistributedSampler` (rank r takes every world-th sample from the r-th; padded by
    wrapping around so every rank gets as many), and able to start `start` samples into
    the epoch's order, for an exact resume.

    `start` counts the samples of all ranks together, so a run can resume with another
    number of processes: the epoch goes on from the same sample. (Dealt out this way, the
    ranks' k-th batches together are samples [k*B*W, (k+1)*B*W) of the order, whatever W
    is.) With `pad=False` (validation) ranks get uneven shares and no sample twice."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1,
                 drop_last: bool = False, pad: bool = True):  # fmt: skip
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.drop_last, self.pad = drop_last, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, min(start, self.n)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        left = order[self.start :]
        if not self.pad:
            return left[self.rank :: self.world]
        total = self._per_rank() * self.world
        if total > len(left):  # pad by wrapping around the epoch's order
            left += (order * (-(-(total - len(left)) // self.n)))[: total - len(left)]
        return left[self.rank : total : self.world]

    def _per_rank(self) -> int:
        left = self.n - self.start
        if not self.pad:
            return len(range(self.rank, left, self.world))
        return left // self.world if self.drop_last else -(-left // self.world)

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return self._per_rank()


# -- loaders ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaders:
    """The train and validation loaders and the samplers that drive their epochs."""

    train: DataLoader
    val: DataLoader | None
    train_sampler: EpochSampler
    sizes: tuple[int, int]  # samples in the train and val sets (all ranks)


def build_datasets(data: dict) -> tuple[Dataset, Dataset | None]:
    """The (train, val) datasets of a checked `data:` section, before transforms."""
    source = DATASETS[data["dataset"]]
    args = {k: data[k] for k in source.args}
    return source.build(args)


def build_loaders(data: dict, *, seed: int, rank: int = 0, world: int = 1,
                  pin_memory: bool = False) -> Loaders:  # fmt: skip
    """DataLoaders for a checked `data:` section; `seed` is the run's seed."""
    train, val = build_datasets(data)
    if len(train) == 0:
        raise ConfigError("the training set is empty", path="data")
    sampler = EpochSampler(len(train), shuffle=data["shuffle"], seed=seed, rank=rank, world=world)
    train_tf = build_transforms(data["transforms"], "data.transforms")
    train_loader = _loader(Transformed(train, train_tf, seed), sampler, data, data["batch_size"],
                           pin_memory, data["drop_last"])  # fmt: skip
    val_loader = None
    if val is not None and len(val):
        val_tf = build_transforms(data["val_transforms"], "data.val_transforms")
        val_sampler = EpochSampler(len(val), shuffle=False, seed=seed, rank=rank, world=world,
                                   pad=False)  # fmt: skip
        val_loader = _loader(Transformed(val, val_tf, seed), val_sampler, data,
                             data["val_batch_size"] or data["batch_size"], pin_memory, False)  # fmt: skip
    return Loaders(train_loader, val_loader, sampler, (len(train), len(val) if val else 0))


def _loader(ds, sampler, data: dict, batch_size: int, pin_memory: bool, drop_last: bool):
    workers = data["num_workers"]
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_seed_worker if workers else None,
        persistent_workers=workers > 0,
        # a private generator: creating an iterator must not draw from the global RNG,
        # or an evaluation pass would shift the training run's dropout masks
        generator=torch.Generator().manual_seed(sampler.seed),
    )  # fmt: skip


def _seed_worker(worker_id: int) -> None:
    """numpy and random in a worker follow torch's per-worker seed (user transforms)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def describe_sources() -> dict[str, Any]:
    """name -> doc, for messages and the docs."""
    return {name: d.doc for name, d in DATASETS.items()}
