"""Users' own data: sparse matrices that stay sparse, AnnData / .h5ad, and folders of images."""

import sys
import warnings

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.sparse import SparseRows
from pyro_vae.training.batches import IndexBatchSampler, RowBatches

sp = pytest.importorskip("scipy.sparse")

QUICK = ["trainer.progress_bar=false", "latent_dim=2", "encoder.hidden=[32]", "decoder.hidden=[32]", "train.epochs=3"]


def _counts(n=300, seed=0):
    """Poisson counts of 3 groups, each with its own 10 high-rate genes (mostly zeros elsewhere)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    rate = np.where(np.eye(3)[y].repeat(10, 1) > 0, 4.0, 0.2)
    return rng.poisson(rate).astype(np.float32), y


# ---------------------------------------------------------------- sparse
def test_sparse_rows_gather_subset_and_shard_like_dense():
    x, _ = _counts(500)
    s = SparseRows.from_scipy(sp.csr_matrix(x))
    d = torch.from_numpy(x)
    assert s.nnz == int((x != 0).sum()) and s.col.dtype == torch.int32
    idx = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.dense(idx[:64]), d[idx[:64]])
    sub = s[idx[:200]]  # a subset stays sparse
    assert isinstance(sub, SparseRows) and torch.equal(sub.dense(), d[idx[:200]])
    assert torch.equal(s[d[:, 0] > 0].dense(), d[d[:, 0] > 0]) and torch.equal(s[10:20].dense(), d[10:20])
    # two DDP ranks: disjoint shards of every step, each densified to the right rows
    seen = []
    for rank in (0, 1):
        sampler = IndexBatchSampler(500, 32, seed=3, rank=rank, world_size=2)
        batches = RowBatches(s)
        for item in sampler:
            assert torch.equal(batches[item], d[item["rows"]])
            seen.append(item["rows"])
    assert sorted(torch.cat(seen).tolist()) == list(range(500))


def test_sparse_input_stays_sparse_and_trains_as_dense_does():
    x, _ = _counts()
    over = ["likelihood=poisson", *QUICK]
    r_sparse = pyro_vae.fit(sp.csr_matrix(x), overrides=over, save=False)
    r_dense = pyro_vae.fit(x, overrides=over, save=False)
    assert isinstance(r_sparse.data.train.x, SparseRows) and isinstance(r_sparse.data.test.x, SparseRows)
    assert isinstance(r_dense.data.train.x, torch.Tensor)
    # the same rows, batches and seeds: the same training, sparse or not
    for a, b in zip(r_sparse.history, r_dense.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert r_sparse.metrics["test_loss"] == pytest.approx(r_dense.metrics["test_loss"], rel=1e-5)
    from pyro_vae.data import as_rows

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "sparse CSR support is in beta"
        csr = torch.from_numpy(x).to_sparse_csr()
    for t in (torch.from_numpy(x).to_sparse(), csr):  # torch sparse input too
        rows = as_rows(t, "x")
        assert isinstance(rows, SparseRows) and torch.equal(rows.dense(), torch.from_numpy(x))


def test_sparse_npz_file_trains_sparse_and_odd_dense_npz_is_refused(tmp_path, capsys):
    x, _ = _counts()
    sp.save_npz(tmp_path / "counts.npz", sp.csr_matrix(x))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "data=array",
                f"data.path={tmp_path / 'counts.npz'}",
                "likelihood=poisson",
                *QUICK,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = pyro_vae.load_data(pyro_vae.load(out).config)
    assert isinstance(data.train.x, SparseRows) and data.data_dim == 30
    # encode walks the sparse rows in batches
    assert main(["encode", str(out), "--data", str(tmp_path / "counts.npz"), "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (300, 2)
    capsys.readouterr()
    np.savez(tmp_path / "odd.npz", x=x, extra=x)
    assert main(["train", "data=array", f"data.path={tmp_path / 'odd.npz'}", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extra" in err[0]


def test_sparse_values_the_likelihood_rejects_are_named_by_row():
    x, _ = _counts()
    x[7, 3] = -2
    with pytest.raises(pyro_vae.DataError, match="row 7"):
        pyro_vae.fit(sp.csr_matrix(x), overrides=["likelihood=poisson", *QUICK], save=False)
    x[7, 3], x[9, 0] = 1, np.nan
    with pytest.raises(pyro_vae.DataError, match="row 9"):
        pyro_vae.fit(sp.csr_matrix(x), overrides=["likelihood=poisson", *QUICK], save=False)


# ---------------------------------------------------------------- AnnData
def _adata(n=300):
    ad = pytest.importorskip("anndata")
    pd = pytest.importorskip("pandas")
    x, y = _counts(n)
    names = np.array(["B cell", "NK", "T cell"], dtype=object)[y]
    names[60:] = None  # most cells unlabelled
    names[5] = "unknown"
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(names), "sample": np.where(np.arange(n) % 2, "s1", "s2")},
        index=[f"cell{i}" for i in range(n)],
    )
    a = ad.AnnData(X=np.log1p(x), obs=obs)
    a.layers["counts"] = sp.csr_matrix(x)
    return a, y


def test_anndata_counts_layer_trains_zinb_and_ssvae_with_missing_labels():
    a, y = _adata()
    keys = ["data.layer=counts", "data.label_key=cell_type", "data.batch_key=sample"]
    r = pyro_vae.fit(a, overrides=[*keys, "likelihood=zinb", *QUICK], save=False)
    assert isinstance(r.data.train.x, SparseRows) and r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.data.class_names == ["B cell", "NK", "T cell"] and r.data.extra["batch_names"] == ["s1", "s2"]
    assert r.data.train.batch is not None and len(r.data.train.batch) == len(r.data.train)
    known = r.data.train.y >= 0
    assert 0 < int(known.sum()) < 60  # NaN and "unknown" are unlabelled
    truth = torch.as_tensor(y)[r.data.train.rows]
    assert torch.equal(r.data.train.y[known], truth[known])  # names mapped to the sorted categories
    m2 = pyro_vae.fit(
        a,
        overrides=[
            *keys,
            "model=ssvae",
            "likelihood=negative_binomial",
            "model.classifier_hidden=[16]",
            *QUICK,
            "train.epochs=5",
        ],
        save=False,
    )
    assert isinstance(m2.model, pyro_vae.Classifier) and m2.model.data_info.class_names == ["B cell", "NK", "T cell"]
    assert m2.metrics["test_accuracy"] > 0.6


def test_h5ad_file_through_the_cli_and_classify_prints_names(tmp_path, capsys):
    a, _ = _adata()
    a.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "data=anndata",
                f"data.path={tmp_path / 'cells.h5ad'}",
                "data.layer=counts",
                "data.label_key=cell_type",
                "model=ssvae",
                "likelihood=poisson",
                "model.classifier_hidden=[16]",
                *QUICK,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["classify", str(out), "--data", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "c.csv")]) == 0
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0].startswith("row,predicted,predicted_name,p_B cell") and len(lines) == 301
    assert lines[1].split(",")[2] in ("B cell", "NK", "T cell")
    capsys.readouterr()
    assert main(["train", "data=anndata", f"data.path={tmp_path / 'cells.h5ad'}", "data.layer=raw", *QUICK]) == 2
    assert "no layer 'raw' (layers: counts)" in capsys.readouterr().err


def test_missing_anndata_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.h5ad").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "anndata", None)
    assert main(["train", "data=anndata", f"data.path={tmp_path / 'a.h5ad'}", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install pyro_vae[anndata]" in err[0]


# ---------------------------------------------------------------- image folders
def _image_folder(root, n=10, size=20):
    """Two classes of generated PNGs: a bright disc and a bright square, with noise."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    shapes = {
        "disc": (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2,
        "square": (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4),
    }
    for name, mask in shapes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = np.clip(mask * 220 + rng.integers(0, 30, mask.shape), 0, 255).astype(np.uint8)
            Image.fromarray(a).convert("RGB").save(root / name / f"{i}.png")
    return root


