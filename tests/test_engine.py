"""The engine keeps a user's work and scales out: checkpoints, resume, signals, DDP."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import QUICK

CLI = [sys.executable, "-m", "pyro_vae.cli"]


def _train(args, **kw):
    return subprocess.run(CLI + ["train", *QUICK, *args], capture_output=True, text=True, **kw)


def _epochs_in_csv(run):
    with open(run / "metrics.csv") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f)]


def _done_epochs(ckpt):
    try:
        p = torch.load(ckpt, weights_only=True)
    except Exception:
        return -1
    return p["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


@pytest.mark.parametrize("validation", [None, 100], ids=["no-validation", "validation"])
def test_last_ckpt_holds_every_epoch_with_and_without_validation(tmp_path, validation):
    """After each epoch, last.ckpt is that epoch, also when the selection metric does not improve
    (a learning rate of 1e-9 keeps the validation loss flat: best.ckpt stays at epoch 1)."""
    from lightning.pytorch.callbacks import Checkpoint

    import pyro_vae.train as engine

    folder, seen = tmp_path / "run" / "checkpoints", []

    class Spy(Checkpoint):  # a Checkpoint callback: Lightning runs it after the run's own ones
        def on_train_epoch_end(self, trainer, pl_module):
            best = folder / "best.ckpt"
            seen.append(
                (
                    trainer.current_epoch + 1,
                    _done_epochs(folder / "last.ckpt"),
                    torch.load(best, weights_only=True)["epoch"] + 1 if best.is_file() else None,
                )
            )

    checkpoints = engine._checkpoints
    extra = [f"data.validation={validation}"] if validation else []
    try:
        engine._checkpoints = lambda *a: checkpoints(*a) + [Spy()]
        engine.fit(
            None, out=tmp_path / "run", plots=False, overrides=[*QUICK, "train.epochs=5", "train.lr=1e-9", *extra]
        )
    finally:
        engine._checkpoints = checkpoints
    assert [(epoch, last) for epoch, last, _ in seen] == [(e, e) for e in range(1, 6)]
    assert [best for *_, best in seen] == ([1] * 5 if validation else [None] * 5)


def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path):
    """The default path (no validation split), killed at a random epoch."""
    args = ["train.epochs=20", "train.batch_size=32"]
    whole = _train(args + ["--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-800:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        CLI + ["train", *QUICK, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and _done_epochs(ckpt) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _done_epochs(ckpt)
    assert 2 <= killed_at < 20 and not (run / "model.pt").exists()
    resumed = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    assert _epochs_in_csv(run) == list(range(1, 21))  # every epoch once, in order
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    # single process on a CPU: the resumed run repeats the uninterrupted one (same data order,
    # optimizer state and random state)
    assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-4)
    assert b["epochs"] == 20
    assert (run / "model.pt").is_file() and not (run / ".lock").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_epoch_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig, code):
    run = tmp_path / "run"
    # many small steps: the signal lands inside an epoch
    proc = subprocess.Popen(
        CLI + ["train", *QUICK, "train.epochs=50", "train.batch_size=8", "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.csv").is_file():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-800:]
    last = err.strip().splitlines()[-1]
    assert f"interrupted by {signal.Signals(sig).name}" in last and f"--resume {run}" in last
    ckpt = run / "checkpoints" / "last.ckpt"
    payload = torch.load(ckpt, weights_only=True)  # loadable, without pickled code
    assert "state_dict" in payload and "pyro_vae" in payload
    resumed = subprocess.run(CLI + ["train", "--resume", str(run), "train.epochs=2"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    assert _epochs_in_csv(run) == [1, 2] and (run / "model.pt").is_file()  # the interrupted epoch is finished


@pytest.mark.parametrize("damage", ["truncate", "random", "pickle-like"])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, damage):
    run = tmp_path / "run"
    assert _train(["train.epochs=2", "--out", str(run)]).returncode == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    # "pickle-like": a pickle PROTO opcode with a protocol torch warns about before it fails
    damaged = {
        "truncate": data[: len(data) // 3],
        "random": os.urandom(5000),
        "pickle-like": b"\x80\x8c" + os.urandom(5000),
    }[damage]
    ckpt.write_bytes(damaged)
    r = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("pyro-vae: error:") and "last.ckpt" in err and "\n" not in err and "Traceback" not in err


def test_resume_of_a_folder_without_checkpoints_says_what_to_do(tmp_path):
    r = subprocess.run(CLI + ["train", "--resume", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoints/last.ckpt" in r.stderr


def test_one_line_per_epoch_without_a_terminal(tmp_path):
    r = subprocess.run(
        CLI
        + ["train", *[q for q in QUICK if "progress_bar" not in q], "train.epochs=3", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"] and "train_loss" in lines[0]
    assert "\r" not in r.stderr


@pytest.mark.parametrize("model", ["vae", "ssvae", "vae-on-sparse-rows", "cvae"])
def test_two_process_ddp_shards_the_data_and_writes_one_run(tmp_path, model):
    extra = (
        ["model=ssvae", "data.labels=100", "model.classifier_hidden=[32]", "data.validation=100"]
        if model == "ssvae"
        else []
    )
    if model == "cvae":  # each process's shard carries its rows' labels, the covariate c
        extra = ["model=cvae"]
    if model == "vae-on-sparse-rows":  # sparse data stay sparse under DDP: each process gathers its shard
        import numpy as np
        import scipy.sparse as sp
        from sklearn.datasets import load_digits

        sp.save_npz(tmp_path / "digits.npz", sp.csr_matrix(load_digits().data.astype(np.float32) / 16))
        extra = ["data=array", f"data.path={tmp_path / 'digits.npz'}"]
    ddp = tmp_path / "ddp"
    tracked = model == "vae" and importlib.util.find_spec("mlflow") is not None
    r = _train(
        [
            "train.epochs=4",
            "train.batch_size=32",
            *extra,
            *(["trainer.logger=[mlflow]"] if tracked else []),
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "--out",
            str(ddp),
        ],
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-1500:]
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["world_size"] == 2
    one = tmp_path / "one"  # one process with twice the batch size: the same global batch
    r1 = _train(["train.epochs=4", "train.batch_size=64", *extra, "--out", str(one)])
    assert r1.returncode == 0, r1.stderr[-800:]
    m1 = json.loads((one / "metrics.json").read_text())
    assert m["steps_per_epoch"] == m1["steps_per_epoch"]  # each process takes half of every step
    assert _epochs_in_csv(ddp) == [1, 2, 3, 4]  # one writer: every epoch once
    # the same objective in expectation: final test losses agree within a few nats on the digits
    assert abs(m["test_loss"] - m1["test_loss"]) < 1.5, (m["test_loss"], m1["test_loss"])
    if model == "ssvae":
        assert m["test_accuracy"] > 0.5
    if tracked:  # only rank zero logs: one MLflow run, each epoch once
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert len(runs) == 1
        history = client.get_metric_history(runs[0].info.run_id, "train_loss")
        assert sorted(h.step for h in history) == [1, 2, 3, 4]


def test_trainer_validate_reports_the_held_out_metrics(quick):
    """validation_step is a real Lightning hook: trainer.validate works on a trained model."""
    import lightning as L

    from pyro_vae.train import SVIModule, fit
    from pyro_vae.training import plan_for

    r = fit(None, save=False, overrides=[*quick, "train.epochs=2", "data.validation=200"])
    plan = plan_for(r.model, r.config)
    module = SVIModule(plan, r.config, r.data.info())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    out = trainer.validate(module, dataloaders=plan.eval_dataloader(r.data.val, 64), verbose=False)
    torch.manual_seed(0)
    assert out[0]["val_loss"] == pytest.approx(plan.evaluate(r.data.val, 64)["loss"], rel=1e-4)


def test_the_config_is_resolved_before_training_and_read_only_during_it(quick, monkeypatch):
    """The plan fills in data-dependent defaults (train.batch_size: null) before config.yaml is
    written; a change to the config during training is refused; the caller gets it back writable."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ReadonlyConfigError

    from pyro_vae.train import SVIModule, fit

    seen, step = {}, SVIModule.training_step

    def try_to_change_the_config(self, batch, batch_idx):
        seen["batch_size"] = self.cfg.train.batch_size
        with pytest.raises(ReadonlyConfigError):
            self.cfg.train.lr = 1.0
        seen["refused"] = True
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SVIModule, "training_step", try_to_change_the_config)
    r = fit(None, save=False, overrides=[*quick, "train.epochs=1", "train.batch_size=null"])
    assert seen == {"batch_size": 64, "refused": True} and r.config.train.batch_size == 64
    assert not OmegaConf.is_readonly(r.config)
