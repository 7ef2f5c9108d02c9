"""Image folders as uint8 rows read by index: in memory at one byte a pixel, or streamed from the decoded
cache's ``images.npy``; either way each batch becomes float32 levels or [0,1] as it is read. Streamed
rows train exactly as rows in memory (exact shuffle, same seed); a changed folder rebuilds the cache; a
cache cut short is rebuilt at load and one line while it is read."""

import json

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.errors import DataError
from pyro_vae.images import cache_dir, load_image_folder
from pyro_vae.sparse import take
from pyro_vae.streaming import MemoryArray, NpyFile

FIT = [
    "train.epochs=2",
    "train.batch_size=16",
    "trainer.progress_bar=false",
    "trainer.logger=none",
    "latent_dim=2",
    "encoder.type=mlp",
    "decoder.type=mlp",
    "encoder.hidden=[32]",
    "decoder.hidden=[32]",
]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Two classes of 12x12 grey PNGs (a bright left or right half, with noise), 40 images each; a cache of
    this test's own."""
    from PIL import Image

    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for k, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(40):
            a = rng.integers(0, 60, (12, 12)).astype(np.uint8)
            a[:, k * 6 : k * 6 + 6] += 180
            Image.fromarray(a).save(root / name / f"{i:02d}.png")
    return root


def _data(root, *extra):
    return load_data(load_config(None, ["data=image_folder", f"data.root={root}", *extra]))


def _fit(root, *extra):
    torch.set_num_threads(1)
    return pyro_vae.fit(None, save=False, overrides=["data=image_folder", f"data.root={root}", *FIT, *extra])


def test_in_memory_the_pixels_stay_uint8_and_each_batch_is_the_float_of_the_old_loader(folder):
    pixels, y, _ = load_image_folder(folder, cache=False)
    d = _data(folder, "data.storage=memory", "likelihood=bernoulli")
    x = d.train.x
    assert isinstance(x.file.file, MemoryArray) and x.file.dtype == np.uint8 and not x.on_disk
    assert sum(s.x.file.nbytes for _, s in d.splits()) == pixels.size  # one byte a pixel, each split once
    raw = torch.from_numpy(pixels.reshape(len(pixels), -1)).float()
    flat = raw / 255  # what the splits held before
    for _, s in d.splits():
        assert torch.equal(take(s.x, slice(None)), flat[s.rows])
        assert torch.equal(s.y, torch.from_numpy(y)[s.rows])
    levels = _data(folder, "data.storage=memory", "likelihood=categorical")  # a likelihood over levels 0..255
    assert torch.equal(levels.test.x.dense(), raw[levels.test.rows])


