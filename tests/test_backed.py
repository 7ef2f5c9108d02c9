"""On-disk AnnData (.h5ad read through h5py, .zarr through zarr; CSR or dense; X or a layer) streamed by
index gives what the same AnnData in memory gives; encode and score write their output in chunks; bad
files are one line."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pyro_vae
import pyro_vae.cli
from pyro_vae.backed import AnnDataMatrix
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.errors import DataError
from pyro_vae.streaming import DiskRows, DividedFile, MemoryArray, divided

anndata = pytest.importorskip("anndata")
import pandas as pd  # noqa: E402

try:  # .zarr stores in both formats need zarr and an anndata that chooses the format it writes (0.12)
    import zarr  # noqa: F401

    ZARR = hasattr(anndata.settings, "zarr_write_format")
except ImportError:
    ZARR = False
needs_zarr = pytest.mark.skipif(not ZARR, reason="needs zarr and anndata >= 0.12")

FIT = [
    "train.epochs=2",
    "train.batch_size=32",
    "trainer.progress_bar=false",
    "trainer.logger=none",
    "latent_dim=2",
    "likelihood=poisson",
    "data.validation=40",
]


def _counts(n=300, d=24, seed=0):
    """Counts of two cell types (each its own genes up), about a third of them zero, and their labels."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    rate = np.where(np.arange(d) % 2 == kind[:, None], 3.0, 0.4) * rng.uniform(0.5, 1.5, (n, 1))
    return rng.poisson(rate).astype(np.float32), kind


def _adata(x, kind, sparse=True):
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.where(kind == 1, "B", "T")), "depth": x.sum(1)})
    obs.index = [f"c{i}" for i in range(len(x))]
    X = sp.csr_matrix(x) if sparse else x
    a = anndata.AnnData(X.astype(np.float32), obs=obs)
    a.X = X  # kept in its own dtype (anndata before 0.9 made X float32 when built with it)
    a.layers["counts"] = sp.csr_matrix(x * 2)
    return a


@pytest.fixture
def files(tmp_path):
    x, kind = _counts()
    paths = {
        "sparse": tmp_path / "sparse.h5ad",
        "dense": tmp_path / "dense.h5ad",
        "zarr": tmp_path / "cells.zarr",
        "zarr2": tmp_path / "cells_v2.zarr",
    }
    _adata(x, kind).write_h5ad(paths["sparse"])
    _adata(x, kind, sparse=False).write_h5ad(paths["dense"])
    if not ZARR:  # the oldest anndata the project allows: no zarr, no zarr_write_format
        paths.update(zarr=None, zarr2=None)
        return x, kind, paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notes on its next release's defaults
        for key, version in (("zarr", 3), ("zarr2", 2)):
            with anndata.settings.override(zarr_write_format=version):
                _adata(x, kind).write_zarr(paths[key])
    return x, kind, paths


def _fit(path, *overrides):
    torch.set_num_threads(1)
    path = path if str(path).startswith("data.path=") else f"data.path={path}"
    return pyro_vae.fit(None, save=False, overrides=["data=anndata", path, *FIT, *overrides])


