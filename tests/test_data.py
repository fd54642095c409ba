"""Data for training: every registered source against an oracle (scikit-learn, files the
test writes), transforms by name, and the resumable, per-sample-seeded sampler."""

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data.distributed import DistributedSampler
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime.config import load_run_config
from yamlnet.runtime.data import EpochSampler, build_loaders, build_transforms, read_tensor_file
from yamlnet.runtime.errors import ConfigError


def data_cfg(data: dict, overrides=None) -> dict:
    text = yaml.safe_dump({"yamlnet": 1, "data": data})
    return load_run_config(load_spec_source(text).main, None, overrides).data


def loaders_of(data: dict, seed: int = 0, **kw):
    return build_loaders(data_cfg(data), seed=seed, **kw)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def config_error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loaders_of(data)
    return info.value


# -- digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_against_sklearn(sklearn_digits):
    loaders = loaders_of({"dataset": "digits", "shuffle": False})
    assert loaders.sizes == (1438, 359)
    train_idx, val_idx = loaders.train.dataset.base.indices, loaders.val.dataset.base.indices
    assert sorted(train_idx + val_idx) == list(range(1797))
    for loader, idx in ((loaders.train, train_idx), (loaders.val, val_idx)):
        x, y = collect(loader)  # unshuffled: in index order
        assert x.dtype == torch.float32 and x.shape == (len(idx), 1, 8, 8)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        expected = torch.tensor(sklearn_digits.data[idx] / 16.0, dtype=torch.float32)
        assert torch.equal(x, expected.view(-1, 1, 8, 8))
        assert torch.equal(y, torch.tensor(sklearn_digits.target[idx]))


@pytest.mark.parametrize("shipped", [True, False], ids=["shipped-file", "load_digits"])
def test_digits_arrays_equal_load_digits(sklearn_digits, monkeypatch, shipped):
    """Read from scikit-learn's file (no sklearn import), or through load_digits where
    that file is not found: the same arrays either way."""
    import importlib.util

    from yamlnet.runtime.data import digits_arrays

    if not shipped:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    pixels, labels = digits_arrays()
    assert np.array_equal(pixels, sklearn_digits.data) and np.array_equal(labels, sklearn_digits.target)


def test_digits_split_fixed_for_any_run_seed():
    def split(seed, **data):
        loaders = loaders_of({"dataset": "digits", **data}, seed=seed)
        return loaders.train.dataset.base.indices, loaders.val.dataset.base.indices

    assert split(0) == split(7)
    assert split(0)[1] != split(0, split_seed=1)[1]
    assert len(split(0, val_fraction=0.5)[1]) == round(1797 * 0.5)


def test_digits_flatten(sklearn_digits):
    loaders = loaders_of({"dataset": "digits", "flatten": True, "shuffle": False})
    x, _ = next(iter(loaders.train))
    assert x.shape == (64, 64)
    idx = loaders.train.dataset.base.indices[:64]
    assert torch.equal(x, torch.tensor(sklearn_digits.data[idx] / 16.0, dtype=torch.float32))


# -- synthetic -------------------------------------------------------------------------


def test_synthetic_classes():
    loaders = loaders_of({"dataset": "synthetic", "shape": [3, 4, 4], "classes": 5, "size": 40,
                          "val_size": 6})  # fmt: skip
    assert loaders.sizes == (40, 6)
    x, y = collect(loaders.train)
    assert x.shape == (40, 3, 4, 4) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(5)) and len(set(y.tolist())) > 1
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # standard normal


def test_synthetic_regression_and_no_validation():
    loaders = loaders_of({"dataset": "synthetic", "shape": [2], "classes": None,
                          "target_shape": [3], "size": 8, "val_size": 0})  # fmt: skip
    assert loaders.val is None and loaders.sizes == (8, 0)
    _, y = collect(loaders.train)
    assert y.shape == (8, 3) and y.dtype == torch.float32


def test_synthetic_deterministic_by_seed():
    def data(**kw):
        spec = {"dataset": "synthetic", "shape": [4], "size": 16, "shuffle": False, **kw}
        loaders = loaders_of(spec)
        return collect(loaders.train) + collect(loaders.val)

    first, again = data(), data()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], data(seed=1)[0])


# -- tensors ---------------------------------------------------------------------------

X = np.arange(24, dtype=np.float64).reshape(6, 4) / 10
Y = np.array([0, 1, 2, 0, 1, 2])
TENSOR_ARGS = {"x": "x", "y": "y", "target_column": -1}


def check_pairs(x: torch.Tensor, y: torch.Tensor, x_ref=X, y_ref=Y):
    assert x.dtype == torch.float32 and torch.equal(x, torch.tensor(x_ref, dtype=torch.float32))
    assert y.dtype == torch.int64 and y.tolist() == list(y_ref)


