"""An AnnData's matrix on disk (``.h5ad`` through h5py, ``.zarr`` through zarr), read by row spans.

:class:`AnnDataMatrix` is a :class:`~pyro_vae.streaming.RowFile`: ``X`` or ``layers/NAME`` of an
AnnData store, dense (a 2-D array) or CSR (the ``csr_matrix`` encoding: ``data``, ``indices``,
``indptr``). The row pointer (8 bytes a row) is held in memory; a span of rows is one slice of
``indptr`` and one of ``data`` and ``indices``. The store is opened on first use in each process
(a pickled matrix reopens it), and ``obs`` is read whole with anndata's own reader
(``anndata.io.read_elem``): labels, batches and covariates are small. Whatever the store cannot
give (a missing file, layer or chunk, a matrix stored by columns) is a one-line
:class:`~pyro_vae.errors.DataError`.
"""

import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import DataError
from .sparse import SparseRows
from .streaming import RowFile
from .utils import first_line

ANNDATA_MISSING = "reading AnnData files needs the anndata package: pip install pyro_vae[anndata]"


def open_store(path: Path, mode: str = "r"):
    """The root group of an AnnData store: an ``h5py.File`` (.h5ad) or a ``zarr.Group`` (.zarr)."""
    if path.suffix == ".zarr":
        if not path.is_dir():
            raise DataError(f"data.path {path} does not exist (a .zarr store is a folder)")
        try:
            import zarr
        except ImportError:
            raise DataError(f"reading {path} (a .zarr store) needs the zarr package: pip install zarr") from None
        try:
            return zarr.open_group(str(path), mode=mode)
        except Exception as e:  # zarr raises many kinds
            raise DataError(f"could not open {path} as a zarr store: {first_line(e)}") from None
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist")
    import h5py

    try:
        return h5py.File(path, mode)
    except Exception as e:
        raise DataError(f"could not open {path} as an .h5ad (HDF5) file: {first_line(e)}") from None


def _attr(node, key, default=None):
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _is_group(node) -> bool:
    return hasattr(node, "keys") and not hasattr(node, "dtype")


