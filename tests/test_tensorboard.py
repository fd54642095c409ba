"""The event-file writer, checked against TensorBoard's own readers as the oracle."""

from __future__ import annotations

import math
import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest
from yamlnet.runtime import tensorboard as tb
from yamlnet.runtime.tensorboard import EventWriter, crc32c


@pytest.fixture
def oracle():
    """TensorBoard itself; only the tests that read files back need it."""
    return pytest.importorskip("tensorboard")


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def strict_records(path) -> list[bytes]:
    """Every record in `path`; raises on any CRC or framing error.

    EventFileLoader swallows a bad record by stopping quietly, which would hide
    a broken CRC as missing data; the stub record reader under it raises.
    """
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    reader = PyRecordReader_New(os.fspath(path))
    records = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return records
        records.append(reader.record())


def strict_events(path):
    from tensorboard.compat.proto.event_pb2 import Event

    return [Event.FromString(r) for r in strict_records(path)]


def accumulate(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.fspath(log_dir), size_guidance={"scalars": 0})  # 0 keeps all
    acc.Reload()
    return acc


# --- CRC32C and framing ---------------------------------------------------------


def test_crc32c_known_answers():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 (iSCSI) test vectors.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_crc32c_matches_tensorboard(oracle):
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as pw

    data = os.urandom(4096)
    for n in (0, 1, 7, 64, 4096):
        assert crc32c(data[:n]) == pw.crc32c(data[:n])
        assert tb._masked_crc(data[:n]) == struct.pack("<I", pw.masked_crc32c(data[:n]))


@pytest.mark.parametrize(
    "value, encoded",
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")],
)
def test_varint(value, encoded):
    assert tb._varint(value) == encoded


def test_varint_int64_max_is_nine_bytes():
    assert tb._varint(2**63 - 1) == b"\xff" * 8 + b"\x7f"


# --- the file -------------------------------------------------------------------


