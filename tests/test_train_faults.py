"""`yamlnet train` under crashes, signals, NaNs, damaged checkpoints and changed specs.

Every run is a real `python -m yamlnet train` process on specs/digits_cnn.yaml (23
optimizer steps per epoch at batch 64). Crash points come from the test hook
`YAMLNET_FAULTS` (runtime/faults.py), or from a real `os.kill`. The oracle of an exact
resume is an uninterrupted reference run: the final weights must be bitwise equal.

A process spends ~5 s starting and ~1 s training, so the runs are scenarios: each
test names the one it checks (`outcome`, parametrized indirectly), and the module
fixture `runs` starts the scenarios of every selected test up front, two at a time
(one thread each: two runs fill two cores). The tests then only read the outcomes.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from yamlnet.runtime.checkpoint import load_checkpoint
from yamlnet.runtime.errors import CheckpointError

from .conftest import SPECS

SPEC = SPECS / "digits_cnn.yaml"
STEPS_PER_EPOCH = 23  # 1438 training digits at batch 64
RUN = ("--out", "run", "--epochs", "2", "--set", "train.checkpoint_every_n_steps=5")
ACCUM = (*RUN, "--set", "train.grad_accum=3")  # 8 optimizer steps per epoch
# no LR schedule: its resume changes the run's length, refused under a schedule
LONG = ("--out", "run", "--epochs", "500", "--set", "train.checkpoint_every_n_steps=5",
        "--set", "train.scheduler=null")  # fmt: skip
TIMEOUT = 180  # seconds for one process; a hang fails its scenario instead of the suite
WORKERS = 2


# -- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A finished `yamlnet train` process."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"yamlnet train {' '.join(self.args)} -> exit {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}")  # fmt: skip


def start(cwd: Path, *args: str, faults: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "YAMLNET_FAULTS"}
    env["OMP_NUM_THREADS"] = "1"  # two runs share two cores; every run the same kernels
    if faults:
        env["YAMLNET_FAULTS"] = faults
    cmd = [sys.executable, "-m", "yamlnet", "train", str(SPEC), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> Proc:
    """Wait for `proc` (killing it past `timeout`) and collect its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[test] killed after {timeout} s"
    return Proc(tuple(proc.args[4:]), proc.returncode, out, err)


def train(cwd: Path, *args: str, faults: str | None = None) -> Proc:
    return finish(start(cwd, *args, faults=faults))


def interrupt(cwd: Path, args: tuple[str, ...], sig: signal.Signals) -> Proc:
    """Start a run and `os.kill` it with `sig` as soon as its first step checkpoint is on
    disk (training is under way); if the run ends first, it is left to fail its test."""
    proc = start(cwd, *args)
    try:
        if wait_for(proc, lambda: bool(step_files(cwd / "run"))):
            os.kill(proc.pid, sig)
        return finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """Poll until `ready()`; False if the process ends (or TIMEOUT passes) first."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def expect(proc: Proc, code: int) -> None:
    assert proc.returncode == code, f"expected exit {code}\n{proc}"


# -- run folders -------------------------------------------------------------------------


def step_files(run: Path) -> list[Path]:
    """The step checkpoints of a run, oldest first."""
    return sorted((run / "checkpoints").glob("step-*.pt"))


def step_of(path: Path) -> int:
    return int(re.fullmatch(r"step-(\d+)\.pt", path.name).group(1))


def position(path: Path) -> dict:
    return load_checkpoint(path)["position"]


def copy_run(run: Path, cwd: Path) -> Path:
    return Path(shutil.copytree(run, cwd / "run"))


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The final weights as both files hold them."""
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return {"last.safetensors": load_file(run / "last.safetensors"),
            "checkpoints/last.pt": last["model"]}  # fmt: skip


def mismatches(run: Path, reference: Path) -> list[str]:
    """Tensors of `run` that are not bitwise those of `reference` (dtype included)."""
    ours, theirs = weights(run), weights(reference)
    out = []
    for where, tensors in theirs.items():
        for name, want in tensors.items():
            got = ours[where].get(name)
            if got is None or got.dtype != want.dtype or not torch.equal(got, want):
                out.append(f"{where}:{name}")
        out += [f"{where}:{name} (extra)" for name in ours[where].keys() - tensors.keys()]
    return out


