"""Faults a long run meets: signals at every stage of a run, a full disk, a folder that turns
read-only, a checkpoint from another version, data that changed before --resume, and many
interrupt / resume cycles. Each ends in one line and a non-zero exit, keeps the last good
checkpoint, and leaves a folder that --resume continues or refuses in one line."""

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from conftest import QUICK

CLI = [sys.executable, "-m", "pyro_vae.cli"]

# imported as a plugin: stops the run at one stage (PAUSE_AT), says so in PAUSE_MARK and waits
PAUSER = """
import contextlib, os, pathlib, signal, time

import pyro_vae.data, pyro_vae.evaluate, pyro_vae.train, pyro_vae.utils

STAGE, MARK = os.environ.get("PAUSE_AT", ""), pathlib.Path(os.environ.get("PAUSE_MARK", "mark"))  # resume: none
GO = MARK.with_suffix(".go")


def pause():  # until the test has sent its signal (a handler that raises ends it sooner)
    MARK.write_text(STAGE)
    for _ in range(1200):
        if GO.exists():
            return
        time.sleep(0.1)


def before(owner, name):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        pause()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if STAGE == "data":
    before(pyro_vae.data.Digits, "load")
elif STAGE == "model":
    before(pyro_vae.train, "build_model")
elif STAGE == "first-step":
    before(pyro_vae.train.SVIModule, "training_step")
elif STAGE in ("last-step", "mid-epoch"):  # the last step of epoch 2, or its eighth
    step = pyro_vae.train.SVIModule.training_step

    def at_a_step(self, batch, batch_idx):
        last = self.trainer.num_training_batches - 1
        if self.current_epoch == 1 and batch_idx == (last if STAGE == "last-step" else 7):
            pause()
        return step(self, batch, batch_idx)

    pyro_vae.train.SVIModule.training_step = at_a_step
elif STAGE == "dropped":  # a SIGTERM whose exception Python drops: raised inside a finalizer
    class SignalsInFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):  # the handler runs in here
                pass

    build = pyro_vae.train.build_model

    def build_after_a_dropped_signal(*args, **kwargs):
        SignalsInFinalizer()
        return build(*args, **kwargs)

    pyro_vae.train.build_model = build_after_a_dropped_signal
elif STAGE == "evaluation":
    before(pyro_vae.evaluate, "test_metrics")
elif STAGE == "model.pt":  # half the file written, then the signal
    write = pyro_vae.utils.atomic_path

    @contextlib.contextmanager
    def half_then_pause(path):
        with write(path) as tmp:
            if pathlib.Path(path).name == "model.pt":
                tmp.write_bytes(b"half a file")
                pause()
            yield tmp

    pyro_vae.utils.atomic_path = half_then_pause
"""


def _train_cmd(run, *args):
    return CLI + ["train", *QUICK, "train.epochs=3", *args, "--out", str(run)]


def _epochs_in_csv(run):
    with open(run / "metrics.csv") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f)]


