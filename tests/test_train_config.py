"""The run configuration (`data:`/`train:` + --config + --set), the builders that read
it (optimizer, scheduler, loss, metrics), and the one-line errors of `yamlnet train`."""

import math
import re
import subprocess
import sys

import pytest
import torch
from yamlnet.compiler.errors import SpecError
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime.config import DATA_PROPS, TRAIN_PROPS, load_run_config, split_overrides
from yamlnet.runtime.errors import ArgLocation, ConfigError
from yamlnet.runtime.metrics import build_metric
from yamlnet.runtime.optim import build_loss, build_optimizer, build_scheduler

# one line per problem, each starting with where it was written
LOCATED = re.compile(r"^(\S+:\d+:\d+|--set \S+|--config \S+): \S")


def cfg_of(text: str, config=None, overrides=None):
    return load_run_config(load_spec_source(text).main, config, overrides)


def error_of(text: str, config=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        cfg_of(text, config, overrides)
    assert isinstance(info.value, SpecError)
    return str(info.value)


# -- merging and defaults --------------------------------------------------------------


def test_defaults_filled():
    cfg = cfg_of("yamlnet: 1\n")
    assert set(cfg.train) == set(TRAIN_PROPS)
    t = cfg.train
    assert (t["epochs"], t["max_steps"], t["grad_accum"], t["seed"]) == (10, None, 1, 0)
    assert t["optimizer"] == {"name": "AdamW", "lr": 0.001}
    assert t["loss"] == {"name": "CrossEntropyLoss"}
    assert t["metrics"] == [{"name": "accuracy"}]
    assert (t["scheduler"], t["precision"], t["device"]) == (None, "32", "auto")
    d = cfg.data
    assert set(d) == set(DATA_PROPS) | {"val_fraction", "split_seed", "flatten"}
    assert (d["dataset"], d["batch_size"], d["num_workers"]) == ("digits", 64, 0)
    assert (d["val_fraction"], d["split_seed"], d["flatten"]) == (0.2, 0, False)
    assert (d["shuffle"], d["transforms"], t["deterministic"]) == (True, [], True)


def test_defaults_are_copies():
    first = cfg_of("yamlnet: 1\n")
    first.train["optimizer"]["lr"] = 99
    first.train["metrics"].append({"name": "mse"})
    second = cfg_of("yamlnet: 1\n")
    assert second.train["optimizer"] == {"name": "AdamW", "lr": 0.001}
    assert second.train["metrics"] == [{"name": "accuracy"}]


def test_bare_names_normalised():
    cfg = cfg_of("""yamlnet: 1
train:
  optimizer: SGD
  loss: MSELoss
  scheduler: StepLR
  metrics: [accuracy, {name: top_k_accuracy, k: 3}]
  precision: 32
data:
  transforms: [RandomHorizontalFlip]
  val_transforms: [{name: CenterCrop, size: 6}]
""")
    t = cfg.train
    assert (t["optimizer"], t["loss"], t["scheduler"]) == (
        {"name": "SGD"}, {"name": "MSELoss"}, {"name": "StepLR"})  # fmt: skip
    assert t["metrics"] == [{"name": "accuracy"}, {"name": "top_k_accuracy", "k": 3}]
    assert t["precision"] == "32"  # written unquoted, read as an integer
    assert cfg.data["transforms"] == [{"name": "RandomHorizontalFlip"}]
    assert cfg.data["val_transforms"] == [{"name": "CenterCrop", "size": 6}]


def test_set_overrides_dotted_keys():
    cfg = cfg_of("yamlnet: 1\ntrain: {optimizer: SGD}\n",
                 overrides={"train.optimizer.lr": 0.1, "data.batch_size": 32})  # fmt: skip
    assert cfg.train["optimizer"] == {"name": "SGD", "lr": 0.1}
    assert cfg.data["batch_size"] == 32
    where = ArgLocation("--set train.optimizer.lr=0.1", 0, 0)
    assert cfg.loc(("train", "optimizer", "lr")) == where
    assert str(cfg.loc(("data", "batch_size"))) == "--set data.batch_size=32"


def test_set_argument_of_the_default_optimizer():
    """The docstring's promise: `--set train.optimizer.lr=0.1` always works."""
    cfg = cfg_of("yamlnet: 1\n", overrides={"train.optimizer.lr": 0.1})
    assert cfg.train["optimizer"] == {"name": "AdamW", "lr": 0.1}
    cfg = cfg_of("yamlnet: 1\n", overrides={"train.early_stopping.patience": 2})
    assert cfg.train["early_stopping"] == {"patience": 2, "min_delta": 0}


def test_arguments_without_a_name_adjust_the_default():
    cfg = cfg_of("yamlnet: 1\ntrain:\n  optimizer: {lr: 3}\n  loss: {label_smoothing: 0.1}\n")
    assert cfg.train["optimizer"] == {"name": "AdamW", "lr": 3}
    assert cfg.train["loss"] == {"name": "CrossEntropyLoss", "label_smoothing": 0.1}


def test_set_a_named_thing_replaces_it_whole():
    cfg = cfg_of("yamlnet: 1\ntrain: {optimizer: {name: SGD, lr: 0.1, momentum: 0.9}}\n",
                 overrides={"train.optimizer": "Adam", "train.precision": 32})  # fmt: skip
    assert cfg.train["optimizer"] == {"name": "Adam"}
    assert cfg.train["precision"] == "32"


def test_config_file_merges_over_spec_and_overrides_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 4\n  optimizer: {lr: 0.5}\n  loss: MSELoss\n"
                      "data:\n  batch_size: 16\nvars: {width: 8}\n")  # fmt: skip
    spec = ("yamlnet: 1\ntrain:\n  epochs: 2\n  seed: 3\n  optimizer: {name: SGD, momentum: 0.9}\n"
            "  loss: {name: CrossEntropyLoss, label_smoothing: 0.1}\n")  # fmt: skip
    cfg = cfg_of(spec, config)
    assert cfg.train["epochs"] == 4 and cfg.train["seed"] == 3
    assert cfg.train["optimizer"] == {"name": "SGD", "momentum": 0.9, "lr": 0.5}  # merged
    assert cfg.train["loss"] == {"name": "MSELoss"}  # a new name replaces the arguments
    assert cfg.data["batch_size"] == 16 and cfg.vars == {"width": 8}
    assert str(cfg.loc(("train", "epochs"))) == f"{config}:2:3"
    cfg = cfg_of(spec, config, {"train.epochs": 7, "train.optimizer.lr": 0.25})
    assert cfg.train["epochs"] == 7 and cfg.train["optimizer"]["lr"] == 0.25


