import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_vae.config import load_config
from pyro_vae.data import load_data, load_idx_folder
from pyro_vae.training.batches import IndexBatchSampler, RowBatches, SemiSupervisedBatchSampler
from pyro_vae.errors import DataError

from conftest import FASHION_ROOT, needs_fashion


def _write_idx(path, arr, gz):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (6, 28, 28)), "t10k": rng.integers(0, 256, (4, 28, 28))}
    labs = {"train": np.arange(6) % 10, "t10k": np.arange(4)}
    for split in imgs:
        sfx = ".gz" if gz else ""
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{sfx}", imgs[split], gz)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{sfx}", labs[split], gz)
    train, test, shape = load_idx_folder(tmp_path)
    assert train.x.shape == (6, 784) and test.x.shape == (4, 784) and shape == (1, 28, 28)
    assert torch.equal(train.x[2], torch.tensor(imgs["train"][2].reshape(-1), dtype=torch.float32))
    assert train.y.tolist() == labs["train"].tolist()


def test_missing_idx_file_names_it(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_idx_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_idx_folder(tmp_path / "nowhere")


def test_digits_default_splits_and_scaling():
    data = load_data(load_config(None, ["data.validation=100"]))
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10
    n = len(data.train) + len(data.val) + len(data.test)
    assert n == 1797 and len(data.val) == 100
    assert 0 <= float(data.train.x.min()) and float(data.train.x.max()) <= 1
    assert data.levels == 17


def test_a_likelihood_over_levels_gets_the_digits_levels_the_others_get_them_scaled():
    scaled = load_data(load_config(None, []))  # bernoulli: levels / 16
    raw = load_data(load_config(None, ["likelihood.name=binomial"]))  # scores the levels themselves
    assert float(raw.train.x.max()) == 16 and torch.equal(raw.train.x, raw.train.x.round())
    assert torch.allclose(raw.train.x / 16, scaled.train.x) and torch.allclose(raw.test.x / 16, scaled.test.x)


def test_static_binarization_and_exclude_classes():
    data = load_data(load_config(None, ["data.binarize=static", "data.exclude_classes=[3]"]))
    assert set(torch.unique(data.train.x).tolist()) <= {0.0, 1.0}
    assert 3 not in data.train.y.tolist() and 3 in data.test.y.tolist()


def test_array_sources(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    y = np.arange(50) % 2
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    csv = tmp_path / "xy.csv"
    rows = ["a,b,c,label"] + [f"{a},{b},{c},{'' if i == 0 else yy}" for i, ((a, b, c), yy) in enumerate(zip(x, y))]
    csv.write_text("\n".join(rows) + "\n")
    for overrides in (
        ["data.path=" + str(tmp_path / "x.npy")],
        ["data.path=" + str(tmp_path / "xy.npz")],
        ["data.path=" + str(csv), "data.label_column=-1"],
    ):
        data = load_data(load_config(None, ["data.name=array", *overrides]))
        assert data.data_dim == 3 and len(data.train) + len(data.test) == 50
    # the empty label in the csv is "unknown" (-1), not a class
    all_y = torch.cat([data.train.y, data.test.y])
    assert int((all_y == -1).sum()) == 1 and data.num_classes == 2


def test_array_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(load_config(None, ["data.name=array", f"data.path={tmp_path}/none.npy"]))
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    np.save(tmp_path / "y.npy", np.zeros(9))
    with pytest.raises(DataError, match="9 labels for 10 rows"):
        load_data(
            load_config(None, ["data.name=array", f"data.path={tmp_path}/x.npy", f"data.labels_path={tmp_path}/y.npy"])
        )


def test_index_batches_cover_each_row_once_per_epoch_and_reshuffle_per_epoch():
    sampler = IndexBatchSampler(10, 3, seed=1)
    seen = torch.cat([b["rows"] for b in sampler])
    assert len(sampler) == 4 and sorted(seen.tolist()) == list(range(10))
    again = torch.cat([b["rows"] for b in sampler])
    assert torch.equal(seen, again)  # the order is a function of (seed, epoch): a resumed run sees the same
    sampler.set_epoch(1)
    assert not torch.equal(seen, torch.cat([b["rows"] for b in sampler]))
    x, y = torch.randn(100, 5), torch.arange(100)
    idx = torch.randperm(100)[:7]
    xb, yb = RowBatches(x, y)[{"rows": idx, "seed": 0}]
    assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])  # the batch's rows in the sampler's order
    rows = RowBatches(torch.full((100, 5), 0.5), dynamic_binarize=True)
    b1, b2 = rows[{"rows": torch.arange(100), "seed": 1}], rows[{"rows": torch.arange(100), "seed": 2}]
    assert set(b1.unique().tolist()) == {0.0, 1.0} and not torch.equal(b1, b2)


