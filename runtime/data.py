"""Data for training: a registry of dataset sources, samples as mappings of named fields,
transforms by name, and a sampler that makes every epoch a pure function of (seed, epoch,
rank).

A sample is a dict of named tensors (`{"image": ..., "label": ...}`, `{"tokens": ...,
"targets": ...}`, `{"image": ..., "mask": ...}`), and a batch is the same dict with a batch
dim. A source says which of its fields feed a model by default and which are targets
(`Fields`); the run maps fields to the spec's inputs and the loss terms' targets (see
tasks.py). A source is one registered `DatasetDef`: the JSON Schema of its arguments
(checked with the rest of `data:`, see config.py) and a builder returning `Splits`.
Adding a source is one `register_dataset` call; the built-in ones live in sources.py,
tables.py, text.py, dense.py and seq2seq.py.

Why the sampler yields (epoch, index) pairs: random transforms are seeded per sample
from (seed, epoch, index), so the augmentation a sample gets does not depend on how
many workers there are, which worker loads it, or whether the run was resumed part-way
into the epoch. That, with the epoch-seeded shuffle and `start`, is what makes a
resumed run see exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..compiler.errors import did_you_mean, printable
from .errors import ConfigError

__all__ = [
    "DatasetDef", "DATASETS", "register_dataset", "Fields", "Splits", "Table", "split",
    "EpochSampler", "Transformed", "Loaders", "build_loaders", "build_splits",
    "build_transforms", "check_kwargs",
]  # fmt: skip

IMAGE, MASK = "image", "mask"  # field kinds the transforms treat specially


@dataclass(frozen=True)
class Fields:
    """What a source's samples hold. `inputs` feed a model by default (in order),
    `targets` are what losses and metrics compare against by default; `kinds` says how
    transforms treat a field ('image': transformed; 'mask': moved with its image, never
    interpolated; anything else: left alone). `info` carries what the rest of the run may
    need from the source (a text source's vocabulary size and tokenizer, class names)."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    kinds: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return self.inputs + tuple(t for t in self.targets if t not in self.inputs)


@dataclass(frozen=True)
class Splits:
    """A source's train and validation datasets (items: dicts of tensors) and their fields."""

    train: Dataset
    val: Dataset | None
    fields: Fields


@dataclass(frozen=True)
class DatasetDef:
    """One dataset source: `build(args) -> Splits`; `args` maps each argument to its JSON
    Schema (with `default` where it has one)."""

    name: str
    build: Callable[[dict], Splits]
    args: dict[str, dict] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    doc: str = ""


DATASETS: dict[str, DatasetDef] = {}


def register_dataset(name: str, *, args: dict | None = None, required=(), doc: str = ""):
    """Decorator: register `build(args) -> Splits` as the dataset source `name`."""

    def add(build):
        DATASETS[name] = DatasetDef(name, build, dict(args or {}), tuple(required), doc)
        return build

    return add


# -- datasets --------------------------------------------------------------------------


class Table(Dataset):
    """Sample i is {name: column[i]} over named tensors of equal length."""

    def __init__(self, columns: dict[str, torch.Tensor], where: str = "data"):
        sizes = {name: len(t) for name, t in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ConfigError("fields differ in length: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
                              path=where)  # fmt: skip
        self.columns = columns
        self.n = next(iter(sizes.values()), 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: t[i] for name, t in self.columns.items()}


def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A fixed random split (its own seed, not the run's): the same validation set for
    every run and every rank."""
    n_val = int(round(len(ds) * val_fraction))
    if n_val == 0:
        return ds, None
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, sorted(order[n_val:])), Subset(ds, sorted(order[:n_val]))


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
    _check_sizes(name, kwargs, where)
    try:
        return known[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}", path=where) from None


MAX_SIDE = 16384  # pixels a side a transform may make: Resize to 30000x30000 is 10 GB a float image
MAX_PIXELS = 40_000_000  # pixels of one decoded image, unless $YAMLNET_MAX_IMAGE_PIXELS says
# otherwise: 480 MB as a float RGB tensor. A PNG of a few kilobytes can claim 30000x30000.


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than the limit; raised before decoding."""


def image_pixel_limit() -> int:
    """The most pixels one image may have: MAX_PIXELS, or $YAMLNET_MAX_IMAGE_PIXELS."""
    from ..compiler.shapes import env_limit

    return env_limit("YAMLNET_MAX_IMAGE_PIXELS", MAX_PIXELS, "pixels", ConfigError)


@contextmanager
def open_image(path: str):
    """PIL's image at `path`, its size checked against the pixel limit from the header,
    before any pixel is decoded."""
    from PIL import Image

    limit = image_pixel_limit()
    if limit > (Image.MAX_IMAGE_PIXELS or 0):  # PIL's own guard refuses at twice its value
        Image.MAX_IMAGE_PIXELS = limit
    how = "(set YAMLNET_MAX_IMAGE_PIXELS to allow more)"
    shown = printable(str(path), lines=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{shown}: more than {limit:,} pixels {how}") from None
    with image:
        width, height = image.size
        if width * height > limit:
            raise ImageTooLarge(f"{shown}: {width}x{height} is more than {limit:,} pixels {how}")
        yield image


def _check_sizes(name: str, kwargs: dict, where: str) -> None:
    """Output sizes (Resize, crops, padding) within MAX_SIDE pixels a side, so one sample
    cannot ask for gigabytes."""
    for key in ("size", "max_size", "padding"):
        value = kwargs.get(key)
        sides = value if isinstance(value, (list, tuple)) else [value]
        for side in sides:
            if isinstance(side, (int, float)) and not isinstance(side, bool) and side > MAX_SIDE:
                raise ConfigError(f"{name} {key} {side} is past {MAX_SIDE:,} pixels a side", path=f"{where}.{key}",
                                  hint="a sample that large takes gigabytes; is it a typo?")  # fmt: skip


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


def apply_transform(transform, sample: dict, fields: Fields) -> dict:
    """`transform` on one sample. With image fields, images and masks go through it
    together as tv_tensors (a flip or crop moves both alike; masks are resized with
    nearest neighbours, so class ids stay ids) and the other fields are left alone.
    Without, it applies to each input field as it is."""
    if transform is None:
        return sample
    wrapped = [k for k, kind in fields.kinds.items() if kind in (IMAGE, MASK) and k in sample]
    if not any(fields.kinds[k] == IMAGE for k in wrapped):
        return {k: transform(v) if k in fields.inputs else v for k, v in sample.items()}
    if len(wrapped) == 1:  # one image and nothing that moves with it: v2 takes a lone plain
        [key] = wrapped  # tensor for an image, and wrapping it costs as much as a flip
        return {**sample, key: transform(sample[key])}
    from torchvision import tv_tensors

    wrap = {IMAGE: tv_tensors.Image, MASK: tv_tensors.Mask}
    out = transform({k: wrap[fields.kinds[k]](v) if k in wrapped else v for k, v in sample.items()})
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


class Transformed(Dataset):
    """Applies `transform` to each sample, seeded per (seed, epoch, index).

    Indexed by the (epoch, index) pairs `EpochSampler` yields. The fork keeps the
    caller's RNG stream (dropout, in a process without workers) untouched."""

    def __init__(self, base: Dataset, transform, seed: int, fields: Fields):
        self.base, self.transform, self.seed, self.fields = base, transform, seed, fields

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = key
        sample = self.base[i]
        if self.transform is None:
            return sample
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed every GPU's,
            # which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
            return apply_transform(self.transform, sample, self.fields)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples at once: from the source's own batched read where it has one
        and there is no transform."""
        if self.transform is None and hasattr(self.base, "__getitems__"):
            return self.base.__getitems__([i for _, i in keys])
        return [self[key] for key in keys]


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
    """The train and validation loaders, the samplers that drive their epochs, and the
    fields of their samples."""

    train: DataLoader
    val: DataLoader | None
    train_sampler: EpochSampler
    sizes: tuple[int, int]  # samples in the train and val sets (all ranks)
    fields: Fields


def build_splits(data: dict) -> Splits:
    """The source's (train, val) datasets of a checked `data:` section, before transforms."""
    source = DATASETS[data["dataset"]]
    args = {k: data[k] for k in source.args}
    return source.build(args)


def build_loaders(data: dict, *, seed: int, rank: int = 0, world: int = 1,
                  pin_memory: bool = False, splits: Splits | None = None) -> Loaders:  # fmt: skip
    """DataLoaders for a checked `data:` section; `seed` is the run's seed."""
    splits = splits or build_splits(data)
    train, val, fields = splits.train, splits.val, splits.fields
    if len(train) == 0:
        raise ConfigError("the training set is empty", path="data")
    sampler = EpochSampler(len(train), shuffle=data["shuffle"], seed=seed, rank=rank, world=world)
    train_tf = build_transforms(data["transforms"], "data.transforms")
    train_loader = _loader(Transformed(train, train_tf, seed, fields), sampler, data,
                           data["batch_size"], pin_memory, data["drop_last"])  # fmt: skip
    val_loader = None
    if val is not None and len(val):
        val_tf = build_transforms(data["val_transforms"], "data.val_transforms")
        val_sampler = EpochSampler(len(val), shuffle=False, seed=seed, rank=rank, world=world,
                                   pad=False)  # fmt: skip
        val_loader = _loader(Transformed(val, val_tf, seed, fields), val_sampler, data,
                             data["val_batch_size"] or data["batch_size"], pin_memory, False)  # fmt: skip
    return Loaders(train_loader, val_loader, sampler, (len(train), len(val) if val else 0), fields)


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


class DataFailure(ConfigError):
    """A batch that cannot be loaded: a corrupt or unreadable file, samples that do not
    stack, a worker that died."""


def batches(loader, where):
    """Iterate `loader`; a failure to load a batch is one `DataFailure` line saying what
    failed (for a worker's error, the original error's own line, not the traceback torch
    wraps it in). `where()` says where the run is, for the message."""
    try:
        it = iter(loader)
    except Exception as err:  # noqa: BLE001 - starting the workers
        raise DataFailure(f"{where()}: cannot start loading: {_reason(err)}") from None
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ConfigError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - whatever a sample's decoding raised
            reason = _reason(err)
            hint = "the samples differ in size: add a Resize to the transforms" if "equal size" in reason else ""
            raise DataFailure(f"{where()}: cannot load a batch: {reason}", hint=hint) from None
        yield batch


def _reason(err: BaseException) -> str:
    said = str(err).strip()
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    if "Original Traceback" in said and lines:  # a worker's: its last line is the error itself
        return lines[-1][:300]
    first = lines[0][:300] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def describe_sources() -> dict[str, Any]:
    """name -> doc, for messages and the docs."""
    return {name: d.doc for name, d in DATASETS.items()}


from . import dense, seq2seq, sources, text  # noqa: E402,F401 - they register the built-in sources
