"""Tasks beyond the one-input classifier: named batches, several loss terms on named
outputs, class dims, torchmetrics per output, the zoo's language model, U-Net and seq2seq
trained from the CLI, and `generate`.

Oracles: hand-written PyTorch losses and torchmetrics called by hand on the same batches,
and a plain SGD step for the update a two-loss model takes.
"""

from __future__ import annotations

import pytest
import torch
import torchmetrics
import yaml
from yamlnet.runtime.config import load_run
from yamlnet.runtime.data import build_loaders
from yamlnet.runtime.errors import ConfigError

import yamlnet

from .conftest import ROOT, SPECS

ZOO = SPECS / "zoo"

AUX = """\
yamlnet: 1
name: aux_heads
inputs:
  image: [N, 1, 8, 8]
nodes:
  flat: {op: flatten, start_dim: 1}
  body: {op: Linear, out_features: 32}
  act:  {op: ReLU}
  main: {op: Linear, in: act, out_features: 10}
  aux:  {op: Linear, in: act, out_features: 10}
outputs: {logits: main, aux_logits: aux}
data: {dataset: digits, batch_size: 64, shuffle: false}
train:
  optimizer: {name: SGD, lr: 0.1}
  loss:
    - {name: CrossEntropyLoss, output: logits}
    - {name: CrossEntropyLoss, output: aux_logits, loss_weight: 0.3, label_smoothing: 0.1}
  metrics: [accuracy, {name: F1Score, average: macro, output: aux_logits}]
"""


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def val_batches(spec, checkpoint):
    """The validation batches `yamlnet eval` reads, and the model with the checkpoint's weights."""
    _, cfg, _ = load_run(spec)
    loaders = build_loaders(cfg.data, seed=0)
    model = yamlnet.compile(spec)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return list(loaders.val), model.eval()


def test_two_loss_terms_equal_a_hand_written_evaluation(tmp_path):
    spec = write(tmp_path, AUX)
    result = yamlnet.train(spec, out=tmp_path / "run", **{"train.epochs": 1})
    assert {"val/loss_logits", "val/loss_aux_logits", "val/aux_logits_f1_score"} <= set(result.metrics)
    batches, model = val_batches(spec, result.last)
    ce, ce_smooth = torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
    f1 = torchmetrics.F1Score(task="multiclass", num_classes=10, average="macro")
    total = main = aux = n = 0.0
    with torch.no_grad():
        for batch in batches:
            logits, aux_logits = model(batch["image"])
            y, k = batch["label"], len(batch["label"])
            a, b = ce(logits, y), ce_smooth(aux_logits, y)
            total, main, aux, n = total + (a + 0.3 * b) * k, main + a * k, aux + b * k, n + k
            acc.update(logits, y)
            f1.update(aux_logits, y)
    got = yamlnet.evaluate(spec, result.last)
    assert got["val/loss"] == pytest.approx(float(total / n), abs=1e-6)
    assert got["val/loss_logits"] == pytest.approx(float(main / n), abs=1e-6)
    assert got["val/loss_aux_logits"] == pytest.approx(float(aux / n), abs=1e-6)
    assert got["val/accuracy"] == pytest.approx(float(acc.compute()), abs=1e-6)
    assert got["val/aux_logits_f1_score"] == pytest.approx(float(f1.compute()), abs=1e-6)
    assert got["val/accuracy"] == pytest.approx(result.metrics["val/accuracy"], abs=1e-6)  # as logged


