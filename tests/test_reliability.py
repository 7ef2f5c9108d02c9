"""What is guaranteed: loading runs no code, runs are never overwritten or mixed, bad input is
refused before training with one line and exit 2, and the same command gives the same numbers."""

import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import PyroVAEError

from conftest import QUICK

CLI = [sys.executable, "-m", "pyro_vae.cli"]


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    assert main(["train", *QUICK, "train.epochs=2", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- loading never runs code
PLUGIN = '''
import pathlib
pathlib.Path(__file__).with_suffix(".imported").write_text("the plugin ran")

import torch
import pyro.distributions as dist
from pyro_vae.priors import Prior, register


@register("wide_normal_rel")
class WideNormal(Prior):
    """N(0, 2^2 I)."""

    def forward(self):
        loc = self.zeros()
        return dist.Normal(loc, 2 * torch.ones_like(loc)).to_event(1)
'''


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared")
    plugin = folder / "evil_prior.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    out = folder / "run"
    r = subprocess.run(
        CLI + ["train", *QUICK, "train.epochs=1", f"plugins=[{plugin}]", "prior=wide_normal_rel", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-500:]
    plugin.with_suffix(".imported").unlink()
    return out, plugin


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate"],
        ["sample", "--out", "s.png"],
        ["encode", "--out", "z.npy"],
        ["classify", "--out", "p.csv"],
        ["score", "--out", "s.csv"],
    ],
)
def test_commands_on_a_run_never_import_its_plugin(plugin_run, command, tmp_path):
    out, plugin = plugin_run
    argv = (
        CLI
        + [command[0], str(out)]
        + [str(tmp_path / a) if a.endswith(("png", "npy", "csv")) else a for a in command[1:]]
    )
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 2 and not plugin.with_suffix(".imported").exists()
    err = r.stderr.strip()
    assert "\n" not in err and "wide_normal_rel" in err and str(plugin) in err and "--plugin" in err


def test_load_imports_only_the_plugins_it_is_given(plugin_run):
    out, plugin = plugin_run
    code = (
        f"import pyro_vae\ntry:\n    pyro_vae.load({str(out)!r})\nexcept pyro_vae.PyroVAEError as e:\n"
        f"    print('refused:', e)\nm = pyro_vae.load({str(out)!r}, plugins=[{str(plugin)!r}])\n"
        f"print(type(m.prior).__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr[-500:]
    assert "refused:" in r.stdout and "WideNormal" in r.stdout  # and from another folder: the path is absolute
    assert plugin.with_suffix(".imported").exists()  # imported once, when asked
    plugin.with_suffix(".imported").unlink()


def test_an_edited_config_yaml_is_reported_not_silently_ignored(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    text = (copy / "config.yaml").read_text().replace("latent_dim: 4", "latent_dim: 9")
    (copy / "config.yaml").write_text(text)
    with pytest.warns(UserWarning, match="differs from the config saved inside model.pt"):
        model = pyro_vae.load(copy)
    assert model.latent_dim == 4


def test_weights_that_do_not_fit_their_config_are_one_line(run, tmp_path, capsys):
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["config"] = payload["config"].replace("latent_dim: 4", "latent_dim: 5")
    (tmp_path / "bad").mkdir()
    torch.save(payload, tmp_path / "bad" / "model.pt")
    assert main(["evaluate", str(tmp_path / "bad")]) == 2
    _one_line_error(capsys, "weights do not fit its config")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(os.urandom(3000))
    assert main(["sample", str(tmp_path / "junk"), "--out", str(tmp_path / "s.png")]) == 2
    _one_line_error(capsys, "could not read checkpoint")


# ---------------------------------------------------------------- run directories
def test_a_used_out_folder_is_refused_unless_overwrite_and_nothing_changes(run, capsys, tmp_path):
    before = _snapshot(run)
    assert main(["train", *QUICK, "train.epochs=1", "--out", str(run)]) == 2
    _one_line_error(capsys, str(run), "--overwrite", "--resume")
    assert _snapshot(run) == before
    fresh = tmp_path / "again"
    assert main(["train", *QUICK, "train.epochs=1", "--out", str(fresh)]) == 0
    (fresh / "notes.txt").write_text("mine")  # a file the user put there is not a run file: kept
    old_model = (fresh / "model.pt").read_bytes()
    assert main(["train", *QUICK, "train.epochs=2", "seed=3", "--out", str(fresh), "--overwrite"]) == 0
    assert (fresh / "notes.txt").read_text() == "mine" and (fresh / "model.pt").read_bytes() != old_model
    assert json.loads((fresh / "metrics.json").read_text())["epochs"] == 2


def test_a_folder_locked_by_a_live_process_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(sleeper.pid))
        assert main(["train", *QUICK, "train.epochs=1", "--out", str(out)]) == 2
        _one_line_error(capsys, "another process", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", *QUICK, "train.epochs=1", "--out", str(out)]) == 0  # a dead process's lock is taken over


def test_files_follow_the_umask_and_no_temp_file_is_left(run):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.pt", "metrics.json", "config.yaml", "samples.png"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name == ".lock"]


@pytest.mark.parametrize("target", ["file", "proc"])
def test_an_out_path_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys, target):
    path = tmp_path / "a_file" if target == "file" else "/proc/no_such_dir/run"
    if target == "file":
        path.write_text("x")
    assert main(["train", *QUICK, "train.epochs=1", "--out", str(path)]) == 2
    _one_line_error(capsys, str(path))


def test_a_bad_trainer_setting_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "trainer.strategy=warp_drive", "--out", str(out)]) == 2
    _one_line_error(capsys, "trainer")
    assert not out.exists()
    assert main(["train", *QUICK, "trainer.extra={max_epochs: 3}", "--out", str(out)]) == 2
    _one_line_error(capsys, "trainer.extra.max_epochs")


