"""Training curves from the metrics.csv of run folders, drawn with matplotlib (no
display needed): one subplot per metric, each run a line in every subplot, so a sweep's
or a study's trials lie over each other.

A metrics.csv is read as untrusted text: at most `MAX_BYTES` a file and `MAX_TOTAL_BYTES`
for all runs together, UTF-8, a step a whole number, and a cell that is not a number is an
error naming its line. Empty cells are normal (a training row has no val/ values) and are
skipped; nan and inf are skipped too (a diverged step leaves a gap). At most `MAX_RUNS`
runs and `MAX_METRICS` subplots are drawn. Each series is kept as two arrays of doubles
(16 bytes a point): a pathological file of one-digit cells can cost ~8x its size in memory.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..compiler.errors import did_you_mean, not_a_regular_file
from .checkpoint import atomic_write
from .errors import ArgLocation, ConfigError, import_extra

__all__ = ["plot_runs", "find_runs", "read_curves", "choose_metrics", "draw_curves", "save_figure",
           "check_out", "need_matplotlib", "literal", "Curves", "PlotResult", "FORMATS", "X_AXES",
           "MAX_BYTES", "MAX_TOTAL_BYTES", "MAX_RUNS", "MAX_METRICS"]  # fmt: skip

FORMATS = (".png", ".svg", ".pdf")
X_AXES = ("step", "epoch", "time")
MAX_BYTES = 64 * 2**20  # a run logging every 10 steps for 10M steps writes ~80 MB; refuse past this
MAX_TOTAL_BYTES = 256 * 2**20  # all runs together
MAX_RUNS = 200  # a line each in every subplot; more is a smear, and slow
MAX_METRICS = 24  # subplots: past this the picture is unreadable (and matplotlib slow and hungry)
NOT_METRICS = ("step", "epoch", "time")  # the columns every row has: axes, not curves
LEGEND_RUNS = 20  # more runs than this: no legend (it would hide the curves)
STEP = re.compile(r"[0-9]{1,19}")  # a whole number; 2**63 - 1 has 19 digits


@dataclass(frozen=True)
class Curves:
    """One run's metrics.csv, the columns asked for as (x, y) points per metric, and the
    characters read from it."""

    label: str
    path: Path  # the metrics.csv
    points: dict[str, tuple[array, array]]  # metric -> (xs, ys), arrays of doubles
    chars: int = 0


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
    check_total(found)
    headers = {label: read_header(path) for label, path in found}
    chosen = choose_metrics(headers, metrics)
    curves, budget = [], MAX_TOTAL_BYTES
    for label, path in found:
        curves.append(read_curves(label, path, chosen, x, limit=min(MAX_BYTES, budget)))
        budget -= curves[-1].chars
    check_ranges(curves, chosen, x)
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
        if len(found) > MAX_RUNS:
            raise ConfigError(f"{given}: more than the {MAX_RUNS} runs plot draws in one picture",
                              hint="give fewer folders, or a folder that holds fewer runs")  # fmt: skip
    return list(zip(_labels(found), (run / "metrics.csv" for run, _ in found), strict=True))


def _labels(found: list[tuple[Path, Path]]) -> list[str]:
    """A run's folder name (its path below a folder of runs); the whole path where two
    runs would share a label."""
    labels = [(run.name or run.resolve().name) if run == given else run.relative_to(given).as_posix()
              for run, given in found]  # fmt: skip
    clash = {label for label in labels if labels.count(label) > 1}
    return [run.as_posix() if label in clash else label for label, (run, _) in zip(labels, found, strict=True)]


def check_total(found: list[tuple[str, Path]]) -> None:
    """The runs' metrics.csv files, together, within MAX_TOTAL_BYTES (before reading any)."""
    total = sum(_size(path) for _, path in found)
    if total > MAX_TOTAL_BYTES:
        raise ConfigError(f"the {len(found)} runs' metrics.csv hold {total / 2**20:.0f} MB, more than the "
                          f"{MAX_TOTAL_BYTES // 2**20} MB plot reads in all", hint="plot fewer runs at a time")  # fmt: skip