def _wait_for(predicate, proc, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _handles_sigterm(pid):
    """Whether the process has a handler for SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _last_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("pyro-vae:")]
    assert lines and "Traceback" not in err, err[-1500:]
    return lines[-1]


def _loadable(ckpt):
    payload = torch.load(ckpt, weights_only=True)
    return payload["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


# ---------------------------------------------------------------- signals at every stage
STAGES = [
    (stage, signal.SIGTERM)
    for stage in ("imports", "data", "model", "first-step", "last-step", "evaluation", "model.pt")
]
STAGES += [(stage, signal.SIGINT) for stage in ("imports", "data", "evaluation")]  # Ctrl-C: the same paths


@pytest.mark.parametrize("stage, sig", STAGES, ids=[f"{s}-{g.name}" for s, g in STAGES])
def test_a_signal_at_any_stage_is_one_line_and_the_folder_resumes_or_refuses_in_one_line(tmp_path, stage, sig):
    run = tmp_path / "run"
    mark = tmp_path / "mark"
    plugin = tmp_path / "pauser.py"
    plugin.write_text(textwrap.dedent(PAUSER))
    args = [] if stage == "imports" else [f"plugins=[{plugin}]"]
    env = {**os.environ, "PAUSE_AT": stage, "PAUSE_MARK": str(mark)}
    proc = subprocess.Popen(_train_cmd(run, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # imports: as soon as the command handles SIGTERM (it then still imports torch for a second)
    ready = (lambda: _handles_sigterm(proc.pid)) if stage == "imports" else mark.is_file
    assert _wait_for(ready, proc), proc.communicate()[1][-1500:]
    proc.send_signal(sig)
    mark.with_suffix(".go").write_text("")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-1500:]
    line = _last_line(err)
    assert f"interrupted by {signal.Signals(sig).name}" in line, line
    if stage in ("imports", "data", "model"):  # before the folder: nothing there, the same command again
        assert not run.exists() and "run the same command again" in line, line
        return
    assert not [p for p in run.rglob("*") if ".tmp." in p.name or p.name == ".lock"]
    assert f"--resume {run}" in line, line
    if stage == "last-step":  # the epoch ends as usual, with its row and its checkpoint
        assert "after epoch 2" in line and _loadable(run / "checkpoints" / "last.ckpt") == 2
        assert _epochs_in_csv(run) == [1, 2]
    elif stage != "first-step":  # (there: a checkpoint inside the first epoch) every epoch was saved
        assert _loadable(run / "checkpoints" / "last.ckpt") == 3 and not (run / "model.pt").exists()
    resumed = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert _epochs_in_csv(run) == [1, 2, 3] and (run / "model.pt").is_file()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3


def test_a_run_stopped_inside_an_epoch_resumes_to_the_uninterrupted_run(tmp_path):
    """The loss of the stopped epoch and every later number match (one thread, same draws)."""
    plugin = tmp_path / "pauser.py"
    plugin.write_text(textwrap.dedent(PAUSER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, run, mark = tmp_path / "whole", tmp_path / "run", tmp_path / "mark"
    subprocess.run(_train_cmd(whole, "train.epochs=4"), capture_output=True, check=True, env=env)
    proc = subprocess.Popen(
        _train_cmd(run, "train.epochs=4", f"plugins=[{plugin}]"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PAUSE_AT": "mid-epoch", "PAUSE_MARK": str(mark)},
    )
    assert _wait_for(mark.is_file, proc), proc.communicate()[1][-1500:]
    proc.send_signal(signal.SIGTERM)
    mark.with_suffix(".go").write_text("")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "in epoch 2 after step 8/" in _last_line(err), err[-1500:]
    r = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-1500:]
    with open(whole / "metrics.csv") as a, open(run / "metrics.csv") as b:
        losses = [[float(row["train_loss"]) for row in csv.DictReader(f)] for f in (a, b)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    a, b = (json.loads((r / "metrics.json").read_text())["test_loss"] for r in (whole, run))
    assert b == pytest.approx(a, abs=1e-6)


def test_a_signal_whose_exception_python_dropped_still_stops_the_run_saved(tmp_path):
    """A signal raised inside a finalizer is printed and dropped by Python; the run must not
    then train to its end as if nothing came: it stops after its first step, saved."""
    plugin = tmp_path / "pauser.py"
    plugin.write_text(textwrap.dedent(PAUSER))
    run = tmp_path / "run"
    r = subprocess.run(
        _train_cmd(run, f"plugins=[{plugin}]"),
        capture_output=True,
        text=True,
        env={**os.environ, "PAUSE_AT": "dropped"},
    )
    # past the model build (the exception did not reach fit), stopped after the first step
    assert r.returncode == 143 and "in epoch 1 after step 1/" in _last_line(r.stderr), r.stderr[-1500:]
    assert _loadable(run / "checkpoints" / "last.ckpt") is not None and not (run / "model.pt").exists()
    resumed = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert resumed.returncode == 0 and _epochs_in_csv(run) == [1, 2, 3], resumed.stderr[-1500:]


def test_a_folder_without_any_epoch_refuses_resume_in_one_line_and_starts_over_as_it_says(tmp_path):
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run), capture_output=True, check=True)
    shutil.rmtree(run / "checkpoints")  # as if stopped before the first epoch ended
    (run / "model.pt").unlink()
    r = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    line = _last_line(r.stderr)
    assert r.returncode == 2 and "\n" not in r.stderr.strip() and "--overwrite" in line
    again = line.split("start it again instead: ", 1)[1].split()
    assert again[:2] == ["pyro-vae", "train"]
    r = subprocess.run(CLI + again[1:], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert _epochs_in_csv(run) == [1, 2, 3] and (run / "model.pt").is_file()


# ---------------------------------------------------------------- a full disk, a read-only folder
def _ignore_sigxfsz():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails with EFBIG


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_is_one_line(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(run, "train.epochs=400", "train.batch_size=16"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigxfsz,
    )
    ckpt = run / "checkpoints" / "last.ckpt"

    def two_epochs():
        try:
            return _loadable(ckpt) >= 2
        except Exception:
            return False

    assert _wait_for(two_epochs, proc), proc.communicate()[1][-1500:]
    size = ckpt.stat().st_size
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))  # no room for another checkpoint
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-1500:]
    line = _last_line(err)
    assert "could not write" in line and "File too large" in line and f"--resume {run}" in line, line
    assert _loadable(ckpt) >= 2  # the previous checkpoint, whole
    assert not [p for p in run.rglob("*") if ".tmp." in p.name]
    resumed = subprocess.run(CLI + ["train", "--resume", str(run), "train.epochs=5"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert _epochs_in_csv(run) == [1, 2, 3, 4, 5]


def test_a_full_disk_while_writing_model_pt_is_one_line_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run), capture_output=True, check=True)
    (run / "model.pt").unlink()
    size = (run / "checkpoints" / "last.ckpt").stat().st_size

    def limit():  # room for the metrics and pictures, not for the model (about a third of a checkpoint)
        _ignore_sigxfsz()
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 8, size // 8))

    r = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 2, r.stderr[-1500:]
    line = _last_line(r.stderr)
    assert "File too large" in line and not (run / "model.pt").exists(), line
    assert not [p for p in run.rglob("*") if ".tmp." in p.name]
    (run / "checkpoints" / ".last.tmp.k9x.ckpt").write_bytes(b"what kill -9 leaves mid-write")
    r = subprocess.run(CLI + ["train", "--resume", str(run)], capture_output=True, text=True)
    assert r.returncode == 0 and (run / "model.pt").is_file(), r.stderr[-1500:]
    assert not [p for p in run.rglob("*") if ".tmp." in p.name]  # cleared when the folder is taken again


def _read_only(folder):
    """Make ``folder`` read-only under a running process; returns the undo. Root writes through
    permission bits, so as root it becomes a read-only bind mount of itself."""
    if os.geteuid() != 0:
        for f in (folder, folder / "checkpoints"):
            os.chmod(f, 0o555)
        return lambda: [os.chmod(f, 0o755) for f in (folder, folder / "checkpoints")]
    for cmd in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
    return lambda: subprocess.run(["umount", str(folder)], capture_output=True, check=True)


def test_a_run_folder_that_turns_read_only_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(run, "train.epochs=400", "train.batch_size=16"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = run / "checkpoints" / "last.ckpt"

    def two_epochs():
        try:
            return _loadable(ckpt) >= 2
        except Exception:
            return False

    assert _wait_for(two_epochs, proc), proc.communicate()[1][-1500:]
    undo = _read_only(run)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        undo()
    assert proc.returncode == 2, err[-1500:]
    line = _last_line(err)
    assert "Read-only file system" in line or "Permission denied" in line, line
    assert _loadable(ckpt) >= 2
    resumed = subprocess.run(CLI + ["train", "--resume", str(run), "train.epochs=4"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]


# ---------------------------------------------------------------- checkpoints and data that do not fit
def test_a_checkpoint_from_another_version_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run), capture_output=True, check=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["pyro_vae"]["format"], payload["pyro_vae"]["version"] = "pyro_vae/1", "0.1.0"
    torch.save(payload, ckpt)
    r = subprocess.run(CLI + ["train", "--resume", str(run), "train.epochs=4"], capture_output=True, text=True)
    line = _last_line(r.stderr)
    assert r.returncode == 2 and "\n" not in r.stderr.strip(), r.stderr[-1500:]
    assert "pyro_vae 0.1.0" in line and "--overwrite" in line


def test_data_that_changed_before_resume_are_detected_in_one_line(tmp_path):
    x = np.random.default_rng(0).random((300, 10)).astype(np.float32)
    data = tmp_path / "x.npy"
    np.save(data, x)
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run, "data=array", f"data.path={data}"), capture_output=True, check=True)
    x[5, 3] = 0.5 if x[5, 3] != 0.5 else 0.25  # one value
    np.save(data, x)
    r = subprocess.run(CLI + ["train", "--resume", str(run), "train.epochs=4"], capture_output=True, text=True)
    assert r.returncode == 2 and "\n" not in r.stderr.strip(), r.stderr[-1500:]
    assert "data differ" in _last_line(r.stderr)
    assert _epochs_in_csv(run) == [1, 2, 3]  # nothing was touched


# ---------------------------------------------------------------- many interruptions in a row
def test_many_interrupt_and_resume_cycles_keep_every_epoch_once_and_the_uninterrupted_result(tmp_path):
    args = ["train.epochs=12", "train.batch_size=16"]
    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole, *args), capture_output=True, check=True)
    run = tmp_path / "run"
    rng = np.random.default_rng(1)
    command = _train_cmd(run, *args)
    for cycle in range(6):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(2.0, 6.0)))
        if proc.poll() is not None:
            break
        sig = signal.SIGKILL if cycle % 2 else signal.SIGTERM
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (-9, 143, 0), err[-1500:]
        if not (run / "checkpoints" / "last.ckpt").is_file():
            shutil.rmtree(run, ignore_errors=True)  # stopped before anything was saved: start again
            continue
        command = CLI + ["train", "--resume", str(run)]
    r = subprocess.run(command, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert _epochs_in_csv(run) == list(range(1, 13))
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-4)
