"""CSV files as named tensors for the `tensors` source: a table's columns grouped into input
and target fields, text columns coded as categories, numbers optionally standardised. Every
choice is fitted on the training rows only and kept as plain data, the *encoding*, so that
new rows (`yamlnet predict` on a CSV) are coded exactly as training's were (`encode_table`).

The encoding is JSON-able; the source returns it as `Fields.info["encoding"]`:

    {"header": True,                           # the training file had a header row
     "columns": ["age", "color", "price"],     # its columns, in file order
     "inputs": {"x": ["age", "color"]},        # field -> its columns, in order
     "targets": {"y": ["price"]},
     "codes": {"age": {"kind": "number", "mean": 41.5, "std": 12.25},
               "color": {"kind": "onehot", "categories": ["blue", "red"]},
               "price": {"kind": "number"}}}

A column's code is one of: `number` (floats; `mean` and `std` when standardised), `onehot`
(a 0/1 column per category; a category the training rows lack gives all zeros), `index`
(the category's position; one the training rows lack gets len(categories), so an Embedding
for the column needs len(categories) + 1 rows), `label` (whole numbers >= 0, used as class
ids) and `class` (class ids: positions in `classes`, sorted text or sorted numbers).

An input field is float32 [N, width] (a `number` or `index` column is one wide, a `onehot`
one a column per category), except a field of a single `index` column: int64 [N], ids for
an Embedding. A target field is float32 [N, k] for regression, the shape of a k-unit output,
and int64 [N] class ids for classification.

Limits, said plainly: whether the first row is a header is judged from its cells
(`_looks_like_header`), so a file without one whose columns are all text is misread; cells
are compared as stripped text, so categories "1" and "1.0" differ; empty or "NA" cells are
an error in a column of numbers but are a category of their own in a column of text.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..compiler.errors import did_you_mean
from .errors import ConfigError

__all__ = ["encode_table", "read_csv", "fit_encoding", "encode_rows", "align", "file_errors",
           "Rows", "TableError", "MAX_ONEHOT"]  # fmt: skip

MISSING = frozenset({"", "na", "nan", "n/a", "null"})  # no value, in a column of numbers
MAX_ONEHOT = 1000  # categories a column may one-hot into; beyond, `index` and an Embedding


MAX_CLASS_ID = 2**31  # a larger "class id" (1e300) is a value, not a class: it would wrap in int64


class TableError(ValueError):
    """What is wrong in a file's contents, with a hint; `file_errors` locates it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@contextmanager
def file_errors(path: str, where: str) -> Iterator[None]:
    """Turns a problem reading `path` into one located line: `where: cannot read PATH: why`."""
    try:
        yield
    except TableError as err:
        raise ConfigError(f"cannot read {path}: {err}", path=where, hint=err.hint) from None
    except (OSError, UnicodeError, csv.Error) as err:
        raise ConfigError(f"cannot read {path}: {err}", path=where) from None


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A CSV file's cells (stripped text) by column, and the file line of each row."""

    columns: dict[str, list[str]]
    lines: list[int]
    header: bool

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, idx: Sequence[int]) -> Rows:
        cols = {name: [cells[i] for i in idx] for name, cells in self.columns.items()}
        return Rows(cols, [self.lines[i] for i in idx], self.header)


def read_csv(source: str | os.PathLike | Sequence[Sequence[str]],
             header: bool | None = None) -> Rows:  # fmt: skip
    """The cells of a CSV file, or of rows as `csv.reader` gives them. `header`: whether the
    first row names the columns (None: judged from the cells). Without a header the
    columns are named "0", "1", ..."""
    lines, rows = _raw_rows(source)
    if not rows:
        raise TableError("no rows of numbers", "the file is empty")
    header = _looks_like_header(rows) if header is None else header
    _check_widths(rows, lines, header)
    names = rows[0] if header else [str(i) for i in range(len(rows[0]))]
    seen: set = set()
    doubled = sorted({n for n in names if n in seen or seen.add(n)})
    if doubled:
        raise TableError(f"the header names column '{doubled[0]}' twice")
    body, body_lines = (rows[1:], lines[1:]) if header else (rows, lines)
    if not body:
        raise TableError("no rows of numbers", "the file has only a header")
    return Rows({n: [r[i] for r in body] for i, n in enumerate(names)}, body_lines, header)


