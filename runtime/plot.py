"""Training curves from the metrics.csv of run folders, drawn with matplotlib (no
display needed): one subplot per metric, each run a line in every subplot, so a sweep's
or a study's trials lie over each other.

A metrics.csv is read as untrusted text: at most `MAX_BYTES`, UTF-8, and a cell that is
not a number is an error naming its line. Empty cells are normal (a training row has no
val/ values) and are skipped; nan and inf are skipped too (a diverged step leaves a gap).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..compiler.errors import did_you_mean, not_a_regular_file
from .checkpoint import atomic_write
from .errors import ArgLocation, ConfigError

__all__ = ["plot_runs", "find_runs", "read_curves", "choose_metrics", "draw_curves", "save_figure",
           "check_out", "Curves", "PlotResult", "FORMATS", "X_AXES", "MAX_BYTES"]  # fmt: skip

FORMATS = (".png", ".svg", ".pdf")
X_AXES = ("step", "epoch", "time")
MAX_BYTES = 64 * 2**20  # a run logging every 10 steps for 10M steps writes ~80 MB; refuse past this
MISSING_MATPLOTLIB = 'needs matplotlib: pip install "yamlnet[plot]"'
NOT_METRICS = ("step", "epoch", "time")  # the columns every row has: axes, not curves
LEGEND_RUNS = 20  # more runs than this: no legend (it would hide the curves)


@dataclass(frozen=True)
class Curves:
    """One run's metrics.csv, the columns asked for as (x, y) points per metric."""

    label: str
    path: Path  # the metrics.csv
    points: dict[str, tuple[list[float], list[float]]]


@dataclass(frozen=True)
class PlotResult:
    """What `plot_runs` wrote: the picture, the runs (by label) and the metrics drawn."""

    out: Path
    runs: list[str]
    metrics: list[str]


def plot_runs(runs: list[str | os.PathLike], out: str | os.PathLike = "plot.png", *,
              metrics: list[str] | None = None, x: str = "step") -> PlotResult:  # fmt: skip
    """Draw the curves of run folders (or folders of runs) into one picture.

        >>> plot_runs(["runs/digits_cnn"], "curves.svg", metrics=["val/accuracy"])  # doctest: +SKIP
    """
    out = check_out(out)
    if x not in X_AXES:
        raise ConfigError(f"cannot put '{x}' on the x axis", ArgLocation("--x", 0, 0), hint="use step, epoch or time")
    found = find_runs(runs)
    headers = {label: read_header(path) for label, path in found}
    chosen = choose_metrics(headers, metrics)
    curves = [read_curves(label, path, chosen, x) for label, path in found]
    save_figure(draw_curves(curves, chosen, x), out)
    return PlotResult(out, [c.label for c in curves], chosen)


