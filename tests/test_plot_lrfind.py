"""`yamlnet plot` (curves of run folders) and `yamlnet lr-find` (the learning-rate range test).

Oracles: the pictures decode (PIL, XML) and are not blank; the figure has one line per run
and metric; the LR suggested on digits trains the model to well above chance; the range
test leaves the weights and the optimizer as they were, and no file behind.
"""

from __future__ import annotations

import io
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from PIL import Image
from yamlnet.runtime import plot
from yamlnet.runtime.checkpoint import capture_rng
from yamlnet.runtime.lr_find import LRFindResult, range_test, save_plot, suggest
from yamlnet.runtime.train import prepare

import yamlnet
from yamlnet.cli import main

from .conftest import SPECS

DIGITS = SPECS / "digits_cnn.yaml"
SMALL = {"width": 16}  # digits_cnn at half width: the same oracle, a quarter of the convolutions
COLUMNS = ["step", "epoch", "train/loss", "lr", "val/loss", "val/accuracy", "time"]


def write_run(folder: Path, steps: int = 12, scale: float = 1.0) -> Path:
    """A metrics.csv as RunLog writes it: a train row every step, a val row every 4 steps
    (an epoch), the other row's cells empty."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)]
    for s in range(1, steps + 1):
        lines.append(f"{s},{(s - 1) // 4},{scale * 2 / s:.6g},0.01,,,{1000 + s}.5")
        if s % 4 == 0:
            lines.append(f"{s},{s // 4},,,{scale / s:.6g},{1 - 0.5 / s:.6g},{1000 + s}.7")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- plot -----------------------------------------------------------------------------


def test_plot_png_decodes_and_is_not_blank(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", scale=2.0)
    code, out, _ = run_cli(["plot", "a", "b"], capsys)
    assert code == 0, out
    assert out == "wrote plot.png: 2 runs; train/loss, val/loss, val/accuracy against step\n"
    with Image.open(tmp_path / "plot.png") as image:
        assert image.width > 100 and image.height > 100
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 10  # curves, axes and text, not one flat colour


def test_overlay_draws_a_line_per_run_and_metric(tmp_path):
    runs = [write_run(tmp_path / f"run{k}", scale=k + 1) for k in range(3)]
    found = plot.find_runs(runs)
    metrics = ["train/loss", "val/loss", "val/accuracy", "lr"]
    curves = [plot.read_curves(label, path, metrics) for label, path in found]
    fig = plot.draw_curves(curves, metrics)
    assert [ax.get_title() for ax in fig.axes] == metrics  # the grid's spare cell removed
    for ax in fig.axes:
        assert [line.get_label() for line in ax.lines] == ["run0", "run1", "run2"]
    assert sum(len(ax.lines) for ax in fig.axes) == len(runs) * len(metrics)
    xs, ys = curves[1].points["val/loss"]
    assert list(xs) == [4, 8, 12] and ys == pytest.approx([2 / 4, 2 / 8, 2 / 12], rel=1e-5)


def test_a_study_folder_expands_to_its_trials(tmp_path, capsys):
    study = tmp_path / "runs" / "digits-tune"
    for k in (0, 2, 10):
        write_run(study / f"trial_{k}")
    (study / "study.db").write_bytes(b"SQLite format 3\x00")
    (study / "notes").mkdir()  # a folder without metrics.csv is not a run
    assert [label for label, _ in plot.find_runs([study])] == ["trial_0", "trial_2", "trial_10"]
    two_down = [label for label, _ in plot.find_runs([tmp_path / "runs"])]
    assert two_down == ["digits-tune/trial_0", "digits-tune/trial_2", "digits-tune/trial_10"]
    code, out, _ = run_cli(["plot", study, write_run(tmp_path / "extra"), "-o", tmp_path / "s.png"], capsys)
    assert code == 0 and "4 runs" in out


def test_same_named_runs_get_their_paths(tmp_path):
    a, b = write_run(tmp_path / "x" / "version_0"), write_run(tmp_path / "y" / "version_0")
    assert [label for label, _ in plot.find_runs([a, b])] == [a.as_posix(), b.as_posix()]


def test_svg_parses_as_xml_and_pdf_is_a_pdf(tmp_path, capsys):
    run = write_run(tmp_path / "r")
    assert run_cli(["plot", run, "-o", tmp_path / "c.svg", "--x", "epoch"], capsys)[0] == 0
    root = ET.parse(tmp_path / "c.svg").getroot()
    assert root.tag.endswith("svg") and len(list(root.iter())) > 50
    assert run_cli(["plot", run, "-o", tmp_path / "c.pdf", "--metrics", "lr"], capsys)[0] == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_x_axes(tmp_path):
    path = write_run(tmp_path / "r") / "metrics.csv"
    epoch = plot.read_curves("r", path, ["train/loss", "val/loss"], "epoch").points
    assert list(epoch["val/loss"][0]) == [1.0, 2.0, 3.0]  # 4 steps an epoch, from the val rows
    assert list(epoch["train/loss"][0][:2]) == [0.25, 0.5]
    seconds = plot.read_curves("r", path, ["train/loss"], "time").points["train/loss"][0]
    assert seconds[0] == 0 and seconds[-1] == pytest.approx(11.0)


def test_epochs_from_a_run_logging_step_0(tmp_path):
    """A row at step 0 with an epoch done says nothing of the steps an epoch takes."""
    path = _bad_csv(tmp_path, "step,epoch,train/loss\n0,1,1\n2,1,0.5\n4,2,0.25\n") / "metrics.csv"
    xs, ys = plot.read_curves("r", path, ["train/loss"], "epoch").points["train/loss"]
    assert list(xs) == [0.0, 1.0, 2.0] and list(ys) == [1.0, 0.5, 0.25]


EXTREME = {
    "epoch": ("step,epoch,train/loss\n1,1e300,1\n4611686018427387904,1,0.5\n",
              "train/loss: 'epoch' (x axis) run from 1e+300 to inf, too wide a range to draw"),
    "time": ("step,time,train/loss\n1,1e308,1\n2,-1e308,0.5\n",
             "train/loss: 'time' (x axis) run from -inf to 0, too wide a range to draw"),
    "step": ("step,train/loss\n1,1e308\n2,-1e308\n",
             "train/loss: its values run from -1e+308 to 1e+308, too wide a range to draw"),
}  # fmt: skip


@pytest.mark.parametrize("x", list(EXTREME))
def test_axes_too_wide_to_draw_are_one_line_exit_2(x, tmp_path, capsys):
    text, said = EXTREME[x]
    code, out, err = run_cli(["plot", _bad_csv(tmp_path, text), "-o", tmp_path / "p.png", "--x", x], capsys)
    assert (code, out, err) == (2, "", said + " (leave that metric or run out)\n")


def _bad_csv(tmp_path: Path, text: str | bytes) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    data = text if isinstance(text, bytes) else text.encode()
    (folder / "metrics.csv").write_bytes(data)
    return folder


HOSTILE = {
    "not a number": ("step,epoch,train/loss,time\n1,0,0.5,1\n2,0,abc,2\n", "metrics.csv:3: train/loss is 'abc', not a number"),
    "no header": ("", "empty, no header row"),
    "no step column": ("a,b\n1,2\n", "metrics.csv:1: no 'step' column (has: a, b)"),
    "no metrics": ("step,epoch,time\n1,0,1\n", "the runs logged no train/loss and no val/ metrics"),
    "NUL bytes": (b"step,train/loss\n1,\x000.5\n", "metrics.csv:2: train/loss is '\\x000.5', not a number"),
    "not UTF-8": (b"step,train/loss\n1,0.5\n\xff\xfe,1\n", "not a readable CSV row"),
    "a huge cell": ("step,train/loss\n1," + "9" * 200_000 + "\n", "not a readable CSV row"),
    "a float step": ("step,train/loss\n1,1\n1e308,1\n", "metrics.csv:3: step is '1e308'; expected a whole number"),
    "a negative step": ("step,train/loss\n-3,1\n", "metrics.csv:2: step is '-3'; expected a whole number"),
    "a step past 2**63": ("step,train/loss\n9223372036854775808,1\n", "step is '9223372036854775808'; expected"),
    "no step": ("step,train/loss\n,1\n", "metrics.csv:2: step is ''; expected a whole number from 0 to 2**63 - 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metrics_csv_is_one_line_exit_2(case, tmp_path, capsys):
    text, said = HOSTILE[case]
    code, out, err = run_cli(["plot", _bad_csv(tmp_path, text), "-o", tmp_path / "p.png"], capsys)
    assert code == 2 and out == ""
    assert said in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()


def test_a_file_past_the_size_bound_is_refused_unread(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plot, "MAX_BYTES", 1000)
    run = write_run(tmp_path / "r", steps=100)
    code, _, err = run_cli(["plot", run, "-o", tmp_path / "p.png"], capsys)
    assert code == 2 and "more than the 0 MB plot reads" in err and err.count("\n") == 1


def test_too_many_metrics_runs_or_bytes_are_refused_before_drawing(tmp_path, capsys, monkeypatch):
    wide = tmp_path / "wide"  # the reviewer's file: 3000 val/ columns took minutes and gigabytes
    wide.mkdir()
    names = [f"val/m{k}" for k in range(3000)]
    (wide / "metrics.csv").write_text(",".join(["step", *names]) + "\n" + ",".join(["1"] * 3001) + "\n")
    code, out, err = run_cli(["plot", wide, "-o", tmp_path / "p.png"], capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("the runs logged 3000 metrics (train/loss and val/ columns), more than the 24 subplots")
    assert "choose some with --metrics: val/m0,val/m1" in err
    code, _, err = run_cli(["plot", wide, "-o", tmp_path / "p.png", "--metrics", ",".join(names[:25])], capsys)
    assert code == 2 and err == "--metrics: 25 metrics asked for, more than the 24 subplots plot draws " \
                                "(plot them in several pictures)\n"
    assert plot.choose_metrics({"wide": ["step", *names]}, names[:24]) == names[:24]  # 24 is fine
    sweep = tmp_path / "sweep"
    for k in range(4):
        write_run(sweep / f"trial_{k}")
    monkeypatch.setattr(plot, "MAX_RUNS", 3)
    code, _, err = run_cli(["plot", sweep, "-o", tmp_path / "q.png"], capsys)
    assert code == 2 and err.startswith(f"{sweep}: more than the 3 runs plot draws in one picture")
    monkeypatch.setattr(plot, "MAX_RUNS", 200)
    monkeypatch.setattr(plot, "MAX_TOTAL_BYTES", 1000)  # each file ~500 bytes
    code, _, err = run_cli(["plot", sweep, "-o", tmp_path / "q.png"], capsys)
    assert code == 2 and err.startswith("the 4 runs' metrics.csv hold 0 MB, more than the 0 MB plot reads in all")
    assert not (tmp_path / "q.png").exists()


def test_dollar_signs_in_names_are_text_not_mathtext(tmp_path, capsys):
    odd = _bad_csv(tmp_path, "step,epoch,val/$\\undefinedmacro$,time\n1,0,0.5,1\n2,1,0.4,2\n")
    odd = odd.rename(tmp_path / "$\\bad$")
    code, out, err = run_cli(["plot", odd, write_run(tmp_path / "ok"), "-o", tmp_path / "p.png"], capsys)
    assert code == 0, err
    assert out.startswith("wrote ") and "val/$\\undefinedmacro$" in out
    result = LRFindResult([1e-3, 1e-2, 1e-1], [2.0, 1.0, 3.0], [2.0, 1.0, 3.0], 1e-2, 1e-3, 1e-1, 3, "diverged")
    save_plot(result, tmp_path / "lr.png", "lr-find: $\\bad$.yaml")
    with Image.open(tmp_path / "lr.png") as image:
        assert image.width > 100


def test_plot_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "r")
    (tmp_path / "empty").mkdir()
    (tmp_path / "adir.png").mkdir()
    cases = {
        ("empty",): "empty: no metrics.csv in it or in its subfolders",
        ("missing",): "missing: no such run folder",
        ("r", "--metrics", "val/acuracy"): "--metrics: no run logged a metric 'val/acuracy' (did you mean val/accuracy?)",
        ("r", "--metrics", ","): "error: --metrics takes column names",
        ("r", "-o", "p.jpg"): "--out: cannot tell the picture format of 'p.jpg' (end it in .png, .svg or .pdf)",
        ("r", "-o", "nowhere/p.png"): "--out: cannot write nowhere/p.png: no such folder",
        ("r", "-o", "adir.png"): "--out: cannot write adir.png: it is a folder",
    }  # fmt: skip
    for args, said in cases.items():
        code, out, err = run_cli(["plot", *args], capsys)
        assert (code, out) == (2, ""), args
        assert err == said + "\n" or (said in err and err.count("\n") == 1), (args, err)
    assert run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "empty", "r"]


def test_plot_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    code, out, err = run_cli(["plot", write_run(tmp_path / "r")], capsys)
    assert (code, out) == (2, "")
    assert err == 'error: yamlnet plot needs matplotlib: pip install "yamlnet[plot]"\n'
    with pytest.raises(ImportError, match=r"^yamlnet's plots needs matplotlib: pip install"):
        plot.new_figure(1.0, 1.0)


# --- lr-find --------------------------------------------------------------------------


def test_suggest_takes_the_steepest_descent_before_the_minimum():
    lrs = [10.0**e for e in range(-6, 1)]
    assert suggest(lrs, [2.3, 2.3, 2.2, 1.5, 0.4, 0.3, 5.0]) == 1e-3  # not past the lowest loss
    assert suggest(lrs, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]) is None  # never fell


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The range test on digits (from 1e-5: below it the loss is flat; to 10: it diverges
    before), checking the state before and after, then a training run at the suggested LR.
    The grad scaler is a live one (CPU, float32: scaling by powers of two changes no step)
    whose scale grows as the sweep goes, to show that it is put back."""
    folder = tmp_path_factory.mktemp("lr_find")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        run = prepare(DIGITS, folder=False, overrides=SMALL)
        run.scaler = WatchedScaler("cpu", init_scale=16.0, growth_interval=4)
        before = {k: v.clone() for k, v in run.model.state_dict().items()}
        optimizer, scaler, rng = run.optimizer.state_dict(), run.scaler.state_dict(), capture_rng()
        result = range_test(run, min_lr=1e-5, max_lr=10.0, steps=60)
        left = sorted(p.name for p in folder.iterdir())
        restored = all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
        states = {"optimizer": (optimizer, run.optimizer.state_dict()), "scaler": (scaler, run.scaler.state_dict()),
                  "rng": (rng, capture_rng()), "scales": run.scaler.scales}  # fmt: skip
        trained = yamlnet.train(DIGITS, out=folder / "at_suggestion", stream=io.StringIO(),
                                **SMALL, **{"train.optimizer.lr": result.suggestion, "train.epochs": 3})  # fmt: skip
    return result, left, restored, states, trained