@pytest.mark.parametrize("n,batch,world", [(10, 3, 2), (1437, 64, 2), (101, 10, 4), (7, 3, 3), (1000, 128, 3)])
def test_ranks_see_disjoint_shards_that_cover_the_epoch_once_in_equal_steps(n, batch, world):
    shards = [list(IndexBatchSampler(n, batch, seed=3, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank (DDP needs it)
    rows = [torch.cat([b["rows"] for b in s]).tolist() for s in shards]
    flat = [i for r in rows for i in r]
    assert sorted(flat) == list(range(n))  # disjoint, and together every row once
    assert all(len(b["rows"]) >= 1 for s in shards for b in s)


def test_semi_supervised_batches_shard_both_parts_and_cycle_the_labelled_set():
    unl, lab = torch.arange(128, 428), torch.arange(128)  # 2 steps of 2 x 32 labelled rows per pass
    shards = [list(SemiSupervisedBatchSampler(unl, lab, 64, 32, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    u = [torch.cat([b["u"] for b in s]) for s in shards]
    assert sorted(torch.cat(u).tolist()) == list(range(128, 428))
    for b0, b1 in zip(*shards):  # in each step the two ranks take different labelled rows
        assert not set(b0["l"].tolist()) & set(b1["l"].tolist())
        assert set(b0["l"].tolist()) <= set(range(128)) and len(b0["l"]) == 32
    first_pass = torch.cat([shards[r][s]["l"] for s in (0, 1) for r in (0, 1)])
    assert sorted(first_pass.tolist()) == list(range(128))  # the labelled set is cycled whole


@needs_fashion
def test_fashion_mnist_from_the_debian_package():
    data = load_data(load_config(None, ["data.name=fashion-mnist", f"data.root={FASHION_ROOT}"]))
    assert data.train.x.shape == (60000, 784) and data.test.x.shape == (10000, 784)
    assert data.num_classes == 10 and float(data.train.x.max()) == 1.0


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_each_image_by_whole_pixels_within_the_limit(max_shift):
    from pyro_vae.training.augment import random_shift

    x = torch.rand(40, 2 * 6 * 7) + 0.1  # no zeros: a zero in the output comes from the padding
    out = random_shift(x, (2, 6, 7), max_shift, torch.Generator().manual_seed(0)).reshape(40, 2, 6, 7)
    img = x.reshape(40, 2, 6, 7)
    seen = set()
    for b in range(40):
        matches = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                moved = torch.zeros(2, 6 + 2 * max_shift, 7 + 2 * max_shift)
                moved[:, max_shift + dy : max_shift + dy + 6, max_shift + dx : max_shift + dx + 7] = img[b]
                if torch.equal(moved[:, max_shift : max_shift + 6, max_shift : max_shift + 7], out[b]):
                    matches.append((dy, dx))
        assert len(matches) == 1, b  # exactly one translation explains image b
        seen.add(matches[0])
    assert len(seen) > (2 * max_shift + 1) ** 2 // 2  # offsets differ between images
    assert random_shift(x, (2, 6, 7), 0) is x
