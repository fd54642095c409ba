"""The dense sources (runtime/dense.py, runtime/seq2seq.py): segmentation folders checked against the pixels
written, synthetic segmentation and seq2seq checked against Python's own reversed/sorted
and the shift-right relation, and every refusal as a located ConfigError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime.config import load_run_config
from yamlnet.runtime.data import apply_transform, build_splits
from yamlnet.runtime.errors import ConfigError
from yamlnet.runtime.seq2seq import BOS_ID, EOS_ID, shift_right


def splits_of(data: dict):
    doc = load_spec_source(yaml.safe_dump({"yamlnet": 1, "data": data})).main
    return build_splits(load_run_config(doc, None, None).data)


def refused(data: dict, path: str, *fragments: str) -> str:
    """Building `data` raises one ConfigError at `path` whose text holds every fragment."""
    with pytest.raises(ConfigError) as err:
        splits_of(data)
    text = str(err.value)
    assert err.value.diagnostics[0].path == path, text
    for fragment in fragments:
        assert fragment in text, text
    assert "\n" not in text
    return text


def samples(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


# -- segmentation_folder ----------------------------------------------------------------

RNG = np.random.default_rng(0)


def write_pair(root, stem, image, mask, image_ext=".png", mask_mode=None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask, mode=mask_mode).save(root / "masks" / f"{stem}.png")


def make_folder(root, n=3, size=(6, 5), classes=3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """n RGB images [H, W, 3] and their masks [H, W] of ids < classes, by stem."""
    written = {}
    for i in range(n):
        image = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
        mask = RNG.integers(0, classes, size, dtype=np.uint8)
        write_pair(root, f"s{i}", image, mask)
        written[f"s{i}"] = (image, mask)
    return written


def seg(root, **args) -> dict:
    return {"dataset": "segmentation_folder", "root": str(root), **args}


def test_folder_samples_are_the_pixels_written(tmp_path):
    train = make_folder(tmp_path / "train", n=3, classes=3)
    val = make_folder(tmp_path / "val", n=2, classes=3)
    splits = splits_of(seg(tmp_path / "train", val_root=str(tmp_path / "val"), classes=3))
    assert splits.fields.inputs == ("image",) and splits.fields.targets == ("mask",)
    assert splits.fields.kinds == {"image": "image", "mask": "mask"}
    assert splits.fields.info == {"classes": 3}
    for ds, written in ((splits.train, train), (splits.val, val)):
        assert len(ds) == len(written)
        for sample, (image, mask) in zip(samples(ds), written.values(), strict=True):
            assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 6, 5)
            assert torch.equal((sample["image"] * 255).round().to(torch.uint8),
                               torch.from_numpy(image).permute(2, 0, 1))  # fmt: skip
            assert sample["mask"].dtype == torch.int64
            assert torch.equal(sample["mask"], torch.from_numpy(mask).long())


def test_folder_holds_out_val_fraction_by_split_seed(tmp_path):
    make_folder(tmp_path, n=8)
    splits = splits_of(seg(tmp_path, val_fraction=0.25, split_seed=3))
    assert (len(splits.train), len(splits.val)) == (6, 2)
    again = splits_of(seg(tmp_path, val_fraction=0.25, split_seed=3))
    assert list(splits.val.indices) == list(again.val.indices)
    assert sorted(list(splits.train.indices) + list(splits.val.indices)) == list(range(8))


def test_folder_channels(tmp_path):
    gray = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    write_pair(tmp_path, "gray", gray, np.zeros((4, 4), np.uint8))
    write_pair(tmp_path, "rgb", rgb, np.zeros((4, 4), np.uint8))
    stored = samples(splits_of(seg(tmp_path, val_fraction=0)).train)  # stem order: gray, rgb
    assert [s["image"].shape[0] for s in stored] == [1, 3]
    as_rgb = samples(splits_of(seg(tmp_path, val_fraction=0, channels=3)).train)
    assert [s["image"].shape[0] for s in as_rgb] == [3, 3]
    expect = torch.from_numpy(gray).float().div(255).expand(3, 4, 4)
    assert torch.allclose(as_rgb[0]["image"], expect)
    as_gray = samples(splits_of(seg(tmp_path, val_fraction=0, channels=1)).train)
    assert [s["image"].shape[0] for s in as_gray] == [1, 1]


def test_sixteen_bit_gray_keeps_its_depth(tmp_path):
    gray = np.array([[0, 257, 65535], [1000, 30000, 65534]], np.uint16)
    write_pair(tmp_path, "a", gray, np.zeros((2, 3), np.uint8))
    for channels, depth in ((None, 1), (3, 3)):
        image = splits_of(seg(tmp_path, val_fraction=0, channels=channels)).train[0]["image"]
        expect = torch.from_numpy(gray.astype(np.float32) / 65535).expand(depth, 2, 3)
        assert torch.allclose(image, expect)


def test_palette_images_give_colours_and_palette_masks_give_ids(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        im = Image.fromarray(ids, mode="P")
        im.putpalette(palette)
        im.save(tmp_path / folder / "a.png")
    sample = splits_of(seg(tmp_path, val_fraction=0, classes=3)).train[0]
    colours = torch.tensor(palette[:9], dtype=torch.float32).view(3, 3) / 255  # [id, RGB]
    assert torch.equal(sample["image"], colours[torch.from_numpy(ids).long()].permute(2, 0, 1))
    assert torch.equal(sample["mask"], torch.from_numpy(ids).long())


def test_ignore_index_is_allowed_beyond_classes(tmp_path):
    mask = np.array([[0, 1], [255, 1]], np.uint8)
    write_pair(tmp_path, "a", np.zeros((2, 2, 3), np.uint8), mask)
    sample = splits_of(seg(tmp_path, val_fraction=0, classes=2)).train[0]
    assert sample["mask"].tolist() == [[0, 1], [255, 1]]
    refused(seg(tmp_path, classes=2, ignore_index=None), "data.root", "holds class id 255",
            "classes is 2")  # fmt: skip


def test_folder_dataset_pickles_for_workers(tmp_path):
    make_folder(tmp_path, n=2)
    train = splits_of(seg(tmp_path, val_fraction=0)).train
    copy = pickle.loads(pickle.dumps(train))
    for a, b in zip(samples(train), samples(copy), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def bad_folder(tmp_path, case: str):
    """A folder with one defect; returns the data: dict that should be refused."""
    image, mask = np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8)
    if case == "no_folder":
        return seg(tmp_path / "nowhere")
    if case in ("no_masks", "no_images"):
        (tmp_path / ("images" if case == "no_masks" else "masks")).mkdir()
        return seg(tmp_path)
    if case == "empty":
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
        return seg(tmp_path)
    write_pair(tmp_path, "a", image, mask)
    if case == "no_mask_for":
        for stem in ("b", "c", "d", "e"):
            Image.fromarray(image).save(tmp_path / "images" / f"{stem}.jpg")
    elif case == "no_image_for":
        Image.fromarray(mask).save(tmp_path / "masks" / "z.png")
    elif case == "size":
        Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "masks" / "a.png")
    elif case == "rgb_mask":
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "masks" / "a.png")
    elif case == "id":
        Image.fromarray(np.full((4, 6), 7, np.uint8)).save(tmp_path / "masks" / "a.png")
    elif case == "jpeg_mask":
        (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "a.jpg")
    elif case == "twice":
        Image.fromarray(image).save(tmp_path / "images" / "a.jpg")
    elif case == "int32_image":
        (tmp_path / "images" / "a.png").unlink()
        Image.fromarray(np.zeros((4, 6), np.int32)).save(tmp_path / "images" / "a.tif")
    elif case == "unreadable":
        (tmp_path / "images" / "a.png").write_bytes(b"not an image")
    return seg(tmp_path, classes=5)


@pytest.mark.parametrize("case, fragments", [
    ("no_folder", ["no such folder:", "nowhere"]),
    ("no_masks", ["has no masks/ sub-folder"]),
    ("no_images", ["has no images/ sub-folder"]),
    ("empty", ["no images in", "images"]),
    ("no_mask_for", ["4 images without a mask: b.jpg, c.jpg, d.jpg and 1 more"]),
    ("no_image_for", ["1 mask without an image: z.png"]),
    ("int32_image", ["a.tif has PIL mode I (32-bit)"]),
    ("size", ["a.png is 4x5 but its image", "is 4x6"]),
    ("rgb_mask", ["a.png has PIL mode RGB, not a single channel"]),
    ("id", ["a.png holds class id 7, but classes is 5"]),
    ("jpeg_mask", ["a.jpg: a JPEG mask"]),
    ("twice", ["two files with the stem 'a'", "a.jpg, a.png"]),
    ("unreadable", ["cannot read", "a.png"]),
])  # fmt: skip
def test_folder_refusals(tmp_path, case, fragments):
    refused(bad_folder(tmp_path, case), "data.root", *fragments)


def test_val_root_refusals_are_located_there(tmp_path):
    make_folder(tmp_path / "train", n=1)
    refused(seg(tmp_path / "train", val_root=str(tmp_path / "gone")), "data.val_root",
            "no such folder")  # fmt: skip


# -- transforms move images and masks together ------------------------------------------


def test_flip_moves_image_and_mask_alike(tmp_path):
    from torchvision.transforms import v2

    make_folder(tmp_path, n=1, size=(5, 7))
    splits = splits_of(seg(tmp_path, val_fraction=0))
    sample = splits.train[0]
    out = apply_transform(v2.RandomHorizontalFlip(p=1), sample, splits.fields)
    assert torch.equal(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["mask"], sample["mask"].flip(-1))
    assert type(out["mask"]) is torch.Tensor and out["mask"].dtype == torch.int64


def test_resize_keeps_mask_ids(tmp_path):
    from torchvision.transforms import v2

    mask = RNG.choice(np.array([0, 3, 7], np.uint8), (9, 9))
    write_pair(tmp_path, "a", RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8), mask)
    splits = splits_of(seg(tmp_path, val_fraction=0))
    out = apply_transform(v2.Resize((13, 11)), splits.train[0], splits.fields)
    assert out["image"].shape == (3, 13, 11) and out["mask"].shape == (13, 11)
    assert set(out["mask"].unique().tolist()) <= {0, 3, 7}


# -- synthetic_segmentation -------------------------------------------------------------


def synth_seg(**args) -> dict:
    return {"dataset": "synthetic_segmentation", "size": 64, "val_size": 16, **args}


def table(ds) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples(ds)]) for k in ds[0]}


def test_synthetic_segmentation_samples():
    splits = splits_of(synth_seg(image_size=[16, 24], channels=1, classes=4))
    assert (len(splits.train), len(splits.val)) == (64, 16)
    assert splits.fields.info == {"classes": 4} and splits.fields.kinds["mask"] == "mask"
    data = table(splits.train)
    assert data["image"].shape == (64, 1, 16, 24) and data["image"].dtype == torch.float32
    assert data["mask"].shape == (64, 16, 24) and data["mask"].dtype == torch.int64
    assert 0 <= data["image"].min() and data["image"].max() <= 1
    assert set(data["mask"].unique().tolist()) == {0, 1, 2, 3}
    assert bool((data["mask"].flatten(1) > 0).any(1).all())  # every image has a shape


@pytest.mark.parametrize("channels, classes", [(3, 2), (3, 5), (1, 4)])
def test_synthetic_segmentation_colour_identifies_the_class(channels, classes):
    """Learnable by construction: labelling each pixel by its nearest class-mean colour,
    with no spatial context at all, already reaches mIoU >= 0.9."""
    data = table(splits_of(synth_seg(channels=channels, classes=classes)).train)
    pixels = data["image"].permute(0, 2, 3, 1).reshape(-1, channels)  # [N*H*W, C]
    labels = data["mask"].reshape(-1)
    means = torch.stack([pixels[labels == c].mean(0) for c in range(classes)])  # [classes, C]
    guess = torch.cdist(pixels, means).argmin(1)
    ious = [((guess == c) & (labels == c)).sum() / ((guess == c) | (labels == c)).sum()
            for c in range(classes)]  # fmt: skip
    assert float(torch.stack(ious).mean()) >= 0.9


def test_synthetic_segmentation_is_deterministic_by_seed():
    a, b = table(splits_of(synth_seg()).train), table(splits_of(synth_seg()).train)
    c = table(splits_of(synth_seg(seed=1)).train)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["mask"], c["mask"])
    other_val = table(splits_of(synth_seg(val_size=3)).train)  # train ignores val_size
    assert torch.equal(a["image"], other_val["image"])


def test_synthetic_segmentation_refusals():
    refused(synth_seg(size=2**20, image_size=[256, 256]), "data.size", "over 2**28 values")
    refused(synth_seg(classes=1), "data.classes")


# -- seq2seq, synthetic ------------------------------------------------------------------


def synth_seq(**args) -> dict:
    return {"dataset": "seq2seq", "size": 50, "val_size": 10, **args}


def check_teacher_forcing(sample: dict) -> None:
    target, labels = sample["target"].tolist(), sample["labels"].tolist()
    assert len(target) == len(labels) and target[0] == BOS_ID
    assert all(target[t] == labels[t - 1] for t in range(1, len(labels)))


@pytest.mark.parametrize("task, oracle", [
    ("reverse", lambda s: list(reversed(s))), ("copy", list), ("sort", sorted),
])  # fmt: skip
def test_synthetic_tasks_match_python(task, oracle):
    splits = splits_of(synth_seq(task=task, length=6, vocab=9))
    assert (len(splits.train), len(splits.val)) == (50, 10)
    assert splits.fields.inputs == ("source", "target") and splits.fields.targets == ("labels",)
    assert splits.fields.info == {"source_vocab": 9, "target_vocab": 9, "pad_id": 0,
                                  "bos_id": 1, "eos_id": 2}  # fmt: skip
    for sample in samples(splits.train) + samples(splits.val):
        source = sample["source"].tolist()
        assert len(source) == 6 and all(3 <= t < 9 for t in source)
        assert sample["labels"].tolist() == oracle(source) + [EOS_ID]
        assert sample["source"].dtype == sample["labels"].dtype == torch.int64
        check_teacher_forcing(sample)


def test_synthetic_seq2seq_is_deterministic_by_seed():
    a, b = table(splits_of(synth_seq()).train), table(splits_of(synth_seq()).train)
    c = table(splits_of(synth_seq(seed=7)).train)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["source"], c["source"])


def test_shift_right():
    labels = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])
    assert shift_right(labels).tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]


# -- seq2seq, files ------------------------------------------------------------------------


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def files(tmp_path, sources: list[str], targets: list[str], **args) -> dict:
    return {"dataset": "seq2seq", "source_path": write_lines(tmp_path / "src.txt", sources),
            "target_path": write_lines(tmp_path / "tgt.txt", targets), **args}  # fmt: skip


def test_files_are_padded_with_eos_and_shifted(tmp_path):
    data = files(tmp_path, ["5 6 7", "9"], ["10 11", "12 13 14 15"],
                 val_source_path=write_lines(tmp_path / "vs.txt", ["3 4 5 6"]),
                 val_target_path=write_lines(tmp_path / "vt.txt", ["8"]))  # fmt: skip
    splits = splits_of(data)
    train, val = samples(splits.train), samples(splits.val)
    # S = 4 (the val source), T = 4 + 1 (EOS): both splits share them
    assert train[0]["source"].tolist() == [5, 6, 7, 0]
    assert train[1]["source"].tolist() == [9, 0, 0, 0]
    assert train[0]["labels"].tolist() == [10, 11, 2, 0, 0]
    assert train[1]["labels"].tolist() == [12, 13, 14, 15, 2]
    assert val[0]["source"].tolist() == [3, 4, 5, 6]
    assert val[0]["labels"].tolist() == [8, 2, 0, 0, 0]
    for sample in train + val:
        check_teacher_forcing(sample)
    assert splits.fields.info["source_vocab"] == 10 and splits.fields.info["target_vocab"] == 16


def test_files_hold_out_val_fraction(tmp_path):
    lines = [str(3 + i) for i in range(10)]
    splits = splits_of(files(tmp_path, lines, lines, val_fraction=0.3))
    assert (len(splits.train), len(splits.val)) == (7, 3)
    pairs = [(s["source"].tolist(), s["labels"].tolist()) for s in samples(splits.val)]
    assert all(labels == source + [EOS_ID] for source, labels in pairs)  # the pairs stay pairs


@pytest.mark.parametrize("sources, targets, path, fragments", [
    (["3 4", "5 x"], ["3", "4"], "data.source_path", ["src.txt:2: 'x' is not an integer token id"]),
    (["3 4", "5 1.5"], ["3", "4"], "data.source_path", ["src.txt:2: '1.5'"]),
    (["3 4"], ["3 2"], "data.target_path", ["tgt.txt:1: token id 2 is reserved"]),
    (["3 -1"], ["3"], "data.source_path", ["src.txt:1: token id -1"]),
    (["3", "4", "5"], ["3", "4"], "data.target_path", ["src.txt has 3 lines but", "tgt.txt has 2"]),
    ([], ["3"], "data.source_path", ["src.txt is empty"]),
    (["3", "3 4 5 6 7"], ["3", "4"], "data.source_path",
     ["src.txt:2: 5 tokens exceed max_length 4"]),
    (["3"], ["3 4 5 6"], "data.target_path", ["tgt.txt:1: 4 tokens + EOS exceed max_length 4"]),
])  # fmt: skip
def test_file_refusals(tmp_path, sources, targets, path, fragments):
    refused(files(tmp_path, sources, targets, max_length=4), path, *fragments)


def test_missing_and_unpaired_files(tmp_path):
    refused({"dataset": "seq2seq", "source_path": str(tmp_path / "no.txt"),
             "target_path": str(tmp_path / "no.txt")}, "data.source_path", "no such file")  # fmt: skip
    refused({"dataset": "seq2seq", "target_path": write_lines(tmp_path / "t.txt", ["3"])},
            "data.source_path", "target_path is set but source_path is not")  # fmt: skip
    refused(files(tmp_path, ["3"], ["3"], val_source_path=str(tmp_path / "src.txt")),
            "data.val_target_path", "val_source_path is set but val_target_path is not")  # fmt: skip


def test_synthetic_seq2seq_cap():
    refused(synth_seq(size=2**26, length=8), "data.size", "over 2**28 values")
