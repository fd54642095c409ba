"""Fine-tuning: `init:` and `freeze:` from the spec, a run configuration (`--config`,
`--set`) overlaying a zoo spec, torchvision weights by name from a hub cache the tests
fill, the counts and marks of frozen parts, and `--emit-python` keeping freeze and ties."""

from __future__ import annotations

import importlib.util
import io
import json
import os

import pytest
import torch
import torchvision
import yaml
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.draw import drawing, to_dot, to_mermaid
from yamlnet.compiler.errors import SpecError
from yamlnet.compiler.expand import FreezePattern, WeightsOverlay, init_specs
from yamlnet.compiler.summary import format_summary, summary_rows
from yamlnet.runtime.config import load_run_config, weights_overlay
from yamlnet.runtime.errors import ConfigError

import yamlnet

from .conftest import SPECS

RESNET = SPECS / "zoo" / "resnet.yaml"
TV_INIT = {"torchvision": "resnet18", "weights": "IMAGENET1K_V1"}
FILE = "resnet18-f37072fd.pth"  # the name of IMAGENET1K_V1's download
HEAD = ("conv1", "bn1", "layer*")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch hub cache in tmp_path holding a seeded torchvision resnet18's state_dict
    under the name torchvision downloads IMAGENET1K_V1 as: the model, and its file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), folder / FILE)
    return model, folder / FILE


def overlay(init=None, freeze=None) -> WeightsOverlay:
    items = None if init is None else init_specs(init, os.getcwd(), lambda path: None)
    patterns = None if freeze is None else tuple(FreezePattern(p) for p in freeze)
    return WeightsOverlay(items, patterns)


def test_torchvision_weights_from_the_hub_cache(hub):
    model, _ = hub
    torch.manual_seed(0)  # other weights than the file's
    compiled = compile_spec(RESNET, {"image": 32}, overlay=overlay(TV_INIT))
    ours = compiled.module.state_dict()
    theirs = model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(compiled.module.eval()(x), model.eval()(x))


def test_missing_weights_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SpecError) as err:
        compile_spec(RESNET, overlay=overlay(TV_INIT))
    folder = os.path.join(str(tmp_path), "hub", "checkpoints")
    assert str(err.value) == (
        f"init: torchvision resnet18 IMAGENET1K_V1: weights file not found: put {FILE} in {folder} "
        "(torch.hub.get_dir()/checkpoints; nothing is downloaded) "
        f"(its URL: https://download.pytorch.org/models/{FILE})")
    assert not (tmp_path / "hub").exists()  # nothing was fetched


@pytest.mark.parametrize(("init", "expected"), [
    ({"torchvision": "resnet81"}, "init.torchvision: torchvision has no model 'resnet81' (did you mean resnet18?)"),
    ({"torchvision": "resnet18", "weights": "IMAGENET1K_V2"},
     "init.weights: resnet18 has no weights 'IMAGENET1K_V2' (did you mean IMAGENET1K_V1?)"),
])  # fmt: skip
def test_unknown_torchvision_names(init, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SpecError) as err:
        compile_spec(RESNET, overlay=overlay(init))
    assert str(err.value) == expected


def test_freeze_patterns_resolve_to_outermost_paths():
    compiled = compile_spec(RESNET, {"classes": 10, "image": 32}, overlay=overlay(freeze=HEAD))
    assert compiled.spec.frozen == ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    trainable = {n for n, p in compiled.module.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    every_conv1 = compile_spec(RESNET, build=False, overlay=overlay(freeze=["*conv1"])).spec.frozen
    assert every_conv1 == ("conv1", *(f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)))


