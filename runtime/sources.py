"""The general dataset sources: scikit-learn's bundled digits (the offline quick start),
synthetic tensors, tensors from .pt/.npz/.csv files, image folders and torchvision's
datasets. Each registers itself in `data.DATASETS`; tables (CSV encoding) are read by
tables.py, and the text, segmentation and sequence-to-sequence sources are in text.py,
dense.py and seq2seq.py.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..compiler.errors import did_you_mean, not_a_regular_file, printable
from .checkpoint import load_tensors, loaded_problem
from .data import IMAGE, Fields, ImageTooLarge, Splits, Table, open_image, register_dataset, split
from .errors import ConfigError, first_line
from .tables import Rows, TableError, align, encode_rows, file_errors, fit_encoding, read_csv

__all__ = ["digits_arrays", "read_tensor_file", "read_arrays", "TORCHVISION_SETS", "TENSOR_ARGS"]

_FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
SPLIT_ARGS = {
    "val_fraction": {**_FRACTION, "default": 0.2, "description": "share held out for validation"},
    "split_seed": {"type": "integer", "default": 0, "description": "seed of the fixed split"},
}
IMAGES = Fields(("image",), ("label",), {"image": IMAGE})


@register_dataset("digits", args={**SPLIT_ARGS, "flatten": {"type": "boolean", "default": False,
                  "description": "samples as [64] instead of [1, 8, 8]"}},
                  doc="scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; offline)")  # fmt: skip
def _digits(args: dict) -> Splits:
    pixels, labels = digits_arrays()
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    x = x if args["flatten"] else x.view(-1, 1, 8, 8)
    y = torch.tensor(labels, dtype=torch.int64)
    fields = Fields(("image",), ("label",), {} if args["flatten"] else {"image": IMAGE})
    return Splits(*split(Table({"image": x, "label": y}), args["val_fraction"], args["split_seed"]),
                  fields)  # fmt: skip


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
    "vocab": {"type": ["integer", "null"], "minimum": 1, "default": None,
              "description": "token ids in [0, vocab) instead of normal values; the class is "
                             "then the first token's id modulo classes (learnable)"},
}, doc="random inputs of a declared shape (for benchmarks and smoke tests)")  # fmt: skip
def _synthetic(args: dict) -> Splits:
    g = torch.Generator().manual_seed(args["seed"])
    n, n_val = args["size"], args["val_size"]
    if (n + n_val) * int(np.prod(args["shape"])) > 1 << 28:
        raise ConfigError("synthetic data over 2**28 values (1 GiB); lower size or shape",
                          path="data.size")  # fmt: skip
    if args["vocab"] is not None:
        x = torch.randint(0, args["vocab"], (n + n_val, *args["shape"]), generator=g)
    else:
        x = torch.randn(n + n_val, *args["shape"], generator=g)
    if args["classes"] is None:
        y = torch.randn(n + n_val, *args["target_shape"], generator=g)
    elif args["vocab"] is not None:
        y = x.reshape(n + n_val, -1)[:, 0] % args["classes"]  # (N,) from the first token
    else:
        y = torch.randint(0, args["classes"], (n + n_val,), generator=g)
    whole = Table({"input": x, "target": y})
    val = Subset(whole, range(n, n + n_val)) if n_val else None
    return Splits(Subset(whole, range(n)), val, Fields(("input",), ("target",)))


_REFS = {"type": "array", "minItems": 1, "items": {"type": ["string", "integer"]}}
_GROUPS = {**_REFS, "type": ["array", "object", "null"], "additionalProperties": _REFS,
           "default": None}  # fmt: skip
TENSOR_ARGS = {
    "train": {"type": "string", "description": "a .pt, .npz or .csv file"},
    "val": {"type": ["string", "null"], "default": None,
            "description": "validation file; null: hold out val_fraction of train"},
    **SPLIT_ARGS,
    "x": {"type": "string", "default": "x", "description": "inputs: key (.pt/.npz), field (.csv)"},
    "y": {"type": "string", "default": "y", "description": "targets: key (.pt/.npz), field (.csv)"},
    "target_column": {"type": ["integer", "string"], "default": -1,
                      "description": ".csv: index or header name of the target column"},
    "input_fields": {**_GROUPS, "description": "instead of x: array keys or .csv columns, a "
                     "field each, or (.csv) {field: [columns]}"},
    "target_fields": {**_GROUPS, "description": "instead of y/target_column; as input_fields"},
    "task": {"enum": ["regression", "classification", None], "default": None,
             "description": "targets as floats or class ids; null: whole numbers are classes"},
    "categorical": {"type": "object", "additionalProperties": {"enum": ["onehot", "index"]},
                    "default": {}, "description": ".csv: {column: onehot | index}"},
    "standardize": {"type": "boolean", "default": False,
                    "description": ".csv: number inputs to mean 0, std 1 (training rows)"},
}  # fmt: skip


@register_dataset("tensors", required=("train",), args=TENSOR_ARGS,
                  doc="tensors from .pt (dict or (x, y)), .npz or .csv files")  # fmt: skip
def _tensors(args: dict) -> Splits:
    for key in ("train", "val"):
        _check_file(args[key], f"data.{key}")
    if args["val"] and _is_csv(args["val"]) != _is_csv(args["train"]):
        raise ConfigError("train and val files differ in format", path="data.val",
                          hint="give both as .csv, or both as .pt/.npz")  # fmt: skip
    if _is_csv(args["train"]):
        return _csv_splits(args)
    fields = _array_fields(args)
    train = Table(read_arrays(args["train"], fields, args, "data.train"), "data.train")
    if args["val"]:
        val = Table(read_arrays(args["val"], fields, args, "data.val"), "data.val")
        return Splits(train, val, fields)
    return Splits(*split(train, args["val_fraction"], args["split_seed"]), fields)


def _array_fields(args: dict) -> Fields:
    """Fields named after the .pt/.npz keys; the .csv-only arguments refused."""
    for key, unset in (("categorical", {}), ("standardize", False)):
        if args.get(key, unset) not in (unset, None):
            raise ConfigError(f"{key} applies to .csv files", path=f"data.{key}",
                              hint=".pt/.npz arrays are read as they are")  # fmt: skip
    names = {}
    for key, single in (("input_fields", "x"), ("target_fields", "y")):
        given = args.get(key)
        if isinstance(given, dict):
            raise ConfigError("a mapping groups .csv columns; .pt/.npz take a list of keys",
                              path=f"data.{key}")  # fmt: skip
        names[key] = (args[single],) if given is None else tuple(map(str, given))
    return Fields(names["input_fields"], names["target_fields"])


def _csv_splits(args: dict) -> Splits:
    """A .csv train file: the encoding fitted on its training rows (the file less the
    held-out part), both splits coded with it, and kept in `info` to code new rows alike."""
    with file_errors(args["train"], "data.train"):
        rows = read_csv(args["train"])
        encoding = _fit(rows, rows.take(_train_part(len(rows), args)), args)
        train = Table(encode_rows(rows, encoding), "data.train")
    fields = Fields(tuple(encoding["inputs"]), tuple(encoding["targets"]), info=_csv_info(encoding))
    if args["val"]:
        with file_errors(args["val"], "data.val"):
            val = align(read_csv(args["val"], header=encoding["header"]), encoding, targets=True)
            return Splits(train, Table(encode_rows(val, encoding), "data.val"), fields)
    return Splits(*split(train, args["val_fraction"], args["split_seed"]), fields)


def _train_part(n: int, args: dict) -> Sequence[int]:
    """The rows `split` keeps for training (it depends on n and its seed alone)."""
    if args["val"]:
        return range(n)
    part, _ = split(list(range(n)), args["val_fraction"], args["split_seed"])
    return part.indices if isinstance(part, Subset) else range(n)


def _fit(rows: Rows, fit: Rows, args: dict) -> dict:
    """The encoding the source's `args` ask for, fitted on the rows `fit`."""
    inputs, targets = _groups(args, list(rows.columns), rows.header)
    _check_categorical(args.get("categorical") or {}, inputs)
    return fit_encoding(rows, fit, inputs, targets, task=args.get("task"),
                        categorical=args.get("categorical"),
                        standardize=args.get("standardize", False))  # fmt: skip


