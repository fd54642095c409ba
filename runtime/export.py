"""Export a compiled spec for deployment — ONNX, TorchScript or a torch.export archive
(.pt2) — with metadata in the artifact, verified by default in a fresh process against
the eager model's outputs at several batch sizes.

One exporter per format, registered in `EXPORTERS`. Every exporter mode is pinned
explicitly (ONNX: `dynamo=True` with `dynamic_shapes`, or the legacy TorchScript-based
exporter only when asked), never left to a library default. Symbolic dims of the spec's
inputs (`N`, `T`, `H`...) stay dynamic in the artifact.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compiler.codegen import eval_module
from ..compiler.compile import Compiled, compile_spec
from ..compiler.errors import did_you_mean
from ..compiler.load import load_spec_source
from . import package_version
from .checkpoint import _nearly_full, atomic_write
from .errors import ConfigError

__all__ = ["export", "ExportResult", "Check", "EXPORTERS", "FORMATS", "VERIFY_BATCHES"]

VERIFY_BATCHES = (1, 2, 5)  # 5: a size never used while exporting
TS_DEPRECATION = ("note: TorchScript is deprecated upstream; it keeps working here, but "
                  "prefer --format pt2 or onnx")  # fmt: skip


class ExportError(Exception):
    """An exporter could not handle the model (exit 1): the message names the spec node
    when it can be found."""


@dataclass(frozen=True)
class Check:
    """One verified output at one batch size."""

    output: str
    batch: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    metadata: dict
    seconds: float
    checks: list[Check] = field(default_factory=list)  # empty when not verified

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def export(spec: str | os.PathLike, *, format: str, out: str | os.PathLike | None = None,
           checkpoint: str | os.PathLike | None = None, verify: bool = True, opset: int = 18,
           onnx_exporter: str = "dynamo", trace: bool = False, atol: float = 1e-5,
           rtol: float = 1e-4, dims: dict[str, int] | None = None, static: tuple[str, ...] = (),
           plugins=(), **overrides: Any) -> ExportResult:  # fmt: skip
    """Export `spec` (freshly initialised, or with a checkpoint's weights) to `format`.

        >>> r = yamlnet.export("specs/resnet18.yaml", format="onnx")  # doctest: +SKIP
        >>> r.path, r.ok                                              # doctest: +SKIP
    """
    if format not in EXPORTERS:
        raise ConfigError(f"unknown format '{format}'", hint="use " + ", ".join(FORMATS))
    check_options(format, out, opset, onnx_exporter, atol, rtol)
    compiled, ckpt, state = _model(spec, checkpoint, plugins, overrides)
    check_symbols(compiled, dims or {}, static)
    model = eval_module(compiled.module)  # without train outputs, if the spec has any
    examples = example_inputs(compiled, dims or {}, batch=2)
    fixed = {name: _size(name, 1, dims or {}, 2) for name in static}  # symbol -> its size
    meta = metadata(compiled, ckpt, fixed, state)
    path = Path(out or f"{compiled.spec.name}.{SUFFIX[format]}")
    t0 = time.perf_counter()
    options = {"opset": opset, "onnx_exporter": onnx_exporter, "trace": trace, "static": fixed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters warn at length; failures raise
        try:
            EXPORTERS[format](model, examples, compiled, path, meta, options)
        except OSError as err:  # the disk, not the model: a full disk, a vanished folder
            _remove_partial(path)
            raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as err:
            if _nearly_full(path.parent):  # the ONNX writer's words for a full disk
                _remove_partial(path)
                raise ConfigError(f"cannot write {path}: no space left on the disk") from None
            raise ExportError(_explain(err, compiled, format)) from err
    seconds = time.perf_counter() - t0
    checks = verify_artifact(path, format, model, compiled, dims or {}, atol, rtol) if verify else []
    return ExportResult(path, format, meta, seconds, checks)


def opset_range(onnx_exporter: str) -> tuple[int, int]:
    """The ONNX opsets torch's exporter writes: from 18 with the dynamo exporter (it
    quietly writes 18 for anything older), 7-20 with the TorchScript one."""
    try:
        from torch.onnx import _constants as c

        top, legacy_top, low = c.ONNX_MAX_OPSET, c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, c.ONNX_MIN_OPSET
    except (ImportError, AttributeError):  # a torch without the table: its long-standing values
        top, legacy_top, low = 23, 20, 7
    return (18, top) if onnx_exporter == "dynamo" else (low, legacy_top)


def check_options(format: str, out, opset: int, onnx_exporter: str, atol: float, rtol: float) -> None:
    """The flags, checked before any work: an opset the exporter writes, finite
    non-negative tolerances, and an --out that can be written (its folder exists, it is
    not a folder itself)."""
    if format == "onnx":
        low, high = opset_range(onnx_exporter)
        if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
            raise ConfigError(f"--opset {opset}: the {onnx_exporter} ONNX exporter writes opsets {low} to {high}",
                              hint=f"the default is 18{'' if onnx_exporter == 'dynamo' else '; or --onnx-exporter dynamo'}")  # fmt: skip
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ConfigError(f"{name} {value}: a tolerance is a finite number >= 0")
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder", hint="name the file to write, e.g. --out model.onnx")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: no folder {folder}", hint="create it first")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {folder} (permission denied)")
    if path.exists() and not path.is_file():
        raise ConfigError(f"--out {out} is not a regular file (a device or a FIFO)",
                          hint="name a file to write")  # fmt: skip


def check_symbols(compiled: Compiled, dims: dict[str, int], static) -> None:
    """--dim and --static name symbols of the spec's inputs; an unknown one is a typo."""
    known = sorted({d for i in compiled.spec.inputs for d in i.shape if isinstance(d, str)})
    for flag, names in (("--dim", dims), ("--static", static)):
        for name in names:
            if name not in known:
                hint = did_you_mean(name, known) or ("symbols: " + ", ".join(known) if known
                                                     else "the spec's inputs have no symbolic dims")  # fmt: skip
                raise ConfigError(f"{flag} {name}: the spec's inputs have no symbol '{name}'", hint=hint)


