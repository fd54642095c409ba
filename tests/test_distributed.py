"""Distributed training: `yamlnet train --nproc 2` (DDP over Gloo on CPU, started by
PyTorch's elastic launcher), and two ranks started by hand the way torchrun starts them.

Oracles: a single-process run with the global batch (one DDP step on 2 ranks with batch
B must equal one step with batch 2B), an uninterrupted 2-process run (a run restarted
after a SIGKILL must end with the same weights), and the checkpoints' own checksums.
Crash points come from the test hook YAMLNET_FAULTS (runtime/faults.py), `name=N@RANK`.

Every job here is 2 processes on 2 cores, so the jobs run one after another. The fault
and resume runs (10-40 s each) are marked `extended`: `.ci/run` runs them after the
README's test command, which keeps one DDP step, a whole 2-process run and the launch
checks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from yamlnet.runtime.checkpoint import load_checkpoint
from yamlnet.runtime.data import EpochSampler

from .conftest import SPECS

DIGITS = SPECS / "digits_cnn.yaml"
MLP = SPECS / "mlp.yaml"
LONG = pytest.mark.extended

TIMEOUT = 240


def yamlnet(cwd: Path, *args: str, faults: str | None = None, env: dict | None = None,
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess:  # fmt: skip
    full = {k: v for k, v in os.environ.items() if k not in ("YAMLNET_FAULTS", "RANK", "WORLD_SIZE")}
    full["OMP_NUM_THREADS"] = "1"
    if faults:
        full["YAMLNET_FAULTS"] = faults
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "yamlnet", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout)  # fmt: skip


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    """A run's last (or best) weights: its .safetensors file, or of a sharded run (which
    writes none), its sharded checkpoint read whole."""
    file = run / f"{name}.safetensors"
    return load_file(file) if file.exists() else load_checkpoint(run / "checkpoints" / f"{name}.dcp")["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_clean(out: str) -> None:
    assert "Traceback" not in out, out


# -- equivalence -----------------------------------------------------------------------

SGD = ("--set", "data.flatten=true", "--set", "dropout=0", "--set", "train.optimizer={name: SGD, lr: 0.5}", "--set", "train.scheduler=null",
       "--set", "train.max_steps=1", "--set", "train.val_every_n_epochs=null")  # fmt: skip


def initial_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    import yamlnet

    torch.manual_seed(seed)  # what `train` does before it builds the model
    module = yamlnet.compile(MLP, dropout=0)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_one_ddp_step_equals_one_step_on_the_global_batch(tmp_path):
    """2 ranks x batch 16 (DDP averages the gradients) == 1 process x batch 32."""
    two = yamlnet(tmp_path, "train", str(MLP), "--out", "two", "--nproc", "2", *SGD,
                  "--set", "data.batch_size=16")  # fmt: skip
    assert two.returncode == 0, two.stderr + two.stdout
    one = yamlnet(tmp_path, "train", str(MLP), "--out", "one", *SGD, "--set", "data.batch_size=32")
    assert one.returncode == 0, one.stderr + one.stdout
    w0, w1, w2 = initial_weights(), weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_diff(w1, w2) <= 1e-6
    # the gradients, recovered from plain SGD (w1 = w0 - lr * g): equal too, and not zero
    grads1 = {k: (w0[k] - w1[k]) / 0.5 for k in w0}
    grads2 = {k: (w0[k] - w2[k]) / 0.5 for k in w0}
    assert max_diff(grads1, grads2) <= 1e-6 / 0.5 * 2
    assert max(g.abs().max().item() for g in grads1.values()) > 1e-3


@LONG
def test_ranks_agree_on_a_checkpoint_by_rank_0s_clock(tmp_path):
    """checkpoint_every_n_minutes on 2 ranks: rank 0's clock decides and its answer rides
    with the step's all-reduce, so both ranks save at the same steps (a checkpoint is a
    collective: ranks that disagreed would hang)."""
    two = yamlnet(tmp_path, "train", str(MLP), "--out", "two", "--nproc", "2", *SGD,
                  "--set", "train.max_steps=4", "--set", "train.checkpoint_every_n_minutes=1e-9",
                  "--set", "train.keep_checkpoints=10", timeout=120)  # fmt: skip
    assert two.returncode == 0, two.stderr + two.stdout
    steps = sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step-*.pt"))
    assert steps == [f"step-{s:08d}.pt" for s in (1, 2, 3, 4)]


# -- a whole run ------------------------------------------------------------------------

RUN = ("--epochs", "2", "--set", "train.checkpoint_every_n_steps=5")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """digits_cnn on 2 processes (per-rank batch 32: the global batch of the 1-process
    run), and the 1-process run beside it."""
    cwd = tmp_path_factory.mktemp("ddp")
    two = yamlnet(cwd, "train", str(DIGITS), "--out", "two", "--nproc", "2", *RUN,
                  "--set", "data.batch_size=32")  # fmt: skip
    one = yamlnet(cwd, "train", str(DIGITS), "--out", "one", *RUN)
    return cwd, two, one


def metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_two_processes_reach_the_one_process_accuracy(ddp_run):
    cwd, two, one = ddp_run
    assert two.returncode == 0 and one.returncode == 0, two.stderr + two.stdout
    acc = [float(metrics(cwd / r)[-2]["val/accuracy"] or metrics(cwd / r)[-1]["val/accuracy"])
           for r in ("two", "one")]  # fmt: skip
    assert acc[1] > 0.9 and abs(acc[0] - acc[1]) < 0.04, acc


def test_two_processes_write_one_log_and_one_set_of_checkpoints(ddp_run):
    cwd, two, _ = ddp_run
    out = two.stdout + two.stderr
    assert_clean(out)
    assert "2 process(es)" in out and "batch 32 x 2 processes = 64 per step" in out
    for line in ("run two:", "finished at step 46", "epoch 1 step 23:", "epoch 2 step 46:"):
        assert out.count(line) == 1, (line, out)
    rows = metrics(cwd / "two")
    keys = [(r["step"], r["val/loss"] != "") for r in rows]
    assert len(keys) == len(set(keys))  # no row written twice
    files = sorted(p.name for p in (cwd / "two" / "checkpoints").iterdir())
    assert files == ["best.pt", "last.pt", "step-00000045.pt", "step-00000046.pt"]
    state = load_checkpoint(cwd / "two" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["model"].keys() == load_checkpoint(cwd / "one" / "checkpoints" / "last.pt")["model"].keys()


# -- faults ---------------------------------------------------------------------------


@LONG
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_stopped(ddp_run, tmp_path):
    """Rank 1 dies by SIGKILL after step 7; the launcher restarts both workers, which
    resume from step 5. In the restarted attempt rank 1 joins 3 s late, so rank 0 reads
    the store first: the case that hung before the store was prefixed by attempt."""
    cwd, two, _ = ddp_run
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", "--max-restarts", "1",
                  *RUN, "--set", "data.batch_size=32", "--set", "train.dist_timeout=60",
                  faults="kill_after_step=7@1,join_delay=3@1")  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "restart 1 of 1" in out and "resuming from" in out and "(step 5, epoch 1)" in out
    assert max_diff(weights(tmp_path / "run"), weights(cwd / "two")) == 0
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        load_checkpoint(path)  # every file verifies


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("YAMLNET_SLOW_DDP"), reason="restart repetitions: set YAMLNET_SLOW_DDP=1")
@pytest.mark.parametrize("attempt", range(5))
def test_restarts_are_reliable(tmp_path, attempt):
    """The restart above, again and again (it once hung under torchrun's agent store)."""
    t0 = time.monotonic()
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", "--max-restarts", "1",
                  *RUN, "--set", "train.dist_timeout=60",
                  faults=f"kill_after_step={5 + attempt}@{attempt % 2},join_delay={attempt % 3}@1")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "restart 1 of 1" in res.stdout and time.monotonic() - t0 < 120