class WatchedScaler(torch.amp.GradScaler):
    """A GradScaler noting its scale after each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scales: list[float] = []

    def update(self, new_scale=None) -> None:
        super().update(new_scale)
        self.scales.append(self.get_scale())


def test_the_suggested_lr_trains_digits(sweep):
    result, *_, trained = sweep
    assert result.suggestion is not None
    assert 1e-5 < result.suggestion < result.best_lr < result.lrs[-1]
    assert trained.metrics["val/accuracy"] > 0.9  # chance is 0.1


def test_the_sweep_finds_divergence_within_the_range(sweep):
    result = sweep[0]
    assert result.stopped == "diverged" and len(result.lrs) < 60 and result.lrs[-1] < 10
    assert result.losses[-1] > 3 * min(result.losses)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses)


def test_the_range_test_restores_weights_and_optimizer_and_writes_nothing(sweep):
    _, left, restored, states, _ = sweep
    assert left == []  # no runs/, no plot, nothing
    assert restored
    before, after = states["optimizer"]
    assert after["state"] == before["state"] == {}
    assert [g["lr"] for g in after["param_groups"]] == [g["lr"] for g in before["param_groups"]]


def test_the_range_test_restores_the_grad_scaler_and_the_rngs(sweep):
    _, _, _, states, _ = sweep
    before, after = states["scaler"]
    assert max(states["scales"]) >= 4 * before["scale"]  # the sweep moved it ...
    assert after == before  # ... and it is back
    before, after = states["rng"]
    assert torch.equal(before["torch"], after["torch"])  # the Dropout layers drew from it
    assert before["numpy"][0] == after["numpy"][0] and torch.equal(before["numpy"][1], after["numpy"][1])
    assert before["numpy"][2:] == after["numpy"][2:]
    assert before["python"][0] == after["python"][0] and torch.equal(before["python"][1], after["python"][1])


def test_lr_find_cli_json_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["lr-find", DIGITS, "--steps", "8", "--min-lr", "1e-4", "--max-lr", "1e-1",
                              "--format", "json", "-o", "lr.svg", "--set", "width=8"], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert len(report["lrs"]) == 8 and report["lrs"][0] == pytest.approx(1e-4)
    assert report["lrs"][-1] == pytest.approx(1e-1) and report["plot"] == "lr.svg"
    assert report["suggestion"] is None or report["set"].startswith("train.optimizer.lr=")
    ET.parse(tmp_path / "lr.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.svg"]


def test_lr_find_errors_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = {
        ("--steps", "1"): "--steps: got 1; expected 2 to 100,000 steps",
        ("--min-lr", "0"): "--min-lr: got 0.0; expected a learning rate > 0",
        ("--max-lr", "1e-9"): "--max-lr: got 1e-09; expected a learning rate above --min-lr 1e-07",
        ("-o", "lr.jpg"): "--out: cannot tell the picture format of 'lr.jpg' (end it in .png, .svg or .pdf)",
    }  # fmt: skip
    for args, said in cases.items():
        assert run_cli(["lr-find", DIGITS, *args], capsys) == (2, "", said + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_cli(["lr-find", DIGITS, "-o", "lr.png"], capsys) == (
        2, "", 'error: yamlnet lr-find --out needs matplotlib: pip install "yamlnet[plot]"\n')  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.extended
def test_a_hundred_times_the_suggestion_diverges_or_does_much_worse(sweep, tmp_path):
    """The suggestion is no lower bound picked at random: 100x it is too high to train."""
    from yamlnet.runtime.errors import TrainingError

    result, *_, trained = sweep
    try:
        wild = yamlnet.train(DIGITS, out=tmp_path / "wild", stream=io.StringIO(),
                             **SMALL, **{"train.optimizer.lr": 100 * result.suggestion, "train.epochs": 3})  # fmt: skip
    except TrainingError as err:
        assert "loss is nan" in str(err) or "loss is inf" in str(err)  # diverged, and said so
        return
    assert wild.metrics["val/accuracy"] < trained.metrics["val/accuracy"] - 0.3