def test_tensors_pt_dict_and_tuple(tmp_path):
    torch.save({"x": torch.tensor(X), "y": torch.tensor(Y)}, tmp_path / "d.pt")
    torch.save((torch.tensor(X), torch.tensor(Y, dtype=torch.int32)), tmp_path / "t.pt")
    check_pairs(*read_tensor_file(str(tmp_path / "d.pt"), TENSOR_ARGS, "data.train"))
    check_pairs(*read_tensor_file(str(tmp_path / "t.pt"), TENSOR_ARGS, "data.train"))
    torch.save({"inputs": torch.tensor(X), "labels": torch.tensor(Y)}, tmp_path / "k.pt")
    args = {**TENSOR_ARGS, "x": "inputs", "y": "labels"}
    check_pairs(*read_tensor_file(str(tmp_path / "k.pt"), args, "data.train"))


def test_tensors_npz_through_the_loaders(tmp_path):
    np.savez(tmp_path / "train.npz", x=X, y=Y)
    np.savez(tmp_path / "val.npz", x=X[:2], y=Y[:2])
    loaders = loaders_of({"dataset": "tensors", "train": str(tmp_path / "train.npz"),
                          "val": str(tmp_path / "val.npz"), "shuffle": False})  # fmt: skip
    assert loaders.sizes == (6, 2)
    check_pairs(*collect(loaders.train))
    check_pairs(*collect(loaders.val), X[:2], Y[:2])
    split = loaders_of({"dataset": "tensors", "train": str(tmp_path / "train.npz"),
                        "val_fraction": 0.5})  # fmt: skip
    assert split.sizes == (3, 3)


def test_tensors_csv_with_and_without_header(tmp_path):
    table = np.column_stack([X[:, :2], Y, X[:, 2:]])  # the target in the middle
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in table) + "\n")
    named = tmp_path / "named.csv"
    named.write_text("a,b,label,c,d\n" + plain.read_text())
    x_ref = np.delete(table, 2, axis=1)
    for path, column in ((plain, 2), (named, 2), (named, "label"), (plain, -3)):
        check_pairs(*read_tensor_file(str(path), {**TENSOR_ARGS, "target_column": column},
                                      "data.train"), x_ref)  # fmt: skip
    x, y = read_tensor_file(str(plain), TENSOR_ARGS, "data.train")  # last column: floats
    # regression targets come as (N, 1), the shape of a one-unit output
    assert y.dtype == torch.float32 and torch.equal(y, torch.tensor(X[:, 3:4], dtype=torch.float32))
    assert x.shape == (6, 4)


@pytest.mark.parametrize("write, args, message", [
    (lambda p: torch.save({"x": torch.zeros(2), "y": torch.zeros(2)}, p / "f.pt"),
     {"x": "X"}, "no array 'X' (did you mean x?)"),
    (lambda p: np.savez(p / "f.npz", inputs=X, y=Y), {}, "no array 'x' (keys: inputs, y)"),
    (lambda p: (p / "f.csv").write_text("a,b\n1,2\n"), {"target_column": "c"},
     "no column named 'c'"),
    (lambda p: (p / "f.csv").write_text("1,2\n3,4\n"), {"target_column": 5},
     "no column 5; the file has 2"),
    (lambda p: (p / "f.csv").write_text("a,b\n"), {}, "no rows of numbers"),
    (lambda p: (p / "f.csv").write_text("1,2\n3,x\n"), {}, "could not convert"),
    (lambda p: (p / "f.txt").write_text("1,2\n"), {}, "cannot read '.txt' files (use .pt, .npz or .csv)"),
    (lambda p: (p / "f.pt").write_bytes(b"not a zip"), {}, "cannot read"),
])  # fmt: skip
def test_tensors_file_errors(tmp_path, write, args, message):
    write(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(ConfigError) as info:
        read_tensor_file(str(path), {**TENSOR_ARGS, **args}, "data.train")
    assert message in str(info.value) and str(info.value).startswith("data.train: ")
    assert "\n" not in str(info.value)


class Payload:  # a pickled object: torch.load(weights_only=True) must refuse it
    pass


def test_tensors_pickled_object_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(2, 2), "y": Payload()}, path)
    with pytest.raises(ConfigError) as info:
        read_tensor_file(str(path), TENSOR_ARGS, "data.train")
    text = str(info.value)
    assert text.startswith(f"data.train: cannot read {path}: ") and "\n" not in text


def test_missing_file_located(tmp_path):
    missing = tmp_path / "nope.pt"
    spec = f"yamlnet: 1\ndata:\n  dataset: tensors\n  train: {missing}\n"
    cfg = load_run_config(load_spec_source(spec).main)
    with pytest.raises(ConfigError) as info:
        build_loaders(cfg.data, seed=0)
    assert str(info.value) == f"data.train: no such file: {missing}"
    with pytest.raises(ConfigError) as info, cfg.located():  # as train.prepare reports it
        build_loaders(cfg.data, seed=0)
    assert str(info.value) == f"<spec>:4:3: data.train: no such file: {missing}"