@LONG
def test_a_killed_worker_without_restarts_stops_the_job_naming_it(tmp_path):
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", *RUN,
                  faults="kill_after_step=7@1")  # fmt: skip
    assert res.returncode == 128 + signal.SIGKILL, res.stderr
    # rank 0 notices the dead peer itself (exit 1), or, on a busy machine, the launcher's
    # SIGTERM reaches it first
    assert re.search(r"error: rank 1 \(pid \d+\) was killed by SIGKILL(; rank 0 \(pid \d+\) (exited with "
                     r"code 1|was killed by SIGTERM))?; the job stopped", res.stderr), res.stderr  # fmt: skip
    assert_clean(res.stdout + res.stderr)
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        load_checkpoint(path)


@LONG
def test_nan_on_one_rank_stops_every_rank_at_that_step_with_one_message(tmp_path):
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", *RUN,
                  faults="nan_at_step=8@1")  # fmt: skip
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("error: step 8 (epoch 1, batch 8, on rank 1): loss is nan; stopping")
    assert "the last good checkpoint is run/checkpoints/last.pt" in errors[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["position"]["step"] == 5


@LONG
def test_a_run_stopped_on_purpose_is_not_restarted(tmp_path):
    """A NaN stops the run (in the first attempt only: the fault does not fire again);
    the restarted workers find the run ended on purpose and do not train it on."""
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", "--max-restarts", "1",
                  *RUN, faults="nan_at_step=8@1")  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "loss is nan" in res.stderr and "not restarting: the run ended on purpose" in res.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["position"]["step"] == 5


