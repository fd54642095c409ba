"""`yamlnet.lightning.SpecModule`: a spec trained by `lightning.Trainer` reaches the
accuracy `yamlnet train` reaches on the same data, and its checkpoint loads in
`yamlnet eval` with the same validation numbers Lightning logged."""

from __future__ import annotations

import json
import warnings

import pytest

L = pytest.importorskip("lightning")

import yamlnet  # noqa: E402
from yamlnet.cli import main  # noqa: E402
from yamlnet.lightning import SpecModule  # noqa: E402

from .conftest import SPECS  # noqa: E402

SPEC = SPECS / "digits_cnn.yaml"


def test_trainer_matches_yamlnet_train_and_its_checkpoint_evaluates(tmp_path, capsys):
    module = SpecModule(SPEC)
    assert module.model.state_dict().keys() == yamlnet.compile(SPEC).state_dict().keys()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                        enable_progress_bar=False, logger=False, enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        trainer.fit(module)
    lightning_acc = float(trainer.callback_metrics["val/accuracy"])
    ours = yamlnet.train(SPEC, out=tmp_path / "ours", **{"train.epochs": 3})
    assert lightning_acc > 0.9 and abs(lightning_acc - ours.metrics["val/accuracy"]) < 0.04
    ckpt = trainer.checkpoint_callback.best_model_path
    capsys.readouterr()
    assert main(["eval", str(SPEC), "--checkpoint", ckpt, "--format", "json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["val/accuracy"] == pytest.approx(lightning_acc, abs=1e-6)
    assert values["val/loss"] == pytest.approx(float(trainer.callback_metrics["val/loss"]), abs=1e-5)


def test_overrides_and_errors_are_the_specs():
    module = SpecModule(SPEC, **{"train.optimizer.lr": 0.01})
    assert module.cfg.train["optimizer"]["lr"] == 0.01
    with pytest.raises(yamlnet.SpecError, match="AdamW takes no argument 'lrr'"):
        SpecModule(SPEC, **{"train.optimizer.lrr": 0.01})