def _raw_rows(source) -> tuple[list[int], list[list[str]]]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
            reader = csv.reader(fh)
            pairs = [(reader.line_num, row) for row in reader if row]
    else:
        pairs = [(i + 1, row) for i, row in enumerate(source) if row]
    return [n for n, _ in pairs], [[str(c).strip() for c in row] for _, row in pairs]


def _looks_like_header(rows: list[list[str]]) -> bool:
    """The first row names the columns when all its cells are text, or when one of its
    text cells sits above numbers (judged on the next 50 rows)."""
    numeric = [_numberish(c) for c in rows[0]]
    if all(numeric) or not any(numeric):
        return not all(numeric)
    below = rows[1:51]
    return any(not num and below and all(_numberish(r[i]) for r in below if i < len(r))
               for i, num in enumerate(numeric))  # fmt: skip


def _check_widths(rows: list[list[str]], lines: list[int], header: bool) -> None:
    width = len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            first = "the header" if header else f"line {lines[0]}"
            raise TableError(f"line {line} has {len(row)} values; {first} has {width}")


def _float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _numberish(cell: str) -> bool:
    return cell.lower() in MISSING or _float(cell) is not None


def _numbers(cells: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The cells as float64 (NaN where missing or text) and a mask of the text cells."""
    try:
        return np.array(cells, dtype=np.float64), np.zeros(len(cells), dtype=bool)
    except ValueError:  # some cell is not a number: find which, one by one
        pass
    parsed = [None if c.lower() in MISSING else _float(c) for c in cells]
    text = [v is None and c.lower() not in MISSING for v, c in zip(parsed, cells, strict=True)]
    values = np.array([np.nan if v is None else v for v in parsed], dtype=np.float64)
    return values, np.array(text, dtype=bool)


def _no_text(name: str, text: np.ndarray, cells: list[str], lines: list[int], hint: str) -> None:
    if text.any():
        i = int(np.argmax(text))
        raise TableError(f"could not convert {cells[i]!r} in column '{name}' (line {lines[i]}) "
                         "to a number", hint)  # fmt: skip


def _no_gaps(name: str, bad: np.ndarray, cells: list[str], lines: list[int]) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        raise TableError(f"column '{name}' has a missing or infinite value on line {lines[i]}: "
                         f"{cells[i]!r}", "fill in or drop such rows")  # fmt: skip


def _finite(name: str, cells: list[str], lines: list[int], hint: str) -> np.ndarray:
    """A column that must hold numbers, as float64."""
    values, text = _numbers(cells)
    _no_text(name, text, cells, lines, hint)
    _no_gaps(name, ~np.isfinite(values), cells, lines)
    return values


# -- fitting ---------------------------------------------------------------------------


def fit_encoding(rows: Rows, fit: Rows, inputs: dict[str, list[str]],
                 targets: dict[str, list[str]], *, task: str | None = None,
                 categorical: dict | None = None, standardize: bool = False) -> dict:  # fmt: skip
    """The encoding of a training file's `rows` for the given fields ({field: [column,
    ...]}), with column kinds, categories and statistics from `fit`, its training part.
    Classes come from all of `rows`: a class whose samples all fell into the held-out
    part is still one the model must output. `task`, `categorical`, `standardize`: as the
    `tensors` source's arguments."""
    categorical = categorical or {}
    codes = {col: _fit_input(col, fit, categorical.get(col), standardize)
             for cols in inputs.values() for col in cols}  # fmt: skip
    for name, cols in targets.items():
        codes.update({col: _fit_target(col, rows, task) for col in cols})
        _one_column_per_class_field(name, cols, codes)
    return {"header": rows.header, "columns": list(rows.columns), "inputs": inputs,
            "targets": targets, "codes": codes}  # fmt: skip


