"""Rows of a file read by index, in chunks, without loading the file.

A :class:`DiskRows` is the rows ``index`` (row numbers in the file) of a :class:`RowFile`:
``shape``, ``len``, ``x[idx]`` (again a ``DiskRows``: splits and subsets cost an index, not
the rows), ``x.dense(idx)`` (those rows as a float32 tensor). A file says how to read a span of
rows; the requested rows are sorted and read as contiguous runs. Files: :class:`NpyFile` (a
``.npy``: NumPy's header, rows read with ``os.preadv`` straight into a buffer, so the file's pages
never count as the process's memory and a file shorter than its header says is a one-line
:class:`~pyro_vae.errors.DataError`; :class:`NpyRows` its rows; an image folder's decoded cache is
one), :class:`pyro_vae.backed.AnnDataMatrix` (an AnnData's ``X`` or layer in ``.h5ad`` / ``.zarr``,
dense or CSR), :class:`JoinedFiles` (several as one) and :class:`MemoryArray` (an array in memory in
its own dtype, e.g. uint8 pixels, read by index the same way; ``on_disk`` is False).
:class:`DividedFile` reads any dense one divided by a constant (levels as [0,1]), and
:class:`AppendedRows` appends columns held in memory to each row read (a conditional model's design).

Training on such rows reads them in chunks: :func:`chunked_order` is an epoch's order of
contiguous chunks (of the rows sorted by file position) in a shuffled order, shuffled again
row by row inside a buffer of several chunks; :meth:`DiskRows.chunk_cache` gives a view
that reads a whole chunk when one of its rows is asked for and keeps the most recent ones,
so every chunk is read once per epoch with one contiguous read.
"""

import os
import threading
import zlib
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from .errors import DataError
from .sparse import SparseRows

READ_BYTES = 8 << 20  # the largest single read: runs of rows are cut to this size
GAP_ROWS = 4  # rows between two wanted rows that are read through rather than skipped
FINGERPRINT_ROWS = 64  # rows sampled (evenly spaced) into a file's fingerprint


class UnsupportedLayout(Exception):
    """A .npy that cannot be read row by row (Fortran order, not numbers, no rows): read it whole."""


