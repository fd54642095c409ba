"""Shared fixtures. Tests run on CPU; GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def all_specs() -> list[Path]:
    """Every spec file under specs/ (the zoo included), for parametrized tests."""
    return sorted(p for p in SPECS.rglob("*.yaml") if p.is_file())


@pytest.fixture(autouse=True)
def _restore_environ():
    """Tests may set environment variables; put them back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def seed():
    import torch

    torch.manual_seed(0)
    return 0


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Hang(BaseException):  # not Exception: the compiler under test may catch those
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt the block with `Hang` after `seconds` (SIGALRM, POSIX main thread;
    elsewhere a no-op), so a hang fails one test instead of stalling the suite."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):
        raise Hang(f"did not finish in {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- a refusal measured in a child process ------------------------------------------------


@dataclasses.dataclass
class Child:
    """What a function run by `in_child` did: its return value as an exit code (None if
    it was killed for running past the limit), what it printed, and what it cost."""

    rc: int | None
    out: str
    err: str
    cpu_s: float  # user + system time of the child alone
    extra_mb: float  # its peak resident memory above what it started with


def in_child(fn, *args, limit_s: float = 120.0, watch=None) -> Child:
    """Run `fn(*args)` in a child process and measure it from outside: CPU seconds and
    peak memory from the kernel's accounting of that child (wait4), so one case's cost
    is not hidden by what the test process did before. The child is forked from a
    zygote: a copy of this process made when the tests started, with torch and yamlnet
    imported and nothing run yet (a fork of a process whose autograd or OpenMP threads
    have run cannot train). `fn` and `args` travel by pickle (a module-level function,
    a partial); the child takes this process's current folder and environment. It runs
    torch on one thread. An exception escaping `fn` is written to `err` as a traceback,
    with rc -1; past `limit_s` the child is killed and rc is None. `watch()`, if given,
    is called here every 20 ms while the child runs (to change the world under it)."""
    import time

    if _ZYGOTE is None:
        pytest.skip("measuring a child needs fork and /proc (Linux)")
    conn = _ZYGOTE
    conn.send((fn, args, os.getcwd(), dict(os.environ), limit_s))
    deadline = time.monotonic() + limit_s + 60  # the zygote enforces limit_s; this is its own guard
    while not conn.poll(0.02):
        if watch is not None:
            watch()
        if time.monotonic() > deadline:
            raise RuntimeError("the zygote process does not answer")
    return conn.recv()


def _start_zygote():
    """Fork the zygote now, at conftest import, before any test has run torch."""
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        return None
    import multiprocessing.connection  # noqa: F401 - Pipe below
    from multiprocessing import Pipe

    import torch  # noqa: F401 - imported once, in the zygote too
    import torchmetrics  # noqa: F401
    import torchvision  # noqa: F401

    import yamlnet.cli  # noqa: F401

    ours, theirs = Pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ours.close()
            _zygote_loop(theirs)
        except BaseException:  # noqa: BLE001 - EOF: the test process is gone
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    return ours


def _zygote_loop(conn) -> None:
    while True:
        try:
            fn, args, cwd, env, limit_s = conn.recv()
        except EOFError:
            return
        conn.send(_run_child(fn, args, cwd, env, limit_s))


def _run_child(fn, args, cwd, env, limit_s) -> Child:
    import json
    import tempfile
    import time
    import traceback

    with tempfile.TemporaryDirectory(prefix="yamlnet-child-") as tmp:
        out_path, err_path, result_path = (os.path.join(tmp, n) for n in ("out", "err", "result"))
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                import torch

                torch.set_num_threads(1)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                start_mb = _resident_mb()
                out = open(out_path, "w", encoding="utf-8")  # noqa: SIM115 - flushed below; _exit closes
                err = open(err_path, "w", encoding="utf-8")  # noqa: SIM115
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = out, err
                try:
                    rc = fn(*args)
                except BaseException:  # noqa: BLE001 - reported to the parent as rc -1
                    traceback.print_exc(file=err)
                    rc = -1
                out.flush()
                err.flush()
                with open(result_path, "w", encoding="utf-8") as f:
                    json.dump({"rc": rc if isinstance(rc, int) else -1, "start_mb": start_mb}, f)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + limit_s
        killed = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                done, status, usage = os.wait4(pid, 0)
                killed = True
                break
            time.sleep(0.01)
        read = lambda p: Path(p).read_text(encoding="utf-8", errors="replace") if os.path.exists(p) else ""  # noqa: E731
        result = json.loads(read(result_path) or "{}")
        rc = result.get("rc")
        if rc is None and not killed and os.WIFSIGNALED(status):
            rc = -os.WTERMSIG(status)  # killed by something else (the OOM killer)
        return Child(rc, read(out_path), read(err_path), usage.ru_utime + usage.ru_stime,
                     usage.ru_maxrss / 1024 - result.get("start_mb", 0.0))  # fmt: skip


def _resident_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_ZYGOTE = _start_zygote()
