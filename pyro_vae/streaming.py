"""Rows of a ``.npy`` file read from disk by index, in chunks, without loading the file.

A :class:`NpyRows` is the rows ``index`` (row numbers in the file) of a 2-D ``.npy`` array:
``shape``, ``len``, ``x[idx]`` (again an ``NpyRows``: splits and subsets cost an index, not
the rows), ``x.dense(idx)`` (those rows as a float32 tensor). The header is NumPy's
(``np.lib.format``); rows are read with ``os.preadv`` straight into a buffer, the requested
rows sorted and read as contiguous runs, so the file's pages never count as the process's
memory and a file shorter than its header says is a one-line :class:`~pyro_vae.errors.DataError`.

Training on such rows reads them in chunks: :func:`chunked_order` is an epoch's order of
contiguous chunks (of the rows sorted by file position) in a shuffled order, shuffled again
row by row inside a buffer of several chunks; :meth:`NpyRows.chunk_cache` gives a view
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

READ_BYTES = 8 << 20  # the largest single read: runs of rows are cut to this size
GAP_ROWS = 4  # rows between two wanted rows that are read through rather than skipped
FINGERPRINT_ROWS = 64  # rows sampled (evenly spaced) into a file's fingerprint


class UnsupportedLayout(Exception):
    """A .npy that cannot be read row by row (Fortran order, not numbers, no rows): read it whole."""


class NpyFile:
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

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """File rows ``rows`` (any order, repeats allowed) as float32 (len(rows), cols): sorted, read as
        contiguous runs of at most READ_BYTES (gaps under GAP_ROWS read through), put back in order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.cols), dtype=np.float32) if out is None else out
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"row {int(rows.max())} is outside {self.path}'s {self.rows} rows")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        per_read = max(1, READ_BYTES // max(1, self.row_bytes))
        cut = np.flatnonzero(np.diff(srt) > GAP_ROWS) + 1
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [len(srt)]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            while a < b:  # one run, cut to reads of at most per_read rows
                lo = int(srt[a])
                stop = int(np.searchsorted(srt, lo + per_read, side="left"))
                stop = max(a + 1, min(b, stop))
                block = self.read_span(lo, int(srt[stop - 1]) + 1)
                out[order[a:stop]] = block[srt[a:stop] - lo]
                a = stop
        return out

    def fingerprint(self) -> int:
        """CRC-32 of the file's size, modification time, header and FINGERPRINT_ROWS evenly spaced rows:
        cheap for any size; a truncated, rewritten or touched file gives another value."""
        st = self.path.stat()
        crc = zlib.crc32(f"{st.st_size}:{st.st_mtime_ns}:{self.rows}x{self.cols}:{self.dtype.str}".encode())
        if self.rows:
            sample = np.unique(np.linspace(0, self.rows - 1, min(self.rows, FINGERPRINT_ROWS)).astype(np.int64))
            crc = zlib.crc32(self.read_rows(sample).tobytes(), crc)
        return crc


class MemoryArray:
    """A 2-D array held in memory in its own dtype (e.g. uint8 pixels, 1 byte a value), read like an
    :class:`NpyFile`: rows gathered by index and converted to float32 one batch at a time."""

    on_disk = False
    offset = 0

    def __init__(self, array: np.ndarray, where: str = "memory"):
        self.array = np.ascontiguousarray(array).reshape(len(array), -1)
        self.path = Path(where)
        self.rows, self.cols = (int(v) for v in self.array.shape)
        self.dtype = self.array.dtype
        self.row_bytes = self.cols * self.dtype.itemsize
        self.nbytes = self.array.nbytes

    def check_size(self) -> None:
        """Nothing to check: the rows are in memory."""

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as float32 (len(rows), cols), or into ``out``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.cols), dtype=np.float32) if out is None else out
        out[...] = self.array[rows]
        return out

    def fingerprint(self) -> int:
        """CRC-32 of the shape, dtype and every value."""
        crc = zlib.crc32(f"{self.rows}x{self.cols}:{self.dtype.str}".encode())
        for a, b in _bounds(self.rows, max(1, (64 << 20) // max(1, self.row_bytes))):
            crc = zlib.crc32(self.array[a:b], crc)
        return crc


class DividedFile:
    """The rows of ``file`` (an :class:`NpyFile` or :class:`MemoryArray`) divided by ``divisor`` as they are
    read: pixel levels 0..L-1 given as [0,1] (divisor L-1) without a float copy of the array."""

    def __init__(self, file, divisor: float):
        self.file, self.divisor = file, float(divisor)

    def __getattr__(self, name):  # shape, dtype, path, on_disk, ... are the file's
        if name in ("file", "divisor"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.file, name)

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        out = self.file.read_rows(rows, out)
        out /= np.float32(self.divisor)
        return out

    def fingerprint(self) -> int:
        return zlib.crc32(f"/{self.divisor}".encode(), self.file.fingerprint())


def divided(rows: "NpyRows", divisor: float) -> "NpyRows":
    """The same rows read divided by ``divisor`` (see :class:`DividedFile`)."""
    return NpyRows(DividedFile(rows.file, divisor), rows.index)


class NpyRows:
    """Rows ``index`` of an :class:`NpyFile` (all rows in file order when None), read on demand; the
    file may also be a :class:`MemoryArray` (rows in memory, read by index the same way)."""

    CHUNK_ROWS = 8192  # rows per read when walking all rows (checks, statistics, materialising)

    def __init__(self, file: NpyFile, index: Optional[torch.Tensor] = None, cache=None):
        self.file, self.index, self._cache = file, index, cache
        n = file.rows if index is None else len(index)
        self.shape = torch.Size((n, file.cols))

    @classmethod
    def open(cls, path) -> "NpyRows":
        return cls(NpyFile(path))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def on_disk(self) -> bool:
        """Whether the rows are read from a file (else from an array in memory)."""
        return getattr(self.file, "on_disk", True)

    def __repr__(self) -> str:
        return f"NpyRows({self.shape[0]} x {self.shape[1]} of {self.file.path})"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def nbytes(self) -> int:
        """Bytes these rows take as float32 in memory."""
        return self.shape[0] * self.shape[1] * 4

    def file_rows(self, idx=None) -> np.ndarray:
        """The file row of each of these rows (of rows ``idx`` when given), int64."""
        rows = np.arange(self.file.rows, dtype=np.int64) if self.index is None else self.index.numpy()
        return rows if idx is None else rows[_as_index(idx, len(self)).numpy()]

    def __getitem__(self, idx) -> "NpyRows":
        idx = _as_index(idx, len(self))
        return NpyRows(self.file, idx.clone() if self.index is None else self.index[idx])

    def dense(self, idx=None) -> torch.Tensor:
        """Rows ``idx`` (all when None) as a float32 tensor (len(idx), D), read from the file."""
        if self._cache is not None and idx is not None:
            return self._cache.rows(_as_index(idx, len(self)))
        return torch.from_numpy(self.file.read_rows(self.file_rows(idx)))

    def to_memory(self) -> torch.Tensor:
        """All rows in one float32 tensor, read in file order CHUNK_ROWS rows at a time (sequential
        reads) and put in place: no second copy of the rows."""
        out = np.empty(tuple(self.shape), dtype=np.float32)
        for pos, chunk in self.chunks():
            out[pos.numpy()] = chunk.numpy()
        return torch.from_numpy(out)

    def chunks(self, rows: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(positions, their rows as a float32 tensor) over all rows, ``rows`` at a time, in file order:
        one sequential pass over the file (for what does not depend on the order: checks, statistics)."""
        order = self.file_order()
        file_rows = self.file_rows()
        for a, b in _bounds(len(self), rows or self.CHUNK_ROWS):
            pos = order[a:b]
            yield pos, torch.from_numpy(self.file.read_rows(file_rows[pos.numpy()]))

    def to(self, device) -> "NpyRows":
        if torch.device(device).type != "cpu":
            raise ValueError("rows on disk are read on the CPU; move each batch instead")
        return self

    def file_order(self) -> torch.Tensor:
        """These rows' positions sorted by their place in the file (reads in this order are sequential)."""
        if self.index is None:
            return torch.arange(len(self))
        return torch.from_numpy(np.argsort(self.index.numpy(), kind="stable"))

    def chunk_cache(self, chunk_rows: int, capacity: int) -> "NpyRows":
        """The same rows, read a whole chunk at a time (chunk k = positions file_order()[k*chunk_rows:
        (k+1)*chunk_rows], as :func:`chunked_order` cuts them), the last ``capacity`` chunks kept."""
        return NpyRows(self.file, self.index, ChunkCache(self, chunk_rows, capacity))

    def fingerprint(self) -> int:
        """The file's fingerprint (:meth:`NpyFile.fingerprint`) and CRC-32 of the row numbers."""
        crc = self.file.fingerprint()
        if self.index is not None:
            crc = zlib.crc32(self.index.numpy().tobytes(), crc)
        return zlib.crc32(str(tuple(self.shape)).encode(), crc)


class AppendedRows:
    """Rows read by index (:class:`NpyRows`, in memory or on disk) with columns held in memory appended:
    ``dense(idx)`` is ``cat([rows.dense(idx), columns[idx]], 1)`` (a conditional model's design after
    each row). Subsets, chunked reads and the chunk cache are the rows' own, the columns following."""

    def __init__(self, rows: NpyRows, columns: torch.Tensor):
        self.rows, self.columns = rows, columns.float()
        self.shape = torch.Size((rows.shape[0], rows.shape[1] + columns.shape[1]))

    dtype, device = NpyRows.dtype, NpyRows.device

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
    """Reads for :meth:`NpyRows.chunk_cache`: a row asked for brings its whole chunk in (one run of the
    file) into one of ``capacity`` slots of a preallocated slab, the least recently used slot given up;
    a batch is then one gather from the slab."""

    def __init__(self, rows: NpyRows, chunk_rows: int, capacity: int):
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


def row_chunks(x, rows=None):
    """(dense chunk, the chunk's row numbers) covering ``x`` (a dense tensor, or :class:`NpyRows` read in
    file order): one pass, a chunk at a time; row numbers from ``rows`` (else the positions). A tensor
    of at most CHECK_ROWS rows is one chunk, itself."""
    if isinstance(x, NpyRows):
        for pos, chunk in x.chunks():
            yield chunk, (rows[pos] if rows is not None else pos)
    elif x.shape[0] <= CHECK_ROWS:
        yield x, rows
    else:
        for a, b in _bounds(x.shape[0], CHECK_ROWS):
            yield x[a:b], (rows[a:b] if rows is not None else torch.arange(a, b))


def stats_rows(x):
    """The rows a likelihood's statistics (``fit_data``) see: ``x`` itself in memory; for rows on disk,
    at most STATS_ROWS of them, evenly spaced (all when there are fewer)."""
    if not isinstance(x, NpyRows):
        return x
    n = len(x)
    idx = torch.arange(n) if n <= STATS_ROWS else torch.linspace(0, n - 1, STATS_ROWS).long()
    return x.dense(idx)