def _groups(args: dict, names: list[str], header: bool) -> tuple[dict, dict]:
    """{field: [column, ...]} of the inputs and of the targets."""
    if args.get("target_fields") is None:
        targets = {args["y"]: [_column(args["target_column"], names, header)]}
    else:
        targets = _grouped(args["target_fields"], names, header)
    taken = {col for cols in targets.values() for col in cols}
    if args.get("input_fields") is None:
        inputs = {args["x"]: [n for n in names if n not in taken]}
        if not inputs[args["x"]]:
            raise TableError(f"the file has {len(names)} column{'s' * (len(names) != 1)}, all of them targets: "
                             "no input columns", "inputs are every column but the target")  # fmt: skip
    else:
        inputs = _grouped(args["input_fields"], names, header)
    _check_apart(inputs, targets, taken)
    return inputs, targets


def _grouped(spec: list | dict, names: list[str], header: bool) -> dict[str, list[str]]:
    """A list of columns is one field per column, named after it; a mapping groups them."""
    if isinstance(spec, dict):
        return {field: [_column(c, names, header) for c in cols] for field, cols in spec.items()}
    return {col: [col] for col in (_column(c, names, header) for c in spec)}


def _column(ref: int | str, names: list[str], header: bool) -> str:
    if isinstance(ref, int):
        if not -len(names) <= ref < len(names):
            raise TableError(f"no column {ref}; the file has {len(names)}")
        return names[ref]
    if ref not in names:
        hint = did_you_mean(ref, names) or ("columns: " + ", ".join(names) if header else
                                            "the file has no header; name columns by index")
        raise TableError(f"no column named '{ref}'", hint)
    return ref