def test_image_folder_trains_through_the_cli_and_fit(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "data=image_folder",
                f"data.root={root}",
                "data.image_size=16",
                "train.epochs=2",
                "trainer.progress_bar=false",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert pyro_vae.load(out).image_shape == (1, 16, 16) and (out / "samples.png").is_file()
    r = pyro_vae.fit(
        None,
        save=False,
        overrides=[
            "data=image_folder",
            f"data.root={root}",
            "data.channels=3",
            "train.epochs=2",
            "trainer.progress_bar=false",
        ],
    )
    x = torch.cat([r.data.train.x, r.data.test.x])
    assert r.data.image_shape == (3, 20, 20) and r.data.class_names == ["disc", "square"]
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.max()) > 0.8
    assert sorted(torch.cat([r.data.train.y, r.data.test.y]).tolist()) == [0] * 10 + [1] * 10


def test_image_folder_errors_name_the_folder_or_file(tmp_path, capsys):
    def error(root, *extra):
        assert main(["train", "data=image_folder", f"data.root={root}", *extra, *QUICK]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    (tmp_path / "empty").mkdir()
    assert "holds no images" in error(tmp_path / "empty")
    root = _image_folder(tmp_path / "imgs", n=3)
    (root / "square" / "broken.png").write_text("not a png")
    assert "broken.png" in error(root)
    (root / "square" / "broken.png").unlink()
    (root / "empty_class").mkdir()
    assert "empty_class" in error(root)
    (root / "empty_class").rmdir()
    from PIL import Image

    Image.new("L", (7, 5)).save(root / "disc" / "small.png")
    assert "data.image_size" in error(root)


def test_library_sizes_of_sparse_rows_are_the_dense_row_totals():
    from pyro_vae.likelihoods import row_totals
    from pyro_vae.sparse import SparseRows

    m = sp.random(60, 25, density=0.2, format="lil", random_state=3, dtype=np.float32)
    m[7] = 0  # an empty row has library size 0
    m = m.tocsr()
    totals = row_totals(SparseRows.from_scipy(m))
    np.testing.assert_allclose(totals.numpy(), np.asarray(m.sum(1)).ravel(), atol=1e-5)
    assert totals[7] == 0 and totals.shape == (60,)
