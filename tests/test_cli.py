"""The command line: commands, exit codes, one-line errors, no torch for --help."""

import json
import subprocess
import sys

import pytest

from yamlnet.cli import main

from .conftest import ROOT

R18 = str(ROOT / "specs" / "resnet18.yaml")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_validate_ok_and_error(capsys, tmp_path):
    rc, out, _ = run(capsys, "validate", R18)
    assert rc == 0 and "69 nodes, 11,689,512 parameters" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("yamlnet: 1\ninputs: {x: [N, 3]}\nnodes:\n  fc: {op: Linear, out_feature: 2}\n")
    rc, out, err = run(capsys, "validate", str(bad))
    assert rc == 2
    assert err.strip().splitlines() == [  # one line: the missing out_features is the typo
        f"{bad}:4:20: nodes.fc.out_feature: unknown argument 'out_feature' for Linear "
        "(did you mean out_features?)",
    ]
    assert "Traceback" not in err


def test_validate_json_diagnostics(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("yamlnet: 1\ninputs: {x: [N, 3]}\nnodes:\n  fc: {op: Lineer}\n")
    rc, out, _ = run(capsys, "validate", "--format", "json", str(bad))
    assert rc == 2
    assert json.loads(out) == [{"file": str(bad), "line": 4, "column": 8, "path": "nodes.fc.op",
                                "message": "unknown op 'Lineer' (did you mean Linear?)"}]  # fmt: skip


def test_summary_formats(capsys):
    rc, out, _ = run(capsys, "summary", R18)
    assert rc == 0
    assert "layer4.1.out" in out and "[N, 512, 7, 7]" in out and "11,689,512 parameters" in out
    rc, out, _ = run(capsys, "summary", R18, "--format", "json")
    doc = json.loads(out)
    assert doc["total_params"] == 11689512 and doc["nodes"][-1]["output"] == "[N, 1000]"
    rc, out, _ = run(capsys, "summary", R18, "--format", "csv", "--set", "classes=10", "--no-costs")
    assert out.splitlines()[0] == "name,op,output,params" and out.splitlines()[-1] == "fc,Linear,\"[N, 10]\",5130"
    rc, out, _ = run(capsys, "summary", R18, "--format", "csv", "--set", "classes=10", "--dim", "N=2")
    assert out.splitlines()[0] == "name,op,output,params,macs,activation_bytes"
    assert out.splitlines()[-1] == "fc,Linear,\"[N, 10]\",5130,10240,80"  # 2 x 512 x 10; 2 x 10 floats


def test_expand_is_the_resolved_spec(capsys):
    rc, out, _ = run(capsys, "expand", R18, "--set", "width=32")
    assert rc == 0
    assert ("  layer2.0.downsample.0: {op: Conv2d, in: layer1.1.out, out_channels: 64, kernel_size: 1, "
            "stride: 2, bias: false, in_channels: 32}  # -> [N, 64, 28, 28]") in out.splitlines()


def test_compile_writes_python_and_state_dict(capsys, tmp_path):
    import torch

    py, sd = tmp_path / "m.py", tmp_path / "m.pt"
    rc, out, _ = run(capsys, "compile", str(ROOT / "specs" / "mlp.yaml"), "--emit-python", str(py),
                     "--out", str(sd))  # fmt: skip
    assert rc == 0
    namespace: dict = {}
    exec(compile(py.read_text(), str(py), "exec"), namespace)
    model = namespace["Mlp"]()
    model.load_state_dict(torch.load(sd, weights_only=True), strict=True)
    assert model(torch.randn(2, 64)).shape == (2, 10)


def test_schema_command(capsys):
    rc, out, _ = run(capsys, "schema")
    assert rc == 0 and json.loads(out)["$schema"].endswith("2020-12/schema")


@pytest.mark.parametrize("argv", [["validate", "missing.yaml"], ["summary", R18, "--set", "novar"],
                                  ["summary", R18, "--set", "nope=1"]])  # fmt: skip
def test_user_errors_exit_2_with_one_line(capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_does_not_import_torch():
    code = ("import sys; from yamlnet.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "validate" in proc.stdout


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "yamlnet", "--version"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("yamlnet ")


def test_importing_the_cli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, yamlnet.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
