"""Data sets as tensors, loaded once; a registry of sources (``data.name``).

Built-in sources:

* ``digits`` — scikit-learn's bundled 8x8 handwritten digits (1797 images, levels 0..16);
  the offline default.
* ``mnist``, ``fashion-mnist``, ``kmnist`` — the four standard IDX files (gzipped or not)
  in ``data.root`` (image size from the IDX header); with no root, torchvision downloads them.
* ``image_folder`` — ``data.root`` with one sub-folder of images per class (PNG, JPEG, ...),
  resized to ``data.image_size``, ``data.channels`` 1 (grey) or 3 (colour); 8-bit levels. A test
  folder from ``data.test_root`` or ``root/{train,test}``; decoded in parallel and cached
  (:mod:`pyro_vae.images`). The pixels stay uint8, read by index (:class:`~pyro_vae.streaming.DiskRows`
  of a :class:`~pyro_vae.streaming.MemoryArray`, or of the cache's file: ``data.storage``), each
  batch made float32 as it is read.
* ``anndata`` — an ``.h5ad`` file or ``.zarr`` store: ``data.layer`` (default .X), ``data.label_key``
  and ``data.batch_key`` obs columns (needs ``pip install pyro_vae[anndata]``). ``data.storage``
  reads it whole, or leaves the matrix (dense or CSR) on disk (:mod:`pyro_vae.backed`), as a .npy.
* ``array`` — ``data.path`` = ``X.npy`` | ``X.npz`` (arrays ``x`` and optional ``y``, or a
  ``scipy.sparse.save_npz`` matrix) | ``X.csv`` (numbers; ``label_column`` picks a label
  column), ``labels_path`` optional. A ``.npy`` is split by row numbers before any row is read;
  ``data.storage`` then reads each split into memory, or leaves it on disk
  (:class:`~pyro_vae.streaming.NpyRows`: read by index, trained on in shuffled chunks).
  ``data.covariates_path``: continuous covariates for ``model=cvae`` (see :class:`ArrayConfig`).

Sparse input (a sparse ``.npz``, scipy / torch sparse matrices given to ``pyro_vae.fit``)
stays sparse: ``Split.x`` is then a :class:`~pyro_vae.sparse.SparseRows`, densified one
minibatch at a time.

Add your own in a plugin file::

    from pyro_vae.data import DATASETS, DataConfig, DataSource, Split

    @DATASETS.register("my_data", config=DataConfig)
    class MyData(DataSource):
        "One line shown by `pyro-vae list`."
        def load(self, cfg, generator):
            ...
            return Loaded(train=Split(x_train, y_train), test=Split(x_test, y_test))

Every split is a :class:`Split` of float32 ``x`` (N, D; dense, or SparseRows) and int64 ``y`` (N,) where
``-1`` means "label unknown" (``y`` is None when a source has no labels at all).

Pixel values: an image source returns each pixel's integer level 0..L-1 and says L
(``Loaded.levels``: 17 for the digits, 256 for 8-bit images). :func:`load_data` gives them to a
likelihood that scores integer levels (``scores_levels``: categorical, binomial,
discretized_logistic, the count likelihoods) as they are, and scaled to [0,1] (level / (L-1))
to every other likelihood. A source without ``levels`` gives its values as they are.
"""

import abc
import csv
import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .errors import ConfigError, DataError
from .images import check_same_classes, load_image_folder, split_folders
from .likelihoods import LIKELIHOODS
from .models.base import DataInfo
from .registry import Registry, option
from .sparse import SparseRows, is_sparse
from .streaming import DiskRows, MemoryArray, NpyRows, UnsupportedLayout, available_memory, divided, physical_memory
from .utils import first_line

DATASETS = Registry("data set")
log = logging.getLogger(__name__)
LOG_BYTES = 100 << 20  # rows of at least this size say in the log where they were placed
BUFFER_BYTES = 256 << 20  # data on disk: the shuffle buffer holds at most this many bytes of rows (or one chunk)
MIN_CHUNKS = 32  # a buffer capped by BUFFER_BYTES still mixes rows of at least this many chunks
MEMORY_SHARE = 0.4  # data.storage=auto loads rows that take at most this share of the memory (memory_bytes)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPARSE_NPZ_KEYS = {"format", "shape", "data"}


@dataclass
class Split:
    """One split's rows: ``x`` (N, D) float32, ``y`` (N,) int64 labels (-1 = unknown) or None."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None  # each row's number in the user's file, when it has one
    batch: Optional[torch.Tensor] = None  # int64 batch code per row (data.batch_key), when given
    covariates: Optional[torch.Tensor] = None  # (N, K) float32: the data.covariate_keys columns, when given
    covariate_keys: Optional[List[str]] = None  # the names of those K columns

    def __len__(self):
        return self.x.shape[0]

    def subset(self, idx) -> "Split":
        def sub(t):
            return None if t is None else t[idx]

        return Split(
            self.x[idx], sub(self.y), sub(self.rows), sub(self.batch), sub(self.covariates), self.covariate_keys
        )


@dataclass
class Dataset:
    """A loaded data set: the train / test (and optional val) splits and what they look like."""

    name: str
    train: Split
    test: Split
    val: Optional[Split] = None
    image_shape: Optional[Tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    class_names: Optional[list] = None
    binarize: str = "none"
    extra: dict = field(default_factory=dict)
    levels: Optional[int] = None  # an image source's pixel levels L (the values were 0..L-1)
    stream: Optional[dict] = None  # rows on disk: {"chunk_rows", "buffer_rows"} of the training order; None = exact

    @property
    def data_dim(self) -> int:
        return self.train.x.shape[1]

    def info(self) -> DataInfo:
        """What a model needs to know about these data to be built."""
        return DataInfo(
            self.data_dim,
            self.image_shape,
            self.num_classes,
            len(self.train),
            list(self.class_names) if self.class_names else None,
            self.levels,
            self.covariate_specs(),
        )

    def covariate_specs(self) -> Optional[list]:
        """What a conditional model needs to know of the covariates: the batch key and its names,
        each continuous covariate's key with its training mean and scale (plain strings and numbers)."""
        specs = []
        if self.extra.get("batch_key") and self.extra.get("batch_names"):
            specs.append(
                {"role": "batch", "key": self.extra["batch_key"], "categories": list(self.extra["batch_names"])}
            )
        c = self.train.covariates
        for j, key in enumerate(self.train.covariate_keys or []):
            mean, scale = float(c[:, j].mean()), float(c[:, j].std()) if len(c) > 1 else 1.0
            specs.append({"role": "covariates", "key": key, "mean": mean, "scale": scale if scale > 0 else 1.0})
        return specs or None

    def splits(self):
        """(name, split) for every split present."""
        return [(n, s) for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None]

    def fingerprint(self) -> str:
        """A checksum of every split's rows, labels and row numbers (CRC-32 over the raw buffers,
        about a second a GB): ``--resume`` compares it with the run's own to detect changed data.
        Rows left on disk count by their file's size, modification time, header and sampled rows
        (:meth:`~pyro_vae.streaming.DiskRows.fingerprint`), not by reading them all."""
        crc = 0
        for name, split in self.splits():
            crc = zlib.crc32(f"{name}:{tuple(split.x.shape)}".encode(), crc)
            if callable(getattr(split.x, "fingerprint", None)):  # rows read by index: DiskRows, AppendedRows
                crc = zlib.crc32(split.x.fingerprint().to_bytes(4, "little"), crc)
            for part in (*_buffers(split.x), split.y, split.rows, split.batch, split.covariates):
                if part is not None:
                    crc = zlib.crc32(part.detach().cpu().contiguous().view(torch.uint8).numpy(), crc)
        return f"crc32:{crc:08x}"