def test_two_loss_terms_step_like_a_plain_sgd_loop(tmp_path):
    """One step of the weighted sum, against the same step written by hand."""
    spec = write(tmp_path, AUX)
    result = yamlnet.train(spec, out=tmp_path / "run", **{"train.max_steps": 1,
                                                          "train.val_every_n_epochs": None})
    torch.manual_seed(0)
    model = yamlnet.compile(spec)
    _, cfg, _ = load_run(spec)
    batch = next(iter(build_loaders(cfg.data, seed=0).train))
    logits, aux = model(batch["image"])
    loss = torch.nn.functional.cross_entropy(logits, batch["label"]) + 0.3 * \
        torch.nn.functional.cross_entropy(aux, batch["label"], label_smoothing=0.1)  # fmt: skip
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    trained = torch.load(result.last, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.allclose(trained[key], value, atol=1e-6), key


def test_language_model_loss_and_perplexity_equal_hand_written(tmp_path, monkeypatch):
    """class_dim: -1 moves [N, T, vocab] logits' classes where CrossEntropyLoss wants them;
    Perplexity takes them as they are."""
    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write(tmp_path, "the quick brown fox jumps over the lazy dog. " * 40, "corpus.txt")
    spec = write(tmp_path, (ZOO / "gpt.yaml").read_text().replace("[README.md, specs/README.md]", str(corpus)))
    small = {"dim": 32, "heads": 2, "layers": 1, "context": 16, "data.block_size": 16,
             "train.max_steps": 5, "train.val_every_n_steps": 5}  # fmt: skip
    result = yamlnet.train(spec, out=tmp_path / "run", **small)
    variables = {k: v for k, v in small.items() if "." not in k}
    _, cfg, _ = load_run(spec, overrides={"data.block_size": 16})
    model = yamlnet.compile(spec, **variables)
    model.load_state_dict(torch.load(result.last, weights_only=True)["model"])
    model.eval()
    ppl = torchmetrics.text.Perplexity()
    total = n = 0.0
    with torch.no_grad():
        for batch in build_loaders(cfg.data, seed=0).val:
            logits = model(batch["tokens"])  # (N, T, vocab)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["targets"])
            total, n = total + loss * len(logits), n + len(logits)
            ppl.update(logits, batch["targets"])
    got = yamlnet.evaluate(spec, result.last, **variables)
    assert got["val/loss"] == pytest.approx(float(total / n), abs=1e-6)
    assert got["val/perplexity"] == pytest.approx(float(ppl.compute()), rel=1e-6)


def test_segmentation_loss_and_iou_equal_hand_written(tmp_path):
    spec = ZOO / "unet.yaml"
    small = {"base": 4, "data.size": 32, "data.val_size": 16, "train.max_steps": 2}
    result = yamlnet.train(spec, out=tmp_path / "run", **small)
    _, cfg, _ = load_run(spec, overrides={k: v for k, v in small.items() if k.startswith("data.")})
    model = yamlnet.compile(spec, base=4)
    model.load_state_dict(torch.load(result.last, weights_only=True)["model"])
    model.eval()
    iou = torchmetrics.JaccardIndex(task="multiclass", num_classes=2, average="macro")
    total = n = 0.0
    with torch.no_grad():
        for batch in build_loaders(cfg.data, seed=0).val:
            scores = model(batch["image"])  # (N, 2, H, W)
            total += torch.nn.functional.cross_entropy(scores, batch["mask"]) * len(scores)
            n += len(scores)
            iou.update(scores, batch["mask"])
    assert result.metrics["val/loss"] == pytest.approx(float(total / n), abs=1e-6)
    assert result.metrics["val/miou"] == pytest.approx(float(iou.compute()), abs=1e-6)


@pytest.mark.parametrize("name", ["gpt", "unet", "lstm_seq2seq"])
def test_zoo_specs_train_from_the_cli_unchanged(name, tmp_path, monkeypatch, capsys):
    """Their own data:/train: sections, a few steps, nothing else."""
    from yamlnet.cli import main

    monkeypatch.chdir(ROOT)  # gpt.yaml reads the repository's README files
    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["train", str(ZOO / f"{name}.yaml"), "--out", str(tmp_path / "run"), "--max-steps", "2",
            "--set", "train.val_every_n_steps=2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "max_steps at step 2" in out and "val/loss" in out


def test_generate_continues_a_repeated_text(tmp_path, monkeypatch, capsys):
    """A byte-level GPT trained on a repeating line reproduces it from a prompt (within one
    block: past it, the window slides to alignments a periodic text never trained on)."""
    from yamlnet.cli import main

    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write(tmp_path, "yamlnet compiles specs. " * 300, "corpus.txt")
    spec = write(tmp_path, (ZOO / "gpt.yaml").read_text().replace("[README.md, specs/README.md]", str(corpus)))
    sets = ["dim=32", "heads=2", "layers=1", "context=32", "data.block_size=32", "data.batch_size=16",
            "train.max_steps=150", "train.optimizer.lr=0.01", "train.scheduler=null",
            "train.val_every_n_steps=150"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), *args]) == 0
    capsys.readouterr()
    assert main(["generate", str(spec), "--checkpoint", str(tmp_path / "run"), "--prompt",
                 "yamlnet comp", "--max-new-tokens", "20", "--top-k", "1", *args[:8]]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert text == "yamlnet compiles specs. yamlnet \n", text  # the prompt and 20 bytes


@pytest.mark.parametrize("change, message", [
    ({"data.inputs": {"image": "pixels"}}, "data.inputs.image: the data has no field 'pixels'"),
    ({"data.inputs": {"img": "image"}}, "data.inputs.img: the spec has no input 'img' (did you mean image?)"),
    ({"train.loss": [{"name": "CrossEntropyLoss", "output": "logit"}]},
     "train.loss[0].output: the spec has no output 'logit' (did you mean logits?)"),
    ({"train.loss": [{"name": "CrossEntropyLoss", "target": "labels"}]},
     "train.loss[0].target: the data has no field 'labels' (did you mean label?)"),
    ({"train.metrics": [{"name": "F1Scor"}]}, "train.metrics[0].name: unknown metric 'F1Scor' (did you mean F1Score?)"),
])  # fmt: skip
def test_task_mistakes_are_one_located_line(tmp_path, change, message):
    spec = write(tmp_path, AUX)
    with pytest.raises(ConfigError) as info:
        yamlnet.train(spec, out=tmp_path / "run", **change)
    assert message in str(info.value), str(info.value)


def test_sequence_logits_without_class_dim_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write(tmp_path, "abc " * 200, "corpus.txt")
    text = (ZOO / "gpt.yaml").read_text().replace("[README.md, specs/README.md]", str(corpus))
    spec = write(tmp_path, text.replace("class_dim: -1", "label_smoothing: 0.0"))
    with pytest.raises(ConfigError) as info:
        yamlnet.train(spec, out=tmp_path / "run", **{"dim": 32, "heads": 2, "layers": 1,
                                                      "data.block_size": 16})  # fmt: skip
    assert "class_dim: -1 on the loss" in str(info.value)  # (its Perplexity metric fails first)


def test_loss_list_round_trips_through_the_lock_file(tmp_path):
    spec = write(tmp_path, AUX)
    result = yamlnet.train(spec, out=tmp_path / "run", **{"train.max_steps": 1})
    lock = yaml.safe_load((result.out / "spec.lock.yaml").read_text())
    assert [t["output"] for t in lock["train"]["loss"]] == ["logits", "aux_logits"]


def image_folder(root, size: int = 40):
    """Two classes of three random RGB images each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    return root


ONE_STEP = ["--max-steps", "1", "--set", "data.batch_size=2", "--set", "data.num_workers=0",
            "--set", "train.val_every_n_steps=1"]  # fmt: skip
OWN_DATA = ["digits_cnn", "mlp", "lenet5", "tiny_vit", "lstm_classifier"]


@pytest.mark.parametrize("name", OWN_DATA + ["resnet18"])
def test_every_example_spec_trains_from_the_cli(name, tmp_path, capsys):
    """Their own data:/train: sections; an image-folder spec is pointed at a folder."""
    from yamlnet.cli import main

    extra = [] if name in OWN_DATA else ["--set", f"data.root={image_folder(tmp_path / 'imgs')}"]
    argv = ["train", str(SPECS / f"{name}.yaml"), "--out", str(tmp_path / "run"), *ONE_STEP, *extra]
    assert main(argv) == 0, capsys.readouterr().err
    assert "max_steps at step 1" in capsys.readouterr().out


def test_every_spec_under_specs_is_covered():
    """A new spec under specs/ gets a train test here or in the extended one below."""
    found = {p.stem for p in SPECS.glob("*.yaml")} | {f"zoo/{p.stem}" for p in ZOO.glob("*.yaml")}
    covered = set(OWN_DATA) | {"resnet18"} | {f"zoo/{n}" for n in ("gpt", "unet", "lstm_seq2seq")} \
        | {f"zoo/{n}" for n in FAMILIES}  # fmt: skip
    assert found == covered


FAMILIES = {  # the cheapest variant of each torchvision family (SGD: no optimizer state to save)
    "resnet": [], "vgg": [], "mobilenet_v2": [], "efficientnet": [], "densenet": [],
    "convnext": [], "vit": ["--set", "patch=32"], "regnet": [], "swin": [],
}  # fmt: skip


@pytest.mark.extended
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_torchvision_family_trains_on_an_image_folder(name, tmp_path, capsys):
    from yamlnet.cli import main

    argv = ["train", str(ZOO / f"{name}.yaml"), "--out", str(tmp_path / "run"), *ONE_STEP,
            "--set", f"data.root={image_folder(tmp_path / 'imgs')}", "--set", "classes=2",
            "--set", "train.optimizer={name: SGD, lr: 0.01}", *FAMILIES[name]]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "max_steps at step 1" in capsys.readouterr().out


@pytest.mark.parametrize("metric, message", [
    ({"name": "ConfusionMatrix"}, "train.metrics[0]: ConfusionMatrix gives [10, 10], not one number"),
    ({"name": "F1Score", "average": "none"}, "train.metrics[0]: F1Score gives [10], not one number"),
])  # fmt: skip
def test_a_metric_that_is_not_one_number_is_refused_before_training(tmp_path, metric, message):
    spec = write(tmp_path, AUX)
    with pytest.raises(ConfigError) as info:
        yamlnet.train(spec, out=tmp_path / "run", **{"train.metrics": [metric]})
    assert message in str(info.value), str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", [
    {"name": "CrossEntropyLoss", "ignore_index": 0},
    {"name": "CrossEntropyLoss", "reduction": "none", "label_smoothing": 0.1},
    {"name": "CrossEntropyLoss", "reduction": "sum", "weight": [0.5, 1.0, 2.0, 1.0, 0.25]},
    {"name": "NLLLoss"},
])  # fmt: skip
def test_classes_last_give_the_loss_of_the_scores_moved_to_dim_1(loss):
    """[N, T, V] scores against [N, T] ids: the term's value (flattened to [N*T, V] for
    speed) equals the loss of `scores.movedim(-1, 1)`, as a hand-written loop takes it."""
    from yamlnet.runtime.optim import build_loss
    from yamlnet.runtime.tasks import LossTerm

    torch.manual_seed(0)
    scores = torch.randn(3, 7, 5).log_softmax(-1)
    ids = torch.randint(0, 5, (3, 7))
    fn = build_loss(loss, "train.loss")
    got = LossTerm("logits", 0, "targets", fn, 1.0, class_dim=-1).value(scores, ids)
    kwargs = {k: v for k, v in loss.items() if k != "name"}
    if "weight" in kwargs:
        kwargs["weight"] = torch.tensor(kwargs["weight"])
    expected = getattr(torch.nn, loss["name"])(**kwargs)(scores.movedim(-1, 1), ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
