"""What every benchmark shares: interleaved timing, whole-process timing, the result row
and the table.

Shared machines are noisy, so a figure is always a ratio of two sides measured in one
run: the sides alternate (A B, then B A, ...) after a warm-up of each. The ratio is the
median of the rounds' own ratios (A_r / B_r, measured side by side, so a slow spell of
the machine slows both), or of the medians where the sides were measured a different
number of times. Absolute numbers are printed for reference only.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
THREADS = 2  # every CPU row runs on 2 threads unless it says otherwise


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what it is and the values measured (one per repetition)."""

    label: str
    values: tuple[float, ...]
    unit: str  # "ms", "s", "steps/s", "MB", ...

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        lo, hi = min(self.values), max(self.values)
        spread = f" ({_num(lo)}–{_num(hi)})" if len(self.values) > 1 else ""
        return f"{self.label}: {_num(self.median)}{spread} {self.unit}"


@dataclass(frozen=True)
class Goal:
    """`ratio <= 1.02`, `ratio >= 0.97`, or a bound on our side's own value (`value < 0.3`)."""

    op: str  # "<=", "<", ">=", ">"
    bound: float
    on: str = "ratio"  # "ratio" | "value"

    def met(self, row: Row) -> bool:
        x = row.ratio if self.on == "ratio" else row.ours.median
        return {"<=": x <= self.bound, "<": x < self.bound, ">=": x >= self.bound,
                ">": x > self.bound}[self.op]  # fmt: skip

    def __str__(self) -> str:
        unit = "" if self.on == "ratio" else " (absolute)"
        return f"{self.op} {self.bound:g}{unit}"


@dataclass(frozen=True)
class Row:
    """One figure of RESULTS.md. `ratio` is ours / reference: the median of the rounds'
    ratios, or the ratio of the medians."""

    key: str  # "1a"
    figure: str
    ours: Side
    reference: Side | None = None
    goal: Goal | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None:
            return None
        ours, ref = self.ours.values, self.reference.values
        if len(ours) == len(ref) > 1:  # round by round: each pair measured side by side
            return statistics.median(a / b for a, b in zip(ours, ref, strict=True))
        return self.ours.median / self.reference.median

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "—"
        return "pass" if self.goal.met(self) else "**FAIL**"


@dataclass
class Report:
    """The rows of one run, and notes that are not rows (a skipped GPU section, say)."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def rounds(sides: dict[str, Callable[[], float]], repeat: int, *, warmup: int = 1,
           together: bool = False) -> dict[str, tuple[float, ...]]:  # fmt: skip
    """What each side's call returns, over `repeat` rounds that call every side once, the
    order reversed every other round; after `warmup` rounds whose results are dropped.
    `together` runs the sides of a round at the same time (the quick run's processes:
    their figures then say nothing, which a quick run's need not)."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    got: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeat):
        order = list(sides.items())
        if together:
            with ThreadPoolExecutor(len(order)) as pool:
                futures = {name: pool.submit(fn) for name, fn in order}
            for name, future in futures.items():
                got[name].append(future.result())
            continue
        for name, fn in order[::-1] if r % 2 else order:
            got[name].append(fn())
    return {name: tuple(values) for name, values in got.items()}


def interleaved(sides: dict[str, Callable[[], object]], repeat: int, *, warmup: int = 1,
                number: int = 1, collect: bool = False) -> dict[str, tuple[float, ...]]:  # fmt: skip
    """Seconds per call of each side, timed over `number` calls, in `rounds`. `collect`
    runs Python's garbage collector before each timing (not timed), so the garbage one
    side leaves (a built model's reference cycles) is not collected on another's time."""
    return rounds({name: _timer(fn, number, collect) for name, fn in sides.items()}, repeat, warmup=warmup)


def _timer(fn: Callable[[], object], number: int, collect: bool = False) -> Callable[[], float]:
    def timed() -> float:
        if collect:
            gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return timed


def run_process(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a command to completion; a failure is an error naming the command and its output."""
    done = subprocess.run(cmd, cwd=cwd or ROOT, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n" + "\n".join(tail))
    return done


def process_seconds(cmds: dict[str, list[str]], repeat: int, *, warmup: int = 1,
                    cwd: Path | None = None, together: bool = False) -> dict[str, tuple[float, ...]]:  # fmt: skip
    """Wall seconds of whole processes, interleaved like `interleaved`."""
    sides = {k: _timer(_runner(c, cwd), 1) for k, c in cmds.items()}
    return rounds(sides, repeat, warmup=warmup, together=together)


def _runner(cmd: list[str], cwd: Path | None) -> Callable[[], object]:
    return lambda: run_process(cmd, cwd=cwd)


def child_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a benchmark's child process: 2 threads, our repo importable."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def yamlnet_cmd(*args: str) -> list[str]:
    """The `yamlnet` command of this interpreter's environment."""
    return [sys.executable, "-m", "yamlnet", *args]


def machine() -> dict[str, str]:
    """What the header of RESULTS.md says about where the figures come from."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"CPU": f"{cpu}, {os.cpu_count()} cores (rows use {THREADS} threads)", "GPU": gpu,
            "torch": torch.__version__, "Python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def table(report: Report, header: dict[str, str], title: str) -> str:
    """RESULTS.md: the header, one line per row, then the notes."""
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "Each side: median (min–max) over the rounds. Ratio: yamlnet / reference, the "
              "median of the rounds' own ratios (the sides of a round run back to back). "
              "Written by `python -m benchmarks`."]  # fmt: skip
    lines += ["", "| # | figure | yamlnet | reference | ratio | goal | result |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in report.rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        ref = "" if row.reference is None else str(row.reference)
        note = f" — {row.note}" if row.note else ""
        lines.append(f"| {row.key} | {row.figure}{note} | {row.ours} | {ref} | {ratio} | "
                     f"{row.goal or ''} | {row.verdict} |")  # fmt: skip
    if report.notes:
        lines += ["", *(f"- {n}" for n in report.notes)]
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
