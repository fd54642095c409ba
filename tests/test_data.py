"""Data for training: every registered source against an oracle (scikit-learn, files the
test writes), transforms by name, and the resumable, per-sample-seeded sampler."""

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data.distributed import DistributedSampler
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime.config import load_run_config
from yamlnet.runtime.data import EpochSampler, build_loaders, build_splits, build_transforms
from yamlnet.runtime.errors import ConfigError
from yamlnet.runtime.sources import read_tensor_file
from yamlnet.runtime.tables import encode_table


def data_cfg(data: dict, overrides=None) -> dict:
    text = yaml.safe_dump({"yamlnet": 1, "data": data})
    return load_run_config(load_spec_source(text).main, None, overrides).data


def loaders_of(data: dict, seed: int = 0, **kw):
    return build_loaders(data_cfg(data), seed=seed, **kw)


def pair(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-input source's batch as (inputs, targets)."""
    x, y = batch.values()
    return x, y


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*map(pair, loader), strict=True)
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

    from yamlnet.runtime.sources import digits_arrays

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
    x, _ = pair(next(iter(loaders.train)))
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


# -- tensors: several arrays, CSV tables -----------------------------------------------


def splits_of(data: dict):
    return build_splits(data_cfg({"dataset": "tensors", **data}))


def write_csv(path, header: list[str] | None, rows: list[list]) -> str:
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def columns_of(ds) -> dict[str, torch.Tensor]:
    """A Table's columns, or a Subset's rows of them, in index order."""
    if hasattr(ds, "columns"):
        return ds.columns
    return {k: v[ds.indices] for k, v in ds.dataset.columns.items()}