def _check_apart(inputs: dict, targets: dict, taken: set) -> None:
    both = [col for cols in inputs.values() for col in cols if col in taken]
    if both:
        raise ConfigError(f"column '{both[0]}' is both an input and a target",
                          path="data.input_fields")  # fmt: skip
    fields = [name for name in inputs if name in targets]
    if fields:
        raise ConfigError(f"field '{fields[0]}' is both an input and a target",
                          path="data.target_fields", hint="name the fields apart")  # fmt: skip


def _check_categorical(categorical: dict, inputs: dict) -> None:
    columns = [col for cols in inputs.values() for col in cols]
    for col in categorical:
        if col not in columns:
            hint = did_you_mean(col, columns) or "input columns: " + ", ".join(columns)
            raise ConfigError(f"'{col}' is not an input column", path=f"data.categorical.{col}",
                              hint=hint)  # fmt: skip


def _csv_info(encoding: dict) -> dict:
    """The encoding, and `classes` where the only target field's labels were coded as
    classes (text labels, or numbers that are not ids)."""
    info: dict = {"encoding": encoding}
    if len(encoding["targets"]) == 1:
        [cols] = encoding["targets"].values()
        code = encoding["codes"][cols[0]]
        if code["kind"] == "class":
            info["classes"] = [c if isinstance(c, str) else f"{c:g}" for c in code["classes"]]
    return info


