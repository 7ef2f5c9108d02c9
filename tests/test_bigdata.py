"""Data larger than memory: a .npy read from disk by index gives what the same rows in memory give;
chunked shuffling visits every row once per epoch and reads each chunk once; DDP shards stay
disjoint; a file truncated or changed is one line."""

import numpy as np
import pytest
import torch

import pyro_vae
import pyro_vae.data
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.config import load_config
from pyro_vae.errors import DataError
from pyro_vae.streaming import NpyRows, chunked_order
from pyro_vae.training.batches import IndexBatchSampler, RowBatches, index_loader, training_rows

FIT = ["train.epochs=2", "train.batch_size=32", "trainer.progress_bar=false", "trainer.logger=none", "latent_dim=2"]


@pytest.fixture
def npy(tmp_path):
    """400 rows of binary pixels with structure (two prototypes), as a .npy file."""
    rng = np.random.default_rng(0)
    proto = rng.random((2, 16)) < 0.5
    x = proto[rng.integers(0, 2, 400)] ^ (rng.random((400, 16)) < 0.1)
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float32))
    return path


def _fit(path, *overrides):
    torch.set_num_threads(1)
    return pyro_vae.fit(None, save=False, overrides=["data=array", f"data.path={path}", *FIT, *overrides])


def test_rows_on_disk_train_exactly_as_in_memory_with_the_exact_shuffle(npy):
    memory = _fit(npy, "data.storage=memory", "data.validation=50")
    disk = _fit(npy, "data.storage=disk", "data.shuffle=exact", "data.validation=50")
    assert isinstance(memory.data.train.x, torch.Tensor) and isinstance(disk.data.train.x, NpyRows)
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    for (name, a), (_, b) in zip(memory.model.state_dict().items(), disk.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert memory.metrics["test_loss"] == pytest.approx(disk.metrics["test_loss"], rel=1e-6)


def test_chunked_shuffling_trains_to_a_loss_near_the_exact_one(npy):
    exact = _fit(npy, "data.storage=disk", "data.shuffle=exact", "train.epochs=6")
    chunks = _fit(npy, "data.storage=disk", "data.chunk_rows=16", "data.shuffle_buffer=64", "train.epochs=6")
    assert chunks.data.stream == {"chunk_rows": 16, "buffer_rows": 64}
    assert chunks.metrics["test_loss"] == pytest.approx(exact.metrics["test_loss"], rel=0.05)


def test_a_split_on_disk_reads_the_rows_of_the_split_in_memory(npy):
    x = torch.from_numpy(np.load(npy))
    rows = NpyRows.open(npy)
    idx = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))[:150]
    part = rows[idx]
    assert torch.equal(part.dense(), x[idx])
    assert torch.equal(part.to_memory(), x[idx])
    assert torch.equal(part[torch.tensor([3, 0, 3])].dense(), x[idx[[3, 0, 3]]])


def test_chunked_order_visits_every_row_once_in_contiguous_chunks():
    n, chunk, buffer = 999, 37, 150  # 27 chunks, 4 to a buffer
    file_order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    order = chunked_order(n, chunk, buffer, torch.Generator().manual_seed(1), file_order)
    assert torch.equal(order.sort().values, torch.arange(n))
    chunk_of = torch.empty(n, dtype=torch.long)
    chunk_of[file_order] = torch.arange(n) // chunk
    per_buffer = buffer // chunk
    for a in range(0, n, per_buffer * chunk):  # a buffer's rows come from its own chunks, all of them
        seen = chunk_of[order[a : a + per_buffer * chunk]].unique()
        assert len(seen) <= per_buffer
    assert not torch.equal(order, chunked_order(n, chunk, buffer, torch.Generator().manual_seed(2), file_order))


