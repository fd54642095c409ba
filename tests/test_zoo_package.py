"""The zoo by name and in the wheel: `zoo:resnet` and `zoo:resnet50` wherever a spec is
named, `include: [zoo:resnet]`, `yamlnet zoo`, and a wheel built from the repo that runs
the quick start and a zoo model in a fresh virtual environment, outside any checkout.

Oracles: the files in specs/zoo/, torchvision's own models (parameter counts, built on
the meta device), and a fresh interpreter that imports the installed wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torchvision
from yamlnet.compiler.zoo import VARIANTS, examples, specs_dir, zoo_spec

import yamlnet
import yamlnet.cli

from .conftest import ROOT, SPECS


def _params(name: str, capsys, *sets: str) -> int:
    assert yamlnet.cli.main(["summary", name, "--no-costs", "--format", "json", *sets]) == 0
    return json.loads(capsys.readouterr().out)["total_params"]


def _torchvision_params(name: str) -> int:
    # torchvision's RegNet copies tensors while it builds: it cannot be built on meta
    with torch.device("cpu" if name.startswith("regnet") else "meta"):
        model = torchvision.models.get_model(name)
    return sum(p.numel() for p in model.parameters())


def test_every_zoo_file_is_a_family_and_names_resolve_to_it():
    assert specs_dir() == SPECS
    assert sorted(VARIANTS) == sorted(p.stem for p in (SPECS / "zoo").glob("*.yaml"))
    assert zoo_spec("zoo:resnet") == (SPECS / "zoo" / "resnet.yaml", {})
    assert zoo_spec("zoo:wide_resnet50_2") == (SPECS / "zoo" / "resnet.yaml", {"depth": 50, "width_per_group": 128})
    assert zoo_spec("zoo:digits_cnn") == (SPECS / "digits_cnn.yaml", {})
    assert "resnet18" not in examples()  # the zoo's variant wins over specs/resnet18.yaml


@pytest.mark.parametrize("variant", ["resnext50_32x4d", "vgg11_bn", "swin_s"])  # every one: extended
def test_a_variant_is_torchvisions_model(variant, capsys):
    assert _params(f"zoo:{variant}", capsys) == _torchvision_params(variant)


@pytest.mark.extended
def test_every_variant_is_torchvisions_model(capsys):
    for table in VARIANTS.values():
        for variant in table:
            if variant in torchvision.models.list_models():
                assert _params(f"zoo:{variant}", capsys) == _torchvision_params(variant), variant


def test_the_command_line_sets_win_over_the_variant(capsys):
    resnet18_10 = _params("zoo:resnet18", capsys, "--set", "classes=10")
    model = torchvision.models.resnet18(num_classes=10)
    assert resnet18_10 == sum(p.numel() for p in model.parameters())
    m = yamlnet.compile("zoo:resnet", depth=18, classes=10, image=32)
    m.load_state_dict(model.state_dict())  # strict: the same network
    x = torch.randn(2, 3, 32, 32)
    model.eval(), m.eval()
    torch.testing.assert_close(m(x), model(x))


def test_include_takes_a_zoo_family_and_refuses_a_variant(tmp_path, capsys):
    spec = tmp_path / "mine.yaml"
    spec.write_text("yamlnet: 1\nname: mine\ninclude: [zoo:resnet]\ninputs: {x: [N, 8, 16, 16]}\n"
                    "nodes:\n  b: {block: basic, planes: 8}\n"
                    "  pool: {op: AdaptiveAvgPool2d, output_size: 1}\n")  # fmt: skip
    code = yamlnet.cli.main(["validate", os.fspath(spec)])
    said = capsys.readouterr()
    assert code == 0, said.err
    spec.write_text(spec.read_text().replace("zoo:resnet]", "zoo:resnet50]"))
    assert yamlnet.cli.main(["validate", os.fspath(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "include names a zoo family, not a variant" in err[0] and "mine.yaml:3:" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["summary", "zoo:resnet19"], "no zoo model 'resnet19' (did you mean resnet18?)"),
    (["zoo", "resnt"], "no zoo family 'resnt' (did you mean resnet?)"),
    (["summary", "zoo:"], "no zoo model ''"),
])  # fmt: skip
def test_unknown_zoo_names_are_one_line(argv, message, capsys):
    assert yamlnet.cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_zoo_command_lists_families_and_variants(capsys):
    assert yamlnet.cli.main(["zoo"]) == 0
    text = capsys.readouterr().out
    assert all(f"zoo:{family} " in text for family in VARIANTS)
    assert "zoo:digits_cnn" in text
    assert yamlnet.cli.main(["zoo", "resnet", "--format", "json"]) == 0
    (family,) = json.loads(capsys.readouterr().out)
    assert family["variants"]["resnext101_64x4d"] == {"depth": 101, "groups": 64, "width_per_group": 4}
    assert Path(family["file"]) == SPECS / "zoo" / "resnet.yaml"


# -- the wheel -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed (without dependencies) in a fresh
    venv that borrows this environment's torch & co. through a .pth line: only yamlnet
    comes from the wheel. This environment's own yamlnet (an editable install) is not
    visible there: the .pth adds a folder, not the editable finder inside it."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", os.fspath(dist), os.fspath(ROOT)], check=True, timeout=600,
                   capture_output=True)  # fmt: skip
    (wheel,) = dist.glob("yamlnet-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.fspath(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "--python", os.fspath(python), "install", "--no-deps", "-q",
                    os.fspath(wheel)], check=True, timeout=300, capture_output=True)  # fmt: skip
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"  # no checkout anywhere above it
    work.mkdir()
    return venv, work, wheel


def _in_venv(installed, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    venv, work, _ = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([os.fspath(venv / "bin" / "yamlnet"), *argv], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.extended
def test_the_wheel_carries_the_specs(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed[2]).namelist())
    wanted = {f"yamlnet/specs/{p.relative_to(SPECS).as_posix()}" for p in SPECS.rglob("*")
              if p.is_file() and p.suffix in (".yaml", ".json", ".md")}  # fmt: skip
    assert wanted <= names, sorted(wanted - names)
    venv = installed[0]
    where = subprocess.run([venv / "bin" / "python", "-c", "import yamlnet.compiler.zoo as z; print(z.specs_dir())"],
                           cwd=installed[1], capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv) and ROOT not in Path(where).parents


@pytest.mark.extended
def test_the_wheel_runs_the_quick_start_and_a_zoo_model_outside_the_checkout(installed):
    done = _in_venv(installed, "train", "zoo:digits_cnn", "--epochs", "2", "--out", "quick")
    assert done.returncode == 0, done.stderr
    assert "val/accuracy" in done.stdout.splitlines()[-1]
    config = installed[1] / "digits.yaml"  # the zoo resnet on the bundled digits (1x8x8)
    config.write_text("vars: {image: 8, in_channels: 1, classes: 10}\n"
                      "data: {dataset: digits, transforms: [], val_transforms: [], num_workers: 0}\n")  # fmt: skip
    done = _in_venv(installed, "train", "zoo:resnet18", "--config", "digits.yaml", "--max-steps", "3", "--out", "r18")
    assert done.returncode == 0, done.stderr
    assert (installed[1] / "r18" / "checkpoints" / "last.pt").is_file()
    assert "resnet (11,175,370 parameters" in done.stdout  # resnet18, 10 classes, 1 input channel
    listing = _in_venv(installed, "zoo")
    assert listing.returncode == 0 and "zoo:swin" in listing.stdout
