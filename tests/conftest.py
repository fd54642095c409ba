"""Shared fixtures. Tests run on CPU; GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import contextlib
import os
import signal
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