def test_file_name_and_log_dir_created(tmp_path):
    log_dir = tmp_path / "runs" / "a"
    before = int(time.time())
    with EventWriter(log_dir, filename_suffix=".v2") as w:
        pass
    name = os.path.basename(w.path)
    m = re.fullmatch(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.v2", name)
    assert m, name
    assert before <= int(m[1]) <= time.time()
    assert m[2] == socket.gethostname()
    assert int(m[3]) == os.getpid()
    assert os.path.dirname(w.path) == str(log_dir)
    assert os.listdir(log_dir) == [name]


def test_first_record_is_file_version(tmp_path, oracle):
    before = time.time()
    with EventWriter(tmp_path) as w:
        w.add_scalar("loss", 1.0, step=1)
    events = strict_events(w.path)
    first = events[0]
    assert first.file_version == "brain.Event:2"
    assert before <= first.wall_time <= time.time()
    assert not first.HasField("summary")
    assert accumulate(tmp_path).file_version == 2.0


def test_header_is_on_disk_before_any_flush(tmp_path, oracle):
    w = EventWriter(tmp_path)
    try:
        assert [e.file_version for e in strict_events(w.path)] == ["brain.Event:2"]
    finally:
        w.close()


# --- scalars --------------------------------------------------------------------


def test_scalar_tag_step_value_wall_time(tmp_path, oracle):
    with EventWriter(tmp_path) as w:
        w.add_scalar("train/loss", 0.1, step=0, wall_time=1_700_000_000.25)
        w.add_scalar("train/loss", 2.5, step=7, wall_time=1_700_000_001.5)
    acc = accumulate(tmp_path)
    assert acc.Tags()["scalars"] == ["train/loss"]
    got = [(s.wall_time, s.step, s.value) for s in acc.Scalars("train/loss")]
    assert got == [(1_700_000_000.25, 0, f32(0.1)), (1_700_000_001.5, 7, 2.5)]


def test_raw_event_fields(tmp_path, oracle):
    with EventWriter(tmp_path) as w:
        w.add_scalar("acc", 1 / 3, step=2**40, wall_time=12.5)
    event = strict_events(w.path)[1]
    assert (event.wall_time, event.step, event.file_version) == (12.5, 2**40, "")
    [value] = event.summary.value
    assert value.tag == "acc"
    assert value.WhichOneof("value") == "simple_value"
    assert value.simple_value == f32(1 / 3)


def test_default_wall_time_is_now(tmp_path, oracle):
    before = time.time()
    with EventWriter(tmp_path) as w:
        w.add_scalar("x", 1.0, step=1)
    [s] = accumulate(tmp_path).Scalars("x")
    assert before <= s.wall_time <= time.time()


def test_several_tags_interleaved(tmp_path, oracle):
    tags = ["loss", "lr", "val/acc", "grad norm", "ünïcødé/标签"]
    with EventWriter(tmp_path) as w:
        for step in range(20):
            for i, tag in enumerate(tags):
                w.add_scalar(tag, step * 10.0 + i, step=step, wall_time=1000.0 + step)
    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted(tags)
    for i, tag in enumerate(tags):
        got = [(s.wall_time, s.step, s.value) for s in acc.Scalars(tag)]
        assert got == [(1000.0 + step, step, step * 10.0 + i) for step in range(20)]


def test_many_records_all_pass_crc(tmp_path, oracle):
    n = 5000
    with EventWriter(tmp_path) as w:
        for step in range(n):
            w.add_scalar("loss", math.sin(step) * 1e3, step=step, wall_time=float(step))
    assert len(strict_records(w.path)) == n + 1
    scalars = accumulate(tmp_path).Scalars("loss")
    assert [s.step for s in scalars] == list(range(n))
    assert [s.value for s in scalars] == [f32(math.sin(k) * 1e3) for k in range(n)]


@pytest.mark.parametrize(
    "value, expected",
    [
        (math.inf, math.inf),
        (-math.inf, -math.inf),
        (1e300, math.inf),  # beyond float32: overflows like a C cast
        (-1e300, -math.inf),
        (1e-45, f32(1e-45)),  # float32 subnormal
        (-0.0, -0.0),
        (True, 1.0),
    ],
)
def test_special_values(tmp_path, oracle, value, expected):
    with EventWriter(tmp_path) as w:
        w.add_scalar("v", value, step=1)
    [s] = accumulate(tmp_path).Scalars("v")
    assert s.value == expected
    assert math.copysign(1, s.value) == math.copysign(1, expected)


def test_nan(tmp_path, oracle):
    with EventWriter(tmp_path) as w:
        w.add_scalar("v", math.nan, step=1)
    [s] = accumulate(tmp_path).Scalars("v")
    assert math.isnan(s.value)


# --- flushing and closing -------------------------------------------------------


def test_flush_then_read_while_open(tmp_path, oracle):
    w = EventWriter(tmp_path)
    try:
        w.add_scalar("loss", 1.0, step=1)
        assert len(strict_records(w.path)) == 1  # buffered: only the header so far
        w.flush()
        assert [s.step for s in accumulate(tmp_path).Scalars("loss")] == [1]
        w.add_scalar("loss", 2.0, step=2)
        w.flush()
        assert [s.step for s in accumulate(tmp_path).Scalars("loss")] == [1, 2]
        assert not w.closed
    finally:
        w.close()


def test_large_buffer_flushes_itself(tmp_path, oracle, monkeypatch):
    monkeypatch.setattr(tb, "_AUTO_FLUSH_BYTES", 500)
    w = EventWriter(tmp_path)
    try:
        for step in range(100):
            w.add_scalar("loss", 1.0, step=step)
        on_disk = len(strict_records(w.path)) - 1
        assert 0 < on_disk < 100
    finally:
        w.close()
    assert len(strict_records(w.path)) == 101


def test_close_is_idempotent_and_final(tmp_path, oracle):
    w = EventWriter(tmp_path)
    w.add_scalar("loss", 1.0, step=1)
    w.close()
    w.close()
    w.flush()  # harmless once closed
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.add_scalar("loss", 2.0, step=2)
    assert [s.value for s in accumulate(tmp_path).Scalars("loss")] == [1.0]


def test_context_manager_closes_on_error(tmp_path, oracle):
    with pytest.raises(RuntimeError), EventWriter(tmp_path) as w:
        w.add_scalar("loss", 3.0, step=4)
        raise RuntimeError
    assert w.closed
    assert [s.step for s in accumulate(tmp_path).Scalars("loss")] == [4]


def test_tampered_byte_fails_the_oracle(tmp_path, oracle):
    """The strict reader really checks CRCs, so the tests above mean something."""
    from tensorboard.compat.tensorflow_stub import errors

    with EventWriter(tmp_path) as w:
        w.add_scalar("loss", 1.0, step=1)
    data = bytearray(open(w.path, "rb").read())
    data[-6] ^= 0x01  # inside the last record's data
    with open(w.path, "wb") as f:
        f.write(data)
    with pytest.raises(errors.DataLossError, match="crc"):
        strict_records(w.path)


# --- refusals -------------------------------------------------------------------


@pytest.mark.parametrize("step", [-1, 2**63])
def test_step_out_of_range(tmp_path, step):
    with EventWriter(tmp_path) as w, pytest.raises(ValueError, match="step"):
        w.add_scalar("loss", 1.0, step=step)


@pytest.mark.parametrize("step", [1.5, "3", None])
def test_step_must_be_an_integer(tmp_path, step):
    with EventWriter(tmp_path) as w, pytest.raises(TypeError):
        w.add_scalar("loss", 1.0, step=step)


def test_tag_must_be_a_str(tmp_path):
    with EventWriter(tmp_path) as w, pytest.raises(TypeError, match="tag"):
        w.add_scalar(b"loss", 1.0, step=1)


# --- dependencies ---------------------------------------------------------------


def test_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\n"
        "from yamlnet.runtime.tensorboard import EventWriter\n"
        f"with EventWriter({str(tmp_path)!r}) as w:\n"
        "    w.add_scalar('loss', 1.0, step=1)\n"
        "heavy = ('torch', 'tensorboard', 'google.protobuf', 'numpy')\n"
        "print(sorted(m for m in sys.modules for h in heavy if m == h or m.startswith(h + '.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"