@LONG
def test_sigterm_to_the_workers_stops_the_job_despite_restarts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "YAMLNET_FAULTS"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "yamlnet", "train", str(DIGITS), "--out", "run", "--nproc", "2",
           "--max-restarts", "2", "--epochs", "1000", "--set", "train.scheduler=null"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    csv_path = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and (not csv_path.exists() or len(csv_path.read_text().splitlines()) < 3):
        time.sleep(0.2)
    workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()  # fmt: skip
    assert len(workers) == 2
    for pid in workers:
        os.kill(int(pid), signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "not restarting: the run ended on purpose in the previous attempt (stopped by SIGTERM)" in stderr
    assert stdout.count("SIGTERM at step") == 1


@LONG
def test_a_hung_rank_is_caught_by_the_collective_timeout(tmp_path):
    t0 = time.monotonic()
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", *RUN,
                  "--set", "train.dist_timeout=20", faults="hang_after_step=7@1")  # fmt: skip
    # the timeout holds for every collective, the start's too: 20 s leaves a busy machine
    # room before step 8, where one rank hangs for good
    assert res.returncode == 1
    assert re.search(r"error: rank 0: step 8: no answer from the other processes within 20 s "
                     r"\(train.dist_timeout\)", res.stderr), res.stderr  # fmt: skip
    assert time.monotonic() - t0 < TIMEOUT  # caught, not hung


@LONG
def test_sigterm_to_the_launcher_saves_one_checkpoint_and_exits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "YAMLNET_FAULTS"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "yamlnet", "train", str(DIGITS), "--out", "run", "--nproc", "2",
           "--epochs", "1000", "--set", "train.checkpoint_every_n_steps=null",
           "--set", "train.checkpoint_every_n_epochs=null", "--set", "train.scheduler=null"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    csv_path = tmp_path / "run" / "metrics.csv"
    while time.monotonic() < deadline and (not csv_path.exists() or len(csv_path.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert (stdout + stderr).count("SIGTERM: saving a checkpoint") == 1
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert len(files) == 1, files  # saved once, at the step where all ranks stopped
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / files[0])
    assert f"SIGTERM at step {state['position']['step']}" in stdout


# -- ranks started by hand, as torchrun starts them ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(cwd: Path, args_by_rank, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    port = free_port()
    procs = []
    for rank, args in enumerate(args_by_rank):
        env = {k: v for k, v in os.environ.items() if k != "YAMLNET_FAULTS"}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "yamlnet", "train", *args], cwd=cwd,
                                      env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))  # fmt: skip
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


