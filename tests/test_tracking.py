"""Experiment tracking: one run logged to TensorBoard, MLflow and W&B (offline) at once, each read
back through its own client or reader; the logger list's errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK

CLI = [sys.executable, "-m", "pyro_vae.cli"]
EPOCHS = 2


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A digits run with every tracker on (those installed), in a folder of its own."""
    wanted = [m for m in ("tensorboard", "mlflow", "wandb") if _installed(m)]
    if not wanted:
        pytest.skip("no tracker installed")
    home = tmp_path_factory.mktemp("tracked")
    run = home / "run"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env["WANDB_DIR"] = str(home)
    r = subprocess.run(
        CLI + ["train", *QUICK, f"train.epochs={EPOCHS}", f"trainer.logger=[{','.join(wanted)}]", "--out", str(run)],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(home)},  # no ~/.netrc: W&B stays offline
        cwd=home,
    )
    assert r.returncode == 0, r.stderr
    return run, json.loads((run / "metrics.json").read_text())


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_csv_is_kept_beside_the_trackers(tracked):
    run, _ = tracked
    with open(run / "metrics.csv") as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == list(range(1, EPOCHS + 1))


def test_mlflow_run_reads_back_through_its_client(tracked):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    run, metrics = tracked
    db = run.parent / "mlflow.db"
    assert db.is_file(), "the default store is an SQLite file beside the run"
    client = MlflowClient(f"sqlite:///{db}")
    (exp,) = [e for e in client.search_experiments() if e.name == "pyro_vae"]
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == run.name and mrun.info.status == "FINISHED"
    params = mrun.data.params
    assert params["train.epochs"] == str(EPOCHS) and params["model.name"] == "vae"
    history = client.get_metric_history(mrun.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert mrun.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert "model.pt" in artifacts and "loss_curves.png" in artifacts
    assert (run.parent / "mlartifacts").is_dir(), "artifacts stay beside the store, not in the working folder"


def test_wandb_offline_run_reads_back_through_its_reader(tracked):
    pytest.importorskip("wandb")
    run, metrics = tracked
    (folder,) = list((run / "wandb").glob("offline-run-*"))
    wandb_cli = Path(sys.executable).parent / "wandb"
    r = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(folder)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    config = {}
    for rec in records:
        if rec["type"] == "config":
            config.update(rec["config"]["update"])
    assert config["train.epochs"] == EPOCHS
    history = [rec["history"] for rec in records if rec["type"] == "history"]
    assert len([h for h in history if "train_loss" in json.dumps(h)]) == EPOCHS
    summary = {}
    for rec in records:
        if rec["type"] == "summary":
            summary.update(rec["summary"].get("update", {}))
    assert summary["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    (artifact,) = [rec["artifact"] for rec in records if rec["type"] == "artifact"]
    assert "model.pt" in json.dumps(artifact)


def test_tensorboard_projector_reads_back_through_tensorboard(tracked):
    pytest.importorskip("tensorboard")
    from google.protobuf import text_format
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    run, metrics = tracked
    board = run / "tensorboard"
    scalars = EventAccumulator(str(board)).Reload().Tags()["scalars"]
    assert {"train_loss", "lr", "test_loss"} <= set(scalars)
    config = text_format.Parse((board / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (emb,) = config.embeddings
    rows = (board / emb.tensor_path).read_text().splitlines()
    labels = (board / emb.metadata_path).read_text().split()
    assert len(rows) == len(labels) > 0
    from omegaconf import OmegaConf

    assert len(rows[0].split("\t")) == OmegaConf.load(run / "config.yaml").latent_dim
    assert set(labels) <= {str(k) for k in range(10)} and len(set(labels)) == 10
    assert list(emb.sprite.single_image_dim) == [8, 8] and (board / emb.sprite.image_path).is_file()


@pytest.mark.parametrize(
    "value, message",
    [
        ("comet", "unknown logger 'comet'"),
        ("[none,mlflow]", "none cannot be combined"),
    ],
)
def test_bad_logger_is_one_line(value, message):
    from pyro_vae.config import load_config
    from pyro_vae.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"trainer.logger={value}"])


def test_a_missing_tracker_names_its_extra(monkeypatch):
    import importlib.util

    from pyro_vae import tracking
    from pyro_vae.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'pyro_vae\[mlflow\]'"):
        tracking.check_installed(["csv", "mlflow"])
    assert tracking.logger_names("TensorBoard") == ["csv", "tensorboard"]
    assert tracking.logger_names(["csv", "mlflow", "mlflow"]) == ["csv", "mlflow"]
    assert tracking.logger_names("none") == []