class RowFile:
    """What :class:`DiskRows` reads: a file of ``rows`` x ``cols`` numbers, read by contiguous spans.

    A subclass gives ``path``, ``rows``, ``cols``, ``dtype`` (the type the values are stored in),
    ``row_bytes`` (bytes of one row as a read moves them, to size the reads), ``read_span(lo, hi)``
    (rows [lo, hi) as an array of numbers, shape (hi - lo, cols)), ``stat_key()`` (a string that
    changes when the file does: size, time, shape) and ``nbytes_of(rows)`` (what those rows take in
    memory as float32). Sparse files (``sparse = True``) also give ``read_csr(lo, hi)`` (the same rows
    as a :class:`~pyro_vae.sparse.SparseRows`); a file held in memory says ``on_disk = False``. Reads
    of any rows in any order (:meth:`read_rows`) and the fingerprint are built on these."""

    sparse = False
    on_disk = True
    path: Path
    rows: int
    cols: int
    dtype: np.dtype
    row_bytes: int

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def read_csr(self, lo: int, hi: int):
        raise NotImplementedError

    def stat_key(self) -> str:
        raise NotImplementedError

    def nbytes_of(self, rows: Optional[np.ndarray]) -> int:
        n = self.rows if rows is None else len(rows)
        return n * self.cols * 4

    def _runs(self, rows: np.ndarray):
        """(order, sorted rows, [(a, b, lo, hi)]): ``rows`` sorted, cut into reads of file rows [lo, hi)
        that serve sorted positions [a, b): contiguous runs (gaps under GAP_ROWS read through) of at
        most READ_BYTES."""
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"row {int(rows.max())} is outside {self.path}'s {self.rows} rows")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        per_read = max(1, READ_BYTES // max(1, self.row_bytes))
        cut = np.flatnonzero(np.diff(srt) > GAP_ROWS) + 1
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [len(srt)]])
        spans = []
        for a, b in zip(starts.tolist(), ends.tolist()):
            while a < b:  # one run, cut to reads of at most per_read rows
                lo = int(srt[a])
                stop = int(np.searchsorted(srt, lo + per_read, side="left"))
                stop = max(a + 1, min(b, stop))
                spans.append((a, stop, lo, int(srt[stop - 1]) + 1))
                a = stop
        return order, srt, spans

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """File rows ``rows`` (any order, repeats allowed) as float32 (len(rows), cols): sorted, read as
        contiguous runs of at most READ_BYTES (gaps under GAP_ROWS read through), put back in order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.cols), dtype=np.float32) if out is None else out
        if not len(rows):
            return out
        order, srt, spans = self._runs(rows)
        for a, b, lo, hi in spans:
            block = self.read_span(lo, hi)
            out[order[a:b]] = block[srt[a:b] - lo]
        return out

    def read_sparse_rows(self, rows: np.ndarray):
        """File rows ``rows`` (any order) of a sparse file as a :class:`~pyro_vae.sparse.SparseRows`,
        read as :meth:`read_rows` reads them."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return self.read_csr(0, 0)
        order, srt, spans = self._runs(rows)
        pieces = []
        for a, b, lo, hi in spans:
            piece, keep = self.read_csr(lo, hi), srt[a:b] - lo
            pieces.append(piece if np.array_equal(keep, np.arange(hi - lo)) else piece[torch.from_numpy(keep)])
        whole = pieces[0] if len(pieces) == 1 else concat_rows(pieces)
        if np.array_equal(order, np.arange(len(rows))):
            return whole
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return whole[torch.from_numpy(back)]

    def fingerprint(self) -> int:
        """CRC-32 of :meth:`stat_key` and FINGERPRINT_ROWS evenly spaced rows: cheap for any size; a
        truncated, rewritten or touched file gives another value."""
        crc = zlib.crc32(self.stat_key().encode())
        if self.rows:
            sample = np.unique(np.linspace(0, self.rows - 1, min(self.rows, FINGERPRINT_ROWS)).astype(np.int64))
            crc = zlib.crc32(self.read_rows(sample).tobytes(), crc)
        return crc


def concat_rows(pieces):
    """:class:`~pyro_vae.sparse.SparseRows` pieces (the same columns) stacked row-wise into one."""
    crows, offset = [pieces[0].crow[:1].long()], 0
    for p in pieces:
        crows.append(p.crow[1:].long() + offset)
        offset += p.nnz
    itype = torch.int32 if offset < 2**31 - 1 and pieces[0].shape[1] < 2**31 - 1 else torch.long
    col = torch.cat([p.col.to(itype) for p in pieces])
    values = torch.cat([p.values for p in pieces])
    rows = sum(p.shape[0] for p in pieces)
    return SparseRows(torch.cat(crows).to(itype), col, values, (rows, pieces[0].shape[1]))