# -- scenarios ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario left: the run folder, its processes in order, and facts seen
    between them (before a later process could change the folder)."""

    name: str
    run: Path
    procs: list[Proc]
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    build: Callable[[Runs, Path, str], Outcome]
    needs: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {}


def scenario(*names: str, needs: tuple[str, ...] = ()):
    """Register `build(runs, cwd, name) -> Outcome` under each of `names`."""

    def add(build):
        for name in names:
            SCENARIOS[name] = Scenario(build, needs)
        return build

    return add


class Runs:
    """Scenarios started on a small thread pool; `runs[name]` waits for one."""

    def __init__(self, root: Path):
        self.root = root
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="yamlnet-run")
        self._futures: dict[str, Future] = {}
        self._lock = threading.RLock()  # scenarios look up their dependencies from workers

    def start(self, name: str) -> Future:
        # dependencies are queued first: a scenario never waits on one queued behind it
        with self._lock:
            if name not in self._futures:
                for need in SCENARIOS[name].needs:
                    self.start(need)
                cwd = self.root / re.sub(r"[^\w.=-]", "_", name)
                cwd.mkdir()
                self._futures[name] = self._pool.submit(SCENARIOS[name].build, self, cwd, name)
            return self._futures[name]

    def __getitem__(self, name: str) -> Outcome:
        return self.start(name).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@scenario("reference")
def _reference(runs: Runs, cwd: Path, name: str) -> Outcome:
    return Outcome(name, cwd / "run", [train(cwd, *RUN)])


@scenario("accum_reference")
def _accum_reference(runs: Runs, cwd: Path, name: str) -> Outcome:
    return Outcome(name, cwd / "run", [train(cwd, *ACCUM)])


def _snapshot(run: Path) -> dict:
    """The checkpoint folder after a crash: every file name, the step each finished
    file holds, and the error of each that does not load."""
    folder = run / "checkpoints"
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    steps, broken = {}, {}
    for name in (f for f in files if not f.startswith(".")):
        try:
            steps[name] = position(folder / name)["step"]
        except CheckpointError as err:
            broken[name] = str(err)
    return {"files": files, "steps": steps, "broken": broken}


KILLS = {  # fault -> the checkpoint the resumed run starts from (None: from scratch)
    "kill_after_step=3": None,  # before the first checkpoint
    "kill_after_step=12": "step-00000010.pt",  # mid-epoch
    "kill_after_step=23": "step-00000020.pt",  # the last step of epoch 1
    "kill_in_checkpoint=3": "step-00000010.pt",  # half-way through writing step 15
}


@scenario(*KILLS, needs=("reference",))
def _kill_and_resume(runs: Runs, cwd: Path, name: str) -> Outcome:
    killed = train(cwd, *RUN, faults=name)
    facts = _snapshot(cwd / "run")
    return Outcome(name, cwd / "run", [killed, train(cwd, *RUN, "--resume")], facts)


@scenario("grad_accum:kill_after_step=7", needs=("accum_reference",))
def _accum_kill_and_resume(runs: Runs, cwd: Path, name: str) -> Outcome:
    killed = train(cwd, *ACCUM, faults="kill_after_step=7")
    facts = _snapshot(cwd / "run")
    return Outcome(name, cwd / "run", [killed, train(cwd, *ACCUM, "--resume")], facts)


@scenario("os.kill", needs=("reference",))
def _external_kill_and_resume(runs: Runs, cwd: Path, name: str) -> Outcome:
    killed = interrupt(cwd, RUN, signal.SIGKILL)
    facts = _snapshot(cwd / "run")
    return Outcome(name, cwd / "run", [killed, train(cwd, *RUN, "--resume")], facts)


@scenario("SIGTERM", "SIGINT")
def _stop_by_signal(runs: Runs, cwd: Path, name: str) -> Outcome:
    """Stop a long run once it is training; after SIGTERM, resume it to finish its epoch."""
    stopped = interrupt(cwd, LONG, signal.Signals[name])
    outcome = Outcome(name, cwd / "run", [stopped], _snapshot(cwd / "run"))
    last = outcome.facts["steps"].get("last.pt")
    if name == "SIGTERM" and last is not None:
        epochs = last // STEPS_PER_EPOCH + 1  # to the end of the epoch it stopped in
        outcome.procs.append(train(cwd, *LONG, "--resume", "--epochs", str(epochs)))
        outcome.facts["epochs"] = epochs
    return outcome


NAN_SAMPLE = 7 * 64 + 3  # without shuffling, in the 8th batch: optimizer step 8


def _write_tensors(cwd: Path) -> tuple[str, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((640, 1, 8, 8)).astype(np.float32)
    x[NAN_SAMPLE, 0, 3, 4] = np.nan
    np.savez(cwd / "train.npz", x=x, y=rng.integers(0, 10, 640).astype(np.int64))
    val_x = rng.standard_normal((128, 1, 8, 8)).astype(np.float32)
    np.savez(cwd / "val.npz", x=val_x, y=rng.integers(0, 10, 128).astype(np.int64))
    return ("--set", "data.dataset=tensors", "--set", "data.train=train.npz",
            "--set", "data.val=val.npz", "--set", "data.shuffle=false")  # fmt: skip


@scenario("on_nonfinite=stop", "on_nonfinite=skip")
def _train_on_nan(runs: Runs, cwd: Path, name: str) -> Outcome:
    data = _write_tensors(cwd)
    return Outcome(name, cwd / "run", [train(cwd, *RUN, *data, "--set", f"train.{name}")])


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    else:  # one byte flipped, in the middle
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@scenario("truncated", "flipped", needs=("reference",))
def _damage_and_resume(runs: Runs, cwd: Path, name: str) -> Outcome:
    run = copy_run(runs["reference"].run, cwd)
    newest = step_files(run)[-1]
    damage(newest, name)
    return Outcome(name, run, [train(cwd, *RUN, "--resume")], {"damaged": newest.name})


CHANGES = {  # scenario -> extra arguments of a resume from the finished reference run
    "spec_changed": ("--resume", "--set", "width=16"),
    "spec_changed_forced": ("--resume", "--force", "--set", "width=16"),
    "more_epochs": ("--resume", "--epochs", "3"),
    "more_epochs_forced": ("--resume", "--force", "--epochs", "3"),
    "grad_clip_added": ("--resume", "--set", "train.grad_clip=1.0"),
    "no_resume": (),
}


@scenario(*CHANGES, needs=("reference",))
def _rerun_finished(runs: Runs, cwd: Path, name: str) -> Outcome:
    run = copy_run(runs["reference"].run, cwd)
    return Outcome(name, run, [train(cwd, *RUN, *CHANGES[name])])


@scenario("empty_resume")
def _resume_empty(runs: Runs, cwd: Path, name: str) -> Outcome:
    (cwd / "run").mkdir()
    return Outcome(name, cwd / "run", [train(cwd, *RUN, "--max-steps", "3", "--resume")])


@scenario("second_trainer")
def _second_trainer(runs: Runs, cwd: Path, name: str) -> Outcome:
    """A run stuck after step 6 holds its folder; a second trainer is refused; once the
    holder is killed (-9), the next --resume takes the folder over from step 5."""
    holder = start(cwd, *LONG, faults="hang_after_step=6")
    try:
        held = wait_for(holder, lambda: bool(step_files(cwd / "run")))  # the lock is taken before
        second = train(cwd, *LONG, "--resume", "--max-steps", "8")
        os.kill(holder.pid, signal.SIGKILL)
        killed = finish(holder)
    finally:
        if holder.poll() is None:
            holder.kill()
    after = train(cwd, *LONG, "--resume", "--max-steps", "8")
    return Outcome(name, cwd / "run", [killed, second, after], {"held": held, "pid": holder.pid})


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    wanted = [item.callspec.params["outcome"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and "outcome" in item.callspec.params]  # fmt: skip
    started = Runs(tmp_path_factory.mktemp("runs"))
    for name in wanted:
        started.start(name)
    yield started
    started.close()


@pytest.fixture
def outcome(request, runs) -> Outcome:
    return runs[request.param]


# the README command keeps one kill mid-epoch and one mid-write; the other points run in
# the extended suite (each is a reference run, a killed run and a resumed one)
EXTENDED_SCENARIOS = {"kill_after_step=3", "kill_after_step=23"}


def scenarios(*names: str):
    params = [pytest.param(n, marks=pytest.mark.extended) if n in EXTENDED_SCENARIOS else n for n in names]
    return pytest.mark.parametrize("outcome", params, indirect=True)


def reference(runs: Runs, name: str = "reference") -> Path:
    """The uninterrupted run's folder, once it finished cleanly."""
    outcome = runs[name]
    expect(outcome.procs[0], 0)
    return outcome.run