@pytest.mark.parametrize("kind", ["sparse", "dense", "zarr", "zarr2"])
def test_backed_anndata_trains_exactly_as_in_memory_with_the_exact_shuffle(files, kind):
    path = files[2][kind]
    if path is None:
        pytest.skip("needs zarr and anndata >= 0.12")
    memory = _fit(path, "data.storage=memory", "data.label_key=cell_type")
    disk = _fit(path, "data.storage=disk", "data.shuffle=exact", "data.label_key=cell_type")
    assert isinstance(disk.data.train.x, DiskRows) and not isinstance(memory.data.train.x, DiskRows)
    assert disk.data.train.x.sparse == (kind != "dense")
    assert torch.equal(disk.data.train.y, memory.data.train.y) and disk.data.class_names == ["B", "T"]
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    for (name, a), (_, b) in zip(memory.model.state_dict().items(), disk.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert memory.metrics["test_loss"] == pytest.approx(disk.metrics["test_loss"], rel=1e-6)


@needs_zarr
def test_a_layer_on_disk_reads_that_layer_and_chunked_shuffling_trains_near_the_exact_loss(files):
    x, _, paths = files
    data = load_data(load_config(None, ["data=anndata", f"data.path={paths['zarr']}", "data.layer=counts"]))
    data_disk = load_data(
        load_config(None, ["data=anndata", f"data.path={paths['zarr']}", "data.layer=counts", "data.storage=disk"])
    )
    rows = data_disk.train.x
    assert isinstance(rows, DiskRows) and torch.equal(rows.dense(), data.train.x.dense())
    assert torch.equal(rows.dense(), torch.from_numpy(2 * x[data_disk.train.rows.numpy()]))
    exact = _fit(paths["sparse"], "data.storage=disk", "data.shuffle=exact", "train.epochs=5")
    chunks = _fit(
        paths["sparse"], "data.storage=disk", "data.chunk_rows=16", "data.shuffle_buffer=64", "train.epochs=5"
    )
    assert chunks.data.stream == {"chunk_rows": 16, "buffer_rows": 64}
    assert chunks.metrics["test_loss"] == pytest.approx(exact.metrics["test_loss"], rel=0.05)


def test_rows_of_a_csr_file_in_any_order_and_in_memory_are_the_file_s_rows(files):
    x, _, paths = files
    rows = DiskRows(AnnDataMatrix(paths["sparse"]))
    idx = torch.tensor([5, 299, 0, 5, 17, 16, 18, 250])
    assert torch.equal(rows[idx].dense(), torch.from_numpy(x[idx.numpy()]))
    assert torch.equal(rows[idx].rows_as_read().dense(), torch.from_numpy(x[idx.numpy()]))
    part = rows[torch.randperm(300, generator=torch.Generator().manual_seed(0))[:120]]
    assert torch.equal(part.to_memory().dense(), part.dense())  # memory: CSR in the split's order
    assert part.nbytes == 8 * (int((x[part.file_rows()] != 0).sum()) + 121)
    moved = pickle.loads(pickle.dumps(part))  # a spawned DDP process: the store opened again there
    assert moved.file._store is None and torch.equal(moved.dense(), part.dense())


def test_storage_auto_streams_an_anndata_too_big_for_memory_and_fit_takes_a_backed_anndata(files, monkeypatch, caplog):
    x, kind, paths = files
    with caplog.at_level("INFO", logger="pyro_vae"):
        data = load_data(load_config(None, ["data=anndata", f"data.path={paths['sparse']}"]))
        assert not isinstance(data.train.x, DiskRows)
        monkeypatch.setattr(pyro_vae.data, "physical_memory", lambda: 20_000)  # a machine too small for it
        data = load_data(load_config(None, ["data=anndata", f"data.path={paths['sparse']}"]))
        assert isinstance(data.train.x, DiskRows) and "CSR rows streamed from disk (data.storage=auto)" in caplog.text
    backed = anndata.read_h5ad(paths["sparse"], backed="r")
    r = pyro_vae.fit(backed, save=False, overrides=[*FIT, "train.epochs=1", "data.label_key=cell_type"])
    assert isinstance(r.data.train.x, DiskRows) and r.data.num_classes == 2
    assert torch.equal(r.data.train.x.dense(), torch.from_numpy(x[r.data.train.rows.numpy()]))


def _train(tmp_path, path, *overrides):
    run = tmp_path / "run"
    assert (
        main(["train", "--out", str(run), "data=anndata", f"data.path={path}", *FIT, "train.epochs=1", *overrides]) == 0
    )
    return run


def test_encode_on_a_backed_anndata_writes_the_codes_of_the_rows_in_memory_in_chunks(files, tmp_path, monkeypatch):
    x, kind, paths = files
    run = _train(tmp_path, paths["sparse"], "data.storage=disk")
    model = pyro_vae.load(run)
    expected = model.encode(torch.from_numpy(x))[0].detach().numpy()
    monkeypatch.setattr(pyro_vae.cli, "OUTPUT_ROWS", 64)  # 300 rows: five chunks written one after another
    for suffix in ("npy", "csv", "h5ad"):
        assert main(["encode", str(run), "--data", str(paths["sparse"]), "--out", str(tmp_path / f"z.{suffix}")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), expected, rtol=1e-5, atol=1e-6)
    table = pd.read_csv(tmp_path / "z.csv")
    assert table["row"].tolist() == list(range(300))
    np.testing.assert_allclose(table[["z0", "z1"]].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    written = anndata.read_h5ad(tmp_path / "z.h5ad")
    np.testing.assert_allclose(written.obsm["X_pyro_vae"], expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(written.X.toarray(), x) and list(written.obs.columns) == ["cell_type", "depth"]
    assert main(["encode", str(run), "--data", str(paths["sparse"]), "--out", str(tmp_path / "z.h5ad")]) == 2
    assert (
        main(["encode", str(run), "--data", str(tmp_path / "z.h5ad"), "--out", str(tmp_path / "z.h5ad"), "--overwrite"])
        == 0
    )
    np.testing.assert_allclose(
        anndata.read_h5ad(tmp_path / "z.h5ad").obsm["X_pyro_vae"], expected, rtol=1e-5, atol=1e-6
    )
    assert not list(tmp_path.glob(".*.tmp.*"))  # nothing half-written left behind


@needs_zarr
def test_encode_and_score_of_a_split_on_disk_give_what_memory_gives(files, tmp_path, capsys):
    _, _, paths = files
    run = _train(tmp_path, paths["zarr"], "data.storage=disk", "data.label_key=cell_type")
    capsys.readouterr()
    codes, scores, metrics = [], [], []
    for storage in ("disk", "memory"):
        out = tmp_path / f"codes_{storage}.npy"
        assert main(["encode", str(run), "--split", "test", "--data", f"storage={storage}", "--out", str(out)]) == 0
        codes.append(np.load(out))
        out = tmp_path / f"scores_{storage}.csv"
        assert main(["score", str(run), "--data", f"storage={storage}", "--out", str(out), "--anomaly-class", "1"]) == 0
        scores.append(pd.read_csv(out))
        printed = capsys.readouterr().out
        metrics.append(json.loads(printed[printed.index("{") : printed.index("}") + 1]))
    np.testing.assert_allclose(codes[0], codes[1], rtol=1e-5, atol=1e-6)
    assert scores[0].columns[0] == "row" and scores[0].columns[2] == "label" and len(scores[0]) == 60
    np.testing.assert_allclose(scores[0].to_numpy(), scores[1].to_numpy(), rtol=1e-5)
    assert metrics[0]["auroc"] == pytest.approx(metrics[1]["auroc"])


def test_a_missing_store_a_missing_layer_a_column_major_matrix_and_a_damaged_file_are_one_line(files, tmp_path, capsys):
    x, kind, paths = files
    base = ["train", "data=anndata", *FIT, "data.storage=disk"]
    a = _adata(x, kind)
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(paths["sparse"].read_bytes()[:-3000])
    for path, extra, message in [
        (tmp_path / "none.zarr", [], "does not exist"),
        (paths["sparse"], ["data.layer=spliced"], "no layer 'spliced' (layers: counts)"),
        (tmp_path / "csc.h5ad", [], "by columns (CSC)"),
        (cut, [], "could not"),
    ]:
        assert main([*base, f"data.path={path}", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("pyro-vae: error:"), err


@needs_zarr
def test_an_unreadable_chunk_of_a_zarr_store_is_one_line_when_it_is_read(files):
    _, _, paths = files
    rows = DiskRows(AnnDataMatrix(paths["zarr"]))
    rows.dense(torch.arange(10))
    for chunk in (paths["zarr"] / "X" / "data").rglob("*"):
        if chunk.is_file() and chunk.name != "zarr.json" and not chunk.name.startswith("."):
            chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(DataError, match="could not read rows") as e:
        DiskRows(AnnDataMatrix(paths["zarr"])).dense(torch.arange(10))
    assert "\n" not in str(e.value)


def test_a_backed_file_changed_before_resume_is_one_line(files, tmp_path, capsys):
    x, kind, paths = files
    run = _train(tmp_path, paths["sparse"], "data.storage=disk")
    y = x.copy()
    y[::5, 3] += 1
    _adata(y, kind).write_h5ad(tmp_path / "new.h5ad")
    os.replace(tmp_path / "new.h5ad", paths["sparse"])  # same shape, other values
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 2
    assert "data differ" in capsys.readouterr().err.strip().splitlines()[-1]


@needs_zarr
def test_several_files_are_one_data_set_on_disk_as_in_memory(files, tmp_path):
    x, kind, _ = files
    a, b = tmp_path / "a.h5ad", tmp_path / "b.zarr"
    _adata(x[:180], kind[:180]).write_h5ad(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _adata(x[180:], kind[180:]).write_zarr(b)
    joined = f"data.path=[{a},{b}]"
    memory = _fit(joined, "data.storage=memory", "data.label_key=cell_type")
    disk = _fit(joined, "data.storage=disk", "data.shuffle=exact", "data.label_key=cell_type")
    rows = disk.data.train.x
    assert isinstance(rows, DiskRows) and torch.equal(rows.dense(), torch.from_numpy(x[disk.data.train.rows.numpy()]))
    assert torch.equal(rows.rows_as_read().dense(), rows.dense())  # CSR rows across the two files
    assert torch.equal(disk.data.train.y, memory.data.train.y)
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]


def test_a_cvae_on_anndata_streamed_from_disk_trains_as_in_memory(files):
    """The design rides beside CSR rows read by index (AppendedRows over DiskRows of the file)."""
    keys = ["model=cvae", "data.batch_key=cell_type", "data.covariate_keys=[depth]"]
    memory = _fit(files[2]["sparse"], *keys, "data.storage=memory")
    disk = _fit(files[2]["sparse"], *keys, "data.storage=disk", "data.shuffle=exact")
    assert disk.data.train.x.on_disk and disk.data.train.x.rows.sparse
    assert torch.equal(disk.data.test.x.dense(), memory.data.test.x.dense())  # each row's design after it
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    assert memory.metrics["test_loss"] == pytest.approx(disk.metrics["test_loss"], rel=1e-6)


def test_small_integer_rows_too_big_as_float32_stay_in_their_own_type_in_memory(files, tmp_path, monkeypatch):
    """Dense int16 counts: as float32 (28,800 bytes) over data.storage=auto's share of a 50,000-byte machine,
    as int16 (14,400 bytes) under it: read into memory as int16 rows (a MemoryArray), read by index."""
    x, kind, _ = files
    path = tmp_path / "int16.h5ad"
    _adata(x.astype(np.int16), kind, sparse=False).write_h5ad(path)
    monkeypatch.setattr(pyro_vae.data, "physical_memory", lambda: 50_000)
    data = load_data(load_config(None, ["data=anndata", f"data.path={path}", "data.validation=40"]))
    for _, split in data.splits():
        rows = split.x
        assert isinstance(rows, DiskRows) and isinstance(rows.file, MemoryArray) and not rows.on_disk
        assert rows.file.dtype == np.int16 and rows.file.nbytes == 2 * x.shape[1] * len(split)
        assert torch.equal(rows.dense(), torch.from_numpy(x[split.rows.numpy()]))
    level = divided(data.test.x, 4.0)  # another file read through the same view, as levels are read
    assert isinstance(level.file, DividedFile) and not level.on_disk and level.file.dtype == np.int16
    assert torch.equal(level.dense(), data.test.x.dense() / 4) and level.fingerprint() != data.test.x.fingerprint()
    moved = pickle.loads(pickle.dumps(level[torch.tensor([3, 1])]))
    assert torch.equal(moved.dense(), data.test.x.dense()[[3, 1]] / 4)