def _fit_input(col: str, fit: Rows, mode: str | None, standardize: bool) -> dict:
    cells = fit.columns[col]
    if mode is None:
        values, text = _numbers(cells)
        if not text.any():
            _no_gaps(col, ~np.isfinite(values), cells, fit.lines)
            return _number_code(values, standardize)
        if (~text & ~np.isnan(values)).any():  # numbers and text: a typo, or coded values
            _no_text(col, text, cells, fit.lines,
                     f"set data.categorical: {{{col}: onehot}} to read its values as categories")
        mode = "onehot"
    categories = _sorted(set(cells))
    if mode == "onehot" and len(categories) > MAX_ONEHOT:
        hint = f"set data.categorical: {{{col}: index}} and feed it to an Embedding"
        raise TableError(f"column '{col}' has {len(categories)} categories; one-hot takes at "
                         f"most {MAX_ONEHOT}", hint)  # fmt: skip
    return {"kind": mode, "categories": categories}


def _number_code(values: np.ndarray, standardize: bool) -> dict:
    """Population statistics (like scikit-learn's StandardScaler); a constant column keeps
    its scale (std 1) rather than dividing by zero."""
    if not standardize:
        return {"kind": "number"}
    std = float(values.std())
    return {"kind": "number", "mean": float(values.mean()), "std": std if std > 0 else 1.0}


def _sorted(values: set[str]) -> list[str]:
    """Numbers by value when every value is one, else text in code-point order."""
    if all(_float(v) is not None for v in values):
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)


def _fit_target(col: str, rows: Rows, task: str | None) -> dict:
    """task None guesses as before: whole numbers are class labels, any other numbers
    regression targets; text is refused rather than guessed at."""
    cells, lines = rows.columns[col], rows.lines
    values, text = _numbers(cells)
    if task == "classification" and text.any():
        _no_gaps(col, np.array([c.lower() in MISSING for c in cells]), cells, lines)
        return {"kind": "class", "classes": sorted(set(cells))}
    hint = ("set data.task: classification to read text labels as classes" if task is None
            else "task: regression needs a number in every row")  # fmt: skip
    values = _finite(col, cells, lines, hint)
    whole = bool(np.all(values == np.round(values)))
    if task == "regression" or (task is None and not whole):
        return {"kind": "number"}
    if whole and values.min() >= 0:
        return {"kind": "label"}
    return {"kind": "class", "classes": sorted(set(values.tolist()))}


def _one_column_per_class_field(name: str, cols: list[str], codes: dict) -> None:
    if len(cols) > 1 and any(codes[c]["kind"] in ("label", "class") for c in cols):
        hint = "set data.task: regression, or give each column its own field"
        raise ConfigError(f"target field '{name}' groups {len(cols)} columns, but class labels "
                          "take one column each", path=f"data.target_fields.{name}", hint=hint)


# -- encoding --------------------------------------------------------------------------


def encode_rows(rows: Rows, encoding: dict) -> dict[str, torch.Tensor]:
    """The input fields of `rows` (named as in training's file), and every target field
    whose columns are all there."""
    groups = dict(encoding["inputs"])
    groups.update({name: cols for name, cols in encoding["targets"].items()
                   if all(c in rows.columns for c in cols)})  # fmt: skip
    codes = encoding["codes"]
    return {name: _field([_encode(col, codes[col], rows) for col in cols])
            for name, cols in groups.items()}  # fmt: skip


def _field(parts: list[np.ndarray]) -> torch.Tensor:
    if len(parts) == 1 and parts[0].ndim == 1:  # one column of ids: int64 (N,)
        return torch.from_numpy(parts[0])
    return torch.from_numpy(np.column_stack(parts).astype(np.float32))  # (N, width)


def _encode(col: str, code: dict, rows: Rows) -> np.ndarray:
    """One column: ids (N,) int64 for index/label/class codes, else (N, width) float64."""
    cells, lines, kind = rows.columns[col], rows.lines, code["kind"]
    if kind in ("onehot", "index"):
        ids = _category_ids(code["categories"], cells)
        return ids if kind == "index" else _onehot(ids, len(code["categories"]))
    if kind == "class":
        return _class_ids(col, code["classes"], cells, lines)
    values = _finite(col, cells, lines, "the training rows hold numbers there")
    if kind == "label":
        return _label_ids(col, values, cells, lines)
    if "mean" in code:
        values = (values - code["mean"]) / code["std"]
    return values[:, None]


