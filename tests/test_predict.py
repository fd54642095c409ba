"""Serving a trained model: predict on class-folder image sets (rows named by file), CSVs
with a header through the run's saved table encoding, masks written as PNGs, tensors from
Python; plain weights files in eval/predict/export; what export metadata carries.

Oracles: the model run by hand on inputs decoded and encoded by hand (PIL, numpy).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import yamlnet
from yamlnet.cli import main

from .conftest import SPECS

IMAGES = """\
yamlnet: 1
name: pets
inputs:
  image: [N, 3, 8, 8]
nodes:
  conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  pool: {op: AdaptiveAvgPool2d, output_size: 1}
  flat: {op: flatten, start_dim: 1}
  fc:   {op: Linear, out_features: 2}
data: {dataset: image_folder, root: ROOT, val_fraction: 0, batch_size: 4,
       val_transforms: [{name: Normalize, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}]}
train: {max_steps: 2, metrics: []}
"""


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A class-folder image set, and a run trained on it."""
    tmp = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp / "imgs" / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp / "imgs" / cls / f"{k}.png")
    spec = tmp / "pets.yaml"
    spec.write_text(IMAGES.replace("ROOT", str(tmp / "imgs")))
    return spec, yamlnet.train(spec, out=tmp / "run"), tmp / "imgs"


def by_hand(spec, checkpoint, x: torch.Tensor) -> torch.Tensor:
    model = yamlnet.compile(spec)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        return model.eval()(x)


def test_class_folder_set_rows_named_by_file(pets):
    spec, run, root = pets
    pred = yamlnet.predict(spec, run.last, root)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert pred.samples == [str(f) for f in files] == ["cat/0.png", "cat/1.png", "cat/2.png",
                                                        "dog/0.png", "dog/1.png", "dog/2.png"]  # fmt: skip
    pixels = [np.asarray(Image.open(root / f), dtype=np.float32) / 255 for f in files]
    x = (torch.tensor(np.stack(pixels)).permute(0, 3, 1, 2) - 0.5) / 0.25  # the val_transforms
    expected = by_hand(spec, run.last, x)
    assert torch.allclose(pred.outputs, expected, atol=1e-5)
    rows = pred.rows()
    assert [r["class"] for r in rows] == expected.argmax(1).tolist()
    assert rows[0]["sample"] == "cat/0.png" and rows[0]["class_name"] in ("cat", "dog")


def test_predict_takes_tensors_and_arrays(pets):
    spec, run, _ = pets
    x = torch.rand(5, 3, 8, 8)
    expected = by_hand(spec, run.last, x)
    assert torch.allclose(yamlnet.predict(spec, run.last, x).outputs, expected, atol=1e-6)
    got = yamlnet.predict(spec, run.last, {"image": x.numpy()}).outputs
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(yamlnet.SpecError, match=r"the spec's input 'image' takes \[N, 3, 8, 8\]"):
        yamlnet.predict(spec, run.last, torch.rand(5, 3, 9, 9))


def test_export_metadata_carries_the_preprocessing_and_classes(pets, tmp_path):
    spec, run, _ = pets
    r = yamlnet.export(spec, format="torchscript", checkpoint=run.last, out=tmp_path / "m.ts")
    files = {"yamlnet.json": ""}
    torch.jit.load(str(r.path), _extra_files=files)
    meta = json.loads(files["yamlnet.json"])
    assert meta["class_names"] == ["cat", "dog"]
    assert meta["preprocessing"]["transforms"] == [{"name": "Normalize", "mean": [0.5, 0.5, 0.5],
                                                    "std": [0.25, 0.25, 0.25]}]  # fmt: skip