@register_dataset("image_folder", required=("root",), args={
    "root": {"type": "string", "description": "a folder with one sub-folder per class"},
    "val_root": {"type": ["string", "null"], "default": None,
                 "description": "validation folder; null: hold out val_fraction of root"},
    **SPLIT_ARGS,
}, doc="images in class folders (torchvision ImageFolder), as float tensors in [0, 1]")  # fmt: skip
def _image_folder(args: dict) -> Splits:
    from torchvision.datasets import ImageFolder

    def folder(path: str, key: str):
        if not os.path.isdir(path):
            raise ConfigError(f"no such folder: {path}", path=f"data.{key}")
        _check_no_link_loops(path, f"data.{key}")
        try:
            return Labelled(ImageFolder(path, transform=to_tensor(), loader=load_rgb))
        except (FileNotFoundError, RuntimeError) as err:
            raise ConfigError(f"cannot read images under {path}: {err}", path=f"data.{key}") from None

    train = folder(args["root"], "root")
    fields = Fields(IMAGES.inputs, IMAGES.targets, IMAGES.kinds, {"classes": train.base.classes})
    if args["val_root"]:
        return Splits(train, folder(args["val_root"], "val_root"), fields)
    return Splits(*split(train, args["val_fraction"], args["split_seed"]), fields)


def _check_no_link_loops(root: str, where: str) -> None:
    """ImageFolder follows links to folders: one that leads back to a folder already on
    the walk (`a/up -> ..`) would list the tree again and again. Refused, named."""
    seen = {os.path.realpath(root)}
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        for name in list(subfolders):
            target = os.path.realpath(os.path.join(folder, name))
            if target in seen:
                link = printable(os.path.join(folder, name), lines=False)
                raise ConfigError(f"{link} leads to a folder already under the walk ({printable(target, lines=False)})",
                                  path=where, hint="remove the link, or point data.root below it")  # fmt: skip
            seen.add(target)


class Labelled(Dataset):
    """An (image, label) dataset as {image, label} samples."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        try:
            image, label = self.base[i]
        except (OSError, ValueError, SyntaxError) as err:  # PIL's words for a damaged file
            files = getattr(self.base, "samples", None)  # ImageFolder's (path, class) pairs
            if files is None or isinstance(err, ImageTooLarge):  # the latter names its file
                raise
            raise ValueError(f"{printable(files[i][0], lines=False)}: {first_line(err)}") from None
        return {"image": image, "label": torch.as_tensor(label, dtype=torch.int64)}


TORCHVISION_SETS = ("MNIST", "FashionMNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100", "SVHN")


@register_dataset("torchvision", required=("name", "root"), args={
    "name": {"enum": list(TORCHVISION_SETS), "description": "a torchvision.datasets class"},
    "root": {"type": "string", "description": "where the files are (or go, with download)"},
    "download": {"type": "boolean", "default": False},
}, doc="a torchvision dataset by name: its train and test splits")  # fmt: skip
def _torchvision(args: dict) -> Splits:
    import torchvision.datasets as tvd

    cls = getattr(tvd, args["name"])
    split_kw = (lambda train: {"split": "train" if train else "test"}) if args["name"] == "SVHN" \
        else (lambda train: {"train": train})  # fmt: skip
    try:
        train, test = (Labelled(cls(args["root"], download=args["download"], transform=to_tensor(),
                                    **split_kw(train))) for train in (True, False))  # fmt: skip
    except RuntimeError as err:  # torchvision says "Dataset not found ..." this way
        raise ConfigError(f"{args['name']}: {err}", path="data.root",
                          hint="set data.download: true where the network allows it") from None
    return Splits(train, test, IMAGES)


def load_rgb(path: str):
    """ImageFolder's loader: the image as RGB, its size checked before it is decoded."""
    with open_image(path) as image:
        return image.convert("RGB")


def to_tensor():
    """How images are decoded: a PIL image (or array) to a float tensor [C, H, W] in [0, 1],
    as torchvision's `ToImage` then `ToDtype(float32, scale=True)` do."""
    return _pil_to_float


def _pil_to_float(image) -> torch.Tensor:
    # the functional forms: the Compose of the two transforms costs as much again per image
    from torchvision.transforms.v2 import functional as F

    return F.to_dtype(F.to_image(image), torch.float32, scale=True).as_subclass(torch.Tensor)


# -- tensor files ----------------------------------------------------------------------