def test_split_overrides():
    run, variables = split_overrides({"train.epochs": 3, "data.batch_size": 8, "width": 64,
                                      "vars.depth": 2})  # fmt: skip
    assert run == {"train.epochs": 3, "data.batch_size": 8}
    assert variables == {"width": 64, "depth": 2}


# -- errors: golden text ---------------------------------------------------------------

GOLDEN = {
    "unknown_key": (
        "yamlnet: 1\ntrain:\n  epoch: 3\n", None,
        ["<spec>:3:3: train.epoch: unknown key 'epoch' (did you mean epochs?)"]),
    "wrong_type_and_enum": (
        "yamlnet: 1\ntrain:\n  epochs: ten\n  precision: 64\n", None,
        ["<spec>:3:3: train.epochs: expected an integer, got string 'ten'",
         "<spec>:4:3: train.precision: 64 is not one of: 32, bf16-mixed, 16-mixed"]),
    "unknown_dataset": (
        "yamlnet: 1\ndata:\n  dataset: digit\n", None,
        ["<spec>:3:3: data.dataset: unknown dataset 'digit' (did you mean digits?)"]),
    "dataset_arg_typo": (
        "yamlnet: 1\ndata:\n  dataset: digits\n  val_fraction: 0.1\n  flaten: true\n", None,
        ["<spec>:5:3: data.flaten: unknown key 'flaten' (did you mean flatten?)"]),
    "digits_fraction_range": (
        "yamlnet: 1\ndata:\n  val_fraction: 1.5\n", None,
        ["<spec>:3:3: data.val_fraction: 1.5 is greater than or equal to the maximum of 1"]),
    "not_a_mapping": (
        "yamlnet: 1\ntrain: 3\n", None, ["<spec>:2:1: train: expected a mapping, got int"]),
    "named_without_name": (
        "yamlnet: 1\ntrain:\n  metrics: [{k: 3}]\n", None,
        ["<spec>:3:13: train.metrics[0]: missing required key 'name'"]),
    "scheduler_without_name": (
        "yamlnet: 1\ntrain:\n  scheduler: {step_size: 3}\n", None,
        ["<spec>:3:3: train.scheduler: missing required key 'name'"]),
    "override_unknown_key": (
        "yamlnet: 1\n", {"train.epoch": 3},
        ["--set train.epoch=3: train.epoch: unknown key 'epoch' (did you mean epochs?)"]),
    "override_wrong_type": (
        "yamlnet: 1\ntrain: {epochs: 2}\n", {"train.epochs": "ten"},
        ["--set train.epochs=ten: train.epochs: expected an integer, got string 'ten'"]),
    "override_into_a_number": (
        "yamlnet: 1\ntrain: {epochs: 2}\n", {"train.epochs.x": 3},
        ["--set train.epochs.x=3: train.epochs is not a mapping"]),
    "override_scheduler_argument": (
        "yamlnet: 1\n", {"train.scheduler.step_size": 3},
        ["--set train.scheduler.step_size=3: train.scheduler: missing required key 'name'"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_errors(case):
    text, overrides, lines = GOLDEN[case]
    assert error_of(text, overrides=overrides).splitlines() == lines


def test_dataset_specific_arguments():
    assert cfg_of("yamlnet: 1\ndata: {val_fraction: 0.1}\n").data["val_fraction"] == 0.1
    text = "yamlnet: 1\ndata:\n  dataset: synthetic\n  shape: [4]\n  val_fraction: 0.1\n"
    message = error_of(text)
    assert message.startswith("<spec>:5:3: data.val_fraction: unknown key 'val_fraction' (allowed")
    assert "val_size" in message and "\n" not in message
    message = error_of("yamlnet: 1\ndata: {dataset: synthetic}\n")
    assert message == "<spec>:2:1: data: missing required key 'shape'"


def test_unknown_key_located_in_the_spec_file(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("yamlnet: 1\nname: net\n\ntrain:\n  seed: 1\n  epoch: 3\n")
    message = error_of(spec)
    assert message == f"{spec}:6:3: train.epoch: unknown key 'epoch' (did you mean epochs?)"


def test_config_file_errors(tmp_path):
    bad_top = tmp_path / "top.yaml"
    bad_top.write_text("train:\n  epochs: 3\ntrian: {}\n")
    message = error_of("yamlnet: 1\n", bad_top)
    assert message == f"{bad_top}:3:1: trian: unknown key 'trian' (did you mean train?)"
    bad_key = tmp_path / "key.yaml"
    bad_key.write_text("train:\n  epoch: 3\n")
    message = error_of("yamlnet: 1\n", bad_key)
    assert message == f"{bad_key}:2:3: train.epoch: unknown key 'epoch' (did you mean epochs?)"
    missing = tmp_path / "missing.yaml"
    message = error_of("yamlnet: 1\n", missing)
    assert message == f"--config {missing}: cannot read the config file: No such file or directory"


def test_every_problem_is_one_located_line():
    text = "yamlnet: 1\ntrain: {epoch: 3, precision: 64, grad_clip: -1}\ndata: {batch_size: 0}\n"
    lines = error_of(text, overrides={"train.seed": "x"}).splitlines()
    assert len(lines) == 5
    assert all(LOCATED.match(line) for line in lines), lines


# -- the builders ----------------------------------------------------------------------


def params():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize("build, item, expected", [
    (lambda i: build_optimizer(i, params()), {"name": "Adamw"},
     "train.optimizer.name: unknown optimizer 'Adamw' (did you mean AdamW?)"),
    (lambda i: build_optimizer(i, params()), {"name": "AdamW", "lrr": 0.1},
     "train.optimizer.lrr: AdamW takes no argument 'lrr' (did you mean lr?)"),
    (build_loss, {"name": "CrossEntropy"},
     "train.loss.name: unknown loss 'CrossEntropy' (did you mean CrossEntropyLoss?)"),
    (build_loss, {"name": "MSELoss", "reduce_to": "sum"},
     "train.loss.reduce_to: MSELoss takes no argument 'reduce_to' (did you mean reduce?)"),
    (lambda i: build_scheduler(i, torch.optim.SGD(params(), lr=1), steps_per_epoch=2, total_steps=4),
     {"name": "CosineAnealingLR"},
     "train.scheduler.name: unknown scheduler 'CosineAnealingLR' (did you mean CosineAnnealingLR?)"),
    (lambda i: build_scheduler(i, torch.optim.SGD(params(), lr=1), steps_per_epoch=2, total_steps=4),
     {"name": "StepLR", "step_sze": 2},
     "train.scheduler.step_sze: StepLR takes no argument 'step_sze' (did you mean step_size?)"),
], ids=["optimizer", "optimizer_arg", "loss", "loss_arg", "scheduler", "scheduler_arg"])  # fmt: skip
def test_builder_errors(build, item, expected):
    with pytest.raises(ConfigError) as info:
        build(item)
    assert str(info.value) == expected


def test_builder_errors_located_by_the_run_config():
    text = "yamlnet: 1\ntrain:\n  optimizer: {name: AdamW, lrr: 0.1}\n"
    cfg = cfg_of(text)
    with pytest.raises(ConfigError) as info, cfg.located():
        build_optimizer(cfg.train["optimizer"], params())
    expected = "<spec>:3:28: train.optimizer.lrr: AdamW takes no argument 'lrr' (did you mean lr?)"
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info, cfg.located():
        build_scheduler({"name": "StepLR"}, torch.optim.SGD(params(), lr=1), steps_per_epoch=1,
                        total_steps=2)  # fmt: skip
    assert str(info.value).startswith("<spec>:2:1: train.scheduler: StepLR: ")


def build_metrics(items, cfg, shape=(4, 10), target=None):
    target = torch.zeros(shape[0], dtype=torch.int64) if target is None else target
    with cfg.located():
        return [build_metric(item, out_shape=shape, target=target, where=f"train.metrics[{i}]")
                for i, item in enumerate(items)]  # fmt: skip


def test_unknown_metric_located_with_did_you_mean():
    cfg = cfg_of("yamlnet: 1\ntrain:\n  metrics: [accuracy, acuracy]\n")
    with pytest.raises(ConfigError) as info:
        build_metrics(cfg.train["metrics"], cfg)
    expected = (
        "<spec>:3:23: train.metrics[1].name: unknown metric 'acuracy' (did you mean accuracy?)"
    )
    assert str(info.value) == expected
    cfg = cfg_of("yamlnet: 1\n", overrides={"train.metrics": [{"name": "accuracy", "k": 3}]})
    with pytest.raises(ConfigError, match=r"^--set train\.metrics=.*takes no argument 'k'"):
        build_metrics(cfg.train["metrics"], cfg)


# -- prepare() and the command line ----------------------------------------------------

SPEC = """\
yamlnet: 1
name: tiny
inputs:
  x: [N, 8]
nodes:
  fc: {op: Linear, out_features: 3}
outputs: {logits: fc}
data:
  dataset: synthetic
  shape: [8]
  classes: 3
  size: 16
  val_size: 4
train:
  device: cpu
  epochs: 1
"""


@pytest.fixture
def keep_torch_globals():
    """prepare() seeds and switches deterministic algorithms on; undo it."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.set_rng_state(rng)


def prepare_error(tmp_path, extra: str = "", overrides=None) -> str:
    from yamlnet.runtime.train import prepare

    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC + extra)
    with pytest.raises(ConfigError) as info:
        prepare(spec, out=tmp_path / "run", overrides=overrides)
    return str(info.value).replace(str(spec), "tiny.yaml")


@pytest.mark.usefixtures("keep_torch_globals")
def test_prepare_locates_unknown_metric(tmp_path):
    message = prepare_error(tmp_path, "  metrics: [acuracy]\n")
    expected = "train.metrics[0].name: unknown metric 'acuracy' (did you mean accuracy?)"
    assert message == f"tiny.yaml:17:13: {expected}"


@pytest.mark.usefixtures("keep_torch_globals")
@pytest.mark.parametrize("extra, overrides, expected", [
    ("  optimizer: {name: AdamW, lrr: 0.1}\n", None,
     "tiny.yaml:17:28: train.optimizer.lrr: AdamW takes no argument 'lrr' (did you mean lr?)"),
    ("  loss: CrossEntropy\n", None,
     "tiny.yaml:17:3: train.loss.name: unknown loss 'CrossEntropy' (did you mean CrossEntropyLoss?)"),
    ("  scheduler: {name: CosineAnealingLR}\n", None,
     "tiny.yaml:17:15: train.scheduler.name: unknown scheduler 'CosineAnealingLR' "
     "(did you mean CosineAnnealingLR?)"),
    ("", {"data.transforms": ["RandomHorizontalFlp"]},
     "--set data.transforms=['RandomHorizontalFlp']: data.transforms[0].name: unknown transform "
     "'RandomHorizontalFlp' (did you mean RandomHorizontalFlip?)"),
], ids=["optimizer_argument", "loss", "scheduler", "transform"])  # fmt: skip
def test_prepare_locates_builder_errors(tmp_path, extra, overrides, expected):
    assert prepare_error(tmp_path, extra, overrides) == expected


@pytest.mark.usefixtures("keep_torch_globals")
def test_prepare_plateau_follows_the_monitor(tmp_path):
    from yamlnet.runtime.train import prepare

    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC + "  scheduler: ReduceLROnPlateau\n")
    run = prepare(spec, out=tmp_path / "run")
    assert (run.monitor, run.mode) == ("val/accuracy", "max")
    assert run.schedule.scheduler.mode == "max"


def cli(tmp_path, spec_text: str, *args):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(spec_text)
    return subprocess.run([sys.executable, "-m", "yamlnet", "train", str(spec), "--out",
                           str(tmp_path / "run"), *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip


class Payload:  # pickled into a .pt file: torch.load(weights_only=True) refuses it
    pass


PICKLED = SPEC.replace("  shape: [8]\n  classes: 3\n  size: 16\n  val_size: 4\n", "").replace(
    "dataset: synthetic", "dataset: tensors\n  train: evil.pt"
)


@pytest.mark.parametrize("spec, args, expected", [
    (SPEC, ["--set", "train.epoch=3"],
     "--set train.epoch=3: train.epoch: unknown key 'epoch' (did you mean epochs?)"),
    (SPEC, ["--set", "train.optimizer.lrr=0.1"], "--set train.optimizer.lrr=0.1: "
     "train.optimizer.lrr: AdamW takes no argument 'lrr' (did you mean lr?)"),
    (PICKLED, [], "tiny.yaml:10:3: data.train: cannot read evil.pt: torch.load(weights_only=True) "
     "refused it: it holds more than tensors, or is not a torch file"),
], ids=["unknown_key", "constructor_argument", "pickled_data"])  # fmt: skip
def test_cli_config_errors_exit_2_with_one_line(tmp_path, spec, args, expected):
    torch.save({"x": torch.zeros(4, 8), "y": Payload()}, tmp_path / "evil.pt")
    proc = cli(tmp_path, spec, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.replace(str(tmp_path / "tiny.yaml"), "tiny.yaml") == expected + "\n"
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- metrics ---------------------------------------------------------------------------


def metric_value(item: dict, pred: torch.Tensor, target: torch.Tensor) -> float:
    m = build_metric(item, out_shape=tuple(pred.shape), target=target, where="m")
    m.update(pred, target.reshape(pred.shape) if target.is_floating_point() else target)
    return float(m.compute())


def test_accuracy_and_top_k_by_hand():
    """The short names keep their meaning, now measured by torchmetrics."""
    pred = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]])
    target = torch.tensor([1, 1, 0, 0])
    # argmax 1, 0, 0, 1 -> hit, miss, hit, miss
    assert metric_value({"name": "accuracy"}, pred, target) == 0.5
    # top-2 {1,0}, {0,1}, {0,2}, {1,2} -> hit, hit, hit, miss
    assert metric_value({"name": "top_k_accuracy", "k": 2}, pred, target) == 0.75


def test_mse_and_mae_by_hand():
    pred = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([0.0, 2.0, 1.0])  # (B,) against (B, 1)
    assert metric_value({"name": "mse"}, pred, target) == pytest.approx((1.0 + 0.0 + 9.0) / 3)
    assert metric_value({"name": "mae"}, pred, target) == pytest.approx((1.0 + 0.0 + 3.0) / 3)


def test_metric_labels_and_arguments():
    from yamlnet.runtime.metrics import metric_label

    items = [{"name": "accuracy"}, {"name": "top_k_accuracy", "k": 2}, {"name": "top_k_accuracy"},
             {"name": "F1Score", "average": "macro"}, {"name": "AUROC", "label": "auc"}]  # fmt: skip
    assert [metric_label(i) for i in items] == ["accuracy", "top2_accuracy", "top5_accuracy",
                                                 "f1_score", "auc"]  # fmt: skip
    cfg = cfg_of("yamlnet: 1\ntrain:\n  metrics: [{name: top_k_accuracy, k: 0}]\n")
    with pytest.raises(ConfigError, match=r"^<spec>:3:\d+: train\.metrics\[0\]\.k: k must be"):
        build_metrics(cfg.train["metrics"], cfg)


def test_task_and_classes_are_read_off_the_output():
    """F1Score with no task: multiclass over the output's 3 classes, equal to torchmetrics'
    own function called by hand."""
    from torchmetrics.functional import f1_score

    pred = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0, 2])
    got = metric_value({"name": "F1Score", "average": "macro"}, pred, target)
    want = f1_score(pred, target, task="multiclass", num_classes=3, average="macro")
    assert got == pytest.approx(float(want)) and 0 < got < 1


# -- optimizers and schedules ----------------------------------------------------------


def lr_sequence(item, steps, *, steps_per_epoch=100, total_steps=None, lr=1.0, when="step"):
    opt = torch.optim.SGD(params(), lr=lr)
    schedule = build_scheduler(item, opt, steps_per_epoch=steps_per_epoch,
                               total_steps=total_steps or steps)  # fmt: skip
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step(when)
    return out, schedule


def test_warmup_then_cosine_by_hand():
    lrs, _ = lr_sequence({"name": "CosineAnnealingLR", "warmup_steps": 3}, 10)
    t_max = 10 - 3
    expected = [(s + 1) / 4 for s in range(3)]  # linear ramp from 1/(warmup+1) to 1
    expected += [0.5 * (1 + math.cos(math.pi * (s - 3) / t_max)) for s in range(3, 10)]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_warmup_then_constant_by_hand():
    lrs, _ = lr_sequence({"name": "StepLR", "step_size": 2, "gamma": 0.5, "warmup_steps": 2}, 7,
                         lr=0.8)  # fmt: skip
    # ramp 0.8 * 1/3, 0.8 * 2/3; then StepLR from its start: 0.8, 0.8, 0.4, 0.4, 0.2
    assert lrs == pytest.approx([0.8 / 3, 1.6 / 3, 0.8, 0.8, 0.4, 0.4, 0.2])


def test_schedule_length_filled_in():
    opt = torch.optim.SGD(params(), lr=1.0)
    build = lambda item: build_scheduler(item, opt, steps_per_epoch=4, total_steps=10).scheduler  # noqa: E731
    assert build({"name": "CosineAnnealingLR"}).T_max == 10
    assert build({"name": "CosineAnnealingLR", "interval": "epoch"}).T_max == 3  # ceil(10 / 4)
    assert build({"name": "CosineAnnealingLR", "T_max": 5}).T_max == 5
    assert build({"name": "LinearLR"}).total_iters == 10
    assert build({"name": "OneCycleLR"}).total_steps == 10
    warm = build({"name": "CosineAnnealingLR", "warmup_steps": 4})
    assert warm._schedulers[1].T_max == 6


def test_epoch_interval_steps_per_epoch_only():
    lrs, schedule = lr_sequence({"name": "StepLR", "step_size": 1, "gamma": 0.5, "interval": "epoch"},
                                3)  # fmt: skip
    assert lrs == [1.0, 1.0, 1.0]  # stepped with "step": ignored
    schedule.step("epoch")
    assert schedule.scheduler.optimizer.param_groups[0]["lr"] == 0.5


def test_reduce_on_plateau_steps_on_validation():
    opt = torch.optim.SGD(params(), lr=1.0)
    schedule = build_scheduler({"name": "ReduceLROnPlateau", "patience": 1, "factor": 0.5}, opt,
                               steps_per_epoch=4, total_steps=8)  # fmt: skip
    assert schedule.interval == "val"
    lrs = []
    for loss in (1.0, 1.0, 1.0, 1.0):  # best, bad 1 (patience), bad 2 -> halve, bad 1
        schedule.step("step")
        schedule.step("epoch")
        schedule.step("val", loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5]


def test_reduce_on_plateau_follows_the_monitor_mode():
    opt = torch.optim.SGD(params(), lr=1.0)
    schedule = build_scheduler({"name": "ReduceLROnPlateau", "patience": 0}, opt, steps_per_epoch=4,
                               total_steps=8, mode="max")  # fmt: skip
    for accuracy in (0.1, 0.2, 0.3):  # improving, when higher is better
        schedule.step("val", accuracy)
    assert opt.param_groups[0]["lr"] == 1.0
    schedule.step("val", 0.3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("item, message", [
    ({"name": "StepLR", "step_size": 1, "interval": "val"}, "interval must be step or epoch"),
    ({"name": "ReduceLROnPlateau", "interval": "step"}, "interval must be val"),
    ({"name": "StepLR", "step_size": 1, "warmup_steps": -1}, "warmup_steps must be a non-negative"),
    ({"name": "StepLR", "step_size": 1, "warmup_steps": 2, "interval": "epoch"},
     "warmup_steps needs interval: step"),
])  # fmt: skip
def test_schedule_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        lr_sequence(item, 1)


def test_loss_tensor_arguments():
    loss = build_loss({"name": "CrossEntropyLoss", "weight": [1.0, 3.0]})
    assert torch.equal(loss.weight, torch.tensor([1.0, 3.0]))
    logits, target = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    assert float(loss(logits, target)) == pytest.approx(math.log(2))


def test_naming_another_dataset_drops_the_old_ones_keys(tmp_path):
    spec = load_spec_source(
        "yamlnet: 1\nnodes: {fc: {op: Linear, out_features: 2}}\ninputs: {x: [N, 4]}\n"
        "data: {dataset: digits, flatten: true, batch_size: 8}\n").main
    cfg = load_run_config(spec, None, {"data.dataset": "synthetic", "data.shape": [4]})
    assert "flatten" not in cfg.data and cfg.data["batch_size"] == 8
    assert cfg.data["shape"] == [4] and cfg.data["dataset"] == "synthetic"
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: synthetic, shape: [4]}\n")
    assert "flatten" not in load_run_config(spec, config, {}).data
