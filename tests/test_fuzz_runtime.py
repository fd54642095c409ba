"""Property-based fuzzing past the spec loader: run configurations, CSV and NPZ data files,
and checkpoint payloads. The promise checked is the one the compiler's fuzzing checks for
specs: the runtime either accepts the input or raises the project's own error
(`SpecError`, of which `ConfigError` and `CheckpointError` are kinds), located, in
bounded time. No TypeError, KeyError, ZeroDivisionError, BadZipFile, ... may escape.

The budget is small and derandomized, so CI is stable; each example also runs under a
time limit that turns a hang into a failure.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yamlnet.compiler.errors import SpecError
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from yamlnet.runtime.config import load_run_config
from yamlnet.runtime.data import build_splits
from yamlnet.runtime.optim import build_loss, build_optimizer, check_schedule

from .conftest import SPECS, time_limit

LIMIT_S = 20  # per example: a guard against hangs only
BUDGET = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])  # fmt: skip
DIGITS = yaml.safe_load((SPECS / "digits_cnn.yaml").read_text())

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 10**9])
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e3, 1e300, -0.0, 0.5])
    | st.text(max_size=12) | st.sampled_from(["", "name", "AdamW", "StepLR", "CrossEntropyLoss", "digits",
                                             "tensors", "../x", "${x}", "nan", "step", "epoch"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _mutate(section: dict, draw_key, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(section))
    keys = list(out) + ["name", "lr", "step_size", "total_steps", "warmup_steps", "interval", "gamma"]
    key = keys[draw_key % len(keys)]
    target = out
    if isinstance(out.get(key), dict) and draw_key % 2:  # sometimes one level down
        target = out[key]
        key = (list(target) or ["name"])[draw_key % max(1, len(target))]
    target[key] = value
    return out


@BUDGET
@given(st.sampled_from(["data", "train"]), st.integers(0, 10**6), junk)
def test_run_configs_are_accepted_or_refused_in_our_words(section, draw_key, value):
    spec = {k: v for k, v in DIGITS.items() if k not in ("data", "train")}
    spec["data"], spec["train"] = DIGITS["data"], DIGITS["train"]
    spec[section] = _mutate(DIGITS[section], draw_key, value)
    try:
        text = yaml.safe_dump(spec)
    except yaml.YAMLError:
        return
    with time_limit(LIMIT_S):
        try:
            cfg = load_run_config(load_spec_source(text).main, None, None)
            tcfg = cfg.train
            params = [torch.nn.Parameter(torch.zeros(2))]
            build_optimizer(tcfg["optimizer"], params)
            check_schedule(tcfg["scheduler"], tcfg["optimizer"], steps_per_epoch=23, total_steps=230)
            for item in tcfg["loss"] if isinstance(tcfg["loss"], list) else [tcfg["loss"]]:
                item = {"name": item} if isinstance(item, str) else item
                build_loss({k: v for k, v in item.items() if k not in ("output", "target", "loss_weight",
                                                                         "class_dim", "label")})  # fmt: skip
        except SpecError as err:
            assert str(err).strip(), "an error without words"


def _tensors_config(tmp_path, name: str) -> dict:
    text = f"yamlnet: 1\ndata: {{dataset: tensors, train: {name}, val_fraction: 0.25}}\n"
    return load_run_config(load_spec_source(text).main, None, None).data


csv_text = st.lists(
    st.lists(st.sampled_from(["1", "0", "2.5", "-3", "1e300", "nan", "inf", "", "red", "blue", "\"a,b\"",
                              "x", "y", "1e3", "  7 ", "9" * 30]), min_size=1, max_size=4),
    min_size=0, max_size=8,
)  # fmt: skip


@BUDGET
@given(csv_text, st.booleans())
def test_csv_files_are_read_or_refused_in_our_words(tmp_path, rows, header):
    lines = ([",".join(f"c{i}" for i in range(len(rows[0])))] if header and rows else []) + [",".join(r) for r in rows]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with time_limit(LIMIT_S):
        try:
            splits = build_splits(_tensors_config(tmp_path, str(tmp_path / "d.csv")))
        except SpecError:
            return
    for sample in (splits.train[i] for i in range(len(splits.train))):
        assert all(isinstance(v, torch.Tensor) for v in sample.values())


arrays = st.sampled_from([
    np.zeros((4, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(4, np.float32), np.float32(1.0),
    np.array(["a", "b", "c", "d"]), np.zeros((4, 3), np.complex64), np.zeros((4, 3), bool),
    np.array([1e300, -1e300, np.nan, np.inf]), np.array([0, 1, 2, 10**12], np.int64), np.zeros((5, 3), np.float16),
    np.zeros((4, 2, 2), np.uint8), np.array([-1, 0, 1, 2], np.int64),
])  # fmt: skip


@BUDGET
@given(arrays, arrays, st.sampled_from(["x", "X", "inputs"]), st.integers(0, 4))
def test_npz_files_are_read_or_refused_in_our_words(tmp_path, x, y, x_name, cut):
    buf = io.BytesIO()
    np.savez(buf, **{x_name: x, "y": y})
    data = buf.getvalue()
    if cut:  # truncated, or a byte flipped
        data = data[: len(data) * cut // 5] if cut < 3 else data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
    (tmp_path / "d.npz").write_bytes(data)
    with time_limit(LIMIT_S):
        try:
            build_splits(_tensors_config(tmp_path, str(tmp_path / "d.npz")))
        except SpecError:
            return


payload_values = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(max_size=5) | st.sampled_from([
        torch.zeros(2), torch.zeros(1).expand(10**9), torch.zeros(3, 3).t(), torch.tensor(math.nan)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["model", "optimizer", "position", "spec", "rng", "checksum", "format", "version", "w"]), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip


@settings(BUDGET, max_examples=40 if not os.environ.get("YAMLNET_SLOW_FUZZ") else 400)  # 0.4 s each
@given(payload_values, st.booleans())
def test_checkpoint_payloads_are_loaded_or_refused_in_our_words(tmp_path, value, ours):
    path = tmp_path / "c.pt"
    if ours:  # what save_checkpoint writes around any content: a valid checksum
        try:
            save_checkpoint({"model": value}, path)
        except (RuntimeError, ValueError, TypeError):  # torch cannot save it: nothing to read
            return
    else:
        torch.save({"format": FORMAT, "version": VERSION, "checksum": "crc32:0", "model": value}, path)
    with time_limit(LIMIT_S):
        try:
            load_checkpoint(path)
        except SpecError:
            return


def test_the_fuzzers_reach_both_outcomes(tmp_path):
    """The strategies are not all refused: a clean CSV and a clean checkpoint load."""
    (tmp_path / "d.csv").write_text("a,b\n1,0\n2,1\n3,0\n4,1\n")
    assert len(build_splits(_tensors_config(tmp_path, str(tmp_path / "d.csv"))).train) == 3
    save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.zeros(2))
    with pytest.raises(SpecError):
        load_checkpoint(tmp_path / "d.csv")
