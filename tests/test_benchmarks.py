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
        "8a", "8b", "9a", "9b", "9c", "9d", "9e", "11", "12", "13a", "13b", "14a", "14b", "14c", "14d", "14e", "14f",
        "14g", "14h", "14i", "15", "16", "17a", "17b", "18a", "18b", "18c", "18d", "18e"]  # fmt: skip


@pytest.mark.extended  # a minute and a half: .ci/run runs it after the README's command
def test_quick_run_measures_every_row(tmp_path):
    out = tmp_path / "RESULTS.md"
    # about a minute on 2 idle cores; the limit guards against a hang only (a busy machine is 2-6x slower)
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for key in ("CPU", "GPU", "torch", "date"):
        assert f"- **{key}**: " in text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \|.*$", text, re.M)}
    assert [k for k in rows if k not in ("#", "19a", "19b")] == ROWS  # (19: on a machine with 2 GPUs)
    for key in ROWS:
        cells = [c.strip() for c in rows[key].split("|")[1:-1]]
        assert re.search(r"\d", cells[2]), f"row {key} has no measurement: {rows[key]}"
        if cells[4]:  # a ratio: both sides were measured
            assert float(cells[4]) > 0 and re.search(r"\d", cells[3])
        assert cells[6] in ("pass", "**FAIL**", "—")
    assert "Row 10" in text and "Row 19" in text  # the GPU rows, or why there are none


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


def test_the_language_model_sides_train_on_the_same_blocks(tmp_path):
    """Row 11's hand-written side reads the text's bytes itself; yamlnet's `text` source
    must give the same blocks, and an epoch of either must visit each block once."""
    import torch
    from yamlnet.runtime.config import load_run
    from yamlnet.runtime.data import build_splits

    from benchmarks.tasks import TokenBatches, language_model

    work = language_model(tmp_path, quick=True)
    _, cfg, _ = load_run(work.spec, None, work.overrides)
    train = build_splits(cfg.data).train
    block, batch = cfg.data["block_size"], cfg.data["batch_size"]
    ids = torch.tensor(list((tmp_path / "text.txt").read_bytes()))
    pairs = [(x, y) for xs, ys in TokenBatches(ids, block, batch) for x, y in zip(xs, ys, strict=True)]
    ours = sorted((s["tokens"].tolist(), s["targets"].tolist()) for s in (train[i] for i in range(len(train))))
    assert sorted((x.tolist(), y.tolist()) for x, y in pairs) == ours
    assert len(pairs) == len(train) == (len(ids) - 1) // block and len(train) % batch == 0


def test_the_image_folder_holds_its_classes(tmp_path):
    from torchvision.datasets import ImageFolder

    from benchmarks.tasks import write_pngs

    write_pngs(tmp_path, classes=3, per_class=2, size=8)
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["class_0", "class_1", "class_2"] and len(folder) == 6
    assert folder[0][0].size == (8, 8) and folder[0][0].mode == "RGB"