def _buffers(x):
    """The tensors that hold a split's values: the tensor itself, a CSR's three arrays, none on disk."""
    if callable(getattr(x, "fingerprint", None)):
        return ()
    return (x.crow, x.col, x.values) if hasattr(x, "crow") else (x,)


@dataclass
class Loaded:
    """What a source returns: the two splits and what they look like."""

    train: Split
    test: Split
    image_shape: Optional[Tuple[int, int, int]] = None
    class_names: Optional[list] = None
    batch_names: Optional[list] = None  # names of the batch codes in Split.batch
    levels: Optional[int] = None  # image sources: x holds integer pixel levels 0..levels-1
    stream: Optional[dict] = None  # rows left on disk, read in shuffled chunks: {"chunk_rows", "buffer_rows"}


# ---------------------------------------------------------------- configs
@dataclass
class DataConfig:
    """Keys every data set has."""

    binarize: str = option("none", "none | static (once, seeded) | dynamic (every batch)")
    validation: int = option(0, "examples held out of train: per-epoch selection, checkpoints, early stopping")
    labels: Optional[int] = option(None, "keep only this many training labels (class balanced; semi-supervised)")
    num_classes: Optional[int] = option(None, "number of classes; inferred from the labels when null")
    exclude_classes: List[int] = option(help="classes dropped from train/validation (anomaly detection)", factory=list)
    limit: Optional[int] = option(None, "keep only the first N training examples (quick runs)")

    @staticmethod
    def check(c) -> None:
        if c.binarize not in ("none", "static", "dynamic"):
            raise ConfigError(f"data.binarize={c.binarize!r} is not valid; choose one of: none, static, dynamic")
        if c.validation < 0:
            raise ConfigError(f"data.validation must be >= 0 (got {c.validation})")
        for key in ("limit", "labels", "num_classes"):
            if c[key] is not None and c[key] < 1:
                raise ConfigError(f"data.{key} must be at least 1, or null for all (got {c[key]})")
        test_fraction = c.get("test_fraction")
        if test_fraction is not None and not 0 < test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1) (got {test_fraction})")


@dataclass
class SplitConfig(DataConfig):
    test_fraction: float = option(0.2, "share held out as the test split")


@dataclass
class IdxConfig(DataConfig):
    root: Optional[str] = option(None, "folder with the four IDX files (gzipped or not); null = torchvision download")


@dataclass
class StorageConfig(SplitConfig):
    """Where the rows of a file go (a .npy, an AnnData file, an image folder's decoded cache): into memory,
    or left on disk and read by index as training goes."""

    storage: str = option(
        "auto",
        "auto | memory | disk: the rows read into memory, or left on disk and read in chunks as training goes "
        f"(auto: memory when they take under {MEMORY_SHARE:.0%} of the machine's memory; 8- and 16-bit integers "
        "stay in their own type in memory, a sparse AnnData's CSR arrays stay CSR, others are float32)",
    )
    shuffle: str = option(
        "chunks",
        "data on disk: chunks (contiguous chunks in a shuffled order, rows shuffled within a buffer) | exact "
        "(a row-by-row permutation, the order in memory; random reads)",
    )
    chunk_rows: int = option(1024, "data on disk, shuffle=chunks: rows per contiguous chunk")
    shuffle_buffer: int = option(
        65536,
        "data on disk, shuffle=chunks: rows shuffled together (whole chunks; at most 256 MB of rows, in "
        "chunks of at most 1/32 of it)",
    )

    @staticmethod
    def check(c) -> None:
        SplitConfig.check(c)
        if c.get("storage", "auto") not in ("auto", "memory", "disk"):
            raise ConfigError(f"data.storage={c.storage!r} is not valid; choose one of: auto, memory, disk")
        if c.get("shuffle", "chunks") not in ("chunks", "exact"):
            raise ConfigError(f"data.shuffle={c.shuffle!r} is not valid; choose one of: chunks, exact")
        for key in ("chunk_rows", "shuffle_buffer"):
            if c.get(key) is not None and c[key] < 1:
                raise ConfigError(f"data.{key} must be at least 1 (got {c[key]})")


@dataclass
class ArrayConfig(StorageConfig):
    """Continuous covariates of the rows (``model=cvae`` conditions on them) come from a second file,
    ``data.covariates_path``, row i of it for row i of ``data.path``, as labels come from ``labels_path``:
    a ``.csv`` whose header names its columns (``data.covariate_keys`` picks some of them), or a ``.npy``
    (N,) or (N, K) whose columns ``data.covariate_keys`` names (else ``covariate_0``, ``covariate_1``, ...).
    Those names are the keys of ``sample --condition KEY=VALUE`` and the columns ``encode`` writes."""

    path: Optional[str] = option(None, "X.npy | X.npz (arrays x[, y]) | X.csv")
    labels_path: Optional[str] = option(None, "labels in a separate .npy/.csv (one per row; -1/empty = unknown)")
    label_column: Optional[int] = option(None, "csv: index of the label column (-1 = last)")
    covariates_path: Optional[str] = option(
        None, "continuous covariates in a separate .npy/.csv, one row per data row (model=cvae conditions on them)"
    )
    covariate_keys: List[str] = option(
        help="with data.covariates_path: the csv columns to use (header names), or the names of a .npy's columns; "
        "empty = every column (the csv header's names, else covariate_0, covariate_1, ...)",
        factory=list,
    )

    @staticmethod
    def check(c) -> None:
        StorageConfig.check(c)
        if not c.path:
            raise ConfigError("data.name=array needs data.path=FILE (.npy, .npz or .csv)")
        if c.get("covariate_keys") and not c.get("covariates_path"):
            raise ConfigError(
                "data.covariate_keys on data=array names the columns of data.covariates_path=FILE (.npy or .csv); "
                "give that file"
            )


