"""Data sets as tensors, loaded once and batched by index.

Sources (``data.name``):

* ``digits`` — scikit-learn's bundled 8x8 handwritten digits (1797 images, levels 0..16);
  the offline default. ``normalize=true`` scales to [0,1].
* ``mnist``, ``fashion-mnist``, ``kmnist`` — the four standard IDX files (gzipped or not)
  in ``data.root``; with no root, torchvision downloads them when online.
* ``array`` — ``data.path`` = ``X.npy`` | ``X.npz`` (arrays ``x`` and optional ``y``) |
  ``X.csv`` (numbers; ``label_column`` picks a label column), ``labels_path`` optional.

Every split is a :class:`Split` of float32 ``x`` (N, D) and int64 ``y`` (N,) where
``-1`` means "label unknown" (``y`` is None when a source has no labels at all).
"""
import gzip
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
}


@dataclass
class Split:
    x: torch.Tensor
    y: Optional[torch.Tensor] = None

    def __len__(self):
        return self.x.shape[0]

    def subset(self, idx) -> "Split":
        return Split(self.x[idx], None if self.y is None else self.y[idx])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Optional[Split] = None
    image_shape: Optional[Tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    class_names: Optional[list] = None
    binarize: str = "none"
    extra: dict = field(default_factory=dict)

    @property
    def data_dim(self) -> int:
        return self.train.x.shape[1]


# ---------------------------------------------------------------- readers
def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DataError(f"could not read IDX file {path}: {e}") from None


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for folder in (root, root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_folder(root) -> Tuple[Split, Split]:
    """Train and test splits from a folder holding the four standard IDX files."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder; it should hold the four IDX files "
                        f"({', '.join(s + '[.gz]' for pair in IDX_FILES.values() for s in pair)})")
    splits = {}
    for split, (img, lab) in IDX_FILES.items():
        paths = [_find_idx(root, img), _find_idx(root, lab)]
        missing = [s for s, p in zip((img, lab), paths) if p is None]
        if missing:
            raise DataError(f"{root} is missing {missing[0]}(.gz); expected the four IDX files "
                            f"{', '.join(s for pair in IDX_FILES.values() for s in pair)}")
        x, y = read_idx(paths[0]), read_idx(paths[1])
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{paths[0]} has {x.shape[0]} images but {paths[1]} {y.shape[0]} labels")
        splits[split] = Split(torch.from_numpy(x.reshape(x.shape[0], -1).astype(np.float32)),
                              torch.from_numpy(y.astype(np.int64)))
    return splits["train"], splits["test"]


def _torchvision(name: str, root) -> Tuple[Split, Split]:
    cache = Path(root or os.environ.get("PYRO_VAE_DATA", "~/.cache/pyro_vae")).expanduser()
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, TORCHVISION[name])
        out = []
        for train in (True, False):
            ds = cls(str(cache), train=train, download=True)
            x = ds.data.reshape(len(ds.data), -1).float()
            out.append(Split(x, ds.targets.long()))
        return out[0], out[1]
    except Exception as e:  # offline, or a broken cache
        raise DataError(
            f"could not load {name} with torchvision ({type(e).__name__}); set data.root to a folder "
            f"holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
        ) from None


def _load_array_file(path: Path, label_column=None):
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist; give a .npy, .npz or .csv file")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                xkey = "x" if "x" in z else "X" if "X" in z else keys[0]
                ykey = "y" if "y" in z else "Y" if "Y" in z else None
                return z[xkey], (z[ykey] if ykey else None)
        if path.suffix == ".csv":
            arr = np.genfromtxt(path, delimiter=",", dtype=np.float64)
            if arr.ndim == 1:
                arr = arr[:, None]
            if np.isnan(arr[0]).all():  # a header row
                arr = arr[1:]
            if label_column is not None:
                y = arr[:, label_column]
                x = np.delete(arr, label_column % arr.shape[1], axis=1)
                return x, y
            return arr, None
    except (OSError, ValueError) as e:
        raise DataError(f"could not read {path}: {e}") from None
    raise DataError(f"data.path {path}: unsupported file type {path.suffix!r}; use .npy, .npz or .csv")


def labels_from_array(y, n: int, where: str) -> torch.Tensor:
    """Integer labels with -1 for unknown (NaN, negative, empty); checks length."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise DataError(f"{where} has {y.shape[0]} labels for {n} rows; give one label per row")
    unknown = np.isnan(y) | (y < 0)
    known = y[~unknown]
    if known.size and not np.all(known == np.round(known)):
        raise DataError(f"{where} has non-integer labels; labels must be 0..C-1 (or -1/empty for unknown)")
    out = np.where(unknown, -1, y).astype(np.int64)
    return torch.from_numpy(out)


def load_array(cfg) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    path = Path(cfg.path).expanduser()
    x, y = _load_array_file(path, cfg.label_column)
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path} must hold numbers, found dtype {x.dtype}")
    if cfg.labels_path:
        lp = Path(cfg.labels_path).expanduser()
        if not lp.is_file():
            raise DataError(f"data.labels_path {lp} does not exist")
        y = np.load(lp, allow_pickle=False) if lp.suffix == ".npy" else np.genfromtxt(lp, delimiter=",")
    xt = torch.from_numpy(x.astype(np.float32))
    yt = None if y is None else labels_from_array(y, xt.shape[0], str(cfg.labels_path or path))
    return xt, yt


# ---------------------------------------------------------------- assembly
def _random_split(n: int, fraction: float, y, generator) -> Tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_test = max(1, int(round(n * fraction)))
    return perm[n_test:], perm[:n_test]


def load_data(cfg) -> Dataset:
    """Build the :class:`Dataset` described by the ``data:`` config section (seeded by ``cfg.seed``)."""
    d = cfg.data
    g = torch.Generator().manual_seed(int(cfg.seed))
    image_shape, class_names = None, CLASS_NAMES.get(d.name)
    if d.name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.data.astype(np.float32))
        y = torch.from_numpy(bunch.target.astype(np.int64))
        if d.normalize:
            x = x / 16.0
        tr, te = _random_split(len(x), d.test_fraction, y, g)
        train, test = Split(x[tr], y[tr]), Split(x[te], y[te])
        image_shape = (1, 8, 8)
    elif d.name in TORCHVISION:
        train, test = load_idx_folder(d.root) if d.root else _torchvision(d.name, None)
        if d.normalize:
            train.x, test.x = train.x / 255.0, test.x / 255.0
        image_shape = (1, 28, 28)
    else:  # array
        x, y = load_array(d)
        if x.shape[0] < 2:
            raise DataError(f"{d.path} has {x.shape[0]} rows; need at least 2 to split train/test")
        tr, te = _random_split(len(x), d.test_fraction, y, g)
        train = Split(x[tr], None if y is None else y[tr])
        test = Split(x[te], None if y is None else y[te])
    if d.limit:
        train = train.subset(slice(0, int(d.limit)))
    if d.exclude_classes:
        if train.y is None:
            raise DataError("data.exclude_classes needs labelled data")
        keep = ~torch.isin(train.y, torch.tensor(list(d.exclude_classes)))
        train = train.subset(keep)
    val = None
    if d.validation:
        if d.validation >= len(train):
            raise DataError(f"data.validation={d.validation} leaves no training data ({len(train)} examples)")
        perm = torch.randperm(len(train), generator=g)
        val, train = train.subset(perm[: d.validation]), train.subset(perm[d.validation:])
    if cfg.model == "ssvae" or d.labels is not None:
        train = Split(train.x, select_labels(train.y, d.labels, d.num_classes, g))
    num_classes = d.num_classes
    if num_classes is None:
        ys = [s.y for s in (train, val, test) if s is not None and s.y is not None]
        if ys:
            top = max(int(t.max()) for t in ys)
            num_classes = top + 1 if top >= 0 else None
    if d.binarize == "static":
        for s in (train, val, test):
            if s is not None:
                _check_unit(s.x, "data.binarize")
                s.x = torch.bernoulli(s.x, generator=g)
    elif d.binarize == "dynamic":
        _check_unit(train.x, "data.binarize")
    return Dataset(d.name, train, test, val, image_shape, num_classes, class_names, d.binarize)