def _size(path: Path) -> int:
    kind = not_a_regular_file(path)
    if kind is not None:
        raise ConfigError(f"{path}: it is {kind}, not a file")
    try:
        return path.stat().st_size
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _open_csv(path: Path):
    size = _size(path)
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size / 2**20:.0f} MB, more than the {MAX_BYTES // 2**20} MB plot reads",
                          hint="is it a metrics.csv? thin it out (every Nth row) first")  # fmt: skip
    try:
        return open(path, newline="", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _rows(path: Path, limit: int = MAX_BYTES, read: list[int] | None = None):
    """(line number, cells) of each row after the header; CSV and encoding faults located.
    At most `limit` characters; `read`, when given, gets the count of those read."""
    with _open_csv(path) as fh:
        reader = csv.reader(_bounded(fh, path, limit, read if read is not None else [0]))
        try:
            for cells in reader:
                yield reader.line_num, cells
        except (csv.Error, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}:{reader.line_num + 1}: not a readable CSV row: {err}") from None


def _bounded(fh, path: Path, limit: int, read: list[int]):
    """The file's lines, stopping at `limit` characters (a file still growing, or lying
    about its size); read[0] counts them."""
    for line in fh:
        read[0] += len(line)
        if read[0] > limit:
            raise ConfigError(f"{path}: more than the {limit // 2**20} MB plot reads",
                              hint=f"at most {MAX_BYTES // 2**20} MB a file and {MAX_TOTAL_BYTES // 2**20} "
                              "MB for all runs; is it still growing?")  # fmt: skip
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
    val/ column, in the order the runs logged them. At most MAX_METRICS."""
    logged = list(dict.fromkeys(c for cols in headers.values() for c in cols if c not in NOT_METRICS))
    if wanted is None:
        chosen = sorted([c for c in logged if c == "train/loss" or c.startswith("val/")],
                        key=lambda c: c != "train/loss")  # fmt: skip
        if not chosen:
            raise ConfigError("the runs logged no train/loss and no val/ metrics",
                              hint="choose with --metrics: " + ", ".join(logged[:12]) if logged else "")  # fmt: skip
        if len(chosen) > MAX_METRICS:
            raise ConfigError(f"the runs logged {len(chosen)} metrics (train/loss and val/ columns), more "
                              f"than the {MAX_METRICS} subplots plot draws",
                              hint="choose some with --metrics: " + ",".join(chosen[:4])[:200])  # fmt: skip
        return chosen
    wanted = list(dict.fromkeys(wanted))
    if len(wanted) > MAX_METRICS:
        raise ConfigError(f"{len(wanted)} metrics asked for, more than the {MAX_METRICS} subplots plot draws",
                          ArgLocation("--metrics", 0, 0), hint="plot them in several pictures")  # fmt: skip
    for name in wanted:
        if name not in logged:
            raise ConfigError(f"no run logged a metric '{name}'", ArgLocation("--metrics", 0, 0),
                              hint=did_you_mean(name, logged) or "logged: " + ", ".join(logged[:20]))  # fmt: skip
    return wanted


def _number(text: str, path: Path, line: int, column: str) -> float:
    """A cell as a float; nan for an empty or non-finite one."""
    if not text.strip():
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{path}:{line}: {column} is '{text[:40]}', not a number") from None
    return value if math.isfinite(value) else math.nan


def _step(text: str, path: Path, line: int) -> int:
    """The step cell: a whole number from 0 to 2**63 - 1, as RunLog writes it."""
    text = text.strip()
    if not STEP.fullmatch(text) or int(text) >= 2**63:
        raise ConfigError(f"{path}:{line}: step is '{text[:40]}'; expected a whole number from 0 to 2**63 - 1",
                          hint="is it a yamlnet metrics.csv?")  # fmt: skip
    return int(text)


def read_curves(label: str, path: Path, metrics: list[str], x: str = "step", *, limit: int = MAX_BYTES) -> Curves:
    """The (x, y) points of each metric of one metrics.csv; x is the step, the epoch (with
    fractions, from the steps an epoch takes) or the seconds since the first row."""
    read = [0]
    rows = _rows(path, limit, read)
    header = next(rows)[1]
    where = {name: k for k, name in enumerate(header)}
    if "step" not in where:
        raise ConfigError(f"{path}:1: no 'step' column", hint="is it a yamlnet metrics.csv?")
    if x not in where:
        raise ConfigError(f"{path}:1: no '{x}' column for the x axis", hint="choose another --x")
    axes = {c: array("d") for c in NOT_METRICS if c in where}  # a value (or nan) a row
    ys = {m: (array("L"), array("d")) for m in metrics if m in where}  # (row, value) where logged
    for line, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        axes["step"].append(_step(cells[where["step"]], path, line))
        for name in ("epoch", "time"):
            if name in axes:
                axes[name].append(_number(cells[where[name]], path, line, name))
        for metric, (at, values) in ys.items():
            value = _number(cells[where[metric]], path, line, metric)
            if not math.isnan(value):
                at.append(len(axes["step"]) - 1)
                values.append(value)
    xs = _x_values(axes, x, path)
    points = {m: (array("d"), array("d")) for m in metrics}
    for metric, (at, values) in ys.items():
        kept = [(xs[k], v) for k, v in zip(at, values, strict=True) if not math.isnan(xs[k])]
        points[metric] = (array("d", (a for a, _ in kept)), array("d", (b for _, b in kept)))
    return Curves(label, path, points, read[0])


def _x_values(axes: dict[str, array], x: str, path: Path) -> array:
    """Each row's x (nan: none)."""
    if x == "time":
        t0 = next((t for t in axes["time"] if not math.isnan(t)), 0.0)
        return array("d", (t - t0 for t in axes["time"]))
    if x == "epoch":
        return _epochs(axes["step"], axes["epoch"], path)
    return axes["step"]


def _epochs(steps: array, epochs: array, path: Path) -> array:
    """Fractional epochs: step / steps per epoch, the steps estimated from the rows logged
    once an epoch ended (a row at step s > 0 with e > 0 epochs done has s >= e * steps). A
    run shorter than an epoch has no such row: its epoch column as it is."""
    done = [s / e for s, e in zip(steps, epochs, strict=True) if s > 0 and e > 0]
    if not done:
        return epochs
    per_epoch = min(done)
    if not (math.isfinite(per_epoch) and per_epoch > 0):
        raise ConfigError(f"{path}: cannot tell the steps an epoch takes (got {per_epoch:g})",
                          ArgLocation("--x", 0, 0), hint="plot against --x step")  # fmt: skip
    return array("d", (s / per_epoch for s in steps))


def check_ranges(curves: list[Curves], metrics: list[str], x: str = "step") -> None:
    """Each subplot's x and y values within what an axis can draw (a span, and its margins,
    below the largest float); matplotlib fails on wider ones."""
    for metric in metrics:
        for axis, k in ((f"'{x}' (x axis)", 0), ("its values", 1)):
            series = [c.points[metric][k] for c in curves if c.points[metric][k]]
            if not series:
                continue
            lo, hi = min(min(s) for s in series), max(max(s) for s in series)
            if not (math.isfinite(4 * (hi - lo)) and math.isfinite(4 * max(abs(lo), abs(hi)))):
                raise ConfigError(f"{metric}: {axis} run from {lo:g} to {hi:g}, too wide a range to draw",
                                  hint="leave that metric or run out")  # fmt: skip


def literal(text: str) -> str:
    """Text for matplotlib to show as it is: a `$` would start mathtext (`$\\bad$` fails)."""
    return text.replace("$", r"\$")


def need_matplotlib(what: str = "yamlnet's plots") -> None:
    """ImportError, saying how to install it, where matplotlib is missing."""
    import_extra("matplotlib", "plot", what)


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas: no display, no pyplot state."""
    need_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
                ax.plot(xs, ys, label=literal(run.label), color=f"C{k % 10}", marker="." if len(xs) < 30 else None)
        ax.set_title(literal(metric))
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
