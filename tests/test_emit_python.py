"""`yamlnet compile SPEC --emit-python FILE --out STATE.pt` writes a standalone module:
a fresh interpreter that cannot import yamlnet runs it, loads the saved weights with
strict=True, and computes what the compiled module computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from yamlnet.compiler.codegen import class_name

import yamlnet

from .conftest import ROOT, SPECS

# The directory that holds the `torch` package (the venv's site-packages). Under
# `python -S -I` this, plus the interpreter's standard library, is the whole of
# sys.path: no .pth files are processed (-S), so the editable-install finder that
# maps `yamlnet` to the repo is never installed; no PYTHONPATH or user site (-I);
# and neither the current directory nor the script's is prepended (-I implies -P).
# torch's own imports (typing_extensions, sympy, filelock, ...) live in that same
# directory, so nothing else is needed; checked in test_torch_imports_in_isolation.
TORCH_SITE = os.path.dirname(os.path.dirname(torch.__file__))

CASES = [
    pytest.param("resnet18.yaml", (2, 3, 224, 224), torch.float32, id="resnet18"),
    pytest.param("tiny_vit.yaml", (3, 3, 32, 32), torch.float32, id="tiny_vit", marks=pytest.mark.extended),
    pytest.param("lstm_classifier.yaml", (2, 6), torch.int64, id="lstm_classifier", marks=pytest.mark.extended),
    pytest.param("zoo/gpt.yaml", (2, 9), torch.int64, id="gpt"),  # tie: and positions
    # names such as block1-0, and layer-class arguments (functools.partial)
    pytest.param(ROOT / "tests" / "specs" / "names_layers.yaml", (2, 3, 16, 16), torch.float32, id="names_layers"),
]

# Runs in the isolated interpreter. argv: torch_site, module_file, state_file,
# input_file, output_file, expected class name.
CHILD = r"""
import json, sys
torch_site, module_file, state_file, input_file, output_file, expected_cls = sys.argv[1:7]
sys.path.append(torch_site)
# no current folder on the path (a checkout's own folder may well be called yamlnet: the
# import check below is what proves yamlnet out of reach)
assert not any(p in ("", ".") for p in sys.path), sys.path

import torch
from torch import nn

namespace = {"__name__": "emitted_model", "__file__": module_file}
with open(module_file, encoding="utf-8") as fh:
    exec(compile(fh.read(), module_file, "exec"), namespace)

assert "yamlnet" not in sys.modules, "the emitted file imported yamlnet"
try:
    import yamlnet  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("yamlnet is importable in the isolated interpreter")
assert "yamlnet" not in sys.modules

classes = [v for v in namespace.values()
           if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == "emitted_model"]
assert len(classes) == 1, classes
cls = classes[0]
assert cls.__name__ == expected_cls, (cls.__name__, expected_cls)

model = cls()
state = torch.load(state_file, weights_only=True)
result = model.load_state_dict(state, strict=True)
assert not result.missing_keys and not result.unexpected_keys
model.eval()
x = torch.load(input_file, weights_only=True)
with torch.no_grad():
    y = model(x)
torch.save(y, output_file)
print(json.dumps({
    "class": cls.__name__,
    "keys": sorted(model.state_dict()),
    "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    "shape": list(y.shape),
    "sum": float(y.double().sum()),
    "abs_sum": float(y.double().abs().sum()),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("yamlnet", "compiler")),
}))
"""


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def isolated_python(args, cwd):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    return run([sys.executable, "-S", "-I", *args], cwd=cwd, env=env)


def test_torch_imports_in_isolation(tmp_path):
    code = (
        "import sys; sys.path.append(sys.argv[1]); import torch; print(torch.ones(2).sum().item())"
    )
    proc = isolated_python(["-c", code, TORCH_SITE], cwd=tmp_path)
    assert proc.stdout.strip() == "2.0"


@pytest.mark.parametrize("spec_file, input_shape, dtype", CASES)
def test_emitted_python_runs_without_yamlnet(tmp_path, spec_file, input_shape, dtype):
    spec = SPECS / spec_file
    module_file = tmp_path / "model.py"
    state_file = tmp_path / "state.pt"
    run(
        [
            sys.executable,
            "-m",
            "yamlnet",
            "compile",
            str(spec),
            "--emit-python",
            str(module_file),
            "--out",
            str(state_file),
        ],
        cwd=ROOT,
    )
    assert module_file.is_file() and state_file.is_file()
    source = module_file.read_text(encoding="utf-8")
    assert "yamlnet" not in "".join(
        line for line in source.splitlines() if line.lstrip().startswith(("import", "from"))
    )

    # the reference: the compiled module with the same saved weights
    result = yamlnet.build(spec)
    compiled = result.module
    compiled.load_state_dict(torch.load(state_file, weights_only=True), strict=True)
    compiled.eval()
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        x = torch.randn(input_shape, generator=gen, dtype=dtype)
    else:
        x = torch.randint(0, 10, input_shape, generator=gen, dtype=dtype)
    input_file, output_file = tmp_path / "input.pt", tmp_path / "output.pt"
    torch.save(x, input_file)
    with torch.no_grad():
        expected = compiled(x)

    proc = isolated_python(
        [
            "-c",
            CHILD,
            TORCH_SITE,
            str(module_file),
            str(state_file),
            str(input_file),
            str(output_file),
            class_name(result.spec.name),
        ],
        cwd=tmp_path,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert report["modules"] == []
    assert report["keys"] == sorted(compiled.state_dict())
    assert report["shapes"] == {k: list(v.shape) for k, v in compiled.state_dict().items()}
    assert report["shape"] == list(expected.shape)
    got = torch.load(output_file, weights_only=True)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert (got - expected).abs().max().item() <= 1e-5
    assert report["sum"] == pytest.approx(float(expected.double().sum()), rel=1e-5, abs=1e-4)
    assert report["abs_sum"] == pytest.approx(float(expected.double().abs().sum()), rel=1e-5)


def test_class_name_is_camel_case():
    assert class_name("resnet18") == "Resnet18"
    assert class_name("tiny_vit") == "TinyVit"
    assert class_name("lstm_classifier") == "LstmClassifier"