def test_each_chunk_is_read_once_per_epoch_and_batches_hold_the_right_rows(npy):
    x = torch.from_numpy(np.load(npy))
    rows = NpyRows.open(npy)[torch.randperm(400, generator=torch.Generator().manual_seed(0))[:300]]
    cached, order = training_rows(rows, {"chunk_rows": 20, "buffer_rows": 60})
    sampler = IndexBatchSampler(len(rows), 16, seed=3, order=order)
    loader = index_loader(RowBatches(cached), sampler)
    seen = []
    for item, batch in zip(sampler, loader):
        assert torch.equal(batch, x[torch.from_numpy(rows.file_rows(item["rows"]))])
        seen.append(item["rows"])
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(300))
    assert cached._cache.reads == 15  # 300 rows / 20 per chunk, each read once


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_of_a_chunked_epoch_are_disjoint_cover_it_take_the_same_steps_and_read_own_chunks(world_size):
    n, chunk = 1001, 50
    file_order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    chunk_of = torch.empty(n, dtype=torch.long)
    chunk_of[file_order] = torch.arange(n) // chunk
    n_chunks = int(chunk_of.max()) + 1

    def order(m, g):
        return chunked_order(m, chunk, 200, g, file_order, world_size)

    shards = [list(IndexBatchSampler(n, 32, 7, r, world_size, order=order)) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    rows = torch.cat([b["rows"] for s in shards for b in s])
    assert torch.equal(rows.sort().values, torch.arange(n))
    read = [set(chunk_of[torch.cat([b["rows"] for b in s])].tolist()) for s in shards]
    own = -(-n_chunks // world_size)
    tail = (world_size - 1) * (200 // chunk)  # the rows left over: from the others' last buffers
    assert all(len(r) <= own + tail for r in read)
    assert all(len(a & b) <= tail for i, a in enumerate(read) for b in read[i + 1 :])


def test_encode_on_a_streamed_npy_writes_the_codes_of_the_rows_in_memory(npy, tmp_path):
    run = tmp_path / "run"
    overrides = ["data=array", f"data.path={npy}", "data.storage=disk", *FIT, "train.epochs=1"]
    assert main(["train", "--out", str(run), *overrides]) == 0
    streamed, whole = tmp_path / "z_disk.npy", tmp_path / "z_mem.npy"
    assert main(["encode", str(run), "--data", str(npy), "--out", str(streamed)]) == 0
    model = pyro_vae.load(run)
    expected = model.encode(torch.from_numpy(np.load(npy)))[0].detach().numpy()
    np.testing.assert_allclose(np.load(streamed), expected, rtol=1e-5, atol=1e-6)
    assert main(["encode", str(run), "--split", "test", "--out", str(whole)]) == 0
    cfg = load_config(None, [*overrides, "data.storage=memory"])
    test = load_data(cfg).test
    np.testing.assert_allclose(np.load(whole), model.encode(test.x)[0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_truncated_npy_is_one_line(npy, tmp_path, capsys):
    raw = npy.read_bytes()
    cut = tmp_path / "cut.npy"
    cut.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DataError, match="truncated"):
        NpyRows.open(cut)
    assert main(["train", "data=array", f"data.path={cut}", "data.storage=disk", *FIT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "truncated" in err[-1] and err[-1].startswith("pyro-vae: error:")


def test_a_file_changed_or_truncated_before_resume_is_one_line(npy, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = ["data=array", f"data.path={npy}", "data.storage=disk", *FIT, "train.epochs=1"]
    assert main(["train", "--out", str(run), *overrides]) == 0
    x = np.load(npy)
    x[::7, 2] = 1 - x[::7, 2]
    np.save(npy, x)  # same shape and size, other values
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 2
    assert "data differ" in capsys.readouterr().err.strip().splitlines()[-1]
    npy.write_bytes(npy.read_bytes()[:-64])
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 2
    assert "truncated" in capsys.readouterr().err.strip().splitlines()[-1]


def test_storage_auto_keeps_small_files_in_memory_and_the_log_says_where_rows_go(npy, caplog, monkeypatch):
    with caplog.at_level("INFO", logger="pyro_vae"):
        data = load_data(load_config(None, ["data=array", f"data.path={npy}"]))
        assert isinstance(data.train.x, torch.Tensor) and data.stream is None
        assert caplog.text == ""  # small data in memory: nothing to say
        monkeypatch.setattr(pyro_vae.data, "physical_memory", lambda: 20_000)  # a machine too small for it
        data = load_data(load_config(None, ["data=array", f"data.path={npy}"]))
        assert isinstance(data.train.x, NpyRows) and "streamed from disk (data.storage=auto)" in caplog.text
        monkeypatch.setattr(pyro_vae.data, "LOG_BYTES", 0)
        load_data(load_config(None, ["data=array", f"data.path={npy}", "data.storage=memory"]))
        assert "loaded into memory (data.storage=memory" in caplog.text
    with pytest.raises(Exception, match="data.storage"):
        load_config(None, ["data=array", f"data.path={npy}", "data.storage=ram"])


def test_float32_rows_in_memory_are_not_copied_to_be_checked_and_nan_is_still_refused():
    from pyro_vae.data import rows_tensor

    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    assert rows_tensor(x, "x").data_ptr() == x.ctypes.data  # the splits are gathered from it
    frozen = x.copy()
    frozen.flags.writeable = False
    assert rows_tensor(frozen, "x").data_ptr() != frozen.ctypes.data  # torch needs writable memory
    assert torch.equal(rows_tensor(x[::-1], "x"), torch.from_numpy(x[::-1].copy()))
    x[7, 2] = np.nan
    with pytest.raises(DataError, match=r"1 rows with NaN/inf .*first: row 7"):
        rows_tensor(x, "x")


def test_the_shuffle_buffer_of_wide_rows_holds_at_most_256_mb_of_32_chunks(tmp_path):
    path = tmp_path / "wide.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(20, 100_000))[:] = 0.5
    cfg = load_config(None, ["data=array", f"data.path={path}", "data.storage=disk"])
    buffer = (256 << 20) // 400_000
    assert load_data(cfg).stream == {"chunk_rows": buffer // 32, "buffer_rows": buffer}  # 32 chunks to mix


def test_a_file_cut_short_while_batches_are_read_ahead_is_one_line_in_the_training_loop(npy):
    rows = NpyRows.open(npy)
    cached, order = training_rows(rows, {"chunk_rows": 50, "buffer_rows": 100})
    loader = index_loader(RowBatches(cached), IndexBatchSampler(len(rows), 16, order=order))
    npy.write_bytes(npy.read_bytes()[: 128 + 100 * 16 * 4])  # the header and 100 rows left
    with pytest.raises(DataError, match="truncated") as e:
        list(loader)
    assert "\n" not in str(e.value)


def test_evaluate_and_score_on_rows_on_disk_give_what_the_rows_in_memory_give(npy, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    overrides = ["data=array", f"data.path={npy}", "data.storage=disk", *FIT, "train.epochs=1"]
    assert main(["train", "--out", str(run), *overrides]) == 0
    capsys.readouterr()
    metrics, scores = [], []
    for storage in ("disk", "memory"):
        assert main(["evaluate", str(run), "--data", f"storage={storage}"]) == 0
        printed = capsys.readouterr().out
        metrics.append(json.loads(printed[printed.index("{") :]))
        out = tmp_path / f"{storage}.csv"
        assert main(["score", str(run), "--data", f"storage={storage}", "--out", str(out)]) == 0
        scores.append(np.loadtxt(out, delimiter=",", skiprows=1))
    assert metrics[0]["test_loss"] == pytest.approx(metrics[1]["test_loss"], rel=1e-6)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)


def test_fit_given_a_memory_mapped_npy_streams_it_when_it_does_not_fit(npy, monkeypatch):
    mapped = np.load(npy, mmap_mode="r")
    same = pyro_vae.fit(np.asarray(mapped), save=False, overrides=[*FIT, "train.epochs=1"])
    small = pyro_vae.fit(mapped, save=False, overrides=[*FIT, "train.epochs=1"])
    assert isinstance(small.data.train.x, torch.Tensor) and torch.equal(small.data.train.x, same.data.train.x)
    monkeypatch.setattr(pyro_vae.data, "physical_memory", lambda: 20_000)  # a machine too small for it
    r = pyro_vae.fit(mapped, save=False, overrides=[*FIT, "train.epochs=1"])
    assert isinstance(r.data.train.x, NpyRows) and torch.equal(r.data.train.x.dense(), same.data.train.x)
    part = pyro_vae.fit(mapped[:300], save=False, overrides=[*FIT, "train.epochs=1"])
    assert isinstance(part.data.train.x, torch.Tensor)  # a slice of the map: read as an array
