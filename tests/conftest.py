"""Shared fixtures. Tests run on CPU; GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import os
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
