"""`pyro-vae tune`: a study on the digits that survives kill -9, shares its database between
processes, prunes a hopeless trial, and whose best.yaml retrains to the best trial's value."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import QUICK

optuna = pytest.importorskip("optuna")

CLI = [sys.executable, "-m", "pyro_vae.cli"]
BASE = [*QUICK, "train.epochs=3"]
SPACE = ["--space", "train.lr=log:1e-3:1e-2", "--space", "latent_dim=choice:2,4,8"]


def _study(folder):
    return optuna.load_study(study_name="pyro_vae", storage=f"sqlite:///{folder / 'study.db'}")


def _states(folder):
    return [t.state.name for t in _study(folder).get_trials()]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_study_survives_kill9_two_processes_share_it_and_best_yaml_retrains(tmp_path):
    folder = tmp_path / "tune"
    p = subprocess.Popen(
        CLI + ["tune", *BASE, *SPACE, "--trials", "3", "--out", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # kill -9 once a trial has finished and one runs
        if (folder / "tune.json").is_file():  # written once the study exists
            states = _states(folder)
            if states.count("COMPLETE") >= 1 and states[-1] == "RUNNING":
                break
        time.sleep(0.2)
    assert p.poll() is None, "the study ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = {t.number: t.value for t in _study(folder).get_trials() if t.state.name == "COMPLETE"}
    assert before

    # two processes continue the one study to 5 finished trials
    procs = [
        subprocess.Popen(
            CLI + ["tune", "--resume", str(folder), "--trials", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        for _ in range(2)
    ]
    for q in procs:
        _, err = q.communicate(timeout=300)
        assert q.returncode == 0, err.decode()
    trials = _study(folder).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    assert [t.state.name for t in trials].count("FAIL") == 1  # the trial kill -9 left running
    assert {t.number: t.value for t in trials if t.number in before} == before  # finished trials kept
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params)
    with open(folder / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == len(trials)
    assert (folder / "history.png").is_file()

    # best.yaml retrains to the best trial's validation metric
    best = _study(folder).best_trial
    r = subprocess.run(
        CLI + ["train", str(folder / "best.yaml"), "--out", str(tmp_path / "best")], capture_output=True, env=_env()
    )
    assert r.returncode == 0, r.stderr.decode()
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert metrics["best_val_loss"] == pytest.approx(best.value, abs=1e-4)
    assert metrics["test_loss"] > 0  # the test split is only reported


def test_pruning_stops_a_hopeless_trial_early(tmp_path):
    from pyro_vae import tune
    from pyro_vae.config import load_config

    folder = tmp_path / "tune"
    cfg = load_config(None, [*QUICK, "train.epochs=8"])
    tune.create(folder, cfg, [tune.parse_space("train.lr=log:1e-9:1e-2")], trials=3, keep=None)
    study = _study(folder)
    for lr in (3e-3, 2e-3, 1e-9):  # two that learn, then one that cannot
        study.enqueue_trial({"train.lr": lr})
    best = tune.run(folder)
    trials = _study(folder).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert max(trials[2].intermediate_values) == 2 < 8  # stopped at epoch 2 of 8
    assert best["number"] in (0, 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "train.lr=log:0:1"], "log needs LOW > 0"),
        (["--space", "train.lr=gauss:1:2"], "expected KEY=SPEC"),
        (["--space", "train.lr=float:2:1"], "LOW must be below HIGH"),
        (["--space", "latent_dim=choice:4"], "at least two values"),
        (["--space", "train.lrr=log:1e-4:1e-2"], "train.lrr"),
        (["--space", "latent_dim=int:0:4"], "latent_dim"),
        ([], "at least one --space"),
    ],
)
def test_bad_spaces_are_one_line(tmp_path, capsys, args, message):
    from pyro_vae.cli import main

    assert main(["tune", *QUICK, *args, "--trials", "2", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("pyro-vae: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "t").exists()


def test_an_occupied_folder_is_refused(tmp_path, capsys):
    from pyro_vae.cli import main

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "mine.txt").write_text("keep me")
    assert main(["tune", *QUICK, *SPACE, "--trials", "2", "--out", str(tmp_path / "t")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "t" / "mine.txt").read_text() == "keep me"
    assert main(["tune", "--resume", str(tmp_path / "t")]) == 2
    assert "not a tune folder" in capsys.readouterr().err