def resumed_from(checkpoint: str) -> str:
    """The line a resumed run prints, up to the step (`checkpoint`: a file name)."""
    step = step_of(Path(checkpoint))
    return f"resuming from {Path('run', 'checkpoints', checkpoint)} (step {step},"


# -- exact resume after SIGKILL ------------------------------------------------------------


@scenarios(*KILLS)
def test_resume_after_kill_is_exact(outcome, runs):
    killed, resumed = outcome.procs
    assert killed.returncode == -signal.SIGKILL, killed
    assert outcome.facts["broken"] == {}  # every finished file the crash left verifies
    expect(resumed, 0)
    if KILLS[outcome.name] is None:
        assert "warning: nothing to resume in run: starting from the beginning" in resumed.stdout
    else:
        assert resumed_from(KILLS[outcome.name]) in resumed.stdout
    assert mismatches(outcome.run, reference(runs)) == []


@scenarios("kill_in_checkpoint=3")
def test_kill_mid_write_leaves_finished_checkpoints_intact(outcome):
    files, steps = outcome.facts["files"], outcome.facts["steps"]
    hidden = [f for f in files if f.startswith(".")]
    assert len(hidden) == 1 and re.fullmatch(r"\.step-00000015\.pt\.tmp\d+", hidden[0]), files
    assert steps == {"last.pt": 10, "step-00000005.pt": 5, "step-00000010.pt": 10}
    assert outcome.facts["broken"] == {}
    assert not list((outcome.run / "checkpoints").glob(".*")), "the resume left a temp file"