def test_streamed_from_the_cache_trains_exactly_as_in_memory_with_the_exact_shuffle(folder):
    memory = _fit(folder, "data.storage=memory", "data.validation=10")
    disk = _fit(folder, "data.storage=disk", "data.shuffle=exact", "data.validation=10")
    assert not memory.data.train.x.on_disk and disk.data.train.x.on_disk
    entry = cache_dir(folder.resolve(), None, 1)
    assert disk.data.train.x.file.path == entry / "images.npy" and disk.data.stream is None
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    for (name, a), (_, b) in zip(memory.model.state_dict().items(), disk.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert memory.metrics["test_loss"] == pytest.approx(disk.metrics["test_loss"], rel=1e-6)
    chunks = _fit(folder, "data.storage=disk", "data.chunk_rows=8", "data.shuffle_buffer=32")
    assert chunks.data.stream == {"chunk_rows": 8, "buffer_rows": 32}
    assert chunks.metrics["test_loss"] == pytest.approx(memory.metrics["test_loss"], rel=0.1)


def test_every_command_reads_a_streamed_image_folder_as_one_in_memory(folder, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["data=image_folder", f"data.root={folder}", "data.storage=disk", *FIT, "model=ssvae", "data.labels=20"]
    assert main(["train", "--out", str(run), *train]) == 0
    capsys.readouterr()
    metrics, outputs = [], []
    for storage in ("disk", "memory"):
        assert main(["evaluate", str(run), "--data", f"storage={storage}"]) == 0
        printed = capsys.readouterr().out
        metrics.append(json.loads(printed[printed.index("{") :]))
        files = {}
        for command, name in (("encode", "codes.csv"), ("score", "scores.csv"), ("classify", "classes.csv")):
            files[command] = tmp_path / f"{storage}-{name}"
            assert main([command, str(run), "--data", f"storage={storage}", "--out", str(files[command])]) == 0
        outputs.append({k: np.loadtxt(p, delimiter=",", skiprows=1, dtype=str) for k, p in files.items()})
    assert metrics[0]["test_loss"] == pytest.approx(metrics[1]["test_loss"], rel=1e-6)
    for command in outputs[0]:
        a, b = outputs[0][command], outputs[1][command]
        assert a.shape == b.shape and len(a) == 16, command
        for col in range(a.shape[1]):
            try:
                np.testing.assert_allclose(a[:, col].astype(float), b[:, col].astype(float), rtol=1e-5, atol=1e-6)
            except ValueError:  # a column of class names
                assert (a[:, col] == b[:, col]).all(), command


def test_a_changed_folder_rebuilds_the_cache_that_streamed_rows_read(folder, caplog):
    from PIL import Image

    before = _data(folder, "data.storage=disk", "likelihood=categorical")
    path = before.train.x.file.path
    old = np.load(path)
    target = folder / "left" / "00.png"
    Image.fromarray(np.full((12, 12), 255, dtype=np.uint8)).save(target)
    with caplog.at_level("INFO", logger="pyro_vae"):
        after = _data(folder, "data.storage=disk", "likelihood=categorical")
    assert "the folder changed since the last one" in caplog.text
    new = np.load(path)
    assert (new[0] == 255).all() and not (old[0] == 255).all() and np.array_equal(new[1:], old[1:])
    first = [s.x.dense(s.rows == 0) for _, s in after.splits() if bool((s.rows == 0).any())]
    assert len(first) == 1 and bool((first[0] == 255).all())  # the rows read the new pixels


def test_a_cache_cut_short_is_rebuilt_at_load_and_one_line_while_it_is_read(folder, caplog, capsys):
    d = _data(folder, "data.storage=disk")
    path = d.train.x.file.path
    good = np.load(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with caplog.at_level("INFO", logger="pyro_vae"):
        again = _data(folder, "data.storage=disk")  # the manifest no longer matches: decoded again
    assert "the last one was damaged" in caplog.text and np.array_equal(np.load(path), good)
    path.write_bytes(raw[: len(raw) // 2])  # cut short while the rows are in use
    with pytest.raises(DataError, match="truncated") as e:
        again.train.x.dense()
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="truncated"):
        NpyFile(path)
    assert main(["train", "data=image_folder", f"data.root={folder}", "data.storage=disk", *FIT]) == 0  # rebuilt


def test_storage_keys_on_image_folders(folder, caplog, monkeypatch):
    import pyro_vae.data

    with pytest.raises(Exception, match="data.cache=true"):
        load_config(None, ["data=image_folder", f"data.root={folder}", "data.storage=disk", "data.cache=false"])
    with pytest.raises(Exception, match="data.storage"):
        load_config(None, ["data=image_folder", f"data.root={folder}", "data.storage=ram"])
    assert not _data(folder, "data.cache=false").train.x.on_disk  # decoded in memory, nothing written
    assert not _data(folder).train.x.on_disk  # auto: small folders in memory
    monkeypatch.setattr(pyro_vae.data, "physical_memory", lambda: 20_000)  # a machine too small for them
    with caplog.at_level("INFO", logger="pyro_vae"):
        d = _data(folder)
    assert d.train.x.on_disk and "uint8 rows streamed from disk (data.storage=auto)" in caplog.text


def test_a_class_conditional_vae_keeps_the_pixels_uint8_in_memory_or_on_disk(folder):
    memory = _fit(folder, "model=cvae", "data.storage=memory", "data.validation=10")
    disk = _fit(folder, "model=cvae", "data.storage=disk", "data.shuffle=exact", "data.validation=10")
    assert memory.data.train.x.rows.file.dtype == np.uint8 and not memory.data.train.x.on_disk
    assert disk.data.train.x.on_disk and memory.data.train.x.shape[1] == 144 + 2  # the pixels, then the label
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    assert torch.equal(memory.data.test.x.dense(), disk.data.test.x.dense())