# -- image_folder ----------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path):
    """cat/ and dog/, three 4x5 RGB PNGs each; returns (root, {path: (H, W, 3) uint8})."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k in range(3):
            arr = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
            path = tmp_path / "imgs" / cls / f"{k}.png"
            Image.fromarray(arr).save(path)
            pixels[str(path)] = arr
    return tmp_path / "imgs", pixels


def check_images(dataset, folder, pixels):
    for i in range(len(dataset)):
        x, y = dataset[(0, i)]
        index = dataset.base.indices[i] if hasattr(dataset.base, "indices") else i
        path, label = folder.samples[index]
        assert y == label == ("dog" in path)
        assert x.shape == (3, 4, 5) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        expected = torch.tensor(pixels[path]).permute(2, 0, 1).float() / 255
        assert torch.allclose(x, expected, atol=1e-6)


def test_image_folder(image_root):
    root, pixels = image_root
    whole = loaders_of({"dataset": "image_folder", "root": str(root), "val_fraction": 0})
    assert whole.val is None and whole.sizes == (6, 0)
    folder = whole.train.dataset.base
    assert folder.classes == ["cat", "dog"]
    check_images(whole.train.dataset, folder, pixels)
    split = loaders_of({"dataset": "image_folder", "root": str(root), "val_fraction": 0.5})
    assert split.sizes == (3, 3)
    folder = split.train.dataset.base.dataset
    check_images(split.train.dataset, folder, pixels)
    check_images(split.val.dataset, folder, pixels)
    x, y = next(iter(split.train))
    assert x.shape == (3, 3, 4, 5) and y.dtype == torch.int64


def test_image_folder_errors(tmp_path):
    err = config_error({"dataset": "image_folder", "root": str(tmp_path / "none")})
    assert str(err) == f"data.root: no such folder: {tmp_path / 'none'}"
    (tmp_path / "empty").mkdir()
    err = config_error({"dataset": "image_folder", "root": str(tmp_path / "empty")})
    assert str(err).startswith(f"data.root: cannot read images under {tmp_path / 'empty'}: ")


# -- torchvision (MNIST from tiny uncompressed IDX files) ------------------------------


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format: 0, 0, type 0x08 (ubyte), ndim; big-endian sizes; the bytes."""
    sizes = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    header = bytes([0, 0, 0x08, array.ndim]) + sizes
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (6, 4, 4)), "t10k": rng.integers(0, 256, (3, 4, 4))}
    labels = {"train": np.array([3, 1, 4, 1, 5, 9]), "t10k": np.array([2, 6, 5])}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    loaders = loaders_of({"dataset": "torchvision", "name": "MNIST", "root": str(tmp_path),
                          "shuffle": False})  # fmt: skip
    assert loaders.sizes == (6, 3)
    for loader, split in ((loaders.train, "train"), (loaders.val, "t10k")):
        x, y = collect(loader)
        assert x.shape == (len(labels[split]), 1, 4, 4) and x.dtype == torch.float32
        expected = torch.tensor(images[split], dtype=torch.float32).unsqueeze(1) / 255
        assert torch.allclose(x, expected, atol=1e-6)
        assert y.tolist() == labels[split].tolist()


def test_torchvision_not_found(tmp_path):
    err = config_error({"dataset": "torchvision", "name": "MNIST", "root": str(tmp_path)})
    assert str(err).startswith("data.root: MNIST: Dataset not found")
    assert str(err).endswith("(set data.download: true where the network allows it)")


# -- transforms ------------------------------------------------------------------------

SYNTH = {"dataset": "synthetic", "shape": [1, 4, 4], "size": 12, "val_size": 4, "shuffle": False}


def test_transforms_apply_to_train_only():
    plain = loaders_of(SYNTH)
    flipped = loaders_of({**SYNTH, "transforms": [{"name": "RandomHorizontalFlip", "p": 1.0}]})
    x0, y0 = collect(plain.train)
    x1, y1 = collect(flipped.train)
    assert torch.equal(x1, x0.flip(-1)) and not torch.equal(x1, x0) and torch.equal(y1, y0)
    assert torch.equal(collect(flipped.val)[0], collect(plain.val)[0])


def test_val_transforms_apply_to_val_only():
    plain = loaders_of(SYNTH)
    flipped = loaders_of({**SYNTH, "val_transforms": [{"name": "RandomVerticalFlip", "p": 1.0}]})
    assert torch.equal(collect(flipped.train)[0], collect(plain.train)[0])
    assert torch.equal(collect(flipped.val)[0], collect(plain.val)[0].flip(-2))