def test_tensors_npz_several_arrays(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(8, 2, 2)).astype(np.float32)
    t, u = np.arange(8) % 3, rng.normal(size=(8, 1))
    np.savez(tmp_path / "train.npz", a=a, b=b, t=t, u=u, unused=np.zeros(8))
    np.savez(tmp_path / "val.npz", a=a[:2], b=b[:2], t=t[:2], u=u[:2])
    splits = splits_of({"train": str(tmp_path / "train.npz"), "val": str(tmp_path / "val.npz"),
                        "input_fields": ["a", "b"], "target_fields": ["t", "u"]})  # fmt: skip
    assert splits.fields.inputs == ("a", "b") and splits.fields.targets == ("t", "u")
    got = splits.train.columns
    assert set(got) == {"a", "b", "t", "u"}
    for name, ref in (("a", a), ("b", b), ("u", u)):
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], torch.tensor(ref, dtype=torch.float32))
    assert got["t"].dtype == torch.int64 and got["t"].tolist() == t.tolist()
    assert torch.equal(splits.val.columns["b"], torch.tensor(b[:2]))
    as_floats = splits_of({"train": str(tmp_path / "train.npz"), "input_fields": ["a"],
                           "target_fields": ["t"], "task": "regression"})  # fmt: skip
    assert as_floats.train.dataset.columns["t"].dtype == torch.float32


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    """scikit-learn's diabetes data with a header; its targets are whole numbers."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    assert np.all(y == np.round(y))  # the case under test: whole-number regression targets
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    header = [f"f{i}" for i in range(x.shape[1])] + ["progression"]
    write_csv(path, header, [[repr(float(v)) for v in row] for row in np.column_stack([x, y])])
    return str(path), x, y


def test_csv_whole_number_regression_targets(diabetes_csv):
    path, x, y = diabetes_csv
    splits = splits_of({"train": path, "target_column": "progression", "task": "regression",
                        "val_fraction": 0})  # fmt: skip
    got = splits.train.columns
    assert got["y"].dtype == torch.float32 and got["y"].shape == (len(y), 1)
    assert torch.equal(got["y"], torch.tensor(y[:, None], dtype=torch.float32))
    assert torch.equal(got["x"], torch.tensor(x, dtype=torch.float32))
    guessed = splits_of({"train": path, "target_column": "progression", "val_fraction": 0})
    assert guessed.train.columns["y"].dtype == torch.int64  # without task: whole numbers: classes


COLORS = ["red", "blue", "red", "green", "blue", "red"]


def test_csv_categorical_onehot_from_the_train_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["size", "color", "price"],
                      [[i, c, 10 * i] for i, c in enumerate(COLORS)])  # fmt: skip
    val = write_csv(tmp_path / "val.csv", ["price", "color", "size"],
                    [[5, "green", 1], [6, "purple", 2], [7, "red", 3]])  # fmt: skip
    splits = splits_of({"train": train, "val": val, "target_column": "price",
                        "task": "regression"})  # fmt: skip
    assert splits.fields.info["encoding"]["codes"]["color"] == {
        "kind": "onehot", "categories": ["blue", "green", "red"]}  # fmt: skip
    eye = {"blue": [1, 0, 0], "green": [0, 1, 0], "red": [0, 0, 1]}
    expected = [[i, *eye[c]] for i, c in enumerate(COLORS)]
    assert splits.train.columns["x"].tolist() == expected
    # 'purple' is not among the training file's categories: a row of zeros
    assert splits.val.columns["x"].tolist() == [[1, 0, 1, 0], [2, 0, 0, 0], [3, 0, 0, 1]]
    assert splits.val.columns["y"].tolist() == [[5.0], [6.0], [7.0]]


def test_csv_categories_from_the_train_split_only(tmp_path):
    names = [f"c{i:02d}" for i in range(20)]  # every row its own category
    path = write_csv(tmp_path / "t.csv", ["color", "y"], [[c, i % 2] for i, c in enumerate(names)])
    splits = splits_of({"train": path, "val_fraction": 0.25, "split_seed": 3,
                        "categorical": {"color": "onehot"}})  # fmt: skip
    train_idx, val_idx = splits.train.indices, splits.val.indices
    categories = splits.fields.info["encoding"]["codes"]["color"]["categories"]
    assert categories == sorted(names[i] for i in train_idx) and len(val_idx) == 5
    x = splits.train.dataset.columns["x"]
    assert x.shape == (20, 15)
    assert torch.equal(x[train_idx], torch.eye(15)[[categories.index(names[i]) for i in train_idx]])
    assert not x[val_idx].any()  # categories seen only in the held-out rows: all zeros
    index = splits_of({"train": path, "val_fraction": 0.25, "split_seed": 3,
                       "categorical": {"color": "index"}, "input_fields": ["color"]})  # fmt: skip
    ids = index.train.dataset.columns["color"]
    assert ids.dtype == torch.int64 and ids.shape == (20,)
    assert ids[train_idx].tolist() == [categories.index(names[i]) for i in train_idx]
    assert ids[val_idx].tolist() == [15] * 5  # unseen: len(categories)


def test_csv_standardize_with_train_split_statistics(tmp_path):
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.normal(5, 3, 40), rng.uniform(0, 100, 40), rng.normal(size=40)])
    colors = [COLORS[i % len(COLORS)] for i in range(40)]
    rows = [[*map(repr, map(float, values)), c] for values, c in zip(table, colors, strict=True)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "target", "color"], rows)
    splits = splits_of({"train": path, "standardize": True, "val_fraction": 0.25,
                        "target_column": "target",
                        "input_fields": {"num": ["a", "b"], "color": ["color"]}})  # fmt: skip
    train_idx, val_idx = splits.train.indices, splits.val.indices
    from yamlnet.runtime.data import split

    part, _ = split(list(range(40)), 0.25, 0)
    assert train_idx == part.indices  # the split the source promises
    codes = splits.fields.info["encoding"]["codes"]
    mean, std = table[train_idx, :2].mean(axis=0), table[train_idx, :2].std(axis=0)
    assert [codes["a"]["mean"], codes["b"]["mean"]] == pytest.approx(mean, rel=1e-12)
    assert [codes["a"]["std"], codes["b"]["std"]] == pytest.approx(std, rel=1e-12)
    num = splits.train.dataset.columns["num"]
    expected = torch.tensor((table[:, :2] - mean) / std, dtype=torch.float32)
    assert torch.allclose(num, expected, atol=1e-6)
    zero = torch.zeros(2, dtype=torch.float64)
    assert torch.allclose(num[train_idx].double().mean(0), zero, atol=1e-6)
    assert not torch.allclose(num[val_idx].double().mean(0), zero, atol=1e-3)
    assert set(splits.train.dataset.columns["color"].unique().tolist()) == {0.0, 1.0}  # not scaled
    assert splits.train.dataset.columns["y"].dtype == torch.float32  # not whole: regression


def test_csv_two_input_fields_feed_a_two_input_spec(tmp_path):
    from yamlnet.runtime.tasks import resolve_feeds

    path = write_csv(tmp_path / "t.csv", ["age", "size", "color", "price"],
                     [[20 + i, i / 4, c, 100 + i] for i, c in enumerate(COLORS)])  # fmt: skip
    data = {"dataset": "tensors", "train": path, "task": "regression", "val_fraction": 0,
            "input_fields": {"num": ["age", "size"], "color": ["color"]},
            "target_fields": ["price"], "batch_size": 6, "shuffle": False}  # fmt: skip
    loaders = loaders_of(data)
    assert resolve_feeds(["num", "color"], loaders.fields, data_cfg(data)) == ("num", "color")
    batch = next(iter(loaders.train))
    assert batch["num"].shape == (6, 2) and batch["color"].shape == (6, 3)
    assert batch["num"][:, 0].tolist() == [20, 21, 22, 23, 24, 25]
    assert batch["price"].shape == (6, 1) and loaders.fields.targets == ("price",)


def test_csv_classification_labels_as_class_ids(tmp_path):
    labels = ["setosa", "virginica", "setosa", "versicolor"]
    path = write_csv(tmp_path / "t.csv", ["a", "species"], [[i, s] for i, s in enumerate(labels)])
    splits = splits_of({"train": path, "task": "classification", "val_fraction": 0})
    classes = ["setosa", "versicolor", "virginica"]  # sorted
    assert splits.fields.info["classes"] == classes
    y = splits.train.columns["y"]
    assert y.dtype == torch.int64 and y.tolist() == [classes.index(s) for s in labels]
    halves = write_csv(tmp_path / "h.csv", None, [[1, 1.5], [2, -0.5], [3, 1.5]])
    splits = splits_of({"train": halves, "task": "classification", "val_fraction": 0})
    assert splits.train.columns["y"].tolist() == [1, 0, 1]
    assert splits.fields.info["classes"] == ["-0.5", "1.5"]
    ids = splits_of({"train": halves, "task": "regression", "val_fraction": 0})
    assert ids.train.columns["y"].tolist() == [[1.5], [-0.5], [1.5]]


def test_encode_table_reproduces_the_training_inputs(tmp_path):
    rows = [[20 + i, i / 3, c, f"s{i % 4}", 100 + 7 * i] for i, c in enumerate(COLORS * 3)]
    path = write_csv(tmp_path / "t.csv", ["age", "size", "color", "shop", "price"], rows)
    splits = splits_of({"train": path, "standardize": True, "val_fraction": 0.3,
                        "task": "regression", "target_column": "price",
                        "categorical": {"shop": "index"}})  # fmt: skip
    trained = splits.train.dataset.columns
    encoding = splits.fields.info["encoding"]
    again = encode_table(path, encoding)
    assert set(again) == {"x", "y"} and all(torch.equal(again[k], trained[k]) for k in again)
    # a file without the target column, its columns in another order: the same inputs
    names = ["age", "size", "color", "shop", "price"]
    order = ["shop", "color", "age", "size"]
    reordered = [[r[names.index(n)] for n in order] for r in rows]
    inputs = encode_table(write_csv(tmp_path / "new.csv", order, reordered), encoding)
    assert set(inputs) == {"x"} and torch.equal(inputs["x"], trained["x"])
    header = ["age", "size", "color", "shop"]
    as_rows = encode_table([header] + [[str(v) for v in r[:4]] for r in rows], encoding)
    assert torch.equal(as_rows["x"], trained["x"])


def test_encode_table_without_a_header(tmp_path):
    rows = [[i, c, i % 2] for i, c in enumerate(COLORS)]
    path = write_csv(tmp_path / "t.csv", None, rows)
    splits = splits_of({"train": path, "val_fraction": 0})
    encoding = splits.fields.info["encoding"]
    assert encoding["header"] is False and encoding["columns"] == ["0", "1", "2"]
    new = write_csv(tmp_path / "new.csv", None, [r[:2] for r in rows])  # no target column
    assert torch.equal(encode_table(new, encoding)["x"], splits.train.columns["x"])
    assert torch.equal(encode_table(path, encoding)["y"], splits.train.columns["y"])


def test_encoding_is_plain_data(tmp_path):
    import json

    path = write_csv(tmp_path / "t.csv", ["a", "c", "y"], [[i, COLORS[i], "no"] for i in range(6)])
    info = splits_of({"train": path, "standardize": True, "task": "classification"}).fields.info
    assert json.loads(json.dumps(info)) == info
    assert info["encoding"]["codes"]["y"] == {"kind": "class", "classes": ["no"]}


def csv_error(tmp_path, files: dict[str, str], **data) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    paths = {k: str(tmp_path / v) for k, v in data.items() if k in ("train", "val")}
    with pytest.raises(ConfigError) as info:
        splits_of({**data, **paths})
    text = str(info.value)
    assert "\n" not in text
    return text.replace(str(tmp_path) + "/", "")


HOUSES = "age,size,color,price\n30,1.5,red,100\n40,2.5,blue,200\n50,3,green,300\n"


@pytest.mark.parametrize("files, data, expected", [
    ({"t.csv": HOUSES}, {"input_fields": ["agee", "size"]},
     "data.train: cannot read t.csv: no column named 'agee' (did you mean age?)"),
    ({"t.csv": HOUSES}, {"target_fields": ["cost"]},
     "data.train: cannot read t.csv: no column named 'cost' (columns: age, size, color, price)"),
    ({"t.csv": HOUSES, "v.csv": "age,color,price\n1,red,2\n"}, {"val": "v.csv"},
     "data.val: cannot read v.csv: no column named 'size' (columns: age, color, price)"),
    ({"t.csv": "a,b,c\n1,2,3\n4,5\n"}, {},
     "data.train: cannot read t.csv: line 3 has 2 values; the header has 3"),
    ({"t.csv": "1,2,3\n4,5,6\n\n7,8,9,10\n"}, {},
     "data.train: cannot read t.csv: line 4 has 4 values; line 1 has 3"),
    ({"t.csv": "a,price\n1,10\n2,abc\n"}, {"task": "regression"},
     "data.train: cannot read t.csv: could not convert 'abc' in column 'price' (line 3) to a "
     "number (task: regression needs a number in every row)"),
    ({"t.csv": "a,label\n1,cat\n2,dog\n"}, {},
     "data.train: cannot read t.csv: could not convert 'cat' in column 'label' (line 2) to a "
     "number (set data.task: classification to read text labels as classes)"),
    ({"t.csv": ""}, {}, "data.train: cannot read t.csv: no rows of numbers (the file is empty)"),
    ({"t.csv": "a,b\n"}, {},
     "data.train: cannot read t.csv: no rows of numbers (the file has only a header)"),
    ({"t.csv": "age,y\n1,0\n2,1\nnan,0\n"}, {},
     "data.train: cannot read t.csv: column 'age' has a missing or infinite value on line 4: "
     "'nan' (fill in or drop such rows)"),
    ({"t.csv": "age,y\n1,0\n,1\nNA,0\n"}, {},
     "data.train: cannot read t.csv: column 'age' has a missing or infinite value on line 3: "
     "'' (fill in or drop such rows)"),
    ({"t.csv": "age,y\n1,0\n2,1\n"}, {"target_fields": ["y"], "task": "regression",
                                     "val": "v.csv"}, None),
    ({"t.csv": "zip,y\n" + "".join(f"z{i},1\n" for i in range(1001))}, {"val_fraction": 0},
     "data.train: cannot read t.csv: column 'zip' has 1001 categories; one-hot takes at most "
     "1000 (set data.categorical: {zip: index} and feed it to an Embedding)"),
    ({"t.csv": "age,y\n1,0\nold,1\n2,0\n"}, {},
     "data.train: cannot read t.csv: could not convert 'old' in column 'age' (line 3) to a "
     "number (set data.categorical: {age: onehot} to read its values as categories)"),
    ({"t.csv": HOUSES}, {"categorical": {"colr": "index"}},
     "data.categorical.colr: 'colr' is not an input column (did you mean color?)"),
    ({"t.csv": HOUSES}, {"input_fields": ["age", "price"], "target_column": "price"},
     "data.input_fields: column 'price' is both an input and a target"),
    ({"t.csv": HOUSES}, {"input_fields": {"price": ["age"]}, "target_fields": ["price"]},
     "data.target_fields: field 'price' is both an input and a target (name the fields apart)"),
    ({"t.csv": HOUSES}, {"target_fields": {"both": ["age", "price"]}},
     "data.target_fields.both: target field 'both' groups 2 columns, but class labels take one "
     "column each (set data.task: regression, or give each column its own field)"),
    ({"t.csv": "a,a\n1,2\n"}, {},
     "data.train: cannot read t.csv: the header names column 'a' twice"),
    ({"t.csv": "c,y\nred,x\nblue,y\n", "v.csv": "c,y\nred,z\n"},
     {"val": "v.csv", "task": "classification"},
     "data.val: cannot read v.csv: column 'y' has 'z' on line 2, not one of the training file's "
     "classes (classes: x, y)"),
    ({"t.csv": "a,y\n1,0\n2,1\n", "v.csv": "a,y\n3,1.5\n"}, {"val": "v.csv"},
     "data.val: cannot read v.csv: column 'y' has '1.5' on line 2, not a class id (a whole "
     "number from 0 below 2,147,483,648)"),
    ({"t.csv": "a,y\n1,0\n", "v.npz": ""}, {"val": "v.npz"},
     "data.val: train and val files differ in format (give both as .csv, or both as .pt/.npz)"),
])  # fmt: skip
def test_csv_errors(tmp_path, files, data, expected):
    if expected is None:  # the val file is missing
        expected = f"data.val: no such file: {tmp_path / 'v.csv'}".replace(str(tmp_path) + "/", "")
    assert csv_error(tmp_path, files, train="t.csv", **data) == expected


def test_array_errors(tmp_path):
    np.savez(tmp_path / "f.npz", a=X, b=X, t=Y)
    npz = str(tmp_path / "f.npz")

    def error(**data) -> str:
        with pytest.raises(ConfigError) as info:
            splits_of({"train": npz, **data})
        return str(info.value).replace(str(tmp_path) + "/", "")

    assert error(input_fields=["a", "bb"]) == \
        "data.train: cannot read f.npz: no array 'bb' (did you mean b?)"
    assert error(input_fields=["a"], target_fields=["y"]) == \
        "data.train: cannot read f.npz: no array 'y' (keys: a, b, t)"  # fmt: skip
    assert error(standardize=True) == \
        "data.standardize: standardize applies to .csv files (.pt/.npz arrays are read as they are)"
    assert error(input_fields={"x": ["a", "b"]}) == \
        "data.input_fields: a mapping groups .csv columns; .pt/.npz take a list of keys"
    np.savez(tmp_path / "f.npz", x=X, y=X)
    assert error(task="classification") == ("data.train: cannot read f.npz: target 'y' holds "
                                            "numbers that are not whole; task: classification "
                                            "needs class ids")  # fmt: skip
    torch.save((torch.tensor(X), torch.tensor(Y)), tmp_path / "p.pt")
    with pytest.raises(ConfigError) as info:
        splits_of({"train": str(tmp_path / "p.pt"), "input_fields": ["a"], "target_fields": ["t"]})
    assert "holds an (inputs, targets) pair, not named arrays" in str(info.value)


def test_csv_errors_are_located_in_the_spec(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [[1, 0], [2, 1]])
    spec = f"yamlnet: 1\ndata:\n  dataset: tensors\n  train: {path}\n  input_fields: [aa]\n"
    cfg = load_run_config(load_spec_source(spec).main)
    with pytest.raises(ConfigError) as info, cfg.located():
        build_splits(cfg.data)
    expected = f"data.train: cannot read {path}: no column named 'aa' (did you mean a?)"
    assert str(info.value) == f"<spec>:4:3: {expected}"


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
        x, y = pair(dataset[(0, i)])
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
    folder = whole.train.dataset.base.base  # the ImageFolder under the {image, label} view
    assert folder.classes == ["cat", "dog"] == whole.fields.info["classes"]
    check_images(whole.train.dataset, folder, pixels)
    split = loaders_of({"dataset": "image_folder", "root": str(root), "val_fraction": 0.5})
    assert split.sizes == (3, 3)
    folder = split.train.dataset.base.dataset.base
    check_images(split.train.dataset, folder, pixels)
    check_images(split.val.dataset, folder, pixels)
    x, y = pair(next(iter(split.train)))
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
    assert not torch.equal(first[0], base[order[0]]["input"])  # it really augments
    epoch2 = epoch_batches(serial, 2)
    position = serial.train_sampler.indices().index(order[0])
    assert not torch.equal(epoch2[position], first[0])  # a new crop each epoch
    workers = loaders_of({**AUG, "num_workers": 2}, seed=4)
    assert torch.equal(epoch_batches(workers, 1), first)
    assert torch.equal(epoch_batches(workers, 1, start=7), first[7:])