@dataclass
class MemoryConfig(StorageConfig):
    layer: Optional[str] = option(None, "AnnData input: the layer to train on (null = .X)")
    label_key: Optional[str] = option(None, "AnnData input: obs column of labels (NaN/empty/'unknown' = unlabelled)")
    batch_key: Optional[str] = option(None, "AnnData input: obs column of batches (model=cvae conditions on it)")
    covariate_keys: List[str] = option(
        help="AnnData input: numeric obs columns of continuous covariates (model=cvae conditions on them)",
        factory=list,
    )


@dataclass
class AnnDataConfig(MemoryConfig):
    path: Any = option(
        None,
        "an .h5ad file or a .zarr store (pip install pyro_vae[anndata]), or a list of them with the same genes: "
        "one data set, their rows one after another",
    )

    @staticmethod
    def check(c) -> None:
        if not c.path:
            raise ConfigError("data.name=anndata needs data.path=FILE.h5ad (or STORE.zarr)")
        StorageConfig.check(c)


@dataclass
class ImageFolderConfig(StorageConfig):
    """An image folder's pixels are kept as uint8 (1 byte a value) in memory or in the decoded cache on disk
    (``data.storage``; disk needs ``data.cache=true``) and become float levels or [0,1] one batch at a time."""

    root: Optional[str] = option(
        None,
        "folder of images: one sub-folder per class (its name = the label), or images directly inside (unlabelled)",
    )
    image_size: Optional[int] = option(
        None, "resize every image to this many pixels square; null = keep (all images must then have the same size)"
    )
    channels: int = option(1, "1 = grey levels, 3 = colour (RGB)")
    test_root: Optional[str] = option(
        None,
        "folder of test images laid out as root (data.test_fraction is then not used); null = root/train and "
        "root/test when those are root's only sub-folders, else a random test split",
    )
    cache: bool = option(
        True,
        "keep the decoded pixels in $PYRO_VAE_CACHE/images (default ~/.cache/pyro_vae/images; safe to delete) so "
        "the next load skips decoding; a changed folder is decoded again; false = decode every time",
    )

    @staticmethod
    def check(c) -> None:
        StorageConfig.check(c)
        if not c.root:
            raise ConfigError("data.name=image_folder needs data.root=FOLDER")
        if c.get("storage") == "disk" and not c.get("cache", True):
            raise ConfigError(
                "data.storage=disk reads the decoded images from their cache; set data.cache=true (or data.storage=memory)"
            )
        if c.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grey) or 3 (colour), got {c.channels}")
        if c.image_size is not None and c.image_size < 1:
            raise ConfigError(f"data.image_size must be a positive number of pixels (got {c.image_size})")


class DataSource(abc.ABC):
    """A data set by name: ``load`` returns the train and test splits."""

    @abc.abstractmethod
    def load(self, cfg, generator: torch.Generator) -> Loaded:
        """Read the data described by ``cfg`` (this source's config); seeded by ``generator``."""