class JoinedFiles(RowFile):
    """Several :class:`RowFile` of the same columns as one: the rows of the first, then of the second, ...
    (a data set kept in several files). Sparse when every file is."""

    def __init__(self, files):
        self.files = list(files)
        cols = {f.cols for f in self.files}
        if len(cols) > 1:
            names = ", ".join(f"{f.path} ({f.cols})" for f in self.files)
            raise DataError(f"files of one data set need the same number of columns; got {names}")
        self.path = Path(", ".join(str(f.path) for f in self.files))  # named in messages
        self.cols = cols.pop()
        self.starts = np.cumsum([0] + [f.rows for f in self.files])
        self.rows = int(self.starts[-1])
        self.sparse = all(f.sparse for f in self.files)
        self.on_disk = any(f.on_disk for f in self.files)
        self.dtype = np.result_type(*(f.dtype for f in self.files))
        self.row_bytes = max(f.row_bytes for f in self.files)

    def _pieces(self, lo: int, hi: int):
        """(file, its first row, its end row) for the file rows [lo, hi), file by file."""
        k = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(self.starts[k + 1]))
            yield self.files[k], lo - int(self.starts[k]), end - int(self.starts[k])
            lo, k = end, k + 1

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        parts = [f.read_span(a, b) for f, a, b in self._pieces(lo, hi)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def read_csr(self, lo: int, hi: int):
        parts = [f.read_csr(a, b) for f, a, b in self._pieces(lo, hi)] or [self.files[0].read_csr(0, 0)]
        return concat_rows(parts) if len(parts) != 1 else parts[0]

    def stat_key(self) -> str:
        return "|".join(f.stat_key() for f in self.files)

    def nbytes_of(self, rows: Optional[np.ndarray]) -> int:
        if rows is None:
            return sum(f.nbytes_of(None) for f in self.files)
        k = np.searchsorted(self.starts, rows, side="right") - 1
        return sum(f.nbytes_of(rows[k == i] - int(self.starts[i])) for i, f in enumerate(self.files))


class NpyFile(RowFile):
    """An open ``.npy`` file: its header (shape, dtype, data offset) and a file descriptor shared by
    every view (``os.preadv`` takes an offset, so threads may read at once)."""

    def __init__(self, path):
        self.path = Path(path).expanduser()
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise DataError(f"could not read {self.path} as a .npy file: {str(e).splitlines()[0]}") from None
        if fortran or dtype.kind not in "biuf" or len(shape) == 0:
            raise UnsupportedLayout(f"{self.path} is not a C-ordered array of numbers")
        if len(shape) == 1:
            shape = (shape[0], 1)
        self.rows = int(shape[0])
        self.cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self.dtype = dtype
        self.row_bytes = self.cols * dtype.itemsize
        self.nbytes = self.rows * self.row_bytes
        self.check_size()
        self._fd: Optional[int] = None
        self._lock = threading.Lock()

    def check_size(self) -> None:
        """A file shorter than its header says (truncated, or being written) is an error."""
        size = self.path.stat().st_size
        if size < self.offset + self.nbytes:
            raise DataError(
                f"{self.path} is truncated: its header says {self.rows} rows x {self.cols} {self.dtype} "
                f"({self.offset + self.nbytes} bytes) but it has {size} bytes; write the file again"
            )

    @property
    def fd(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def __getstate__(self):  # pickled (a spawned process) without the descriptor
        state = dict(self.__dict__, _fd=None)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        """File rows [lo, hi) as an array of the file's dtype, shape (hi - lo, cols)."""
        buf = np.empty((hi - lo, self.cols), dtype=self.dtype)
        want = buf.nbytes
        got = os.preadv(self.fd, [memoryview(buf).cast("B")], self.offset + lo * self.row_bytes) if want else 0
        if got != want:
            self.check_size()
            raise DataError(f"{self.path}: could not read rows {lo}..{hi - 1} (got {got} of {want} bytes)")
        return buf

    def stat_key(self) -> str:
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}:{self.rows}x{self.cols}:{self.dtype.str}"


class MemoryArray(RowFile):
    """A 2-D array held in memory in its own dtype (e.g. uint8 pixels, 1 byte a value), read like a file:
    rows gathered by index and converted to float32 one batch at a time."""

    on_disk = False

    def __init__(self, array: np.ndarray, where: str = "memory"):
        self.array = np.ascontiguousarray(array).reshape(len(array), -1)
        self.path = Path(where)
        self.rows, self.cols = (int(v) for v in self.array.shape)
        self.dtype = self.array.dtype
        self.row_bytes = self.cols * self.dtype.itemsize
        self.nbytes = self.array.nbytes

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        return self.array[lo:hi]

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as float32 (len(rows), cols), or into ``out``: one
        gather, no runs to cut."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.cols), dtype=np.float32) if out is None else out
        out[...] = self.array[rows]
        return out

    def stat_key(self) -> str:
        return f"{self.rows}x{self.cols}:{self.dtype.str}"

    def fingerprint(self) -> int:
        """CRC-32 of :meth:`stat_key` and every value (they are in memory)."""
        crc = zlib.crc32(self.stat_key().encode())
        for a, b in _bounds(self.rows, max(1, (64 << 20) // max(1, self.row_bytes))):
            crc = zlib.crc32(self.array[a:b], crc)
        return crc


class DividedFile(RowFile):
    """The rows of ``file`` (a dense :class:`RowFile`: an :class:`NpyFile`, a :class:`MemoryArray`, ...)
    divided by ``divisor`` as they are read: pixel levels 0..L-1 given as [0,1] (divisor L-1) without a
    float copy of the array. Shape, dtype, size and place (``on_disk``) are the file's."""

    def __init__(self, file: RowFile, divisor: float):
        self.file, self.divisor = file, float(divisor)
        self.path, self.rows, self.cols, self.row_bytes = file.path, file.rows, file.cols, file.row_bytes
        self.dtype, self.on_disk = file.dtype, file.on_disk

    @property
    def nbytes(self) -> int:
        return self.file.nbytes

    def read_span(self, lo: int, hi: int) -> np.ndarray:
        return np.divide(self.file.read_span(lo, hi), np.float32(self.divisor), dtype=np.float32)

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        out = self.file.read_rows(rows, out)
        out /= np.float32(self.divisor)
        return out

    def stat_key(self) -> str:
        return f"{self.file.stat_key()}/{self.divisor}"

    def nbytes_of(self, rows: Optional[np.ndarray]) -> int:
        return self.file.nbytes_of(rows)

    def fingerprint(self) -> int:
        return zlib.crc32(f"/{self.divisor}".encode(), self.file.fingerprint())


def divided(rows: "DiskRows", divisor: float) -> "DiskRows":
    """The same rows read divided by ``divisor`` (see :class:`DividedFile`)."""
    return type(rows)(DividedFile(rows.file, divisor), rows.index)


class DiskRows:
    """Rows ``index`` of a :class:`RowFile` (all rows in file order when None), read on demand: the
    one view every file gives (a ``.npy``, an AnnData's matrix in ``.h5ad`` or ``.zarr``, an image
    folder's decoded cache), and a :class:`MemoryArray` in memory alike (``on_disk`` says which)."""

    CHUNK_BYTES = 64 << 20  # a pass over all rows (checks, statistics, materialising) reads this much at a time
    CHUNK_ROWS = 8192  # and at most this many rows

    def __init__(self, file: RowFile, index: Optional[torch.Tensor] = None, cache=None):
        self.file, self.index, self._cache = file, index, cache
        n = file.rows if index is None else len(index)
        self.shape = torch.Size((n, file.cols))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def on_disk(self) -> bool:
        """Whether the rows are read from a file (else from an array in memory): the file's."""
        return self.file.on_disk

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shape[0]} x {self.shape[1]} of {self.file.path})"

    @property
    def sparse(self) -> bool:
        return self.file.sparse

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def nbytes(self) -> int:
        """Bytes these rows take in memory: float32 rows, or a sparse file's CSR arrays."""
        return self.file.nbytes_of(None if self.index is None else self.index.numpy())

    def file_rows(self, idx=None) -> np.ndarray:
        """The file row of each of these rows (of rows ``idx`` when given), int64."""
        rows = np.arange(self.file.rows, dtype=np.int64) if self.index is None else self.index.numpy()
        return rows if idx is None else rows[_as_index(idx, len(self)).numpy()]

    def __getitem__(self, idx) -> "DiskRows":
        idx = _as_index(idx, len(self))
        return type(self)(self.file, idx.clone() if self.index is None else self.index[idx])

    def dense(self, idx=None) -> torch.Tensor:
        """Rows ``idx`` (all when None) as a float32 tensor (len(idx), D), read from the file."""
        if self._cache is not None and idx is not None:
            return self._cache.rows(_as_index(idx, len(self)))
        return torch.from_numpy(self.file.read_rows(self.file_rows(idx)))

    def rows_as_read(self, idx=None):
        """Rows ``idx`` (all when None) as the file keeps them: a :class:`~pyro_vae.sparse.SparseRows`
        from a sparse file, else a dense float32 tensor."""
        if self.file.sparse:
            return self.file.read_sparse_rows(self.file_rows(idx))
        return self.dense(idx)

    def to_memory(self):
        """All rows in memory, read in file order a chunk at a time (sequential reads): one float32
        tensor, the rows put in place as they are read; a sparse file's rows as a
        :class:`~pyro_vae.sparse.SparseRows` (its pieces joined, then put in order)."""
        if self.file.sparse:
            order = self.file_order()
            whole = concat_rows([c for _, c in self.chunks(as_read=True)])
            if self.index is None or torch.equal(order, torch.arange(len(self))):
                return whole
            back = torch.empty_like(order)
            back[order] = torch.arange(len(order))
            return whole[back]
        out = np.empty(tuple(self.shape), dtype=np.float32)
        for pos, chunk in self.chunks():
            out[pos.numpy()] = chunk.numpy()
        return torch.from_numpy(out)

    def chunk_size(self) -> int:
        """Rows per chunk of a pass over all rows: CHUNK_BYTES of float32 rows, at most CHUNK_ROWS."""
        return max(1, min(self.CHUNK_ROWS, self.CHUNK_BYTES // max(1, 4 * self.shape[1])))

    def chunks(self, rows: Optional[int] = None, as_read: bool = False) -> Iterator[Tuple[torch.Tensor, object]]:
        """(positions, their rows) over all rows, ``rows`` at a time (default :meth:`chunk_size`), in file
        order: one sequential pass over the file (for what does not depend on the order: checks,
        statistics). Rows as float32 tensors, or as the file keeps them with ``as_read``."""
        order = self.file_order()
        file_rows = self.file_rows()
        for a, b in _bounds(len(self), rows or self.chunk_size()):
            pos = order[a:b]
            fr = file_rows[pos.numpy()]
            if as_read and self.file.sparse:
                yield pos, self.file.read_sparse_rows(fr)
            else:
                yield pos, torch.from_numpy(self.file.read_rows(fr))

    def to(self, device) -> "DiskRows":
        if torch.device(device).type != "cpu":
            raise ValueError("rows read by index are read on the CPU; move each batch instead")
        return self

    def file_order(self) -> torch.Tensor:
        """These rows' positions sorted by their place in the file (reads in this order are sequential)."""
        if self.index is None:
            return torch.arange(len(self))
        return torch.from_numpy(np.argsort(self.index.numpy(), kind="stable"))

    def chunk_cache(self, chunk_rows: int, capacity: int) -> "DiskRows":
        """The same rows, read a whole chunk at a time (chunk k = positions file_order()[k*chunk_rows:
        (k+1)*chunk_rows], as :func:`chunked_order` cuts them), the last ``capacity`` chunks kept."""
        return type(self)(self.file, self.index, ChunkCache(self, chunk_rows, capacity))

    def fingerprint(self) -> int:
        """The file's fingerprint (:meth:`RowFile.fingerprint`) and CRC-32 of the row numbers."""
        crc = self.file.fingerprint()
        if self.index is not None:
            crc = zlib.crc32(self.index.numpy().tobytes(), crc)
        return zlib.crc32(str(tuple(self.shape)).encode(), crc)


class NpyRows(DiskRows):
    """Rows of a ``.npy`` file (:class:`NpyFile`)."""

    @classmethod
    def open(cls, path) -> "NpyRows":
        return cls(NpyFile(path))


class AppendedRows:
    """Rows read by index (:class:`DiskRows`, in memory or on disk) with columns held in memory appended:
    ``dense(idx)`` is ``cat([rows.dense(idx), columns[idx]], 1)`` (a conditional model's design after
    each row). Subsets, chunked reads and the chunk cache are the rows' own, the columns following."""

    def __init__(self, rows: DiskRows, columns: torch.Tensor):
        self.rows, self.columns = rows, columns.float()
        self.shape = torch.Size((rows.shape[0], rows.shape[1] + columns.shape[1]))

    dtype, device = DiskRows.dtype, DiskRows.device

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"AppendedRows({self.rows!r} + {self.columns.shape[1]} columns)"

    @property
    def on_disk(self) -> bool:
        return self.rows.on_disk

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.columns.numel() * 4

    def __getitem__(self, idx) -> "AppendedRows":
        idx = _as_index(idx, len(self))
        return AppendedRows(self.rows[idx], self.columns[idx])

    def dense(self, idx=None) -> torch.Tensor:
        columns = self.columns if idx is None else self.columns[_as_index(idx, len(self))]
        return torch.cat([self.rows.dense(idx), columns], 1)

    def to_memory(self) -> torch.Tensor:
        return torch.cat([self.rows.to_memory(), self.columns], 1)

    def chunks(self, rows: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for pos, chunk in self.rows.chunks(rows):
            yield pos, torch.cat([chunk, self.columns[pos]], 1)

    def file_order(self) -> torch.Tensor:
        return self.rows.file_order()

    def file_rows(self, idx=None) -> np.ndarray:
        return self.rows.file_rows(idx)

    def chunk_cache(self, chunk_rows: int, capacity: int) -> "AppendedRows":
        return AppendedRows(self.rows.chunk_cache(chunk_rows, capacity), self.columns)

    def to(self, device) -> "AppendedRows":
        self.rows.to(device)
        return self

    def fingerprint(self) -> int:
        return zlib.crc32(self.columns.contiguous().numpy().tobytes(), self.rows.fingerprint())


class ChunkCache:
    """Reads for :meth:`DiskRows.chunk_cache`: a row asked for brings its whole chunk in (one run of the
    file) into one of ``capacity`` slots of a preallocated slab, the least recently used slot given up;
    a batch is then one gather from the slab."""

    def __init__(self, rows: DiskRows, chunk_rows: int, capacity: int):
        self.base, self.chunk_rows = rows, int(chunk_rows)
        n = len(rows)
        n_chunks = -(-n // self.chunk_rows)
        self.capacity = max(1, min(int(capacity), n_chunks))
        self.order = rows.file_order()
        place = torch.arange(n)
        self.chunk_of = torch.empty(n, dtype=torch.long)
        self.chunk_of[self.order] = place // self.chunk_rows
        self.offset_of = torch.empty(n, dtype=torch.long)
        self.offset_of[self.order] = place % self.chunk_rows
        self.slot_of_chunk = torch.full((n_chunks,), -1, dtype=torch.long)
        self.chunk_in_slot = torch.full((self.capacity,), -1, dtype=torch.long)
        self.last_used = torch.zeros(self.capacity, dtype=torch.long)
        self.slab = torch.empty(self.capacity * self.chunk_rows, rows.shape[1])
        self.tick = 0
        self.reads = 0

    def _load(self, k: int) -> None:
        slot = int(torch.argmin(self.last_used))  # never used (0) or the least recently used
        old = int(self.chunk_in_slot[slot])
        if old >= 0:
            self.slot_of_chunk[old] = -1
        positions = self.order[k * self.chunk_rows : (k + 1) * self.chunk_rows]
        a = slot * self.chunk_rows
        self.slab[a : a + len(positions)] = self.base.dense(positions)
        self.slot_of_chunk[k], self.chunk_in_slot[slot] = slot, k
        self.last_used[slot] = self.tick
        self.reads += 1

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        self.tick += 1
        chunks = self.chunk_of[idx]
        wanted = torch.unique(chunks)
        if len(wanted) > self.capacity:
            raise ValueError(f"a batch spans {len(wanted)} chunks, more than the cache's {self.capacity}")
        self.last_used[self.slot_of_chunk[wanted[self.slot_of_chunk[wanted] >= 0]]] = self.tick  # kept
        for k in wanted[self.slot_of_chunk[wanted] < 0].tolist():
            self._load(k)
        return self.slab[self.slot_of_chunk[chunks] * self.chunk_rows + self.offset_of[idx]]


def chunked_order(
    n: int,
    chunk_rows: int,
    buffer_rows: int,
    generator: torch.Generator,
    file_order: Optional[torch.Tensor] = None,
    world_size: int = 1,
) -> torch.Tensor:
    """An epoch's order of positions 0..n-1: the positions sorted by file place (``file_order``, default
    0..n-1) cut into chunks of ``chunk_rows``; the chunks in a random order, and in every group of
    ``buffer_rows // chunk_rows`` chunks the rows shuffled together. Every position appears once.

    With ``world_size`` processes the shuffled chunks are dealt out in turn, each process's chunks
    ordered as above, and the streams interleaved (row i of the order from process i % world_size's
    stream; the rows left when the shorter streams end follow): a process taking every
    world_size-th row of each step (:class:`~pyro_vae.training.batches.IndexBatchSampler`) reads its
    own chunks, and of the others' only the rows left over at the end (under a chunk's worth from each,
    from the chunks of its last buffer)."""
    base = torch.arange(n) if file_order is None else file_order
    chunk_rows = max(1, int(chunk_rows))
    per_buffer = max(1, int(buffer_rows) // chunk_rows)
    n_chunks = -(-n // chunk_rows)
    perm = torch.randperm(n_chunks, generator=generator)
    streams = []
    for r in range(world_size):
        mine, parts = perm[r::world_size], []
        for s in range(0, len(mine), per_buffer):
            rows = torch.cat([base[k * chunk_rows : (k + 1) * chunk_rows] for k in mine[s : s + per_buffer].tolist()])
            parts.append(rows[torch.randperm(len(rows), generator=generator)])
        streams.append(torch.cat(parts) if parts else base[:0])
    if world_size == 1:
        return streams[0]
    even = min(len(s) for s in streams)
    woven = torch.stack([s[:even] for s in streams], 1).reshape(-1)
    return torch.cat([woven, *(s[even:] for s in streams)])


def _as_index(idx, n: int) -> torch.Tensor:
    if isinstance(idx, slice):
        return torch.arange(*idx.indices(n))
    if isinstance(idx, int):
        return torch.tensor([idx % n if idx < 0 else idx])
    idx = torch.as_tensor(np.asarray(idx) if not torch.is_tensor(idx) else idx)
    if idx.dtype == torch.bool:
        return idx.nonzero().flatten()
    return idx.long().reshape(-1)


def _bounds(n: int, step: int):
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; physical memory if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def physical_memory() -> int:
    """Bytes of memory in the machine (the same on every process of a run, unlike what is free)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


CHECK_ROWS = 65536  # rows per chunk of a pass over all rows in memory
STATS_ROWS = 100_000  # rows on disk that a likelihood's statistics are computed from
STATS_BYTES = 128 << 20  # and at most this many bytes of them (float32 rows, or a sparse file's CSR arrays)


def row_chunks(x, rows=None, as_read: bool = False):
    """(chunk, the chunk's row numbers) covering ``x`` (a dense tensor, or :class:`DiskRows` read in
    file order; dense chunks, or as the file keeps them with ``as_read``): one pass, a chunk at a time;
    row numbers from ``rows`` (else the positions). A tensor of at most CHECK_ROWS rows is one chunk,
    itself."""
    if isinstance(x, DiskRows):
        for pos, chunk in x.chunks(as_read=as_read):
            yield chunk, (rows[pos] if rows is not None else pos)
    elif x.shape[0] <= CHECK_ROWS:
        yield x, rows
    else:
        for a, b in _bounds(x.shape[0], CHECK_ROWS):
            yield x[a:b], (rows[a:b] if rows is not None else torch.arange(a, b))


def stats_rows(x):
    """The rows a likelihood's statistics (``fit_data``, e.g. the median library size) see: ``x`` itself
    in memory; for rows on disk, at most STATS_ROWS of them evenly spaced (all when there are fewer),
    fewer for wide rows so that they take at most STATS_BYTES (16,000 cells of 20,000 genes at 5%
    non-zeros), read in file order (statistics do not depend on the order); a sparse file's rows stay
    sparse."""
    if not isinstance(x, DiskRows):
        return x
    n = len(x)
    per_row = max(1, x.nbytes // max(1, n))
    k = max(1, min(n, STATS_ROWS, STATS_BYTES // per_row))
    idx = torch.arange(n) if k == n else torch.linspace(0, n - 1, k).long()
    idx = idx[torch.from_numpy(np.argsort(x.file_rows(idx), kind="stable"))]
    return x.rows_as_read(idx)
