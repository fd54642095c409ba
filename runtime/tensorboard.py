"""A TensorBoard event-file writer for scalars, in pure standard-library Python.

`EventWriter` writes the files TensorBoard reads (``events.out.tfevents.*``):
a sequence of TFRecord-framed ``Event`` protocol buffers, the first carrying
``file_version: "brain.Event:2"``. The protobufs and the CRC32C checksums are
encoded here by hand, so logging needs neither torch, tensorboard nor protobuf.

Limits: scalars only (``Summary.Value.simple_value``, a float32). There are no
histograms, images, text, hparams or graphs, no summary metadata, and no remote
file systems: ``log_dir`` is a local path. Steps must lie in [0, 2**63).
"""

from __future__ import annotations

import math
import operator
import os
import socket
import struct
import time

__all__ = ["EventWriter", "crc32c"]

_FILE_VERSION = "brain.Event:2"
# Write out on our own past this much buffered data, so a writer that is never
# flushed cannot grow without bound; 1 MiB is some 30,000 scalar records.
_AUTO_FLUSH_BYTES = 1 << 20
_INT64_MAX = 2**63 - 1

# Protobuf wire types (the low three bits of a field key).
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


# --- CRC32C (Castagnoli) ------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    """The 256-entry lookup table for the reflected polynomial 0x82F63B78."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            # Reflected form: shift right, fold the polynomial in on a carried-out 1.
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """The CRC32C of `data` (not zlib's CRC32: TFRecord uses the Castagnoli one)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    """The TFRecord checksum of `data`, packed as a little-endian uint32.

    TFRecord rotates and offsets the CRC because a CRC stored next to the data
    it covers is a weak check when that data itself contains CRCs.
    """
    crc = crc32c(data)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return struct.pack("<I", masked)


def _frame(record: bytes) -> bytes:
    """`record` as one TFRecord: length, length's CRC, data, data's CRC."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


# --- protobuf encoding ----------------------------------------------------------


def _varint(value: int) -> bytes:
    """Base-128 varint, low groups first; only non-negative values arrive here."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field: strings and embedded messages alike."""
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    """`value` as a little-endian float32, overflowing to ±inf as a C cast would."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        # struct refuses finite doubles beyond float32's range; TensorBoard's own
        # writers store those as infinities, so do the same.
        return struct.pack("<f", math.copysign(math.inf, value))


def _scalar_summary(tag: str, value: float) -> bytes:
    """Summary { value { tag: tag, simple_value: value } }, encoded."""
    summary_value = _bytes_field(1, tag.encode("utf-8")) + _key(2, _FIXED32) + _float32(value)
    return _bytes_field(1, summary_value)


def _event(wall_time: float, step: int = 0, file_version: str = "", summary: bytes = b"") -> bytes:
    """An encoded Event; like proto3, fields left at their defaults are omitted."""
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, _VARINT) + _varint(step)
    if file_version:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if summary:
        out += _bytes_field(5, summary)
    return out


def _check_step(step: int) -> int:
    # operator.index accepts ints and numpy/torch integers but refuses floats,
    # which would otherwise be truncated silently.
    step = operator.index(step)
    if not 0 <= step <= _INT64_MAX:
        raise ValueError(f"step must lie in [0, 2**63), got {step}")
    return step


# --- the writer -----------------------------------------------------------------


def _event_file_name(filename_suffix: str) -> str:
    """TensorBoard's own naming, so its tools recognize and order the files."""
    host = socket.gethostname()
    return f"events.out.tfevents.{int(time.time())}.{host}.{os.getpid()}{filename_suffix}"


class EventWriter:
    """Writes scalars to a TensorBoard event file in `log_dir` (created if missing).

    Records are buffered in memory; `flush` (or `close`, or leaving a ``with``
    block) appends them to the file, and past about 1 MiB they go out on their own.
    """

    def __init__(self, log_dir: str | os.PathLike, filename_suffix: str = "") -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(os.fspath(log_dir), _event_file_name(filename_suffix))
        # Kept open for the writer's life (closed by close()); append, never truncate.
        self._file = open(self.path, "ab")
        self._buffer: list[bytes] = []
        self._buffered = 0
        # The version record goes to disk at once, so the file is valid, and
        # TensorBoard lists the run, even before the first scalar is flushed.
        self._append(_event(time.time(), file_version=_FILE_VERSION))
        self.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Buffer one scalar; `value` is stored as float32, as TensorBoard does."""
        if self.closed:
            raise ValueError("add_scalar on a closed EventWriter")
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a str, got {type(tag).__name__}")
        step = _check_step(step)
        # float() converts numpy scalars and 0-d tensors without importing either.
        summary = _scalar_summary(tag, float(value))
        when = time.time() if wall_time is None else float(wall_time)
        self._append(_event(when, step=step, summary=summary))

    def flush(self) -> None:
        """Append every buffered record to the file; no fsync."""
        if self.closed or not self._buffer:
            return
        # One write of whole records: two writers that land on the same file
        # name (same second, host and pid) then interleave records, not bytes,
        # as far as the OS keeps each append together.
        self._file.write(b"".join(self._buffer))
        self._file.flush()
        self._buffer.clear()
        self._buffered = 0

    def close(self) -> None:
        """Flush and close the file; calling it again does nothing."""
        if self.closed:
            return
        self.flush()
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, event: bytes) -> None:
        record = _frame(event)
        self._buffer.append(record)
        self._buffered += len(record)
        if self._buffered >= _AUTO_FLUSH_BYTES:
            self.flush()