# ---------------------------------------------------------------- readers
def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (MNIST format), gzipped or not; the shape comes from its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DataError(f"could not read IDX file {path}: {e}") from None


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for folder in (root, root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _images_split(x: np.ndarray, y: np.ndarray, where) -> Tuple[Split, Tuple[int, int, int]]:
    if x.ndim != 3:
        raise DataError(f"{where} holds arrays of shape {x.shape}; expected images (N, height, width)")
    return (
        Split(torch.from_numpy(x.reshape(x.shape[0], -1).astype(np.float32)), torch.from_numpy(y.astype(np.int64))),
        (1, int(x.shape[1]), int(x.shape[2])),
    )


def load_idx_folder(root) -> Tuple[Split, Split, Tuple[int, int, int]]:
    """Train and test splits (and the image shape) from a folder holding the four IDX files."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} is not a folder; it should hold the four IDX files "
            f"({', '.join(s + '[.gz]' for pair in IDX_FILES.values() for s in pair)})"
        )
    splits, shapes = {}, set()
    for split, (img, lab) in IDX_FILES.items():
        paths = [_find_idx(root, img), _find_idx(root, lab)]
        missing = [s for s, p in zip((img, lab), paths) if p is None]
        if missing:
            raise DataError(
                f"{root} is missing {missing[0]}(.gz); expected the four IDX files "
                f"{', '.join(s for pair in IDX_FILES.values() for s in pair)}"
            )
        x, y = read_idx(paths[0]), read_idx(paths[1])
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{paths[0]} has {x.shape[0]} images but {paths[1]} {y.shape[0]} labels")
        splits[split], shape = _images_split(x, y, paths[0])
        shapes.add(shape)
    if len(shapes) > 1:
        raise DataError(f"the train and test images in {root} differ in size: {sorted(shapes)}")
    return splits["train"], splits["test"], shapes.pop()


def _load_npz(path: Path):
    with np.load(path, allow_pickle=False) as z:
        keys = sorted(z.keys())
        if SPARSE_NPZ_KEYS <= set(keys) and ("indices" in keys or "row" in keys):
            import scipy.sparse  # a scipy.sparse.save_npz file: read as the sparse matrix it is

            return scipy.sparse.load_npz(path), None  # load_npz reads with allow_pickle=False
        xkey = "x" if "x" in keys else "X" if "X" in keys else None
        if xkey is None:
            raise DataError(
                f"{path} has no array named x (found: {', '.join(keys) or 'nothing'}); "
                "save it as np.savez(file, x=data, y=labels)"
            )
        unknown = set(keys) - {xkey, "y", "Y"}
        if unknown:
            raise DataError(
                f"{path} holds arrays {', '.join(sorted(unknown))} besides x/y; "
                "save only x (data) and optionally y (labels)"
            )
        ykey = "y" if "y" in keys else "Y" if "Y" in keys else None
        return z[xkey], (z[ykey] if ykey else None)


def _read_csv(path: Path) -> Tuple[np.ndarray, Optional[List[str]], int]:
    """Numbers from a CSV file: (array, header or None, file line of the first data row).
    Empty cells are NaN; a cell that is not a number is an error naming its column and line."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)]
    if not rows:
        raise DataError(f"{path} is empty")

    def number(cell):
        cell = cell.strip()
        return float("nan") if cell == "" else float(cell)

    header, first = None, 1
    try:
        [number(c) for c in rows[0]]
    except ValueError:
        header, rows, first = [c.strip() for c in rows[0]], rows[1:], 2
    width = len(header) if header else len(rows[0]) if rows else 0
    out = np.empty((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path} line {i + first} has {len(r)} columns, expected {width}")
        for j, cell in enumerate(r):
            try:
                out[i, j] = number(cell)
            except ValueError:
                name = f"{header[j]!r} (column {j})" if header else f"column {j}"
                raise DataError(
                    f"{path} line {i + first}: {name} holds {cell.strip()[:20]!r}, not a number; "
                    "drop text columns (labels must be numbers 0..C-1)"
                ) from None
    return out, header, first


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


def as_rows(x, where: str, first: int = 0, unit: str = "row"):
    """:func:`rows_tensor`, except that sparse input (scipy sparse, torch sparse) stays sparse:
    a :class:`~pyro_vae.sparse.SparseRows` (float32 values), its NaN/inf refused the same way."""
    if hasattr(x, "tocsr") or (torch.is_tensor(x) and x.layout != torch.strided):
        if len(x.shape) != 2:
            raise DataError(f"{where} is a sparse array of shape {tuple(x.shape)}; expected (rows, features)")
        m = SparseRows.from_scipy(x) if hasattr(x, "tocsr") else SparseRows.from_torch(x)
        bad = ~torch.isfinite(m.values)
        if bool(bad.any()):
            r = (
                int(
                    torch.searchsorted(
                        m.crow, torch.as_tensor(int(bad.nonzero()[0, 0]), dtype=m.crow.dtype), right=True
                    )
                )
                - 1
            )
            raise DataError(
                f"{where} has {int(bad.sum())} NaN/inf values (first: {unit} {r + first}); remove or impute them"
            )
        return m
    return rows_tensor(x, where, first, unit)


def rows_tensor(x, where: str, first: int = 0, unit: str = "row") -> torch.Tensor:
    """A float32 (rows, features) tensor from numbers (numpy, torch, pandas, lists; images are
    flattened); refuses text and NaN/inf naming the first bad row (``first`` = its number)."""
    if hasattr(x, "toarray"):  # scipy sparse asked for dense
        x = x.toarray()
    if hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where} must hold numbers, found dtype {x.dtype}")
    # float32 input in C order is not copied here (the splits are gathered from it)
    xt = torch.from_numpy(np.ascontiguousarray(x.astype(np.float32, copy=not x.flags.writeable)))
    if x.size and bool(torch.isfinite(xt.sum(0, dtype=torch.float64)).all()):  # no mask the size of x
        return xt
    bad = ~torch.isfinite(xt).all(1)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise DataError(
            f"{where} has {int(bad.sum())} rows with NaN/inf or empty values "
            f"(first: {unit} {r + first}); remove or impute them"
        )
    return xt


def load_array(cfg, lazy: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(x, y or None, file row of each x row) from ``data.path`` (and ``labels_path``); a
    scipy sparse ``.npz`` (``scipy.sparse.save_npz``) gives a sparse x. A ``.npy`` stays on disk as
    :class:`~pyro_vae.streaming.NpyRows` when ``data.storage`` says so (:func:`placed`), or always
    with ``lazy`` (the caller splits it by index, then places each split)."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist; give a .npy, .npz or .csv file")
    first = 0
    try:
        if path.suffix == ".npy":
            x, y = _open_npy(path), None
        elif path.suffix == ".npz":
            x, y = _load_npz(path)
        elif path.suffix == ".csv":
            x, _, first = _read_csv(path)
            y = None
            if cfg.label_column is not None:
                if not -x.shape[1] <= cfg.label_column < x.shape[1]:
                    raise DataError(f"data.label_column={cfg.label_column} but {path} has {x.shape[1]} columns")
                y = x[:, cfg.label_column]
                x = np.delete(x, cfg.label_column % x.shape[1], axis=1)
        elif path.suffix == ".h5ad":
            raise DataError(f"data.path {path} is an AnnData file: use data.name=anndata data.path={path}")
        else:
            raise DataError(
                f"data.path {path}: unsupported file type {path.suffix!r}; use .npy, .npz or .csv "
                "(.h5ad: data.name=anndata)"
            )
    except (OSError, ValueError) as e:
        raise DataError(f"could not read {path}: {first_line(e)}") from None
    if isinstance(x, NpyRows):
        xt = x if lazy else placed(x, cfg, str(path))
    else:
        xt = as_rows(x, str(path), first, "line" if path.suffix == ".csv" else "row")
    del x
    rows = torch.arange(xt.shape[0]) + first  # csv: the file's line numbers; arrays: row indices
    if cfg.labels_path:
        lp = Path(cfg.labels_path).expanduser()
        if not lp.is_file():
            raise DataError(f"data.labels_path {lp} does not exist")
        try:
            y = np.load(lp, allow_pickle=False) if lp.suffix == ".npy" else _read_csv(lp)[0]
        except (OSError, ValueError) as e:
            raise DataError(f"could not read {lp}: {first_line(e)}") from None
    yt = None if y is None else labels_from_array(y, xt.shape[0], str(cfg.labels_path or path))
    return xt, yt, rows


def covariates_from_file(cfg, n: int) -> Tuple[torch.Tensor, List[str]]:
    """(the (n, K) float32 covariates of ``data.covariates_path``, their names): see :class:`ArrayConfig`."""
    path = Path(cfg.covariates_path).expanduser()
    if not path.is_file():
        raise DataError(f"data.covariates_path {path} does not exist")
    header = None
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            values, header, _ = _read_csv(path)
        else:
            raise DataError(f"data.covariates_path {path}: unsupported file type {path.suffix!r}; use .npy or .csv")
    except (OSError, ValueError) as e:
        raise DataError(f"could not read {path}: {first_line(e)}") from None
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise DataError(f"{path} must hold numbers, found dtype {values.dtype}")
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if values.ndim != 2 or values.shape[0] != n:
        raise DataError(
            f"{path} holds covariates of shape {values.shape} for {n} data rows; give one row of covariates per data row"
        )
    keys = [str(k) for k in (cfg.get("covariate_keys") or [])]
    if header is not None:
        missing = [k for k in keys if k not in header]
        if missing:
            raise DataError(
                f"{path} has no column {missing[0]!r} for data.covariate_keys (columns: {', '.join(header)})"
            )
        keys = keys or list(header)
        values = values[:, [header.index(k) for k in keys]]
    elif keys and len(keys) != values.shape[1]:
        raise DataError(f"data.covariate_keys names {len(keys)} columns but {path} has {values.shape[1]}")
    keys = keys or [f"covariate_{j}" for j in range(values.shape[1])]
    if len(set(keys)) != len(keys):
        raise DataError(f"the covariates of {path} repeat a name ({', '.join(keys)}); give each column its own")
    bad = ~np.isfinite(values)
    if bad.any():
        j = int(bad.any(0).nonzero()[0][0])
        raise DataError(
            f"{path} column {keys[j]!r} has {int(bad[:, j].sum())} missing or NaN/inf values "
            f"(first: row {int(bad[:, j].nonzero()[0][0])}); every row needs a value"
        )
    return torch.from_numpy(values.astype(np.float32)), keys


def _open_npy(path: Path):
    """A .npy of numbers in C order as :class:`NpyRows` (nothing read but the header); any other
    .npy (Fortran order, ...) read whole by ``np.load``."""
    try:
        return NpyRows.open(path)
    except UnsupportedLayout:
        return np.load(path, allow_pickle=False)


def storage_of(nbytes: int, cfg) -> str:
    """memory | disk for rows on disk taking ``nbytes`` in memory under ``data.storage`` (auto: memory when
    under MEMORY_SHARE of the machine's memory; the physical memory, so that every process of a run
    decides alike)."""
    storage = cfg.get("storage") or "auto"
    if storage != "auto":
        return storage
    return "memory" if nbytes <= MEMORY_SHARE * physical_memory() else "disk"


def placed(x, cfg, where: str, parts=None):
    """Rows on disk (:class:`~pyro_vae.streaming.DiskRows`) read into memory, or left where they are, as
    ``data.storage`` says (logged); ``parts`` (of x, e.g. its splits) are placed instead of x and
    returned as a list. In memory: 8- and 16-bit integers in their own type (:class:`DiskRows` of a
    :class:`~pyro_vae.streaming.MemoryArray`), a sparse file's rows as a
    :class:`~pyro_vae.sparse.SparseRows`, others as one float32 tensor (NaN/inf refused as for any array)."""
    whole = parts is None
    parts = [x] if whole else parts
    own = keeps_type(parts[0])
    nbytes = sum(memory_bytes(p) for p in parts)
    storage = storage_of(nbytes, cfg)
    gb, free = nbytes / 1e9, available_memory() / 1e9
    kind = "CSR" if parts[0].sparse else str(parts[0].file.dtype) if own else "float32"
    if storage == "disk":
        log.info("%s: %.2f GB of %s rows streamed from disk (data.storage=%s)", where, gb, kind, cfg.get("storage"))
        out = parts
    else:
        if nbytes >= LOG_BYTES:  # small data in memory: nothing to say
            log.info(
                "%s: %.2f GB of %s rows loaded into memory (data.storage=%s; %.1f GB available)",
                where,
                gb,
                kind,
                cfg.get("storage"),
                free,
            )
        if own:  # integers: no NaN to look for
            out = [DiskRows(MemoryArray(in_own_type(p), str(p.file.path))) for p in parts]
        else:
            out = [p.to_memory() for p in parts]
            _check_finite(out, parts, where)
    return out[0] if whole else out


def keeps_type(rows: DiskRows) -> bool:
    """Whether ``rows`` stay in their file's type in memory: dense integers of at most 16 bits (exact in
    float32, and a half or a quarter of its size), each batch converted to float32 as it is read."""
    dtype = rows.file.dtype
    return not rows.sparse and dtype.kind in "biu" and dtype.itemsize <= 2


def memory_bytes(rows: DiskRows) -> int:
    """Bytes ``rows`` take once :func:`placed` in memory: their own type (:func:`keeps_type`), else
    float32 rows or a sparse file's CSR arrays."""
    if keeps_type(rows):
        return rows.shape[0] * rows.shape[1] * rows.file.dtype.itemsize
    return rows.nbytes


def in_own_type(rows: DiskRows) -> np.ndarray:
    """All of ``rows`` in one array of the file's own type, read in file order a chunk at a time."""
    out = np.empty(tuple(rows.shape), dtype=rows.file.dtype)
    order, file_rows = rows.file_order().numpy(), rows.file_rows()
    step = rows.chunk_size()
    for a in range(0, len(order), step):
        pos = order[a : a + step]
        out[pos] = rows.file.read_rows(file_rows[pos], np.empty((len(pos), rows.shape[1]), dtype=out.dtype))
    return out


def _check_finite(tensors, parts, where: str) -> None:
    """NaN/inf refused in rows read from ``parts`` (DiskRows), chunk by chunk: the count of bad rows and
    the first bad row's number in the file."""
    count, first = 0, None
    for t, p in zip(tensors, parts):
        if is_sparse(t):  # the stored values; the row of the first bad one
            bad = ~torch.isfinite(t.values)
            if bool(bad.any()):
                count += int(bad.sum())
                r = int(torch.searchsorted(t.crow.long(), bad.nonzero()[0, 0], right=True)) - 1
                r = int(p.file_rows([r])[0])
                first = r if first is None else min(first, r)
            continue
        for a in range(0, t.shape[0], DiskRows.CHUNK_ROWS):
            bad = ~torch.isfinite(t[a : a + DiskRows.CHUNK_ROWS]).all(1)
            if bool(bad.any()):
                count += int(bad.sum())
                r = int(p.file_rows(slice(a, a + DiskRows.CHUNK_ROWS))[bad.numpy()].min())
                first = r if first is None else min(first, r)
    if count:
        raise DataError(
            f"{where} has {count} rows with NaN/inf or empty values (first: row {first}); remove or impute them"
        )


# ---------------------------------------------------------------- AnnData
UNKNOWN_LABELS = {"", "nan", "na", "none", "unknown", "unlabeled", "unlabelled"}
ANNDATA_MISSING = "reading .h5ad files needs the anndata package: pip install pyro_vae[anndata]"


def is_anndata(x) -> bool:
    return type(x).__name__ == "AnnData" and hasattr(x, "obs") and hasattr(x, "layers")


def read_h5ad(path: Path):
    """An AnnData from an .h5ad file or a .zarr store, read whole into memory; one-line errors."""
    try:
        import anndata
    except ImportError:
        raise DataError(ANNDATA_MISSING) from None
    if not (path.is_dir() if path.suffix == ".zarr" else path.is_file()):
        raise DataError(f"data.path {path} does not exist")
    try:
        return anndata.read_zarr(path) if path.suffix == ".zarr" else anndata.read_h5ad(path)
    except Exception as e:  # h5py / zarr / anndata raise many kinds
        raise DataError(f"could not read {path} as AnnData: {first_line(e)}") from None


def anndata_paths(path) -> List[Path]:
    """``data.path`` of data=anndata as a list of paths (one file, or several: one data set)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    if not paths:
        raise ConfigError("data.name=anndata needs data.path=FILE.h5ad (or STORE.zarr, or a list of them)")
    return [Path(str(p)).expanduser() for p in paths]


def anndata_rows(cfg, where: str, adata=None, class_names: Optional[list] = None):
    """(x, y, class names, batch codes, batch names, covariates) of the AnnData in ``data.path`` (one
    file, or several as one data set: their rows one after another), or ``adata`` given in Python.
    The matrix (``data.layer``, else .X) stays on disk as :class:`~pyro_vae.streaming.DiskRows` of an
    :class:`~pyro_vae.backed.AnnDataMatrix` (only ``obs`` is read) when ``data.storage`` says disk, or
    auto finds it too big for memory (:func:`storage_of` of its float32 rows, or a sparse matrix's CSR
    arrays, as anndata reads it); else it is read whole. An in-memory ``adata`` stays as it is; a backed one
    (``anndata.read_h5ad(path, backed="r")``) is read from its file the same way."""
    try:
        import anndata
    except ImportError:
        raise DataError(ANNDATA_MISSING) from None
    paths = anndata_paths(cfg.path) if adata is None else None
    if adata is not None and getattr(adata, "isbacked", False):
        paths = [Path(adata.filename)]
    if paths is not None and (cfg.get("storage") or "auto") != "memory":
        from .backed import AnnDataMatrix
        from .streaming import JoinedFiles

        matrices = [AnnDataMatrix(p, cfg.get("layer")) for p in paths]
        rows = DiskRows(matrices[0] if len(matrices) == 1 else JoinedFiles(matrices))
        if storage_of(rows.nbytes, cfg) == "disk":  # its size as anndata reads it whole
            obs = adata.obs if adata is not None else _joined_obs([m.obs() for m in matrices])
            y, names, batch, batch_names = obs_codes(obs, cfg, where, class_names)
            return rows, y, names, batch, batch_names, covariates_from_obs(obs, cfg, where)
        for m in matrices:
            m.close()
    if adata is None:
        parts = [read_h5ad(p) for p in paths]
        adata = parts[0] if len(parts) == 1 else anndata.concat(parts, join="outer", index_unique="-")
    elif getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    x, y, names, batch, batch_names = from_anndata(adata, cfg, where, class_names)
    return x, y, names, batch, batch_names, covariates_from_anndata(adata, cfg, where)


def _joined_obs(tables):
    """The obs tables of several files, one after another (categories joined, as ``anndata.concat`` does)."""
    if len(tables) == 1:
        return tables[0]
    import pandas as pd

    from pandas.api.types import union_categoricals

    joined = pd.concat(tables, ignore_index=True)
    for key in tables[0].columns:
        if all(key in t.columns and isinstance(t[key].dtype, pd.CategoricalDtype) for t in tables):
            joined[key] = pd.Categorical(
                joined[key], categories=union_categoricals([t[key] for t in tables]).categories
            )
    return joined


def codes_of(values, where: str, class_names: Optional[list] = None) -> Tuple[torch.Tensor, list]:
    """Integer codes (-1 = unknown: NaN, empty, 'unknown', 'unlabelled') and the class names of a
    label column; with ``class_names`` (a trained model's) the codes follow those names."""
    import pandas as pd

    s = pd.Series(values)
    if class_names is None and pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
        return labels_from_array(s.to_numpy(dtype=np.float64), len(s), where), None
    text = s.astype("object").where(s.notna(), None)
    text = text.map(lambda v: None if v is None or str(v).strip().lower() in UNKNOWN_LABELS else str(v))
    if class_names is None:
        if isinstance(s.dtype, pd.CategoricalDtype):
            class_names = [str(c) for c in s.cat.categories if str(c).strip().lower() not in UNKNOWN_LABELS]
        else:
            class_names = sorted(set(text.dropna()))
    lookup = {name: k for k, name in enumerate(class_names)}
    codes = text.map(lambda v: lookup.get(v, -1) if v is not None else -1).to_numpy(dtype=np.int64)
    return torch.from_numpy(codes), list(class_names)


def covariates_from_anndata(adata, cfg, where: str) -> Optional[torch.Tensor]:
    """The ``data.covariate_keys`` obs columns as an (N, K) float32 tensor (None when no keys)."""
    return covariates_from_obs(adata.obs, cfg, where)


def covariates_from_obs(obs, cfg, where: str) -> Optional[torch.Tensor]:
    """The ``data.covariate_keys`` columns of an obs table as an (N, K) float32 tensor (None when no keys)."""
    keys = list(cfg.get("covariate_keys") or [])
    if not keys:
        return None
    import pandas as pd

    cols = []
    for key in keys:
        if key not in obs.columns:
            raise DataError(
                f"{where} has no obs column {key!r} for data.covariate_keys "
                f"(columns: {', '.join(map(str, obs.columns)) or 'none'})"
            )
        col = obs[key]
        if not pd.api.types.is_numeric_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype):
            raise DataError(
                f"{where} obs[{key!r}] is not numeric; data.covariate_keys takes continuous columns "
                "(a categorical one: data.batch_key)"
            )
        v = col.to_numpy(dtype=np.float64)
        if not np.isfinite(v).all():
            raise DataError(f"{where} obs[{key!r}] has {int((~np.isfinite(v)).sum())} missing values; fill them")
        cols.append(v)
    return torch.from_numpy(np.stack(cols, 1).astype(np.float32))


def from_anndata(adata, cfg, where: str, class_names: Optional[list] = None):
    """(x, y, class names, batch codes, batch names) of an AnnData: ``data.layer`` (else .X; sparse
    stays sparse), ``data.label_key`` and ``data.batch_key`` obs columns."""
    layer = cfg.get("layer")
    if layer:
        if layer not in adata.layers:
            raise DataError(
                f"{where} has no layer {layer!r} (layers: {', '.join(adata.layers.keys()) or 'none'}); "
                "set data.layer to one of them, or null for .X"
            )
        matrix = adata.layers[layer]
    else:
        matrix = adata.X
        if matrix is None:
            raise DataError(f"{where} has no .X; set data.layer to one of: {', '.join(adata.layers.keys())}")
    x = as_rows(matrix, f"{where} ({'layer ' + layer if layer else '.X'})")
    return (x, *obs_codes(adata.obs, cfg, where, class_names))


def obs_codes(obs, cfg, where: str, class_names: Optional[list] = None):
    """(y, class names, batch codes, batch names) from the ``data.label_key`` and ``data.batch_key``
    columns of an obs table (None where a key is not set)."""

    def column(key, what):
        if key not in obs.columns:
            raise DataError(
                f"{where} has no obs column {key!r} for data.{what} "
                f"(columns: {', '.join(map(str, obs.columns)) or 'none'})"
            )
        return obs[key]

    y = names = batch = batch_names = None
    if cfg.get("label_key"):
        y, names = codes_of(column(cfg.label_key, "label_key"), f"{where} obs[{cfg.label_key!r}]", class_names)
    if cfg.get("batch_key"):
        col = column(cfg.batch_key, "batch_key")
        if bool(col.isna().any()):
            raise DataError(
                f"{where} obs[{cfg.batch_key!r}] has {int(col.isna().sum())} missing values; every row needs a batch"
            )
        batch, batch_names = codes_of(col.astype(str), f"{where} obs[{cfg.batch_key!r}]")
        if bool((batch < 0).any()):
            raise DataError(f"{where} obs[{cfg.batch_key!r}] has empty/'unknown' batch names; every row needs a batch")
    return y, names, batch, batch_names


# ---------------------------------------------------------------- sources
def _random_split(n: int, fraction: float, generator) -> Tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_test = max(1, int(round(n * fraction)))
    return perm[n_test:], perm[:n_test]


def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` returns them, read from scikit-learn's bundled CSV without
    importing scikit-learn (a second saved on every command that uses the default data)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        return table[:, :-1].copy(), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # a layout this code does not know: the public loader

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


@DATASETS.register("digits", config=SplitConfig)
class Digits(DataSource):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, levels 0..16; offline)."""

    def load(self, cfg, generator):
        x, y = _digits_arrays()
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        tr, te = _random_split(len(x), cfg.test_fraction, generator)
        return Loaded(Split(x[tr], y[tr]), Split(x[te], y[te]), (1, 8, 8), levels=17)


class IdxImages(DataSource):
    """A 28x28 grey-level image set in the four-IDX-file layout of MNIST."""

    torchvision_name = ""
    class_names = None

    def load(self, cfg, generator):
        if cfg.root:
            train, test, shape = load_idx_folder(cfg.root)
        else:
            train, test, shape = self._download()
        return Loaded(train, test, shape, self.class_names, levels=256)

    def _download(self):
        cache = Path(os.environ.get("PYRO_VAE_DATA", "~/.cache/pyro_vae")).expanduser()
        try:
            import torchvision.datasets as tvd

            cls = getattr(tvd, self.torchvision_name)
            out = []
            for train in (True, False):
                ds = cls(str(cache), train=train, download=True)
                out.append(_images_split(ds.data.numpy(), ds.targets.numpy(), self.registry_name)[0])
            return out[0], out[1], (1,) + tuple(ds.data.shape[1:])
        except Exception as e:  # offline, or a broken cache
            raise DataError(
                f"could not load {self.registry_name} with torchvision ({type(e).__name__}); set data.root to a "
                f"folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
            ) from None


@DATASETS.register("mnist", config=IdxConfig)
class MNIST(IdxImages):
    """MNIST handwritten digits (IDX files in data.root)."""

    torchvision_name = "MNIST"


@DATASETS.register("fashion-mnist", config=IdxConfig)
class FashionMNIST(IdxImages):
    """Fashion-MNIST clothing images (IDX files in data.root)."""

    torchvision_name = "FashionMNIST"
    class_names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


@DATASETS.register("kmnist", config=IdxConfig)
class KMNIST(IdxImages):
    """Kuzushiji-MNIST (IDX files in data.root)."""

    torchvision_name = "KMNIST"


@DATASETS.register("array", config=ArrayConfig)
class ArrayFile(DataSource):
    """Your own array: data.path = .npy | .npz (x[, y], or scipy sparse) | .csv; a random test split."""

    def load(self, cfg, generator):
        x, y, rows = load_array(cfg, lazy=True)
        if x.shape[0] < 2:
            raise DataError(f"{cfg.path} has {x.shape[0]} rows; need at least 2 to split train/test")
        tr, te = _random_split(len(x), cfg.test_fraction, generator)
        covariates, keys = covariates_from_file(cfg, x.shape[0]) if cfg.get("covariates_path") else (None, None)
        full = Split(x, y, rows, None, covariates, keys)
        return Loaded(full.subset(tr), full.subset(te))  # a .npy: row numbers only, placed by load_data


@DATASETS.register("image_folder", config=ImageFolderConfig)
class ImageFolder(DataSource):
    """Images in data.root (sub-folders = labels), resized to data.image_size; a test folder or a random test split."""

    def load(self, cfg, generator):
        train_root, test_root = split_folders(cfg.root, cfg.test_root)
        if test_root is not None:
            check_same_classes(train_root, test_root)
        images, y, names = load_image_folder(train_root, cfg.image_size, cfg.channels, cfg.cache, mmap=True)
        shape = tuple(int(v) for v in images.shape[1:])
        if test_root is None:
            if images.shape[0] < 2:
                raise DataError(f"{cfg.root} has {images.shape[0]} images; need at least 2 to split train/test")
            tr, te = _random_split(len(images), cfg.test_fraction, generator)
            train, test = _pixel_rows(images, y, tr), _pixel_rows(images, y, te)
        else:
            test_images, test_y, _ = load_image_folder(test_root, cfg.image_size, cfg.channels, cfg.cache, mmap=True)
            if test_images.shape[1:] != images.shape[1:]:
                (h, w), (h0, w0) = test_images.shape[2:], images.shape[2:]
                raise DataError(
                    f"the images in {test_root} are {w}x{h} pixels but those in {train_root} {w0}x{h0}; "
                    "set data.image_size=N to resize them all"
                )
            train, test = _pixel_rows(images, y), _pixel_rows(test_images, test_y)
        loaded = Loaded(train, test, shape, names)
        loaded.levels = 256
        return loaded


def _pixel_rows(images: np.ndarray, y: Optional[np.ndarray], idx=None) -> Split:
    """The rows ``idx`` (all when None) of uint8 images (N, C, H, W) as a Split whose x reads them by index
    (:class:`DiskRows`: of the cache's file when ``images`` maps it, placed later by ``data.storage``; else of
    the array in memory, a :class:`MemoryArray`), each row's number its image's place in the folder's loading
    order."""
    x = _npy_of(images) or DiskRows(MemoryArray(images, "the decoded images"))
    split = Split(x, None if y is None else torch.from_numpy(np.asarray(y)), torch.arange(images.shape[0]))
    return split if idx is None else split.subset(idx)


@DATASETS.register("memory", config=MemoryConfig)
class InMemory(DataSource):
    """Arrays given in Python: pyro_vae.fit(x, y) (NumPy, torch, pandas, scipy sparse, AnnData)."""

    def __init__(self, x=None, y=None):
        self.x, self.y = x, y

    def load(self, cfg, generator):
        if self.x is None:
            raise DataError(
                "this run was trained on arrays passed to pyro_vae.fit(x): give the data again "
                "(--data FILE on the command line, or the arrays in Python)"
            )
        names = batch = batch_names = covariates = None
        if is_anndata(self.x):
            if self.y is not None:
                raise DataError("fit(adata, y): give the labels as an obs column, data.label_key=COLUMN")
            x, y, names, batch, batch_names, covariates = anndata_rows(cfg, "the AnnData", adata=self.x)
        else:
            keys = [k for k in ("layer", "label_key", "batch_key", "covariate_keys") if cfg.get(k)]
            if keys:
                raise ConfigError(f"data.{keys[0]} applies to AnnData input; x is a {type(self.x).__name__}")
            x = _npy_of(self.x) or as_rows(self.x, "x")
            y = None if self.y is None else labels_from_array(_numbers(self.y), x.shape[0], "y")
        return _split_rows(x, y, cfg, generator, "x", names, batch, batch_names, covariates)


@DATASETS.register("anndata", config=AnnDataConfig)
class AnnDataFile(DataSource):
    """An .h5ad file or .zarr store (data.path; data.layer, data.label_key, data.batch_key); a random test split."""

    def load(self, cfg, generator):
        where = ", ".join(str(p) for p in anndata_paths(cfg.path))
        x, y, names, batch, batch_names, covariates = anndata_rows(cfg, where)
        return _split_rows(x, y, cfg, generator, where, names, batch, batch_names, covariates)


def _split_rows(x, y, cfg, generator, where, class_names=None, batch=None, batch_names=None, covariates=None) -> Loaded:
    if x.shape[0] < 2:
        raise DataError(f"{where} has {x.shape[0]} rows; need at least 2 to split train/test")
    tr, te = _random_split(len(x), cfg.test_fraction, generator)
    keys = list(cfg.covariate_keys) if covariates is not None else None
    full = Split(x, y, torch.arange(x.shape[0]), batch, covariates, keys)
    return Loaded(full.subset(tr), full.subset(te), class_names=class_names, batch_names=batch_names)


def _npy_of(x) -> Optional[NpyRows]:
    """A whole ``.npy`` opened with ``np.load(path, mmap_mode="r")``, as rows read from that file by
    index (placed in memory or left on disk by ``data.storage``); None for any other array."""
    if not isinstance(x, np.memmap) or not str(getattr(x, "filename", "") or "").endswith(".npy"):
        return None
    try:
        rows = NpyRows.open(x.filename)
    except (UnsupportedLayout, DataError):
        return None
    same = rows.file.offset == x.offset and rows.file.dtype == x.dtype and rows.file.rows == len(x)
    return rows if same and x.ndim >= 1 and x.flags.c_contiguous else None


def _numbers(y):
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    return y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y, dtype=np.float64)


# ---------------------------------------------------------------- assembly
def load_data(cfg, source: Optional[DataSource] = None) -> Dataset:
    """Build the :class:`Dataset` described by the ``data:`` config section (seeded by ``cfg.seed``);
    ``source`` replaces the registry's (arrays given in Python)."""
    d = cfg.data
    g = torch.Generator().manual_seed(int(cfg.seed))
    loaded = (source or DATASETS.get(d.name)()).load(d, g)
    train, test = loaded.train, loaded.test
    if d.limit:
        train = train.subset(slice(0, int(d.limit)))
    if d.exclude_classes:
        if train.y is None:
            raise DataError("data.exclude_classes needs labelled data")
        keep = ~torch.isin(train.y, torch.tensor(list(d.exclude_classes)))
        if not bool(keep.any()):
            raise DataError(f"data.exclude_classes={list(d.exclude_classes)} leaves no training data")
        train = train.subset(keep)
    val = None
    if d.validation:
        if d.validation >= len(train):
            raise DataError(f"data.validation={d.validation} leaves no training data ({len(train)} examples)")
        perm = torch.randperm(len(train), generator=g)
        val, train = train.subset(perm[: d.validation]), train.subset(perm[d.validation :])
    if d.labels is not None:
        train = Split(
            train.x,
            select_labels(train.y, d.labels, d.num_classes, g),
            train.rows,
            train.batch,
            train.covariates,
            train.covariate_keys,
        )
    num_classes = d.num_classes
    if num_classes is None and loaded.class_names:
        num_classes = len(loaded.class_names)
    if num_classes is None:
        ys = [s.y for s in (train, val, test) if s is not None and s.y is not None]
        if ys:
            top = max(int(t.max()) for t in ys)
            num_classes = top + 1 if top >= 0 else None
    splits = [s for s in (train, val, test) if s is not None]
    stream = _place(splits, d)
    if loaded.levels and not LIKELIHOODS.get(cfg.likelihood.name).scores_levels:
        for s in splits:  # levels 0..L-1 -> [0,1] (rows read by index: as each batch is read)
            s.x = divided(s.x, loaded.levels - 1) if isinstance(s.x, DiskRows) else s.x / (loaded.levels - 1)
    if d.binarize == "static":
        for s in splits:
            if isinstance(s.x, DiskRows) and s.x.on_disk:
                raise DataError(
                    "data.binarize=static draws every value once in memory; with rows on disk use "
                    "data.binarize=dynamic (drawn per batch) or data.storage=memory"
                )
            if isinstance(s.x, DiskRows):
                s.x = s.x.to_memory()  # the drawn values: float32 in memory
            _check_unit(s.x, "data.binarize")
            if is_sparse(s.x):  # zeros stay zero: only the stored values are drawn
                s.x = s.x.with_values(torch.bernoulli(s.x.values, generator=g))
            else:
                s.x = torch.bernoulli(s.x, generator=g)
    elif d.binarize == "dynamic":
        _check_unit(train.x, "data.binarize")
    extra = {"batch_names": loaded.batch_names, "batch_key": d.get("batch_key")} if loaded.batch_names else {}
    data = Dataset(
        d.name, train, test, val, loaded.image_shape, num_classes, loaded.class_names, d.binarize, extra, loaded.levels
    )
    data.stream = stream
    return data


def _place(splits: List[Split], d) -> Optional[dict]:
    """Splits whose rows are still on disk (a .npy split by row numbers, an AnnData matrix, an image
    folder's decoded cache) read into memory, or left there and read in shuffled chunks, as
    ``data.storage`` says; the training order of rows left on disk ({"chunk_rows", "buffer_rows"};
    None: in memory, or the exact shuffle)."""
    on_disk = [s for s in splits if isinstance(s.x, DiskRows) and s.x.on_disk]
    if not on_disk:
        return None
    xs = placed(on_disk[0].x, d, str(d.get("path") or d.get("root") or d.name), parts=[s.x for s in on_disk])
    for s, x in zip(on_disk, xs):
        s.x = x
    train = splits[0].x
    if not (isinstance(train, DiskRows) and train.on_disk) or d.get("shuffle", "chunks") != "chunks":
        return None
    chunk, buffer = int(d.get("chunk_rows") or 1024), int(d.get("shuffle_buffer") or 65536)
    fits = BUFFER_BYTES // (4 * train.shape[1])
    if buffer > fits:  # wide rows: fewer rows in a buffer, and chunks small enough to mix MIN_CHUNKS of them
        buffer = max(1, fits)
        chunk = max(1, min(chunk, buffer // MIN_CHUNKS))
    return {"chunk_rows": chunk, "buffer_rows": buffer}


def _check_unit(x, what):
    if isinstance(x, DiskRows):  # one pass over the file, a chunk at a time
        for _, chunk in x.chunks():
            _check_unit(chunk, what)
        return
    x = x.values if is_sparse(x) else x
    if bool(((x < 0) | (x > 1)).any()):
        raise DataError(
            f"{what} needs values in [0,1]; image data sets give them to a likelihood over [0,1] "
            "(e.g. likelihood.name=bernoulli), not to one over integer levels"
        )


# ---------------------------------------------------------------- semi-supervised
def select_labels(y: Optional[torch.Tensor], n: Optional[int], num_classes: Optional[int], generator) -> torch.Tensor:
    """Keep ``n`` known labels drawn class-balanced (seeded); the rest become -1 (unknown).

    Each class gets floor(n/C) labels and the remainder goes to randomly chosen classes, so
    any n >= C works. ``n=None`` keeps every known label.
    """
    if y is None or not bool((y >= 0).any()):
        raise DataError(
            "semi-supervised training needs labels, but the training data has none; "
            "give labels (e.g. data.labels_path or a label column) for some rows"
        )
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
