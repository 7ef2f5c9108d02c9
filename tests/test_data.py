import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_vae.config import load_config
from pyro_vae.data import IndexBatches, load_data, load_idx_folder
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
    train, test = load_idx_folder(tmp_path)
    assert train.x.shape == (6, 784) and test.x.shape == (4, 784)
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
    raw = load_data(load_config(None, ["data.normalize=false"]))
    assert float(raw.train.x.max()) == 16 and torch.equal(raw.train.x, raw.train.x.round())


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
    for overrides in (["data.path=" + str(tmp_path / "x.npy")],
                      ["data.path=" + str(tmp_path / "xy.npz")],
                      ["data.path=" + str(csv), "data.label_column=-1"]):
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
        load_data(load_config(None, ["data.name=array", f"data.path={tmp_path}/x.npy",
                                     f"data.labels_path={tmp_path}/y.npy"]))


def test_index_batches_cover_each_row_once_per_epoch():
    x = torch.arange(10.0)[:, None]
    batches = IndexBatches(x, 3, seed=1)
    seen = torch.cat(list(batches))
    assert len(batches) == 4 and sorted(seen[:, 0].tolist()) == list(range(10))
    dyn = IndexBatches(torch.full((100, 5), 0.5), 100, dynamic_binarize=True)
    b1, b2 = next(iter(dyn)), next(iter(dyn))
    assert set(b1.unique().tolist()) == {0.0, 1.0} and not torch.equal(b1, b2)


@needs_fashion
def test_fashion_mnist_from_the_debian_package():
    data = load_data(load_config(None, ["data.name=fashion-mnist", f"data.root={FASHION_ROOT}"]))
    assert data.train.x.shape == (60000, 784) and data.test.x.shape == (10000, 784)
    assert data.num_classes == 10 and float(data.train.x.max()) == 1.0


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_each_image_by_whole_pixels_within_the_limit(max_shift):
    from pyro_vae.data import random_shift

    x = torch.rand(40, 2 * 6 * 7) + 0.1  # no zeros: a zero in the output comes from the padding
    out = random_shift(x, (2, 6, 7), max_shift, torch.Generator().manual_seed(0)).reshape(40, 2, 6, 7)
    img = x.reshape(40, 2, 6, 7)
    seen = set()
    for b in range(40):
        matches = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                moved = torch.zeros(2, 6 + 2 * max_shift, 7 + 2 * max_shift)
                moved[:, max_shift + dy:max_shift + dy + 6, max_shift + dx:max_shift + dx + 7] = img[b]
                if torch.equal(moved[:, max_shift:max_shift + 6, max_shift:max_shift + 7], out[b]):
                    matches.append((dy, dx))
        assert len(matches) == 1, b  # exactly one translation explains image b
        seen.add(matches[0])
    assert len(seen) > (2 * max_shift + 1) ** 2 // 2  # offsets differ between images
    assert random_shift(x, (2, 6, 7), 0) is x


def test_augment_images_mirrors_about_half_the_images_left_right():
    from pyro_vae.data import augment_images

    x = torch.rand(200, 2 * 6 * 7)
    out = augment_images(x, (2, 6, 7), 0, flip=True, generator=torch.Generator().manual_seed(0))
    img, got = x.reshape(200, 2, 6, 7), out.reshape(200, 2, 6, 7)
    same = [torch.equal(got[b], img[b]) for b in range(200)]
    mirrored = [torch.equal(got[b], img[b].flip(-1)) for b in range(200)]
    assert all(s != m for s, m in zip(same, mirrored))  # each image is either kept or mirrored
    assert 70 < sum(mirrored) < 130
    assert augment_images(x, (2, 6, 7), 0, flip=False) is x