def test_a_spec_freeze_list_and_its_located_error(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("yamlnet: 1\ninputs: {x: [N, 4]}\nfreeze: [enc*, heda]\nnodes:\n"
                    "  enc1: {op: Linear, out_features: 8}\n  enc2: {op: Linear, out_features: 8}\n"
                    "  head: {op: Linear, out_features: 2}\n")  # fmt: skip
    with pytest.raises(SpecError) as err:
        compile_spec(spec)
    assert str(err.value) == (f"{spec}:3:16: freeze[1]: 'heda' matches no node or module path of the model "
                              "(did you mean head?)")  # fmt: skip
    spec.write_text(spec.read_text().replace("heda", "enc1"))
    compiled = compile_spec(spec)
    assert compiled.spec.frozen == ("enc1", "enc2")
    assert [n for n, p in compiled.module.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_run_config_overlays_init_and_freeze(tmp_path):
    config = tmp_path / "sub" / "finetune.yaml"
    config.parent.mkdir()
    config.write_text("init: {file: r18.pt, exclude: [fc]}\nfreeze: [conv1, bn1]\n")
    cfg = load_run_config(compile_spec(RESNET, build=False).source.main, config, {"freeze": ["layer*"]})
    got = cfg.weights_overlay()
    assert got.init[0].path == str(tmp_path / "sub" / "r18.pt") and got.init[0].exclude == ("fc",)
    assert [p.pattern for p in got.freeze] == ["layer*"] and str(got.freeze[0].loc) == "--set freeze=['layer*']"
    # dotted keys build one init: item; a bare file is {file: ...}
    assert weights_overlay({"init.torchvision": "resnet18", "init.exclude": ["fc"]}).init[0].exclude == ("fc",)
    assert weights_overlay({"init": "w.pt"}).init[0].file == "w.pt"
    assert weights_overlay({"freeze": []}).freeze == () and weights_overlay({}).freeze is None
    with pytest.raises(SpecError, match=r"^--set init.weights=V1: init: weights: names a torchvision"):
        weights_overlay({"init.weights": "V1"})
    with pytest.raises(ConfigError, match=r"^--set init.fille=a.pt: init.fille: unknown key 'fille'"):
        weights_overlay({"init.fille": "a.pt"})
    config.write_text("freeze: conv1\n")
    with pytest.raises(ConfigError, match=r"finetune.yaml:1:1: freeze: expected a list, got string 'conv1'$"):
        load_run_config(compile_spec(RESNET, build=False).source.main, config)


def test_summary_and_graph_mark_frozen_nodes():
    compiled = compile_spec(RESNET, {"classes": 10}, build=False, overlay=overlay(freeze=HEAD))
    rows = summary_rows(compiled)
    assert {r["name"]: r["frozen"] for r in rows}["layer1.0.conv1"] and not rows[-1]["frozen"]
    table = format_summary(compiled, rows)
    assert table.splitlines()[-1] == "69 nodes, 11,181,642 parameters (5,130 trainable, 11,176,512 frozen)"
    assert table.splitlines()[3].split() == ["conv1", "Conv2d", "[N,", "64,", "112,", "112]", "9,408", "frozen"]
    doc = json.loads(format_summary(compiled, rows, "json"))
    assert (doc["trainable_params"], doc["frozen_params"]) == (5130, 11176512)
    csv = format_summary(compiled, rows, "csv").splitlines()
    assert csv[0] == "name,op,output,params,frozen" and csv[-1] == 'fc,Linear,"[N, 10]",5130,False'
    picture = drawing(compiled, depth=0)
    assert [b.lines[0] for b in picture.boxes.values() if b.frozen] == ["conv1", "bn1", "layer1", "layer2",
                                                                         "layer3", "layer4"]  # fmt: skip
    assert 'label="layer1\\n14 nodes\\nN×64×56×56", fillcolor="#e4e4e4", style="filled,bold,dashed"' in to_dot(picture)
    assert to_mermaid(picture).splitlines()[-1] == "  class n1,n2,n5,n6,n7,n8 frozen"


def test_emitted_python_keeps_freeze_and_ties(tmp_path):
    torch.manual_seed(0)
    compiled = compile_spec(SPECS / "zoo" / "gpt.yaml", {"layers": 2, "dropout": 0.1},
                            overlay=overlay(freeze=["blocks.0", "ln_f"]))  # fmt: skip
    from yamlnet.compiler.codegen import class_name, emit_python

    path = tmp_path / "gpt_model.py"
    path.write_text(emit_python(compiled.graph, compiled.module))
    spec = importlib.util.spec_from_file_location("gpt_model", path)
    emitted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emitted)
    model = getattr(emitted, class_name(compiled.spec.name))()
    model.load_state_dict(compiled.module.state_dict(), strict=True)
    ours = compiled.module

    def frozen(m):
        return {n for n, p in m.named_parameters(remove_duplicate=False) if not p.requires_grad}

    assert frozen(model) == frozen(ours) and "blocks.0.attn.c_attn.weight" in frozen(model)
    assert model.head.weight is model.tok_emb.weight and ours.head.weight is ours.tok_emb.weight
    # frozen parts are in eval mode from construction on, not only after .train()
    assert not model.blocks.get_submodule("0.mlp.drop").training and model.blocks.get_submodule("1.mlp.drop").training
    model.train(), ours.train()
    assert not model.blocks.get_submodule("0.mlp.drop").training and model.blocks.get_submodule("1.mlp.drop").training
    tokens = torch.randint(0, 512, (2, 9))
    model.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), ours(tokens))


