"""train.loggers: TensorBoard files (tensorboardX) and MLflow runs, read back by the
tools themselves: TensorBoard's strict record reader and event accumulator, and MLflow's
MlflowClient. Every value they hold must equal metrics.csv's; a resumed run continues the
same MLflow run without a duplicate step; a logger that fails costs one warning, never
the run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import yamlnet
import yamlnet.cli

from .conftest import SPECS

DIGITS = SPECS / "digits_cnn.yaml"
SETTINGS = {"train.epochs": 2, "train.log_every_n_steps": 5, "train.val_every_n_steps": 10}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _csv_series(out: Path) -> dict[str, dict[int, float]]:
    """metrics.csv as {column: {step: value}}."""
    series: dict[str, dict[int, float]] = {}
    for row in _rows(out / "metrics.csv"):
        for key, value in row.items():
            if value and key not in ("step", "epoch", "time"):
                series.setdefault(key, {})[int(row["step"])] = float(value)
    return series


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    record = json.loads((out / "mlflow.json").read_text())
    return MlflowClient(record["tracking_uri"]), record["run_id"]


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _tensorboard(out: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.fspath(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One digits run with every logger on."""
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("runs") / "digits" / "version_0"
    loggers = ["csv", "tensorboard", {"name": "mlflow", "tags": {"team": "vision"}}]
    result = yamlnet.train(DIGITS, out=out, stream=open(os.devnull, "w"),
                           **SETTINGS, **{"train.loggers": loggers})  # fmt: skip
    return result


def test_tensorboard_files_pass_the_strict_reader_and_equal_metrics_csv(tracked):
    pytest.importorskip("tensorboard")
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    (events,) = (tracked.out / "tensorboard").glob("events.out.tfevents.*")
    reader, count = PyRecordReader_New(os.fspath(events)), 0
    with pytest.raises(errors.OutOfRangeError):  # the end of the file, after every record's CRC passed
        while True:
            reader.GetNext()
            count += 1
    assert count > 20
    board, table = _tensorboard(tracked.out), _csv_series(tracked.out)
    assert set(board) == set(table)
    for tag, values in table.items():
        assert board[tag].keys() == values.keys(), tag
        assert all(board[tag][s] == pytest.approx(v, rel=1e-6, abs=1e-12) for s, v in values.items()), tag


def test_mlflow_holds_params_metrics_tags_and_artifacts(tracked):
    import yaml

    client, run_id = _client(tracked.out)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "version_0"
    lock = yaml.safe_load((tracked.out / "spec.lock.yaml").read_text())
    params = run.data.params
    assert params["spec"] == "digits_cnn"
    assert float(params["train.optimizer.lr"]) == lock["train"]["optimizer"]["lr"]
    assert params["train.optimizer.name"] == lock["train"]["optimizer"]["name"]
    assert int(params["data.batch_size"]) == lock["data"]["batch_size"]
    assert int(params["train.epochs"]) == 2
    header = (tracked.out / "spec.lock.yaml").read_text().splitlines()[0]
    assert header.endswith("spec hash " + run.data.tags["yamlnet.spec_hash"])
    assert run.data.tags["yamlnet.version"] == yamlnet.__version__
    assert run.data.tags["team"] == "vision"
    table = _csv_series(tracked.out)
    assert set(run.data.metrics) == set(table)
    for key, values in table.items():
        got = _history(client, run_id, key)
        assert [s for s, _ in got] == sorted(values), key  # every logged step, once
        assert all(v == pytest.approx(values[s], rel=1e-6, abs=1e-12) for s, v in got), key
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"spec.lock.yaml", "best.safetensors"}
    local = Path(client.download_artifacts(run_id, "best.safetensors", os.fspath(tracked.out.parent)))
    ours, theirs = load_file(tracked.out / "best.safetensors"), load_file(local)
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_mlflow_store_defaults_to_sqlite_beside_the_run_folder(tracked):
    record = json.loads((tracked.out / "mlflow.json").read_text())
    assert record["tracking_uri"] == "sqlite:///" + (tracked.out.parent.resolve() / "mlflow.db").as_posix()
    assert (tracked.out.parent / "mlflow.db").is_file()