def test_a_plain_weights_file_serves_like_a_checkpoint(tmp_path, capsys):
    """What `yamlnet compile --out` writes, and a run's .safetensors, load in eval,
    predict and export (the run configuration is then the spec's own)."""
    spec = SPECS / "digits_cnn.yaml"
    assert main(["compile", str(spec), "--out", str(tmp_path / "w.pt")]) == 0
    assert main(["export", str(spec), "--format", "pt2", "--checkpoint", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "d.pt2")]) == 0  # fmt: skip
    weights = torch.load(tmp_path / "w.pt", weights_only=True)
    x = torch.rand(3, 1, 8, 8)
    model = yamlnet.compile(spec)
    model.load_state_dict(weights)
    with torch.no_grad():
        expected = model.eval()(x)
    assert torch.allclose(yamlnet.predict(spec, tmp_path / "w.pt", x).outputs, expected, atol=1e-6)
    from safetensors.torch import save_file

    save_file(weights, tmp_path / "w.safetensors")
    assert torch.allclose(yamlnet.predict(spec, tmp_path / "w.safetensors", x).outputs, expected, atol=1e-6)
    torch.save({"fc9.weight": torch.zeros(1)}, tmp_path / "other.pt")
    capsys.readouterr()
    assert main(["eval", str(spec), "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "does not fit the model" in capsys.readouterr().err


TABLE = """\
yamlnet: 1
name: prices
inputs:
  x: [N, 4]
nodes:
  fc: {op: Linear, out_features: 1}
outputs: {price: fc}
data: {dataset: tensors, train: TRAIN, target_column: price, task: regression, val_fraction: 0,
       batch_size: 8}
train: {max_steps: 3, loss: MSELoss, metrics: [mse], optimizer: {lr: 0.01}}
"""


def test_csv_journey_whole_number_regression_categories_and_a_header(tmp_path, capsys):
    """Whole-number prices trained as regression, a categorical column one-hot encoded,
    and predict on a new CSV with a header (columns in another order, no price): its rows
    are encoded as training encoded its own."""
    colors = ["red", "green", "blue"]
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["size", "color", "price"])
        for i in range(24):
            w.writerow([i, colors[i % 3], 100 + 10 * i])
    with open(tmp_path / "new.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["color", "size"], ["green", 5], ["red", 7]])
    spec = tmp_path / "prices.yaml"
    spec.write_text(TABLE.replace("TRAIN", str(tmp_path / "train.csv")))
    run = yamlnet.train(spec, out=tmp_path / "run")
    assert run.stopped == "max_steps"
    # by hand: size, then the colours one-hot in sorted order (blue, green, red)
    x = torch.tensor([[5.0, 0, 1, 0], [7.0, 0, 0, 1]])
    expected = by_hand(spec, run.last, x)
    pred = yamlnet.predict(spec, run.last, tmp_path / "new.csv")
    assert torch.allclose(pred.outputs, expected, atol=1e-5)
    capsys.readouterr()
    assert main(["predict", str(spec), "--checkpoint", str(run.last), "--input",
                 str(tmp_path / "new.csv")]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sample,price" and len(lines) == 3  # one column per output value
    assert float(lines[1].split(",")[1]) == pytest.approx(float(expected[0, 0]), abs=1e-4)


def test_segmentation_masks_written_as_pngs(tmp_path, capsys):
    spec = SPECS / "zoo" / "unet.yaml"
    small = {"base": 4, "data.size": 16, "data.val_size": 0, "train.max_steps": 1, "train.metrics": [],
             "train.monitor": None}
    run = yamlnet.train(spec, out=tmp_path / "run", **small)
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    pixels = {}
    for name in ("a", "b"):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / f"{name}.png")
        pixels[name] = arr
    argv = ["predict", str(spec), "--checkpoint", str(run.last), "--input", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "preds.csv"), "--set", "base=4"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    model = yamlnet.compile(spec, base=4)
    model.load_state_dict(torch.load(run.last, weights_only=True)["model"])
    for name, arr in pixels.items():
        x = torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)[None] / 255
        with torch.no_grad():
            want = model.eval()(x).argmax(1)[0]
        got = np.asarray(Image.open(tmp_path / "preds_masks" / f"{name}.png"))
        assert got.shape == (32, 32) and np.array_equal(got, want.numpy().astype(np.uint8))
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows == ["sample,mask", "a.png,a.png", "b.png,b.png"]
    assert main(argv[:-4]) == 2  # masks need --out