def _journey_config(tmp_path) -> os.PathLike:
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({
        "init": {**TV_INIT, "exclude": ["fc"]},
        "freeze": list(HEAD),
        "vars": {"classes": 10, "image": 32},
        "data": {"dataset": "synthetic", "shape": [3, 32, 32], "classes": 10, "size": 16, "val_size": 8,
                 "batch_size": 8, "num_workers": 0, "transforms": [], "val_transforms": []},
        "train": {"max_steps": 2, "optimizer": {"name": "SGD", "lr": 0.1}, "scheduler": None, "device": "cpu",
                  "checkpoint_every_n_minutes": None},
    }))  # fmt: skip
    return config


def test_the_fine_tuning_journey(tmp_path, hub):
    """The zoo resnet, weights from a torchvision state_dict in the hub cache, the stem
    and every stage frozen, all from `--config`: two steps change the head alone."""
    model, _ = hub
    config = _journey_config(tmp_path)
    out = io.StringIO()
    result = yamlnet.train(RESNET, config=config, out=tmp_path / "run", stream=out)
    banner = out.getvalue().splitlines()[0]
    assert " (11,181,642 parameters, 5,130 trainable, hash " in banner  # 5,130: fc, 512 * 10 + 10
    trained = torch.load(result.last, weights_only=True)["model"]
    pretrained = model.state_dict()
    for key, value in trained.items():
        if key.startswith("fc."):
            assert value.shape[0] == 10
        else:  # frozen: the file's weights, bitwise, BatchNorm statistics included
            assert torch.equal(value, pretrained[key]), key
    torch.manual_seed(0)
    untrained = compile_spec(RESNET, {"classes": 10, "image": 32}).module.state_dict()
    assert not torch.equal(trained["fc.weight"], untrained["fc.weight"])
    lock = yaml.safe_load((result.out / "spec.lock.yaml").read_text())
    assert lock["freeze"] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert lock["init"] == [{**TV_INIT, "exclude": ["fc"]}]