def _model(spec, checkpoint, plugins, overrides) -> tuple[Compiled, str | None, dict]:
    """The compiled spec, with a checkpoint's (or a weights file's) variables and weights
    when given, and the checkpoint's content."""
    if checkpoint is None:
        torch.manual_seed(0)
        source = load_spec_source(Path(spec))
        return compile_spec(source, dict(overrides), plugins=tuple(plugins)), None, {}
    from .evaluate import compile_checkpoint, resolve_checkpoint

    path, state = resolve_checkpoint(checkpoint)
    source = load_spec_source(Path(spec))
    return compile_checkpoint(source, path, state, dict(overrides), plugins), str(path), state


MAX_EXAMPLE = 2**28  # values in one example input (1 GiB of float32)


def example_inputs(compiled: Compiled, dims: dict[str, int], batch: int) -> tuple[torch.Tensor, ...]:
    """Random inputs of the spec's shapes: the first dim of each input (the batch) is
    `batch`, other symbolic dims come from `dims` (default 16)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for inp in compiled.spec.inputs:
        shape = [_size(d, i, dims, batch) for i, d in enumerate(inp.shape)]
        if math.prod(shape) > MAX_EXAMPLE:
            raise ConfigError(f"the example input '{inp.name}' would be {shape}: more than {MAX_EXAMPLE:,} values",
                              hint="export traces one small example; smaller --dim sizes give the same program")  # fmt: skip
        dtype = getattr(torch, inp.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        else:
            out.append(torch.randint(0, 2, shape, generator=g).to(dtype))  # valid ids for any vocab
    return tuple(out)


def _size(dim, axis: int, dims: dict[str, int], batch: int) -> int:
    if isinstance(dim, int):
        return dim
    if axis == 0 and dim not in dims:
        return batch
    return dims.get(dim, 16)


def _dynamic_shapes(compiled: Compiled, static: dict[str, int]) -> dict[str, dict[int, Any]]:
    """{input: {axis: Dim}} for every symbolic dim not held `static`, one Dim per symbol."""
    made: dict[str, Any] = {}
    spec = {}
    for inp in compiled.spec.inputs:
        axes = {}
        for axis, d in enumerate(inp.shape):
            if isinstance(d, str) and d.isidentifier() and d not in static:
                axes[axis] = made.setdefault(d, torch.export.Dim(d, min=1))
        spec[inp.name] = axes
    return spec


def metadata(compiled: Compiled, checkpoint: str | None, fixed: dict[str, int],
             state: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """What travels inside every artifact (as JSON under the key 'yamlnet'); dims held
    static appear as their sizes. From a trained run also what deployment must do to an
    input first: for images the decoding and the run's validation transforms, for tables
    the encoding (columns, categories, standardisation), and the class names."""
    spec = compiled.spec
    meta = {
        "yamlnet_version": package_version(),
        "spec_name": spec.name,
        "spec_hash": compiled.hash,
        "inputs": [{"name": i.name, "shape": [str(fixed.get(d, d)) for d in i.shape], "dtype": i.dtype}
                   for i in spec.inputs],
        "outputs": [name for name, _ in spec.outputs],
        "checkpoint": checkpoint,
    }  # fmt: skip
    meta.update(_run_metadata(compiled, state or {}))
    for key in ("class_names", "preprocessing"):
        if key in (spec.meta or {}):
            meta[key] = spec.meta[key]
    return meta


def _run_metadata(compiled: Compiled, state: dict) -> dict[str, Any]:
    info, data = state.get("data_info") or {}, (state.get("config") or {}).get("data") or {}
    out: dict[str, Any] = {}
    if info.get("classes"):
        out["class_names"] = list(info["classes"])
    if info.get("encoding"):
        out["encoding"] = info["encoding"]
    first = compiled.spec.inputs[0]
    if data and len(first.shape) == 4:
        out["preprocessing"] = {
            "decode": "uint8 pixels to float32 in [0, 1], channels first (RGB, or grayscale "
                      "for one channel)",
            "transforms": data.get("val_transforms") or [],  # torchvision.transforms.v2, in order
        }  # fmt: skip
    return out


# -- the exporters ---------------------------------------------------------------------


def _onnx(model, examples, compiled, path: Path, meta: dict, options: dict) -> None:
    import onnx

    names = [i.name for i in compiled.spec.inputs]
    outputs = [name for name, _ in compiled.spec.outputs]
    if options["onnx_exporter"] == "dynamo":
        torch.onnx.export(model, examples, str(path), dynamo=True, input_names=names,
                          output_names=outputs, dynamic_shapes=_dynamic_shapes(compiled, options["static"]),
                          opset_version=options["opset"], verbose=False,
                          external_data=_needs_external_data(model))  # fmt: skip
    else:
        axes = {n: {a: str(d) for a, d in enumerate(i.shape)
                    if isinstance(d, str) and d not in options["static"]}
                for n, i in zip(names, compiled.spec.inputs, strict=True)}  # fmt: skip
        torch.onnx.export(model, examples, str(path), dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=axes,
                          opset_version=options["opset"])  # fmt: skip
    proto = onnx.load(str(path), load_external_data=False)  # weights stay where they are
    entry = proto.metadata_props.add()
    entry.key, entry.value = "yamlnet", json.dumps(meta)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)  # by path: works past 2 GB too


def _needs_external_data(model) -> bool:
    """Weights beside the .onnx file once they near protobuf's 2 GB limit."""
    size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return size > 1_800_000_000