def read_tensor_file(path: str, args: dict, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a file with one of each (.pt, .npz or .csv; the `tensors`
    source's args); never unpickles code."""
    _check_file(path, where)
    if _is_csv(path):
        with file_errors(path, where):
            rows = read_csv(path)
            encoding = _fit(rows, rows, args)
            arrays = encode_rows(rows, encoding)
        return arrays[next(iter(encoding["inputs"]))], arrays[next(iter(encoding["targets"]))]
    arrays = read_arrays(path, Fields((args["x"],), (args["y"],)), args, where)
    return arrays[args["x"]], arrays[args["y"]]


def read_arrays(path: str, fields: Fields, args: dict, where: str) -> dict[str, torch.Tensor]:
    """The named arrays of a .pt or .npz file: inputs as float32 where they are floats,
    targets as `args["task"]` says (null: float32 or int64 as stored)."""
    ext = os.path.splitext(path)[1].lower()
    readers = {".pt": _read_pt, ".pth": _read_pt, ".npz": _read_npz}
    if ext not in readers:
        raise ConfigError(f"cannot read '{ext}' files", path=where, hint="use .pt, .npz or .csv")
    pair = args.get("input_fields") is None and args.get("target_fields") is None
    try:
        named = readers[ext](path, fields, pair)
        out = {name: _as_float32(torch.as_tensor(named[name])) for name in fields.inputs}
        for name in fields.targets:
            out[name] = _as_target(torch.as_tensor(named[name]), args.get("task"), name)
        if any(t.dim() == 0 for t in out.values()):
            raise ValueError("inputs and targets need a first (sample) dimension")
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EOFError, IndexError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:  # a truncated .npz is a BadZipFile  # fmt: skip
        raise ConfigError(f"cannot read {path}: {first_line(err, 300)}", path=where) from None
    return out


def _check_file(path: str | None, where: str) -> None:
    if path is not None and not os.path.isfile(path):
        kind = not_a_regular_file(path)
        raise ConfigError(f"{path} is {kind}, not a file" if kind else f"no such file: {path}", path=where)


def _is_csv(path: str) -> bool:
    return os.path.splitext(path)[1].lower() == ".csv"


def _read_pt(path: str, fields: Fields, pair: bool) -> dict:
    try:
        obj = load_tensors(path)
    except pickle.UnpicklingError:  # torch's own text is many lines and suggests weights_only=False
        raise ValueError("torch.load(weights_only=True) refused it: it holds more than tensors, "
                         "or is not a torch file") from None  # fmt: skip
    problem = loaded_problem(obj)
    if problem:
        raise ValueError(problem)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        if not pair:
            raise ValueError("it holds an (inputs, targets) pair, not named arrays; save a dict "
                             "to name them in input_fields/target_fields")  # fmt: skip
        return dict(zip(fields.inputs + fields.targets, obj, strict=True))
    if isinstance(obj, dict):
        return _pick(obj, fields)
    raise ValueError("expected a dict of tensors or an (inputs, targets) pair")


def _read_npz(path: str, fields: Fields, pair: bool) -> dict:
    with np.load(path, allow_pickle=False) as arrays:
        return _pick({k: arrays[k] for k in arrays.files}, fields)


def _pick(arrays: dict, fields: Fields) -> dict:
    for key in fields.names:
        if key not in arrays:
            hint = did_you_mean(key, arrays) or "keys: " + ", ".join(map(str, arrays))
            raise ValueError(f"no array '{key}' ({hint})")
    return {key: arrays[key] for key in fields.names}


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x  # float64 files meet float32 weights


def _as_target(y: torch.Tensor, task: str | None, name: str) -> torch.Tensor:
    if task == "regression":
        return y.float()
    if task == "classification" and y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"target '{name}' holds numbers that are not whole; task: "
                         "classification needs class ids")  # fmt: skip
    if task == "classification":
        return y.long()
    return y.float() if y.is_floating_point() else y.long()
