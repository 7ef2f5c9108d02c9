"""Users' own data: sparse matrices that stay sparse, AnnData / .h5ad, and folders of images."""

import sys
import warnings

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import DataError
from pyro_vae.images import cache_dir, cache_home, load_image_folder
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


def test_image_folder_trains_through_the_cli_and_fit(tmp_path, capsys):
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
    assert f"pyro-vae: decoded 20 images in {root} " in capsys.readouterr().err  # and where they are cached
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
    assert r.data.train.x.file.dtype == np.uint8  # the pixels stay uint8; each batch is read as float32
    x = torch.cat([r.data.train.x.dense(), r.data.test.x.dense()])
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


def _pixels(root):
    """Every image file under ``root`` with its bytes: what a load must leave as it was."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_image_folder_with_its_own_test_folder(tmp_path, capsys):
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data

    root = tmp_path / "set"
    _image_folder(root / "train", n=6)
    _image_folder(root / "test", n=3)

    def data(*extra):
        return load_data(load_config(None, ["data=image_folder", "data.test_fraction=0.5", *extra]))

    for d in (data(f"data.root={root}"), data(f"data.root={root / 'train'}", f"data.test_root={root / 'test'}")):
        assert (len(d.train), len(d.test)) == (12, 6)  # the folders' own split: test_fraction is not used
        assert d.class_names == ["disc", "square"] and d.image_shape == (1, 20, 20)
        assert d.test.y.tolist() == [0] * 3 + [1] * 3 and d.test.rows.tolist() == list(range(6))
    alone = data(f"data.root={root / 'train'}")  # no test folder: a random half of train
    assert (len(alone.train), len(alone.test)) == (6, 6)

    def error(*extra):  # one error line, last; the lines of the folders read before it come first
        assert main(["train", "data=image_folder", *extra, *QUICK]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert [line for line in lines if "error" in line] == lines[-1:], lines
        return lines[-1]

    (root / "test" / "square").rename(root / "test" / "triangle")
    msg = error(f"data.root={root}")
    assert "lacks square" in msg and "triangle" in msg and "same class sub-folders" in msg
    (root / "test" / "triangle").rename(root / "test" / "square")
    assert "data.test_root" in error(f"data.root={root}", f"data.test_root={tmp_path / 'nowhere'}")
    from PIL import Image

    big = _image_folder(tmp_path / "big", n=2, size=24)
    assert "set data.image_size" in error(f"data.root={root / 'train'}", f"data.test_root={big}")
    d = data(f"data.root={root / 'train'}", f"data.test_root={big}", "data.image_size=12")
    assert d.image_shape == (1, 12, 12) and d.test.x.shape == (4, 144)
    (root / "val").mkdir()  # train/, test/ and val/: not the two-folder layout; a hint names the keys
    Image.new("L", (20, 20)).save(root / "val" / "a.png")
    assert "data.test_root" in error(f"data.root={root}")


def test_image_folder_mixed_sizes_and_grey_colour_follow_the_keys(tmp_path):
    from PIL import Image

    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(colour).save(root / "a" / "colour.png")
    Image.fromarray(colour[:, :, 0]).save(root / "a" / "grey.png")  # mode L, another size after resizing
    Image.fromarray(colour[:6, :9]).save(root / "a" / "small.png")
    for workers in (1, 2):
        grey, _, _ = load_image_folder(root, image_size=8, channels=1, cache=False, workers=workers)
        rgb, y, names = load_image_folder(root, image_size=8, channels=3, cache=False, workers=workers)
        assert grey.shape == (3, 1, 8, 8) and rgb.shape == (3, 3, 8, 8) and names == ["a"] and y.tolist() == [0] * 3
        assert np.array_equal(rgb[1, 0], rgb[1, 1]) and np.array_equal(rgb[1, 0], rgb[1, 2])  # grey -> equal channels
        expect = np.asarray(Image.fromarray(colour).convert("L").resize((8, 8), Image.BILINEAR))
        assert np.array_equal(grey[0, 0], expect)  # colour -> grey as Pillow's "L"
    with pytest.raises(DataError, match=r"small.png is 9x6 pixels but .*colour.png is 14x10.*data.image_size"):
        load_image_folder(root, channels=3, cache=False)


def test_image_folder_decodes_in_parallel_chunks_as_in_one(tmp_path):
    root = _image_folder(tmp_path / "imgs", n=25)  # 50 images: chunks of 16 over 2 workers
    one = load_image_folder(root, channels=3, cache=False, workers=1)
    two = load_image_folder(root, channels=3, cache=False, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]) and one[2] == two[2]
    assert one[0].shape == (50, 3, 20, 20) and one[1].tolist() == [0] * 25 + [1] * 25
    (root / "square" / "9.png").write_bytes(b"\x89PNG damaged")  # in the third chunk
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"could not read image .*square/9.png") as e:
            load_image_folder(root, cache=False, workers=workers)
        assert "\n" not in str(e.value)


def test_a_damaged_image_in_a_large_folder_ends_the_command_at_once(tmp_path):
    """Over PARALLEL_MIN images a pool decodes; a damaged file in its first chunk stops the
    workers and the program exits while later chunks were still to come (its quick exit once
    waited forever for workers left waiting for work)."""
    import subprocess

    from PIL import Image

    from pyro_vae.images import PARALLEL_MIN

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(PARALLEL_MIN + 100):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    (folder / "00000_broken.png").write_text("not a png")  # the second file
    cmd = [sys.executable, "-m", "pyro_vae.cli", "train", "data=image_folder", f"data.root={tmp_path / 'imgs'}"]
    done = subprocess.run(cmd + QUICK, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"pyro-vae: error: could not read image {folder}/00000_broken.png")
    )


def test_image_cache_is_used_and_a_changed_folder_is_decoded_again(tmp_path, monkeypatch, caplog):
    import logging
    import os

    import pyro_vae.images as images_mod

    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="pyro_vae")
    root = _image_folder(tmp_path / "imgs", n=4)
    before = _pixels(root)
    first = load_image_folder(root, channels=3)
    entry = cache_dir(root, None, 3)
    assert entry.parent == tmp_path / "cache" / "images"
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "labels.npy", "manifest.json"]
    assert "cached them in " + str(entry) in caplog.text
    decoded = []
    real_decode = images_mod.decode_images
    monkeypatch.setattr(images_mod, "decode_images", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))

    def load():
        caplog.clear()
        out = load_image_folder(root, channels=3)
        return out, bool(decoded and decoded.pop())

    (again, y, names), was_decoded = load()
    assert not was_decoded and "from the cache " + str(entry) in caplog.text
    assert np.array_equal(again, first[0]) and np.array_equal(y, first[1]) and names == first[2]
    assert _pixels(root) == before  # nothing written into the data folder
    # a changed image (new pixels, new mtime), a new image, a removed image: each is seen
    from PIL import Image

    Image.new("L", (20, 20), 255).convert("RGB").save(root / "disc" / "0.png")
    os.utime(root / "disc" / "0.png", ns=(1, 1))
    (out, _, _), was_decoded = load()
    assert was_decoded and "folder changed" in caplog.text and out[0].min() == 255
    Image.new("L", (20, 20), 7).save(root / "square" / "new.png")
    (out, y, _), was_decoded = load()
    assert was_decoded and len(out) == 9 and y.tolist() == [0] * 4 + [1] * 5
    (root / "disc" / "1.png").unlink()
    (out, _, _), was_decoded = load()
    assert was_decoded and len(out) == 8
    assert not load()[1]
    # other keys are other entries; data.cache=false writes nothing
    before = _pixels(root)
    load_image_folder(root, image_size=10, channels=3)
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 2
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "none"))
    load_image_folder(root, cache=False)
    assert not (tmp_path / "none").exists() and _pixels(root) == before


def test_a_damaged_or_foreign_image_cache_is_rebuilt_never_trusted(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    root = _image_folder(tmp_path / "imgs", n=3)
    good, _, _ = load_image_folder(root)
    entry = cache_dir(root, None, 1)
    raw = (entry / "images.npy").read_bytes()
    manifest = (entry / "manifest.json").read_text()

    def reload():
        out, _, _ = load_image_folder(root)
        assert np.array_equal(out, good)
        return json.loads((entry / "manifest.json").read_text())

    (entry / "images.npy").write_bytes(raw[: len(raw) // 2])  # cut short
    reload()
    (entry / "images.npy").write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one flipped byte
    reload()
    (entry / "manifest.json").write_text("{not json")
    reload()
    m = json.loads(manifest)
    (entry / "manifest.json").write_text(json.dumps({**m, "format": m["format"] + 1}))  # another format
    assert reload()["format"] == m["format"]
    marker = tmp_path / "ran"
    payload = np.empty(1, dtype=object)
    payload[0] = _RunsCode(marker)
    np.save(entry / "images.npy", payload, allow_pickle=True)  # a pickle where pixels belong
    reload()
    assert not marker.exists()
    (entry / "labels.npy").unlink()
    reload()


class _RunsCode:
    """Unpickling this touches a file: a cache that holds it must never be unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (self.path.touch, ())


def test_an_unwritable_image_cache_is_a_warning_not_an_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "file" / "below"))
    root = _image_folder(tmp_path / "imgs", n=2)
    with pytest.warns(UserWarning, match="could not write the image cache .*data.cache=false"):
        x, _, _ = load_image_folder(root)
    assert x.shape == (4, 1, 20, 20)


def test_image_cache_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "own"))
    assert cache_home() == tmp_path / "own" / "images"
    monkeypatch.delenv("PYRO_VAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "pyro_vae" / "images"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "pyro_vae" / "images"


def test_library_sizes_of_sparse_rows_are_the_dense_row_totals():
    from pyro_vae.likelihoods import row_totals
    from pyro_vae.sparse import SparseRows

    m = sp.random(60, 25, density=0.2, format="lil", random_state=3, dtype=np.float32)
    m[7] = 0  # an empty row has library size 0
    m = m.tocsr()
    totals = row_totals(SparseRows.from_scipy(m))
    np.testing.assert_allclose(totals.numpy(), np.asarray(m.sum(1)).ravel(), atol=1e-5)
    assert totals[7] == 0 and totals.shape == (60,)