@scenarios("grad_accum:kill_after_step=7")
def test_resume_after_kill_with_grad_accum_is_exact(outcome, runs):
    killed, resumed = outcome.procs
    assert killed.returncode == -signal.SIGKILL, killed
    assert outcome.facts["broken"] == {}  # every finished file the crash left verifies
    expect(resumed, 0)
    assert resumed_from("step-00000005.pt") in resumed.stdout  # 15 micro-batches into epoch 1
    assert mismatches(outcome.run, reference(runs, "accum_reference")) == []


@scenarios("os.kill")
def test_resume_after_external_sigkill_is_exact(outcome, runs):
    killed, resumed = outcome.procs
    assert killed.returncode == -signal.SIGKILL, killed
    assert outcome.facts["broken"] == {}
    steps = outcome.facts["steps"]
    newest = max((s for n, s in steps.items() if n.startswith("step-")), default=0)
    assert 0 < newest < 2 * STEPS_PER_EPOCH, f"not killed while training: {steps}"
    expect(resumed, 0)
    assert resumed_from(f"step-{newest:08d}.pt") in resumed.stdout
    assert mismatches(outcome.run, reference(runs)) == []


@scenarios("accum_reference")
def test_weight_comparison_tells_different_runs_apart(outcome, runs):
    expect(outcome.procs[0], 0)
    assert mismatches(outcome.run, reference(runs)) != []


# -- SIGTERM and SIGINT --------------------------------------------------------------------


@scenarios("SIGTERM", "SIGINT")
def test_signal_saves_a_checkpoint_and_stops(outcome):
    stopped = outcome.procs[0]
    expect(stopped, 128 + signal.Signals[outcome.name])  # 143, 130
    assert f"{outcome.name}: saving a checkpoint at the end of this step" in stopped.stdout
    steps = outcome.facts["steps"]
    assert outcome.facts["broken"] == {}
    newest = max((s for n, s in steps.items() if n.startswith("step-")), default=None)
    assert steps.get("last.pt") == newest == steps.get(f"step-{newest:08d}.pt"), steps
    assert f"{outcome.name} at step {newest} in" in stopped.stdout