def _torchscript(model, examples, compiled, path: Path, meta: dict, options: dict) -> None:
    scripted = torch.jit.trace(model, examples) if options["trace"] else torch.jit.script(model)
    buf = io.BytesIO()  # written here, then to disk by Python: torch's C++ writer aborts the
    torch.jit.save(scripted, buf, _extra_files={"yamlnet.json": json.dumps(meta)})  # process on a write error
    atomic_write(path, buf.getvalue())


def _pt2(model, examples, compiled, path: Path, meta: dict, options: dict) -> None:
    program = torch.export.export(model, examples,
                                  dynamic_shapes=_dynamic_shapes(compiled, options["static"]))
    buf = io.BytesIO()  # as for TorchScript: the bytes reach the disk through Python
    torch.export.save(program, buf, extra_files={"yamlnet.json": json.dumps(meta)})
    atomic_write(path, buf.getvalue())


def _remove_partial(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


EXPORTERS: dict[str, Callable] = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2}
FORMATS = tuple(EXPORTERS)
SUFFIX = {"onnx": "onnx", "torchscript": "ts", "pt2": "pt2"}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _explain(err: BaseException, compiled: Compiled, format: str) -> str:
    """The exporter's first line, and the spec node it names, with its file:line."""
    text = _ANSI.sub("", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    # the exporters' first line is often generic; the line naming the aten op says why
    why = next((line for line in lines[1:] if "aten." in line or "aten::" in line), "")
    first = f"{first} {why}".strip()[:400]
    for node in compiled.spec.nodes:
        attr = node.name.replace(".", "_")
        if node.name in text or attr in text:
            return f"{node.loc}: nodes.{node.name}: cannot export to {format}: {first}"
    hint = "keep that dim fixed with --static NAME" if "Constraints violated" in text \
        else "run with --verbose for the exporter's trace"  # fmt: skip
    return f"cannot export {compiled.spec.name} to {format}: {first} ({hint})"


# -- verification ----------------------------------------------------------------------


def verify_artifact(path: Path, format: str, model, compiled: Compiled, dims: dict[str, int],
                    atol: float, rtol: float) -> list[Check]:  # fmt: skip
    """Reload the artifact in a fresh process, run it at every batch size of
    VERIFY_BATCHES, and compare with the eager model."""
    names = [i.name for i in compiled.spec.inputs]
    outputs = [name for name, _ in compiled.spec.outputs]
    with tempfile.TemporaryDirectory() as tmp:
        feeds, expected = {}, {}
        for b in VERIFY_BATCHES:
            xs = example_inputs(compiled, dims, batch=b)
            with torch.no_grad():
                ys = model(*xs)
            ys = ys if isinstance(ys, tuple) else (ys,)
            feeds.update({f"{b}/{n}": x.numpy() for n, x in zip(names, xs, strict=True)})
            expected.update({f"{b}/{n}": y.numpy() for n, y in zip(outputs, ys, strict=True)})
        np.savez(Path(tmp) / "in.npz", **feeds)
        got = _run_fresh(path, format, Path(tmp), names, outputs)
    return [_check(o, b, expected[f"{b}/{o}"], got[f"{b}/{o}"], atol, rtol)
            for b in VERIFY_BATCHES for o in outputs]  # fmt: skip


def _check(output: str, batch: int, want: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> Check:
    if want.shape != got.shape:
        return Check(output, batch, float("inf"), float("inf"), False)
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-12)
    ok = bool(np.all(diff <= atol + rtol * np.abs(want)))
    return Check(output, batch, float(diff.max(initial=0)), float(rel.max(initial=0)), ok)


def _run_fresh(path: Path, format: str, tmp: Path, names: list[str], outputs: list[str]) -> dict:
    args = [sys.executable, "-m", "yamlnet.runtime.reload", format, str(path), str(tmp / "in.npz"),
            str(tmp / "out.npz"), ",".join(names), ",".join(outputs)]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        raise ExportError(f"reloading {path} in a fresh process failed: {lines[-1]}")
    with np.load(tmp / "out.npz", allow_pickle=False) as got:
        return {k: got[k] for k in got.files}


def format_checks(checks: list[Check]) -> str:
    """The verification table, one row per output and batch size."""
    rows = ["| output | batch | max abs error | max rel error | ok |", "|---|---|---|---|---|"]
    rows += [f"| {c.output} | {c.batch} | {c.max_abs:.3g} | {c.max_rel:.3g} | {'yes' if c.ok else 'NO'} |"
             for c in checks]  # fmt: skip
    return "\n".join(rows)
