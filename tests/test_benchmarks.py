"""benchmarks/: the quick run (every row at toy size, so no benchmark rots), and the
pieces the table is made of. Timings themselves are never asserted: only that each row
was measured, with both sides, and judged against its goal."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks.common import Goal, Report, Row, Side, rounds, table

from .conftest import ROOT

ROWS = ["1a", "1b", "1c", "1d", "2", "2fx", "2seq", "3a", "3b", "3c", "4", "5a", "5aL", "5a0", "5b", "5bL", "5b0", "6", "7",
        "8a", "8b", "9a", "9b", "9c", "9d", "9e"]  # fmt: skip


@pytest.mark.slow
def test_quick_run_measures_every_row(tmp_path):
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for key in ("CPU", "GPU", "torch", "date"):
        assert f"- **{key}**: " in text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \|.*$", text, re.M)}
    assert [k for k in rows if k != "#"] == ROWS
    for key in ROWS:
        cells = [c.strip() for c in rows[key].split("|")[1:-1]]
        assert re.search(r"\d", cells[2]), f"row {key} has no measurement: {rows[key]}"
        if cells[4]:  # a ratio: both sides were measured
            assert float(cells[4]) > 0 and re.search(r"\d", cells[3])
        assert cells[6] in ("pass", "**FAIL**", "—")
    assert "Row 10" in text  # the GPU rows, or why there are none


def test_goal_verdicts_and_table():
    fast, slow = Side("ours", (1.0, 1.2, 0.9), "ms"), Side("ref", (2.0,), "ms")
    assert Row("x", "f", fast, slow, Goal("<=", 1.02)).verdict == "pass"
    assert Row("x", "f", slow, fast, Goal("<=", 1.02)).verdict == "**FAIL**"
    assert Row("x", "f", slow, fast, Goal(">", 1.0)).verdict == "pass"
    assert Row("x", "f", fast, goal=Goal("<", 0.3, on="value")).verdict == "**FAIL**"
    assert Row("x", "f", fast).verdict == "—"
    assert str(fast) == "ours: 1 (0.9–1.2) ms" and Row("x", "f", fast, slow).ratio == 0.5
    # sides measured round by round: the median of the rounds' ratios, not of the medians
    paired = Row("x", "f", Side("a", (1.0, 3.0, 10.0), "s"), Side("b", (2.0, 2.0, 20.0), "s"))
    assert paired.ratio == 0.5
    text = table(Report([Row("7", "peak", fast, slow, Goal("<=", 1.05))], ["no GPU"]), {"CPU": "c"}, "T")
    assert "| 7 | peak | ours: 1 (0.9–1.2) ms | ref: 2 ms | 0.500 | <= 1.05 | pass |" in text
    assert text.rstrip().endswith("- no GPU")


def test_rounds_alternate_the_order_and_drop_the_warmup():
    calls = []
    got = rounds({"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)},
                 3, warmup=1)  # fmt: skip
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert got == {"a": (3, 6, 7), "b": (4, 5, 8)}