def _check_unit(x, what):
    if bool(((x < 0) | (x > 1)).any()):
        raise DataError(f"{what} needs values in [0,1]; set data.normalize=true")


# ---------------------------------------------------------------- batching
class IndexBatches:
    """An iterable of minibatches drawn by index from in-memory tensors.

    Each epoch permutes the indices once (no per-item Python, no collate). Yields
    ``x`` tensors, binarized afresh per batch when ``dynamic_binarize``.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, shuffle: bool = True,
                 dynamic_binarize: bool = False, seed: int = 0, drop_last: bool = False):
        self.x = x
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.dynamic_binarize = dynamic_binarize
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n = self.x.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if self.dynamic_binarize:
                xb = torch.bernoulli(xb, generator=self.generator)
            yield xb


# ---------------------------------------------------------------- semi-supervised
def select_labels(y: Optional[torch.Tensor], n: Optional[int], num_classes: Optional[int], generator) -> torch.Tensor:
    """Keep ``n`` known labels drawn class-balanced (seeded); the rest become -1 (unknown).

    Each class gets floor(n/C) labels and the remainder goes to randomly chosen classes, so
    any n >= C works. ``n=None`` keeps every known label.
    """
    if y is None or not bool((y >= 0).any()):
        raise DataError("semi-supervised training needs labels, but the training data has none; "
                        "give labels (e.g. data.labels_path or a label column) for some rows")
    known = y >= 0
    classes = torch.unique(y[known])
    c = int(num_classes or int(y.max()) + 1)
    if bool((y >= c).any()):
        raise DataError(f"labels must be in 0..{c - 1} (found {int(y.max())}); fix them or set data.num_classes")
    if n is None:
        return y.clone()
    if n < c:
        raise DataError(f"data.labels={n} is fewer than the {c} classes; keep at least one label per class")
    if n > int(known.sum()):
        raise DataError(f"data.labels={n} but only {int(known.sum())} training labels are known")
    per_class = {int(k): torch.nonzero(y == k).flatten() for k in classes}
    if len(per_class) < c:
        missing = sorted(set(range(c)) - set(per_class))
        raise DataError(f"classes {missing} have no labelled training examples; every class needs one")
    quota = {k: n // c for k in per_class}
    for k in torch.randperm(c, generator=generator)[: n % c].tolist():
        quota[k] += 1
    keep = []
    for k, idx in per_class.items():
        if quota[k] > len(idx):
            raise DataError(f"class {k} has only {len(idx)} labelled examples, fewer than the {quota[k]} asked")
        keep.append(idx[torch.randperm(len(idx), generator=generator)[: quota[k]]])
    out = torch.full_like(y, -1)
    keep = torch.cat(keep)
    out[keep] = y[keep]
    return out


class SemiSupervisedBatches:
    """Batches of unlabelled rows plus a labelled minibatch cycled over the (small) labelled set.

    Yields dicts ``{"xu", "xl", "yl", "size"}``; an epoch is one pass over the unlabelled rows
    (or over the labelled rows when every row is labelled).
    """

    def __init__(self, x, y, batch_size: int, labelled_batch_size: int, dynamic_binarize=False, seed: int = 0):
        labelled = y >= 0
        self.xl, self.yl = x[labelled], y[labelled]
        self.xu = x[~labelled]
        self.batch_size, self.lbatch = int(batch_size), int(labelled_batch_size)
        self.dynamic_binarize = dynamic_binarize
        self.generator = torch.Generator().manual_seed(int(seed))
        self._lperm, self._lpos = None, 0

    def __len__(self):
        n = self.xu.shape[0] if self.xu.shape[0] else self.xl.shape[0]
        return -(-n // self.batch_size)

    def _next_labelled(self):
        idx = []
        need = self.lbatch
        while need:
            if self._lperm is None or self._lpos >= len(self._lperm):
                self._lperm, self._lpos = torch.randperm(len(self.yl), generator=self.generator), 0
            take = self._lperm[self._lpos:self._lpos + need]
            self._lpos += len(take)
            need -= len(take)
            idx.append(take)
        idx = torch.cat(idx)
        return self.xl[idx], self.yl[idx]

    def __iter__(self):
        nu = self.xu.shape[0]
        order = torch.randperm(nu, generator=self.generator)
        for i in range(len(self)):
            xu = self.xu[order[i * self.batch_size:(i + 1) * self.batch_size]]
            xl, yl = self._next_labelled()
            if self.dynamic_binarize:
                xu, xl = torch.bernoulli(xu, generator=self.generator), torch.bernoulli(xl, generator=self.generator)
            yield {"xu": xu, "xl": xl, "yl": yl, "size": xu.shape[0] + xl.shape[0]}


def random_shift(x: torch.Tensor, image_shape, max_shift: int, generator=None) -> torch.Tensor:
    """Each flattened image of ``x`` (B, C*H*W) moved by its own random whole-pixel offset
    (dy, dx) in [-max_shift, max_shift]; pixels moved in from outside are 0."""
    if not max_shift:
        return x
    c, h, w = image_shape
    b, s = x.shape[0], int(max_shift)
    padded = F.pad(x.reshape(b, c, h, w), (s, s, s, s))
    offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device) + offsets[:, :1])[:, None, :, None]  # (B, 1, H, 1)
    cols = (torch.arange(w, device=x.device) + offsets[:, 1:])[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols].reshape(b, -1)


def random_flip(x: torch.Tensor, image_shape, generator=None) -> torch.Tensor:
    """Each flattened image of ``x`` (B, C*H*W) mirrored left-right with probability 1/2."""
    c, h, w = image_shape
    b = x.shape[0]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    images = x.reshape(b, c, h, w)
    return torch.where(flip[:, None, None, None], images.flip(-1), images).reshape(b, -1)


def augment_images(x: torch.Tensor, image_shape, max_shift: int = 0, flip: bool = False,
                   generator=None) -> torch.Tensor:
    """The training-time augmentation of the SSVAE's classifier: a random whole-pixel shift of up
    to ``max_shift`` pixels, then (``flip``) a left-right mirror with probability 1/2."""
    x = random_shift(x, image_shape, max_shift, generator)
    return random_flip(x, image_shape, generator) if flip else x
