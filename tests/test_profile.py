"""--profile: where a command's wall time goes; commands that do not train stay light."""

import re
import subprocess
import sys

import numpy as np
import pytest

from pyro_vae.cli import main

ROW = re.compile(r"^(.+?)\s+(\d+\.\d\d) s\s+(\d+\.\d)%$")


def _profile_rows(stderr: str) -> dict:
    lines = stderr.split("where the time went (wall seconds):\n", 1)[1].splitlines()
    rows = {}
    for line in lines:
        m = ROW.match(line)
        if m:
            rows[m.group(1).strip()] = float(m.group(2))
    return rows


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae.cli",
            "train",
            "data.name=digits",
            "train.epochs=2",
            "data.validation=100",
            "trainer.progress_bar=false",
            "--out",
            str(out),
            "--profile",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-800:]
    return out, r.stderr


def test_train_profile_accounts_for_the_whole_command(profiled_run):
    _, stderr = profiled_run
    rows = _profile_rows(stderr)
    for phase in (
        "import Lightning (the engine)",
        "data",
        "training steps (forward, backward, optimiser)",
        "loop around the steps (next batch, hooks)",
        "validation",
        "test metrics",
        "plot: samples.png",
        "plot: latent_map.png",
        "total",
    ):
        assert phase in rows, (phase, sorted(rows))
    steps, loop = (
        rows["training steps (forward, backward, optimiser)"],
        rows["loop around the steps (next batch, hooks)"],
    )
    assert steps > 0 and loop > 0 and rows["validation"] > 0
    parts = sum(v for k, v in rows.items() if k != "total")
    assert abs(parts - rows["total"]) < 0.05 + 0.01 * rows["total"], (parts, rows["total"])


def test_profile_of_a_command_that_does_not_train(profiled_run, capsys):
    run, _ = profiled_run
    assert main(["evaluate", str(run), "--profile"]) == 0
    rows = _profile_rows(capsys.readouterr().err)
    assert "test metrics" in rows and "total" in rows


def test_no_profile_table_without_the_flag(profiled_run, capsys):
    run, _ = profiled_run
    assert main(["evaluate", str(run)]) == 0
    assert "where the time went" not in capsys.readouterr().err


def test_the_digits_are_read_without_importing_scikit_learn():
    code = (
        "import sys\nfrom pyro_vae.data import _digits_arrays\nx, y = _digits_arrays()\n"
        "assert 'sklearn' not in sys.modules, 'sklearn imported'\nprint(x.shape, y.shape)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    assert "(1797, 64) (1797,)" in r.stdout


def test_the_digits_are_exactly_scikit_learns():
    from sklearn.datasets import load_digits

    from pyro_vae.data import _digits_arrays

    x, y = _digits_arrays()
    bunch = load_digits()
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, bunch.data.astype(np.float32))
    np.testing.assert_array_equal(y, bunch.target)


def test_the_latent_map_projection_is_the_principal_components():
    from sklearn.decomposition import PCA

    from pyro_vae.plots import principal_components

    z = np.random.RandomState(0).randn(400, 6) * np.arange(1, 7)
    ours, theirs = principal_components(z, 2), PCA(2).fit_transform(z)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)  # the same axes up to sign
    flipped = principal_components(z[::-1].copy(), 2)[::-1]  # row order does not change the axes or signs
    np.testing.assert_allclose(flipped, ours, atol=1e-8)


def test_confusion_counts_match_scikit_learn():
    from sklearn.metrics import confusion_matrix

    from pyro_vae.plots import confusion_counts

    rng = np.random.RandomState(1)
    y, p = rng.randint(0, 7, 300), rng.randint(0, 7, 300)
    p[:5] = 8  # a class predicted that never occurs
    np.testing.assert_array_equal(confusion_counts(y, p), confusion_matrix(y, p, labels=np.arange(9)))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_units(monkeypatch, native):
    from omegaconf import OmegaConf

    from pyro_vae import train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    t = OmegaConf.create({"precision": "auto", "accelerator": "cpu"})
    assert train.resolve_precision(t) == ("bf16-mixed" if native else "32-true")
    for chosen in ("32-true", "bf16-mixed", "16-mixed"):
        assert train.resolve_precision(OmegaConf.create({"precision": chosen, "accelerator": "cpu"})) == chosen


def test_the_run_records_the_precision_it_trained_in(profiled_run):
    import json

    from pyro_vae.train import cpu_has_native_bf16

    run, _ = profiled_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")


def test_the_program_exit_codes_survive_the_quick_exit(tmp_path):
    cli = [sys.executable, "-m", "pyro_vae.cli"]
    assert subprocess.run(cli + ["--help"], capture_output=True).returncode == 0
    bad = subprocess.run(cli + ["train", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
    wrong = subprocess.run(
        cli + ["train", "data.name=nope", "--out", str(tmp_path / "r")], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and not (tmp_path / "r").exists()
    # everything printed before the quick exit arrives, also through a pipe
    listed = subprocess.run(cli + ["list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "anomaly scores:" in listed.stdout and listed.stdout.endswith("\n")


def test_a_reader_that_goes_away_is_not_an_error():
    p = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # like `pyro-vae list | head -1`
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "error" not in err, err