@scenarios("SIGTERM")
def test_resume_after_sigterm_continues(outcome):
    assert len(outcome.procs) == 2, f"nothing to resume\n{outcome.procs[0]}"
    resumed = outcome.procs[1]
    expect(resumed, 0)
    step, epochs = outcome.facts["steps"]["last.pt"], outcome.facts["epochs"]
    assert resumed_from(f"step-{step:08d}.pt") in resumed.stdout
    end = position(outcome.run / "checkpoints" / "last.pt")
    assert (end["step"], end["epoch"]) == (epochs * STEPS_PER_EPOCH, epochs)


# -- non-finite loss -----------------------------------------------------------------------


@scenarios("on_nonfinite=stop")
def test_nonfinite_loss_stops_and_keeps_checkpoints(outcome):
    (proc,) = outcome.procs
    expect(proc, 1)
    assert re.search(r"\bstep 8\b.*loss is nan", proc.stderr), proc
    assert [p.name for p in step_files(outcome.run)] == ["step-00000005.pt"]
    assert position(outcome.run / "checkpoints" / "step-00000005.pt")["step"] == 5
    assert position(outcome.run / "checkpoints" / "last.pt")["step"] == 5


@scenarios("on_nonfinite=skip")
def test_nonfinite_loss_skipped_keeps_weights_finite(outcome):
    (proc,) = outcome.procs
    expect(proc, 0)
    assert "step 8 (epoch 1, batch 8): loss is nan; skipping this batch" in proc.stdout
    assert "step 18 (epoch 2, batch 8): loss is nan; skipping this batch" in proc.stdout
    for where, tensors in weights(outcome.run).items():
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
        assert bad == [], f"{where}: non-finite {bad}"
    with open(outcome.run / "metrics.csv", newline="") as fh:
        val_loss = [float(row["val/loss"]) for row in csv.DictReader(fh) if row["val/loss"]]
    assert len(val_loss) == 2 and all(map(math.isfinite, val_loss)), val_loss


# -- damaged checkpoints -------------------------------------------------------------------