def _category_ids(categories: list[str], cells: list[str]) -> np.ndarray:
    """Positions in `categories`; len(categories) for one not among them."""
    position = {c: i for i, c in enumerate(categories)}
    return np.array([position.get(c, len(categories)) for c in cells], dtype=np.int64)


def _onehot(ids: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(ids), k + 1))
    out[np.arange(len(ids)), ids] = 1.0
    return out[:, :k]  # the column of unseen categories dropped: they are all zeros


def _class_ids(col: str, classes: list, cells: list[str], lines: list[int]) -> np.ndarray:
    keys = cells if isinstance(classes[0], str) else _numbers(cells)[0].tolist()
    position = {c: i for i, c in enumerate(classes)}
    ids = [position.get(k, -1) for k in keys]
    if -1 in ids:
        i = ids.index(-1)
        shown = ", ".join(map(str, classes[:20])) + (", ..." if len(classes) > 20 else "")
        raise TableError(f"column '{col}' has {cells[i]!r} on line {lines[i]}, not one of the "
                         "training file's classes", f"classes: {shown}")  # fmt: skip
    return np.array(ids, dtype=np.int64)


def _label_ids(col: str, values: np.ndarray, cells: list[str], lines: list[int]) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= MAX_CLASS_ID)
    if bad.any():
        i = int(np.argmax(bad))
        raise TableError(f"column '{col}' has {cells[i]!r} on line {lines[i]}, not a class id "
                         f"(a whole number from 0 below {MAX_CLASS_ID:,})")  # fmt: skip
    return values.astype(np.int64)


def align(rows: Rows, encoding: dict, targets: bool) -> Rows:
    """`rows` under training's column names: matched by name where the files have a header,
    else by position (all of training's columns, or all but the target columns). With
    `targets`, the target columns must be there too."""
    if not encoding["header"]:
        rows = _by_position(rows, encoding)
    needed = [c for cols in encoding["inputs"].values() for c in cols]
    needed += [c for cols in encoding["targets"].values() for c in cols] if targets else []
    for col in needed:
        if col not in rows.columns:
            hint = did_you_mean(col, rows.columns) or "columns: " + ", ".join(rows.columns)
            raise TableError(f"no column named '{col}'", hint)
    return rows


def _by_position(rows: Rows, encoding: dict) -> Rows:
    every = encoding["columns"]
    taken = {c for cols in encoding["targets"].values() for c in cols}
    features = [c for c in every if c not in taken]
    for names in (every, features):
        if len(rows.columns) == len(names):
            columns = dict(zip(names, rows.columns.values(), strict=True))
            return Rows(columns, rows.lines, rows.header)
    raise TableError(f"rows of {len(rows.columns)} values; the training file's had {len(every)} "
                     f"({len(features)} without the targets)")  # fmt: skip


# -- new rows ------------------------------------------------------------------------


def encode_table(rows_or_path: str | os.PathLike | Sequence[Sequence[str]], encoding: dict,
                 where: str = "") -> dict[str, torch.Tensor]:  # fmt: skip
    """The fields a saved `encoding` makes of new rows — a CSV file, or its rows as lists of
    cells — exactly as training coded its own: the input fields, and the target fields
    whose columns are present. Columns are matched by header name (by position where
    training's file had no header); errors are located at `where`.

    >>> encoding = splits.fields.info["encoding"]  # as the checkpoint keeps it
    >>> encode_table("new.csv", encoding)["x"].shape
    torch.Size([12, 5])
    """
    label = os.fspath(rows_or_path) if isinstance(rows_or_path, (str, os.PathLike)) else "rows"
    with file_errors(label, where):
        rows = align(read_csv(rows_or_path, header=encoding["header"]), encoding, targets=False)
        return encode_rows(rows, encoding)