# ---------------------------------------------------------------- data
def test_npz_layouts_that_are_not_documented_are_refused(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", data=np.zeros((5, 3)))
    assert main(["train", *QUICK, "data=array", f"data.path={tmp_path / 'a.npz'}"]) == 2
    _one_line_error(capsys, "no array named x", "data")
    # the layout of scipy.sparse.save_npz is read as a sparse matrix (never its index arrays as
    # data): a damaged one is a one-line error
    np.savez(
        tmp_path / "s.npz",
        indices=np.arange(4),
        indptr=np.arange(3),
        format=np.array("csr"),
        shape=np.array([4, 4]),
        data=np.ones(4),
    )
    assert main(["train", *QUICK, "data=array", f"data.path={tmp_path / 's.npz'}"]) == 2
    _one_line_error(capsys, "could not read")


def test_csv_text_columns_and_nan_rows_are_named_by_file_line(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("a,b,kind\n1,2,cat\n3,4,dog\n")
    assert main(["train", *QUICK, "data=array", f"data.path={tmp_path / 't.csv'}"]) == 2
    _one_line_error(capsys, "line 2", "'kind'", "not a number")
    rows = ["a,b"] + [f"{i},{i + 1}" for i in range(20)]
    rows[7] = "5,"
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    assert main(["train", *QUICK, "data=array", f"data.path={tmp_path / 'n.csv'}", "likelihood=gaussian"]) == 2
    _one_line_error(capsys, "line 8")


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_images_take_their_size_from_the_header(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 12, 16)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    out = tmp_path / "run"
    assert main(["train", *QUICK, "train.epochs=1", "data=mnist", f"data.root={tmp_path}", "--out", str(out)]) == 0
    assert pyro_vae.load(out).image_shape == (1, 12, 16) and (out / "samples.png").is_file()


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["data.limit=0"], "data.limit"),
        (["data.exclude_classes=[0,1,2,3,4,5,6,7,8,9]"], "leaves no training data"),
        (["train.lr=1e12"], "train.lr"),
    ],
)
def test_bad_data_settings_and_divergence_are_one_line(overrides, words, capsys, tmp_path):
    assert main(["train", *QUICK, "train.epochs=1", *overrides, "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, words)


def test_commands_check_columns_and_values_once(run, tmp_path, capsys):
    np.save(tmp_path / "narrow.npy", np.zeros((4, 10), dtype=np.float32))
    for cmd in (
        ["evaluate"],
        ["encode", "--out", str(tmp_path / "z.npy")],
        ["score", "--out", str(tmp_path / "s.csv")],
    ):
        assert main([cmd[0], str(run), "--data", str(tmp_path / "narrow.npy"), *cmd[1:]]) == 2
        _one_line_error(capsys, "10 columns", "expects 64")
    bad = np.full((3, 64), 0.5, dtype=np.float32)
    bad[1, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert main(["encode", str(run), "--data", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "z.npy")]) == 2
    _one_line_error(capsys, "NaN", "row 1")
    assert not (tmp_path / "z.npy").exists()
    assert main(["evaluate", str(run), "--iwae-samples", "-1"]) == 2
    _one_line_error(capsys, "--iwae-samples")


# ---------------------------------------------------------------- the same command, the same numbers
def test_evaluate_is_seeded_and_reproduces_metrics_json(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run)]) == 0
    second = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "metrics.json").read_text())
    assert first["test_loss"] == second["test_loss"]
    assert first["test_loss"] == pytest.approx(saved["test_loss"], abs=1e-4)


def test_load_errors_are_library_errors(tmp_path):
    with pytest.raises(PyroVAEError, match="no model.pt"):
        pyro_vae.load(tmp_path)