@LONG
def test_ranks_that_compiled_different_networks_refuse_to_train(tmp_path):
    base = [str(MLP), "--out", "run", "--max-steps", "2", "--set", "data.flatten=true"]
    (c0, out0), (c1, out1) = two_ranks(tmp_path, [base, [*base, "--set", "hidden=64"]])
    assert (c0, c1) == (2, 2), out0 + out1
    assert re.fullmatch(r"rank 1 has a different network \(graph hash\) than rank 0 \(\w{12} vs \w{12}\) "
                        r"\(every process must see the same spec, config and --set values\)\n", out0), out0  # fmt: skip
    assert out1 == ""  # rank 0 says it once


def test_torchrun_style_ranks_train(tmp_path):
    args = [str(MLP), "--out", "run", "--max-steps", "3", "--set", "data.flatten=true"]
    (c0, out0), (c1, out1) = two_ranks(tmp_path, [args, args])
    assert (c0, c1) == (0, 0), out0 + out1
    assert "max_steps at step 3" in out0 and out1 == ""
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["world_size"] == 2


# -- two nodes: torchrun agents with c10d rendezvous, as README.md's multi-node command ------


def two_nodes(cwd: Path, args: list[str], *, restarts: int = 0, faults: str | None = None,
              timeout: float = TIMEOUT) -> list[tuple[int, str]]:  # fmt: skip
    """Two torchrun agents on this machine, each a node of one process, meeting at a c10d
    rendezvous on localhost (the first to come hosts its store), both running
    `-m yamlnet train ARGS` in `cwd` (their shared file system)."""
    env = {k: v for k, v in os.environ.items() if k not in ("YAMLNET_FAULTS", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    if faults:
        env["YAMLNET_FAULTS"] = faults
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "yamlnet-test",
           "--max-restarts", str(restarts), "-m", "yamlnet", "train", *args]  # fmt: skip
    nodes = [subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]  # fmt: skip
    try:
        return [(node.wait(timeout=timeout), node.stdout.read()) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()


@LONG
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_train_as_two_local_processes(ddp_run, tmp_path, strategy):
    """README.md's multi-node command, with 2 agents of 1 process each: one metrics file,
    one set of checkpoints, and the weights of `--nproc 2` on one node (DDP), bitwise."""
    cwd, two, _ = ddp_run
    (c0, out0), (c1, out1) = two_nodes(tmp_path, [str(DIGITS), "--out", "run", *RUN, "--set", "data.batch_size=32",
                                                  "--set", f"train.strategy={strategy}"])  # fmt: skip
    assert (c0, c1) == (0, 0), out0 + out1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.csv")) == ["metrics.csv"]
    suffix = ".dcp" if strategy == "fsdp" else ".pt"  # a sharded run's checkpoints are folders
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        p.name.replace(".pt", suffix) for p in (cwd / "two" / "checkpoints").iterdir())  # fmt: skip
    assert load_checkpoint(run / "checkpoints" / f"last{suffix}")["world_size"] == 2
    assert max_diff(weights(run), weights(cwd / "two")) == 0


@LONG
def test_a_worker_killed_on_one_node_is_restarted_on_both(ddp_run, tmp_path):
    """Rank 1 (the second node's only process) dies by SIGKILL after step 7; with
    --max-restarts 1 both agents start their workers again, which resume from step 5 and
    end where the uninterrupted run ends."""
    cwd, two, _ = ddp_run
    (c0, out0), (c1, out1) = two_nodes(tmp_path, [str(DIGITS), "--out", "run", *RUN, "--set", "data.batch_size=32",
                                                  "--set", "train.dist_timeout=60"],
                                       restarts=1, faults="kill_after_step=7@1")  # fmt: skip
    assert (c0, c1) == (0, 0), out0 + out1
    assert "resuming from" in out0 + out1 and "(step 5, epoch 1)" in out0 + out1
    assert max_diff(weights(tmp_path / "run"), weights(cwd / "two")) == 0


# -- resuming with another number of processes ---------------------------------------------


@LONG
def test_resume_across_a_change_of_world_size(tmp_path):
    """2 processes -> 1 -> 2 (the global batch kept at 64 by the per-rank batch)."""
    common = ("--out", "run", "--set", "train.checkpoint_every_n_steps=5", "--set", "train.scheduler=null")
    a = yamlnet(tmp_path, "train", str(DIGITS), *common, "--nproc", "2", "--max-steps", "10",
                "--set", "data.batch_size=32")  # fmt: skip
    assert a.returncode == 0, a.stderr
    b = yamlnet(tmp_path, "train", str(DIGITS), *common, "--resume", "--max-steps", "30")
    assert b.returncode == 0, b.stderr + b.stdout
    assert "resuming from run/checkpoints/step-00000010.pt (step 10, epoch 1, 2 -> 1 processes)" in b.stdout
    c = yamlnet(tmp_path, "train", str(DIGITS), *common, "--resume", "--nproc", "2", "--max-steps", "40",
                "--set", "data.batch_size=32")  # fmt: skip
    assert c.returncode == 0, c.stderr + c.stdout
    assert "(step 30, epoch 2, 1 -> 2 processes)" in c.stdout
    assert "finished" not in c.stdout or "max_steps at step 40" in c.stdout
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["step"] == 40 and state["world_size"] == 2
    steps = [int(r["step"]) for r in metrics(tmp_path / "run") if r["train/loss"]]
    assert steps == sorted(steps) and steps[-1] == 40


def test_sampler_resumes_the_epoch_with_another_world_size():
    """After k global batches on W ranks, the samples left are the same on any W'."""
    n, batch = 37, 4
    seen = set()
    for rank in range(2):
        s = EpochSampler(n, shuffle=True, seed=1, rank=rank, world=2)
        s.set_epoch(3)
        seen |= {i for _, i in list(s)[: 2 * batch]}  # two batches on each of 2 ranks
    rest = set()
    for rank in range(3):
        s = EpochSampler(n, shuffle=True, seed=1, rank=rank, world=3)
        s.set_epoch(3, start=2 * batch * 2)
        rest |= {i for _, i in s}
    assert len(seen) == 16 and not seen & rest and seen | rest == set(range(n))


def test_validation_shards_do_not_repeat_samples():
    shards = []
    for rank in range(4):
        s = EpochSampler(10, shuffle=False, seed=0, rank=rank, world=4, pad=False)
        shards.append([i for _, i in s])
    assert sorted(sum(shards, [])) == list(range(10)) and [len(s) for s in shards] == [3, 3, 2, 2]


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "error: --nproc takes a number of processes >= 1"),
    (["--max-restarts", "1"], "error: --max-restarts takes a number >= 0, and needs --nproc"),
])  # fmt: skip
def test_bad_launch_options(tmp_path, args, message):
    res = yamlnet(tmp_path, "train", str(MLP), *args)
    assert res.returncode == 2 and res.stderr.strip() == message


def test_nproc_inside_a_launcher_is_refused(tmp_path):
    res = yamlnet(tmp_path, "train", str(MLP), "--nproc", "2", env={"TORCHELASTIC_RUN_ID": "x"})
    assert res.returncode == 2
    assert res.stderr.startswith("--nproc cannot be used inside torchrun or another launcher")


def test_a_spec_error_is_reported_once_before_any_worker_starts(tmp_path):
    res = yamlnet(tmp_path, "train", str(MLP), "--nproc", "2", "--set", "train.optimizer.lrr=1",
                  "--set", "data.flatten=true")  # fmt: skip
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and "did you mean lr" in res.stderr
    assert not (tmp_path / "runs").exists()


# -- CUDA / NCCL ----------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)")
def test_two_gpus_with_nccl(tmp_path):
    res = yamlnet(tmp_path, "train", str(DIGITS), "--out", "run", "--nproc", "2", "--device", "cuda",
                  "--max-steps", "20")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "device cuda:0" in res.stdout and "2 process(es)" in res.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["world_size"] == 2
