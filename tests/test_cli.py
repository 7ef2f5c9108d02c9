import json
import subprocess
import sys

import numpy as np
import pytest

from pyro_vae.cli import main

from conftest import QUICK


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *QUICK, "train.epochs=3", "--out", str(out)]) == 0
    return out


def test_train_then_evaluate_sample_encode(run_dir, capsys, tmp_path):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 359 and abs(metrics["test_loss"] - saved["test_loss"]) < 1.0

    assert main(["sample", str(run_dir), "-n", "10", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (10, 64) and 0 <= s.min() and s.max() <= 1
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["encode", str(run_dir), "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (359, 4)
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "z.csv")]) == 0
    header = (tmp_path / "z.csv").read_text().splitlines()[0]
    assert header == "row,z0,z1,z2,z3,label"


def test_encode_an_external_array_file_in_row_order(run_dir, tmp_path):
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    np.save(tmp_path / "new.npy", x)
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "new.npy"), "--out", str(tmp_path / "z.npy")]) == 0
    import pyro_vae
    import torch

    expected = pyro_vae.load(run_dir).encode(torch.from_numpy(x))[0].numpy()
    assert np.allclose(np.load(tmp_path / "z.npy"), expected, atol=1e-6)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "train.epochz=1"], "unknown config key"),
        (["train", "data.name=fashion-mnist", "data.root=/no/such/folder"], "not a folder"),
        (["train", "missing.yaml"], "not found"),
        (["evaluate", "/no/run"], "no model.pt"),
        (["sample", "/no/run", "--out", "x.gif"], "no model.pt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("pyro-vae: error:")


def test_bad_output_suffix(run_dir, capsys):
    assert main(["sample", str(run_dir), "--out", "x.gif"]) == 2
    assert ".png or .npy" in capsys.readouterr().err


def test_console_script_help_and_exit_code():
    exe = [sys.executable, "-m", "pyro_vae.cli"]
    out = subprocess.run(exe + ["train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "key=value" in out.stdout
    bad = subprocess.run(exe + ["train", "latent_dim=abc"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_units_warns_in_one_line(native, monkeypatch, capsys, tmp_path):
    import pyro_vae.train as train_mod

    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: native)
    argv = ["train", *QUICK, "train.epochs=1", "trainer.precision=bf16-mixed", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pyro-vae: warning:")]
    if native:
        assert warned == []
    else:
        assert len(warned) == 1 and "trainer.precision=32-true" in warned[0]
