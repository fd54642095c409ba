"""The language model (a text stream) and the U-Net (images and masks) under the same
promises as the classifier: kill -9 and resume gives bitwise the weights of a run never
stopped, and two processes train and validate as one (torchmetrics' own sync gives the
one-process values of the saved weights).

Each run is its own process (`python -m yamlnet train`), killed by the fault seam
(`YAMLNET_FAULTS=kill_after_step=N`), as in test_train_faults.py.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import yamlnet

from .conftest import SPECS

ZOO = SPECS / "zoo"
TIMEOUT = 300


def run_cli(cwd: Path, *args: str, faults: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("YAMLNET_FAULTS", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", YAMLNET_CACHE_DIR=str(cwd / "cache"))
    if faults:
        env["YAMLNET_FAULTS"] = faults
    return subprocess.run([sys.executable, "-m", "yamlnet", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=TIMEOUT)  # fmt: skip


def gpt_spec(cwd: Path) -> tuple[Path, list[str]]:
    """The zoo GPT, small, on a text file of its own."""
    (cwd / "corpus.txt").write_text("".join(f"line {i}: the spec names the nodes. " for i in range(400)))
    text = (ZOO / "gpt.yaml").read_text().replace("[README.md, specs/README.md]", "corpus.txt")
    (cwd / "gpt.yaml").write_text(text)
    sets = ["dim=32", "heads=2", "layers=1", "dropout=0.1", "context=32", "data.block_size=32",
            "train.max_steps=12", "train.val_every_n_steps=6"]  # fmt: skip
    return cwd / "gpt.yaml", sets


def unet_spec(cwd: Path) -> tuple[Path, list[str]]:
    sets = ["base=4", "data.size=96", "data.val_size=16", "train.epochs=2",
            "data.transforms=[{name: RandomHorizontalFlip}]"]  # fmt: skip
    return ZOO / "unet.yaml", sets


SPECS_FOR = {"gpt": gpt_spec, "unet": unet_spec}


def args_of(spec: Path, sets: list[str], out: str, *extra: str) -> list[str]:
    return ["train", str(spec), "--out", out, *(a for s in sets for a in ("--set", s)),
            "--set", "train.checkpoint_every_n_steps=4", *extra]  # fmt: skip


@pytest.mark.parametrize("task", ["gpt", pytest.param("unet", marks=pytest.mark.extended)])
def test_resume_after_kill_is_bitwise_exact(task, tmp_path):
    spec, sets = SPECS_FOR[task](tmp_path)
    done = run_cli(tmp_path, *args_of(spec, sets, "ref"))
    assert done.returncode == 0, done.stderr
    killed = run_cli(tmp_path, *args_of(spec, sets, "run"), faults="kill_after_step=6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(tmp_path, *args_of(spec, sets, "run", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "(step 4," in resumed.stdout
    ref, got = load_file(tmp_path / "ref" / "last.safetensors"), load_file(tmp_path / "run" / "last.safetensors")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ"


def last_val_row(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/loss")]
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val/")}


@pytest.mark.parametrize("task", ["gpt", pytest.param("unet", marks=pytest.mark.extended)])
def test_two_processes_validate_as_one(task, tmp_path, monkeypatch):
    """Metrics logged by a 2-process run (each rank sees half the validation set; loss
    sums are all-reduced, torchmetrics gathers its states) equal a one-process evaluation
    of the weights it saved."""
    spec, sets = SPECS_FOR[task](tmp_path)
    done = run_cli(tmp_path, *args_of(spec, sets, "run", "--nproc", "2"))
    assert done.returncode == 0, done.stderr
    logged = last_val_row(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(tmp_path / "cache"))
    variables = dict(s.split("=", 1) for s in sets if not s.startswith(("data.", "train.")))
    run_sets = {k: v for k, v in (s.split("=", 1) for s in sets) if k.startswith("data.")}
    from yamlnet.compiler.expand import parse_override

    over = {k: parse_override(v) for k, v in {**variables, **run_sets}.items()}
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    got = yamlnet.evaluate(spec, checkpoint, **over)
    assert set(got) == set(logged)
    for key, value in got.items():
        assert value == pytest.approx(logged[key], rel=1e-5, abs=2e-6), key  # (csv: 10 digits)