@pytest.mark.parametrize("items, expected", [
    ([{"name": "RandomHorizontalFlp"}],
     "data.transforms[0].name: unknown transform 'RandomHorizontalFlp' (did you mean RandomHorizontalFlip?)"),
    ([{"name": "RandomHorizontalFlip"}, {"name": "RandomVerticalFlip", "pp": 1}],
     "data.transforms[1].pp: RandomVerticalFlip takes no argument 'pp' (did you mean p?)"),
])  # fmt: skip
def test_transform_errors(items, expected):
    with pytest.raises(ConfigError) as info:
        build_transforms(items, "data.transforms")
    assert str(info.value) == expected
    assert str(config_error({**SYNTH, "transforms": items})) == expected


# -- the sampler -----------------------------------------------------------------------


@pytest.mark.parametrize("n, world, shuffle, drop_last", [
    (10, 1, True, False), (10, 2, True, False), (11, 2, True, False), (11, 3, False, False),
    (11, 2, True, True), (5, 4, True, False),
])  # fmt: skip
def test_sampler_matches_distributed_sampler(n, world, shuffle, drop_last):
    for rank in range(world):
        for epoch in (0, 3):
            ours = EpochSampler(n, shuffle=shuffle, seed=5, rank=rank, world=world,
                                drop_last=drop_last)  # fmt: skip
            theirs = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                        seed=5, drop_last=drop_last)  # fmt: skip
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert ours.indices() == list(theirs) and len(ours) == len(theirs)
            assert list(ours) == [(epoch, i) for i in theirs]


def test_sampler_epoch_is_a_pure_function_of_seed_and_epoch():
    fresh = EpochSampler(50, shuffle=True, seed=1)
    fresh.set_epoch(2)
    used = EpochSampler(50, shuffle=True, seed=1)
    for epoch in (0, 1, 4, 2):
        used.set_epoch(epoch, start=7)
        list(used)
    used.set_epoch(2)
    assert list(used) == list(fresh)
    assert sorted(fresh.indices()) == list(range(50))  # a permutation
    other = EpochSampler(50, shuffle=True, seed=1)
    other.set_epoch(3)
    assert other.indices() != fresh.indices()
    other = EpochSampler(50, shuffle=True, seed=2)
    other.set_epoch(2)
    assert other.indices() != fresh.indices()


def test_sampler_start_yields_the_tail():
    sampler = EpochSampler(23, shuffle=True, seed=0)
    sampler.set_epoch(4)
    full = list(sampler)
    for start in (0, 1, 10, 22, 23):
        sampler.set_epoch(4, start=start)
        assert list(sampler) == full[start:] and len(sampler) == 23 - start


@pytest.mark.parametrize("n", [20, 21])
def test_sampler_ranks_disjoint_and_covering(n):
    shards = []
    for rank in range(2):
        s = EpochSampler(n, shuffle=True, seed=3, rank=rank, world=2)
        s.set_epoch(1)
        shards.append(s.indices())
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    both = shards[0] + shards[1]
    if n % 2 == 0:
        assert not set(shards[0]) & set(shards[1])
    else:  # one sample padded: the first of the epoch's order appears twice
        whole = EpochSampler(n, shuffle=True, seed=3)
        whole.set_epoch(1)
        assert sorted(both) == sorted(list(range(n)) + [whole.indices()[0]])


# -- per-sample augmentation -----------------------------------------------------------

AUG = {"dataset": "synthetic", "shape": [1, 8, 8], "size": 24, "val_size": 0, "batch_size": 5,
       "transforms": [{"name": "RandomResizedCrop", "size": [8, 8], "scale": [0.2, 0.5]}]}  # fmt: skip


def epoch_batches(loaders, epoch: int, start: int = 0) -> torch.Tensor:
    loaders.train_sampler.set_epoch(epoch, start=start)
    return collect(loaders.train)[0]


def test_augmentation_depends_on_sample_and_epoch_only():
    serial = loaders_of(AUG, seed=4)
    rng = torch.get_rng_state()
    first = epoch_batches(serial, 1)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert torch.equal(epoch_batches(serial, 1, start=7), first[7:])  # resumed part-way
    order = serial.train_sampler.indices()
    base = serial.train.dataset.base
    assert not torch.equal(first[0], base[order[0]][0])  # it really augments
    epoch2 = epoch_batches(serial, 2)
    position = serial.train_sampler.indices().index(order[0])
    assert not torch.equal(epoch2[position], first[0])  # a new crop each epoch
    workers = loaders_of({**AUG, "num_workers": 2}, seed=4)
    assert torch.equal(epoch_batches(workers, 1), first)
    assert torch.equal(epoch_batches(workers, 1, start=7), first[7:])
