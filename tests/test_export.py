"""Export: every format reloads in a fresh process and matches the eager model; the
metadata travels inside the artifact; an ONNX file runs where torch is not imported.

Oracles: onnxruntime, torch.jit.load and torch.export.load in other processes, and the
eager compiled module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from yamlnet.runtime.export import VERIFY_BATCHES, export

import yamlnet

from .conftest import ROOT, SPECS, all_specs

DIGITS = SPECS / "digits_cnn.yaml"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_digits_exports_verified_with_metadata(tmp_path, fmt):
    r = export(DIGITS, format=fmt, out=tmp_path / f"d.{fmt}")
    assert r.ok and [c.batch for c in r.checks] == list(VERIFY_BATCHES)
    assert max(c.max_abs for c in r.checks) <= 1e-5
    meta = _read_metadata(r.path, fmt)
    assert meta["spec_name"] == "digits_cnn" and meta["spec_hash"] == yamlnet.build(DIGITS).hash
    assert meta["inputs"] == [{"name": "image", "shape": ["N", "1", "8", "8"], "dtype": "float32"}]
    assert meta["outputs"] == ["logits"]


def _read_metadata(path, fmt) -> dict:
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        return json.loads(props["yamlnet"])
    if fmt == "torchscript":
        files = {"yamlnet.json": ""}
        torch.jit.load(str(path), _extra_files=files)
        return json.loads(files["yamlnet.json"])
    files = {"yamlnet.json": ""}
    torch.export.load(str(path), extra_files=files)
    return json.loads(files["yamlnet.json"])


def test_trained_checkpoint_onnx_agrees_without_torch(tmp_path):
    """A trained digits model's ONNX file, run by onnxruntime in a process that never
    imports torch or yamlnet, predicts the validation set exactly as the eager model."""
    run = yamlnet.train(DIGITS, out=tmp_path / "run", **{"train.epochs": 2})
    r = export(DIGITS, format="onnx", checkpoint=run.out, out=tmp_path / "d.onnx")
    assert r.ok
    from sklearn.datasets import load_digits

    d = load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
    x = (d.data[sorted(order[:359])] / 16.0).reshape(-1, 1, 8, 8).astype("float32")
    np.save(tmp_path / "x.npy", x)
    model = yamlnet.compile(DIGITS)
    model.load_state_dict(torch.load(run.best, weights_only=True)["model"])
    with torch.no_grad():
        eager = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    code = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        s = ort.InferenceSession({str(r.path)!r}, providers=["CPUExecutionProvider"])
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'y.npy')!r}, s.run(None, {{"image": x}})[0].argmax(1))
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "yamlnet")]
        assert not bad, bad
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (np.load(tmp_path / "y.npy") == eager).all()  # 359 samples, a batch never exported


def test_resnet18_onnx_runs_a_new_batch_size_without_torch(tmp_path):
    r = export(SPECS / "resnet18.yaml", format="onnx", out=tmp_path / "r18.onnx", verify=False)
    code = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        s = ort.InferenceSession({str(r.path)!r}, providers=["CPUExecutionProvider"])
        (y,) = s.run(None, {{"image": np.random.rand(3, 3, 224, 224).astype("float32")}})
        assert y.shape == (3, 1000), y.shape
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "yamlnet")]
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_export_prints_the_check_table(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "yamlnet", "export", str(DIGITS), "--format",
                           "torchscript", "--out", str(tmp_path / "d.ts")],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "TorchScript is deprecated upstream" in proc.stdout
    assert "| logits | 5 | 0 | 0 | yes |" in proc.stdout


def test_unexportable_dynamic_length_is_one_line_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "yamlnet", "export", str(SPECS / "lstm_classifier.yaml"),
                           "--format", "pt2", "--out", str(tmp_path / "l.pt2")],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot export lstm_classifier to pt2")
    assert lines[0].endswith("(keep that dim fixed with --static NAME)")


def test_legacy_onnx_exporter_on_request(tmp_path):
    r = export(DIGITS, format="onnx", onnx_exporter="legacy", out=tmp_path / "l.onnx")
    assert r.ok and _read_metadata(r.path, "onnx")["spec_name"] == "digits_cnn"


def test_an_unexportable_op_is_named_with_its_spec_line(tmp_path):
    (tmp_path / "eig_ops.py").write_text(textwrap.dedent("""
        import torch, yamlnet
        class Eig(torch.nn.Module):  # no ONNX function for aten._linalg_eigh
            def forward(self, x):
                return torch.linalg.eigvalsh(x.unsqueeze(-1) * x.unsqueeze(-2))
        yamlnet.register_op("Eig", Eig)
    """))
    (tmp_path / "g.yaml").write_text("yamlnet: 1\ninputs:\n  x: [N, 4]\nnodes:\n"
                                     "  fc: {op: Linear, out_features: 4}\n  eig: {op: Eig}\n")
    proc = subprocess.run([sys.executable, "-m", "yamlnet", "--plugin", "eig_ops", "export", "g.yaml",
                           "--format", "onnx", "--out", "g.onnx"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: g.yaml:6:3: nodes.eig: cannot export to onnx")
    assert "aten._linalg_eigh" in lines[0] and "\x1b" not in lines[0]


# The zoo's torchvision families are made of the layers the specs above already export;
# its own ops (positions, tie:, a tuple input) are in gpt, unet and lstm_seq2seq.
EXPORTED = [p for p in all_specs() if p.parent.name != "zoo" or p.stem in ("gpt", "unet", "lstm_seq2seq")]
# torch.export keeps neither an nn.LSTM's length nor U-Net's divisible-by-8 sizes dynamic
STATIC = {("lstm_classifier", "pt2"): ("T",), ("lstm_seq2seq", "pt2"): ("S", "T"), ("unet", "pt2"): ("H", "W")}


# The README's test command exports each spec in one format (each format several times, the
# pt2 exports with static dims among them); the rest of the matrix is `extended`.
FIRST = {"digits_cnn": "torchscript", "lenet5": "onnx", "lstm_classifier": "pt2", "mlp": "onnx",
         "resnet18": "onnx", "tiny_vit": "pt2", "gpt": "onnx", "unet": "pt2", "lstm_seq2seq": "torchscript"}
MATRIX = [pytest.param(path, fmt, id=f"{path.stem}-{fmt}",
                       marks=() if FIRST.get(path.stem) == fmt else pytest.mark.extended)
          for path in EXPORTED for fmt in ("onnx", "torchscript", "pt2")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("path, fmt", MATRIX)
def test_every_spec_exports(tmp_path, path, fmt):
    assert path.stem in FIRST, f"{path.stem}: give it a format in FIRST"
    static = STATIC.get((path.stem, fmt), ())
    r = export(path, format=fmt, out=tmp_path / f"m.{fmt}", static=static)
    assert r.ok, r.checks


def test_verification_fails_past_the_tolerance(tmp_path):
    r = export(DIGITS, format="onnx", out=tmp_path / "d.onnx", atol=0.0, rtol=0.0)
    assert not r.ok  # onnxruntime's float sums differ from eager's by ~1e-8
    proc = subprocess.run([sys.executable, "-m", "yamlnet", "export", str(DIGITS), "--format", "onnx",
                           "--out", str(tmp_path / "e.onnx"), "--atol", "0", "--rtol", "0"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 1 and "outputs differ beyond atol 0.0 / rtol 0.0" in proc.stderr
    assert "| NO |" in proc.stdout


def test_class_names_from_meta_travel_in_the_artifact(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("yamlnet: 1\ninputs:\n  x: [N, 4]\nnodes:\n  fc: {op: Linear, out_features: 2}\n"
                    "meta: {class_names: [cat, dog], preprocessing: scale to 0..1}\n")
    r = export(spec, format="torchscript", out=tmp_path / "m.ts", verify=False)
    meta = _read_metadata(r.path, "torchscript")
    assert meta["class_names"] == ["cat", "dog"] and meta["preprocessing"] == "scale to 0..1"
    assert r.checks == []  # --no-verify