class AnnDataMatrix(RowFile):
    """``X`` (``layer`` None) or ``layers/layer`` of the AnnData store at ``path``, read by row spans."""

    def __init__(self, path, layer: Optional[str] = None):
        self.path = Path(path).expanduser()
        self.layer = layer
        self._store = None
        self._lock = threading.Lock()
        root = self.store
        elem = self._element(root)
        self.what = f"layer {layer!r}" if layer else ".X"
        kind = _attr(elem, "encoding-type", "array")
        if _is_group(elem):
            if kind == "csc_matrix":
                raise DataError(
                    f"{self.path} stores {self.what} by columns (CSC), which cannot be read by rows; write it as CSR "
                    "(adata.X = adata.X.tocsr(), then write the file again) or use data.storage=memory"
                )
            if kind != "csr_matrix":
                raise DataError(f"{self.path} {self.what} is a {kind!r}, not a matrix this package reads")
            self.sparse = True
            self.rows, self.cols = (int(v) for v in np.asarray(elem.attrs["shape"]).tolist())
            try:
                self.indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
            except Exception as e:
                raise DataError(f"could not read the row pointer of {self.path} {self.what}: {first_line(e)}") from None
            self.nnz = int(elem["data"].shape[0])
            if len(self.indptr) != self.rows + 1 or self.indptr[-1] != self.nnz or elem["indices"].shape[0] != self.nnz:
                raise DataError(
                    f"{self.path} {self.what} is damaged or truncated: its row pointer ends at {int(self.indptr[-1])} "
                    f"but it stores {self.nnz} values; write the file again"
                )
            self.dtype = np.dtype(elem["data"].dtype)
            self.row_bytes = max(1, 8 * self.nnz // max(1, self.rows))
        else:
            if len(elem.shape) != 2:
                raise DataError(f"{self.path} {self.what} has shape {tuple(elem.shape)}; expected (rows, features)")
            self.rows, self.cols = int(elem.shape[0]), int(elem.shape[1])
            self.dtype = np.dtype(elem.dtype)
            self.row_bytes = self.cols * self.dtype.itemsize
        if self.dtype.kind not in "biuf":
            raise DataError(f"{self.path} {self.what} holds {self.dtype}, not numbers")

    # ---- the store, opened once per process -------------------------------------------
    @property
    def store(self):
        with self._lock:
            if self._store is None:
                self._store = open_store(self.path)
            return self._store

    def _element(self, root):
        if self.layer:
            layers = root["layers"] if "layers" in root else None
            if layers is None or self.layer not in layers:
                names = ", ".join(layers.keys()) if layers is not None else ""
                raise DataError(
                    f"{self.path} has no layer {self.layer!r} (layers: {names or 'none'}); "
                    "set data.layer to one of them, or null for .X"
                )
            return layers[self.layer]
        if "X" not in root:
            names = ", ".join(root["layers"].keys()) if "layers" in root else ""
            raise DataError(f"{self.path} has no .X; set data.layer to one of: {names or 'none (no layers either)'}")
        return root["X"]

    def __getstate__(self):  # pickled (a spawned process) without the open store
        state = dict(self.__dict__, _store=None)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def close(self) -> None:
        with self._lock:
            if self._store is not None and hasattr(self._store, "close"):
                self._store.close()
            self._store = None

    def __del__(self):
        if getattr(self, "_store", None) is not None and hasattr(self._store, "close"):
            try:
                self._store.close()
            except Exception:  # the interpreter shutting down
                pass

    # ---- reads ------------------------------------------------------------------------
    def _fail(self, lo: int, hi: int, e: Exception):
        return DataError(
            f"{self.path}: could not read rows {lo}..{hi - 1} of {self.what} ({first_line(e)}); the file is "
            "damaged, truncated or changed: write it again"
        )

    def read_csr(self, lo: int, hi: int) -> SparseRows:
        """File rows [lo, hi) of a CSR matrix: one slice of data and of indices."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        try:
            elem = self._element(self.store)
            values = np.asarray(elem["data"][a:b], dtype=np.float32)
            col = np.asarray(elem["indices"][a:b])
        except DataError:
            raise
        except Exception as e:
            raise self._fail(lo, hi, e) from None
        if len(values) != b - a or len(col) != b - a:
            raise self._fail(lo, hi, ValueError(f"got {len(values)} of {b - a} values"))
        itype = np.int32 if self.nnz < 2**31 - 1 and self.cols < 2**31 - 1 else np.int64
        crow = torch.from_numpy((self.indptr[lo : hi + 1] - a).astype(itype))
        return SparseRows(
            crow, torch.from_numpy(col.astype(itype, copy=False)), torch.from_numpy(values), (hi - lo, self.cols)
        )

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        if self.sparse:
            return self.read_csr(lo, hi).dense().numpy()
        try:
            block = np.asarray(self._element(self.store)[lo:hi])
        except DataError:
            raise
        except Exception as e:
            raise self._fail(lo, hi, e) from None
        if block.shape != (hi - lo, self.cols):
            raise self._fail(lo, hi, ValueError(f"got shape {block.shape}"))
        return block

    def nbytes_of(self, rows: Optional[np.ndarray]) -> int:
        """Bytes of these rows in memory: float32 rows, or (sparse) 8 bytes a stored value and a row."""
        if not self.sparse:
            return super().nbytes_of(rows)
        if rows is None:
            return 8 * (self.nnz + self.rows + 1)
        counts = self.indptr[1:] - self.indptr[:-1]
        return 8 * (int(counts[rows].sum()) + len(rows) + 1)

    def stat_key(self) -> str:
        """Size and modification time of the file (.h5ad), or summed over the matrix's files (.zarr)."""
        if self.path.is_dir():
            sub = self.path / ("layers/" + self.layer if self.layer else "X")
            size = mtime = 0
            for dirpath, _, files in os.walk(sub):
                for f in files:
                    st = os.stat(os.path.join(dirpath, f))
                    size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
        else:
            st = self.path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        return f"{size}:{mtime}:{self.rows}x{self.cols}:{self.dtype.str}:{getattr(self, 'nnz', -1)}"

    def obs(self):
        """The obs table (a pandas DataFrame), read whole by anndata."""
        try:
            from anndata.io import read_elem
        except ImportError:  # anndata before 0.11 kept it in anndata.experimental
            try:
                from anndata.experimental import read_elem
            except ImportError:
                raise DataError(ANNDATA_MISSING) from None
        try:
            return read_elem(self.store["obs"])
        except Exception as e:
            raise DataError(f"could not read the obs table of {self.path}: {first_line(e)}") from None


class ObsmWriter:
    """A copy of the ``.h5ad`` file ``source`` at ``path`` with arrays added to its ``obsm``, written a
    block of rows at a time (h5py, the copy opened for writing): the matrix is copied as bytes, never
    read. An existing ``obsm`` entry of the same name is replaced."""

    def __init__(self, source, path, rows: int):
        import shutil

        import h5py

        self.rows = int(rows)
        try:
            shutil.copyfile(source, path)
            self.f = h5py.File(path, "r+")
        except Exception as e:
            raise DataError(f"could not copy {source} to add the codes: {first_line(e)}") from None
        if "obsm" not in self.f:
            obsm = self.f.create_group("obsm")
            obsm.attrs["encoding-type"], obsm.attrs["encoding-version"] = "dict", "0.1.0"
        self.obsm = self.f["obsm"]
        self.arrays = {}

    def write(self, key: str, lo: int, block) -> None:
        """Rows [lo, lo + len(block)) of ``obsm[key]`` (made at the first block, float32)."""
        block = np.asarray(block, dtype=np.float32)
        if key not in self.arrays:
            if key in self.obsm:
                del self.obsm[key]
            arr = self.obsm.create_dataset(key, shape=(self.rows, block.shape[1]), dtype="float32")
            arr.attrs["encoding-type"], arr.attrs["encoding-version"] = "array", "0.2.0"
            self.arrays[key] = arr
        self.arrays[key][lo : lo + len(block)] = block

    def close(self) -> None:
        self.f.close()