def check_out(out: str | os.PathLike) -> Path:
    """The picture's path, checked before any work: a known suffix, a folder to write in."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"cannot tell the picture format of '{out}'", ArgLocation("--out", 0, 0),
                          hint="end it in .png, .svg or .pdf")  # fmt: skip
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "it is a folder" if out.is_dir() else ("no such folder" if not folder.is_dir()
                                                     else f"{folder} cannot be written")  # fmt: skip
        raise ConfigError(f"cannot write {out}: {why}", ArgLocation("--out", 0, 0))
    return out


def _natural(name: str) -> list:
    """trial_2 before trial_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_runs(paths: list[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(label, metrics.csv) of each run: a run folder as given, a folder of runs (a
    study's trial_K, a spec's version_K, one or two levels down) as every run inside."""
    found: list[tuple[Path, Path]] = []  # (run folder, the folder given)
    for given in map(Path, paths):
        if given.name == "metrics.csv" and given.is_file():
            given = given.parent
        if (given / "metrics.csv").exists():
            found.append((given, given))
            continue
        if not given.is_dir():
            raise ConfigError(f"{given}: no such run folder", hint="give a run folder (holding "
                              "metrics.csv) or a folder of runs")  # fmt: skip
        inner = sorted(given.glob("*/metrics.csv")) or sorted(given.glob("*/*/metrics.csv"))
        if not inner:
            raise ConfigError(f"{given}: no metrics.csv in it or in its subfolders",
                              hint="is it a run folder? runs write metrics.csv as they train")  # fmt: skip
        inner.sort(key=lambda p: [_natural(part) for part in p.relative_to(given).parts])
        found += [(p.parent, given) for p in inner]
    return list(zip(_labels(found), (run / "metrics.csv" for run, _ in found), strict=True))


def _labels(found: list[tuple[Path, Path]]) -> list[str]:
    """A run's folder name (its path below a folder of runs); the whole path where two
    runs would share a label."""
    labels = [(run.name or run.resolve().name) if run == given else run.relative_to(given).as_posix()
              for run, given in found]  # fmt: skip
    clash = {label for label in labels if labels.count(label) > 1}
    return [run.as_posix() if label in clash else label for label, (run, _) in zip(labels, found, strict=True)]


def _open_csv(path: Path):
    kind = not_a_regular_file(path)
    if kind is not None:
        raise ConfigError(f"{path}: it is {kind}, not a file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size / 2**20:.0f} MB, more than the {MAX_BYTES // 2**20} MB plot reads",
                          hint="is it a metrics.csv? thin it out (every Nth row) first")  # fmt: skip
    try:
        return open(path, newline="", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _rows(path: Path):
    """(line number, cells) of each row after the header; CSV and encoding faults located."""
    with _open_csv(path) as fh:
        reader = csv.reader(_bounded(fh, path))
        try:
            for cells in reader:
                yield reader.line_num, cells
        except (csv.Error, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}:{reader.line_num + 1}: not a readable CSV row: {err}") from None


def _bounded(fh, path: Path):
    """The file's lines, stopping at MAX_BYTES characters (a file still growing, or lying
    about its size)."""
    total = 0
    for line in fh:
        total += len(line)
        if total > MAX_BYTES:
            raise ConfigError(f"{path}: more than the {MAX_BYTES // 2**20} MB plot reads")
        yield line


def read_header(path: Path) -> list[str]:
    """The column names of a metrics.csv; it must have a step column."""
    header = next((cells for _, cells in _rows(path)), None)
    if not header:
        raise ConfigError(f"{path}: empty, no header row", hint="a run that has not logged yet?")
    if "step" not in header:
        raise ConfigError(f"{path}:1: no 'step' column (has: {', '.join(header[:8])[:200]})",
                          hint="is it a yamlnet metrics.csv?")  # fmt: skip
    return header


def choose_metrics(headers: dict[str, list[str]], wanted: list[str] | None) -> list[str]:
    """The metrics asked for, each logged by some run; by default train/loss and every
    val/ column, in the order the runs logged them."""
    logged = list(dict.fromkeys(c for cols in headers.values() for c in cols if c not in NOT_METRICS))
    if wanted is None:
        chosen = [c for c in logged if c == "train/loss" or c.startswith("val/")]
        if not chosen:
            raise ConfigError("the runs logged no train/loss and no val/ metrics",
                              hint="choose with --metrics: " + ", ".join(logged[:12]) if logged else "")  # fmt: skip
        return sorted(chosen, key=lambda c: c != "train/loss")
    for name in wanted:
        if name not in logged:
            raise ConfigError(f"no run logged a metric '{name}'", ArgLocation("--metrics", 0, 0),
                              hint=did_you_mean(name, logged) or "logged: " + ", ".join(logged[:20]))  # fmt: skip
    return list(dict.fromkeys(wanted))


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    """A cell as a float; None for an empty or non-finite one."""
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{path}:{line}: {column} is '{text[:40]}', not a number") from None
    return value if math.isfinite(value) else None


def read_curves(label: str, path: Path, metrics: list[str], x: str = "step") -> Curves:
    """The (x, y) points of each metric of one metrics.csv; x is the step, the epoch (with
    fractions, from the steps an epoch takes) or the seconds since the first row."""
    rows = _rows(path)
    header = next(rows)[1]
    where = {name: k for k, name in enumerate(header)}
    need = [c for c in dict.fromkeys(["step", "epoch", "time", *metrics]) if c in where]
    if x not in where:
        raise ConfigError(f"{path}:1: no '{x}' column for the x axis", hint="choose another --x")
    table: list[tuple[int, dict[str, float | None]]] = []
    for line, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        table.append((line, {c: _number(cells[where[c]], path, line, c) for c in need}))
    xs = _x_values([r for _, r in table], x)
    points = {}
    for metric in metrics:
        pairs = [(xv, r.get(metric)) for xv, (_, r) in zip(xs, table, strict=True)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        points[metric] = ([a for a, _ in pairs], [b for _, b in pairs])
    return Curves(label, path, points)


def _x_values(rows: list[dict], x: str) -> list[float | None]:
    if x == "time":
        t0 = next((r["time"] for r in rows if r.get("time") is not None), 0.0)
        return [None if r.get("time") is None else r["time"] - t0 for r in rows]
    if x == "epoch":
        return _epochs(rows)
    return [r.get("step") for r in rows]


def _epochs(rows: list[dict]) -> list[float | None]:
    """Fractional epochs: step / steps per epoch, the steps estimated from the rows logged
    once an epoch ended (a row at step s with e epochs done has s >= e * steps). A run
    shorter than an epoch has no such row: its epoch column as it is."""
    done = [r["step"] / r["epoch"] for r in rows if r.get("epoch") and r.get("step") is not None]
    if not done:
        return [r.get("epoch") for r in rows]
    per_epoch = min(done)
    return [None if r.get("step") is None else r["step"] / per_epoch for r in rows]


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas: no display, no pyplot state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"yamlnet's plots {MISSING_MATPLOTLIB}") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


X_LABELS = {"step": "step", "epoch": "epoch", "time": "time (s)"}


def draw_curves(curves: list[Curves], metrics: list[str], x: str = "step"):
    """A Figure: a subplot per metric (two columns), a line per run in each."""
    cols = 1 if len(metrics) == 1 else 2
    rows = -(-len(metrics) // cols)
    fig = new_figure(6.0 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        for k, run in enumerate(curves):
            xs, ys = run.points[metric]
            if xs:
                ax.plot(xs, ys, label=run.label, color=f"C{k % 10}", marker="." if len(xs) < 30 else None)
        ax.set_title(metric)
        ax.set_xlabel(X_LABELS[x])
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics) :]:
        fig.delaxes(ax)
    if 1 < len(curves) <= LEGEND_RUNS:
        axes[0].legend(fontsize="small")
    return fig


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Render the figure in the format its suffix names and write it atomically."""
    out = check_out(out)
    buf = io.BytesIO()
    fmt = out.suffix.lower().lstrip(".")
    fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt in ("svg", "pdf") else None)
    try:
        atomic_write(out, buf.getvalue())
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror or err}", ArgLocation("--out", 0, 0)) from None
    return out