@scenarios("reference")
@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_checkpoint_is_refused(outcome, how, tmp_path):
    path = tmp_path / "step-00000046.pt"
    shutil.copyfile(reference_step(outcome, 46), path)
    load_checkpoint(path)  # intact, it loads
    damage(path, how)
    with pytest.raises(CheckpointError, match=r"step-00000046\.pt is corrupt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def reference_step(outcome: Outcome, step: int) -> Path:
    expect(outcome.procs[0], 0)
    return outcome.run / "checkpoints" / f"step-{step:08d}.pt"


@scenarios("truncated", "flipped")
def test_resume_skips_damaged_checkpoint(outcome, runs):
    (proc,) = outcome.procs
    expect(proc, 0)
    damaged = Path("run", "checkpoints", outcome.facts["damaged"])
    assert re.search(rf"warning: refusing {re.escape(str(damaged))} is corrupt", proc.stdout), proc
    assert resumed_from("step-00000045.pt") in proc.stdout
    assert mismatches(outcome.run, reference(runs)) == []


# -- changed spec or run folder ------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@scenarios("spec_changed")
def test_resume_with_changed_spec_is_refused(outcome, runs):
    (proc,) = outcome.procs
    expect(proc, 2)
    line = _one_line(proc.stderr)
    assert "the spec changed since run/checkpoints/step-00000046.pt" in line and "--force" in line
    ref = reference(runs) / "checkpoints"
    for p in step_files(outcome.run):  # refused before anything was written
        assert p.read_bytes() == (ref / p.name).read_bytes()


@scenarios("spec_changed_forced")
def test_forced_resume_with_weights_that_do_not_fit_is_refused(outcome):
    (proc,) = outcome.procs
    expect(proc, 2)
    line = _one_line(proc.stderr)
    assert "run/checkpoints/step-00000046.pt does not fit the model: size mismatch for " in line


@scenarios("more_epochs")
def test_resume_with_a_longer_run_under_a_schedule_is_refused(outcome):
    (proc,) = outcome.procs
    expect(proc, 2)
    line = _one_line(proc.stderr)
    assert "the run's length changed since" in line and "(46 -> 69 steps)" in line
    assert "pass --force" in line


@scenarios("more_epochs_forced")
def test_resume_with_a_longer_run_is_accepted_with_force(outcome):
    (proc,) = outcome.procs
    expect(proc, 0)
    assert resumed_from("step-00000046.pt") in proc.stdout
    assert "warning: resuming with changed settings: train.epochs (2 -> 3)" in proc.stdout
    assert position(outcome.run / "checkpoints" / "last.pt")["step"] == 3 * STEPS_PER_EPOCH


@scenarios("grad_clip_added")
def test_resume_with_a_changed_setting_warns(outcome):
    (proc,) = outcome.procs
    expect(proc, 0)
    assert "warning: resuming with changed settings: train.grad_clip (None -> 1.0)" in proc.stdout
    assert resumed_from("step-00000046.pt") in proc.stdout


@scenarios("no_resume")
def test_existing_run_folder_needs_resume(outcome):
    (proc,) = outcome.procs
    expect(proc, 2)
    assert "run already holds a run (pass --resume to continue it" in _one_line(proc.stderr)


@scenarios("empty_resume")
def test_resume_in_empty_folder_starts_from_the_beginning(outcome):
    (proc,) = outcome.procs
    expect(proc, 0)
    assert "warning: nothing to resume in run: starting from the beginning" in proc.stdout
    assert position(outcome.run / "checkpoints" / "last.pt")["step"] == 3


@scenarios("second_trainer")
def test_a_second_trainer_is_refused_until_the_first_is_gone(outcome):
    killed, second, after = outcome.procs
    assert outcome.facts["held"], killed
    expect(second, 2)
    line = _one_line(second.stderr)
    assert f"run is being trained by pid {outcome.facts['pid']} on " in line, second
    assert "wait for it to end, or choose another --out" in line
    assert killed.returncode == -signal.SIGKILL
    expect(after, 0)  # the kernel dropped the dead holder's lock
    assert position(outcome.run / "checkpoints" / "last.pt")["step"] == 8
    rows = list(csv.DictReader(open(outcome.run / "metrics.csv", newline="")))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)), steps  # one trainer's rows, not two interleaved


# -- what a checkpoint holds ---------------------------------------------------------------


@scenarios("reference")
def test_checkpoint_content(outcome):
    last = reference_step(outcome, 46).with_name("last.pt")
    assert os.path.samefile(last, reference_step(outcome, 46))
    state = torch.load(last, map_location="cpu", weights_only=True)  # plain data only
    assert load_checkpoint(last)["position"] == state["position"]  # and it verifies
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "position", "spec",
            "checksum"} <= state.keys()  # fmt: skip
    assert {"python", "numpy", "torch"} <= state["rng"].keys()
    assert {k: state["position"][k] for k in ("step", "epoch", "batch")} == \
        {"step": 46, "epoch": 2, "batch": 0}  # fmt: skip
    assert state["spec"]["name"] == "digits_cnn" and len(state["spec"]["hash"]) == 64
    assert "features.0.conv: {op: Conv2d" in state["spec"]["lock"]
    assert set(state["model"]) == set(load_file(outcome.run / "last.safetensors"))


@scenarios("reference")
def test_lock_file_holds_the_resolved_train_section(outcome):
    expect(outcome.procs[0], 0)
    lock = yaml.safe_load((outcome.run / "spec.lock.yaml").read_text())
    assert lock["name"] == "digits_cnn"
    train_section = lock["train"]
    assert (train_section["epochs"], train_section["checkpoint_every_n_steps"]) == (2, 5)
    assert train_section["on_nonfinite"] == "stop"  # a default, filled in
    assert train_section["scheduler"]["name"] == "CosineAnnealingLR"  # from the spec


# -- CUDA ----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_trains_on_cuda(tmp_path):
    proc = train(tmp_path, "--out", "run", "--epochs", "1", "--device", "cuda")
    expect(proc, 0)
    assert "device cuda" in proc.stdout
    assert f"finished at step {STEPS_PER_EPOCH} in" in proc.stdout
    assert position(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == STEPS_PER_EPOCH