def test_the_journey_from_the_command_line(tmp_path, hub, capsys):
    from yamlnet.cli import main

    config = _journey_config(tmp_path)
    code = main(["train", str(RESNET), "--config", str(config), "--set", "freeze=[conv1, bn1, layer1, layer2]",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    trainable = 10 * 512 + 10 + sum(p.numel() for n, p in hub[0].named_parameters() if n.startswith(("layer3", "layer4")))
    assert f"11,181,642 parameters, {trainable:,} trainable" in capsys.readouterr().out


def test_resuming_with_another_freeze_is_refused(tmp_path, capsys):
    import yamlnet.cli

    digits = os.fspath(SPECS / "digits_cnn.yaml")
    out = os.fspath(tmp_path / "run")
    assert yamlnet.cli.main(["train", digits, "--max-steps", "2", "--out", out, "--set", "freeze=[features]", "--set", "train.scheduler=null"]) == 0
    capsys.readouterr()
    code = yamlnet.cli.main(["train", digits, "--max-steps", "4", "--out", out, "--resume", "--set", "freeze=[fc2]", "--set", "train.scheduler=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the spec changed since" in err[0] and "--force" in err[0]
    # the same freeze resumes
    assert yamlnet.cli.main(["train", digits, "--max-steps", "4", "--out", out, "--resume",
                             "--set", "freeze=[features]", "--set", "train.scheduler=null"]) == 0  # fmt: skip


def test_the_model_commands_take_the_runs_config(tmp_path, capsys):
    """`summary`, `compile`, `expand` and `graph --config` build the model a run with that
    config trains: its vars:, init: and freeze: (the same hash, counts and lock), --set
    after it; a config's bad data:/train: is refused as train refuses it."""
    from yamlnet.cli import main

    digits = os.fspath(SPECS / "digits_cnn.yaml")
    config = tmp_path / "ft.yaml"
    config.write_text("vars: {width: 16}\nfreeze: [features]\ntrain: {scheduler: null}\n")
    assert main(["train", digits, "--config", str(config), "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out.splitlines()[0]  # run ...: digits_cnn (N parameters, M trainable, hash H)
    lock = (tmp_path / "run" / "spec.lock.yaml").read_text()
    assert main(["compile", digits, "--config", str(config)]) == 0
    compiled = capsys.readouterr().out
    assert said.split("(", 1)[1].rstrip(")") in compiled.replace("digits_cnn, 13 nodes, ", "")
    assert main(["expand", digits, "--config", str(config)]) == 0
    expanded = capsys.readouterr().out
    assert expanded.splitlines()[0].rsplit(" ", 1)[1] == lock.splitlines()[0].rsplit(" ", 1)[1]  # the spec hash
    assert "freeze: [features]" in expanded and "width: 16" in expanded
    assert main(["summary", digits, "--config", str(config), "--no-costs"]) == 0
    trainable = said.split(", ")[1].split()[0]
    assert f"({trainable} trainable, " in capsys.readouterr().out
    assert main(["graph", digits, "--config", str(config), "--format", "mermaid"]) == 0
    drawn = capsys.readouterr().out.splitlines()
    assert drawn[-1].startswith("  class ") and drawn[-1].endswith(" frozen")  # the features' boxes
    assert main(["compile", digits, "--config", str(config), "--set", "width=8"]) == 0
    assert "35,458 parameters, 34,186 trainable" in capsys.readouterr().out  # --set after the config
    config.write_text("train: {epochs: -1}\n")
    assert main(["summary", digits, "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"{config}:1:9: train.epochs: -1 is less than the minimum of 1"


def test_compile_from_python_takes_init_and_freeze(tmp_path, monkeypatch):
    """`yamlnet.compile(..., init=, freeze=)` builds what `compile --set` builds: the same
    hash and frozen parameters, and the weights of the init file."""
    monkeypatch.chdir(tmp_path)
    digits = SPECS / "digits_cnn.yaml"
    torch.manual_seed(5)
    source = yamlnet.compile(digits, width=16)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    built = yamlnet.build(digits, width=16, init="w.pt", freeze=("features",))
    cli = compile_spec(digits, {"width": 16}, overlay=weights_overlay({"init": "w.pt", "freeze": ["features"]}))
    assert built.hash == cli.hash
    frozen = {n for n, p in built.module.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in source.named_parameters() if n.startswith("features.")} and frozen
    want, got = source.state_dict(), built.module.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ConfigError, match="freeze: expected a list"):
        yamlnet.compile(digits, freeze="features")