@pytest.mark.extended  # a killed subprocess and two resumes
def test_a_resumed_run_continues_its_mlflow_run_without_duplicate_steps(tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "runs" / "digits" / "version_0"
    sets = [f"--set={k}={v}" for k, v in SETTINGS.items()]
    sets += ["--set=train.checkpoint_every_n_steps=10", "--set=train.loggers=[tensorboard,mlflow]"]
    env = {**os.environ, "YAMLNET_FAULTS": "kill_after_step=26"}  # dies having logged step 25
    killed = subprocess.run([sys.executable, "-m", "yamlnet", "train", os.fspath(DIGITS), "--out", os.fspath(out),
                             *sets], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    client, run_id = _client(out)
    assert max(s for s, _ in _history(client, run_id, "train/loss")) == 25  # past the checkpoint (20)
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(out), "--resume", *sets])
    assert code == 0
    assert _client(out)[1] == run_id  # the same MLflow run
    assert client.get_run(run_id).info.status == "FINISHED"
    table = _csv_series(out)
    for key, values in table.items():
        got = _history(client, run_id, key)
        assert [s for s, _ in got] == sorted(values), key  # no step twice
        assert all(v == pytest.approx(values[s], rel=1e-6, abs=1e-12) for s, v in got), key
    board = _tensorboard(out)  # TensorBoard drops the killed process's steps past the checkpoint
    assert board["train/loss"].keys() == table["train/loss"].keys()
    assert all(board["train/loss"][s] == pytest.approx(v, rel=1e-6) for s, v in table["train/loss"].items())
    # resumed from an older checkpoint than the newest: a branch, logged as a new MLflow run
    older = sorted((out / "checkpoints").glob("step-*.pt"))[0]
    before = _history(client, run_id, "train/loss")
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(out), "--resume-from", os.fspath(older),
                             *sets, "--set=train.optimizer.lr=0.01", "--force"])  # fmt: skip
    assert code == 0
    client2, branch = _client(out)
    assert branch != run_id and client2.get_run(branch).data.tags["yamlnet.resumed_from"] == run_id
    assert _history(client, run_id, "train/loss") == before  # the first run's record is kept
    first = int(older.stem.split("-")[1])
    assert [s for s, _ in _history(client, branch, "train/loss")] == [s for s in sorted(_csv_series(out)["train/loss"]) if s > first]


def test_an_unreachable_store_is_one_warning_and_the_run_trains(tmp_path, capsys):
    pytest.importorskip("mlflow")
    (tmp_path / "afile").write_text("not a folder")
    bad = "sqlite:///" + (tmp_path / "afile" / "m.db").as_posix()  # below a file: cannot exist
    out = tmp_path / "run"
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(out), "--epochs", "1",
                             f"--set=train.loggers=[{{name: mlflow, tracking_uri: '{bad}'}}]"])  # fmt: skip
    said = capsys.readouterr().out
    assert code == 0
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "mlflow logger" in warnings[0] and "training goes on" in warnings[0]
    assert "Traceback" not in said
    assert len([r for r in _rows(out / "metrics.csv") if r["val/accuracy"]]) == 1
    assert (out / "checkpoints" / "last.pt").is_file()


def test_a_tracker_failing_mid_run_is_switched_off_once(tmp_path, capsys, monkeypatch):
    from yamlnet.runtime import trackers

    def broken(self, step, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoardTracker, "write", broken)
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(tmp_path / "r"), "--epochs", "1"])
    said = capsys.readouterr().out
    assert code == 0
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tensorboard logger: ")
    assert "No space left on device" in warnings[0]
    assert len(_rows(tmp_path / "r" / "metrics.csv")) == 4  # steps 10, 20, the validation and the last loss at 23


@pytest.mark.parametrize("value, message", [
    ("[wandb]", "train.loggers[0].name: 'wandb' is not one of"),
    ("[csv, csv]", "train.loggers[1]: 'csv' is listed twice"),
    ("[{name: mlflow, uri: x}]", "train.loggers[0]"),
])  # fmt: skip
def test_bad_loggers_are_one_located_line(tmp_path, capsys, value, message):
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(tmp_path / "r"),
                             f"--set=train.loggers={value}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert message in err[0] and "--set train.loggers" in err[0]
    assert not (tmp_path / "r").exists()


def test_mlflow_missing_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    code = yamlnet.cli.main(["train", os.fspath(DIGITS), "--out", os.fspath(tmp_path / "r"),
                             "--set=train.loggers=[mlflow]"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert 'pip install "yamlnet[mlflow]"' in err[0] and "train.loggers[0]" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.extended
def test_two_processes_make_one_mlflow_run_and_one_event_file(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "runs" / "ddp"
    done = subprocess.run([sys.executable, "-m", "yamlnet", "train", os.fspath(DIGITS), "--out", os.fspath(out),
                           "--nproc", "2", "--epochs", "1", "--set=train.loggers=[tensorboard,mlflow]"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = MlflowClient("sqlite:///" + (out.parent / "mlflow.db").as_posix())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_id == _client(out)[1]  # rank 0's alone
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    table = _csv_series(out)
    assert {k: dict(_history(client, runs[0].info.run_id, k)) for k in table} == {
        k: {s: pytest.approx(v, rel=1e-6) for s, v in vals.items()} for k, vals in table.items()}
