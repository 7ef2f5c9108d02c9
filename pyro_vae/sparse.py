"""Sparse rows that stay sparse in memory and become dense one minibatch at a time.

A :class:`SparseRows` holds the three CSR arrays (values float32, indices int32 while
they fit; ``.csr`` shows them as a torch sparse CSR tensor): memory grows with the
non-zeros, not rows x columns. ``x[idx]`` (an index tensor, a slice, a boolean mask) is
again a ``SparseRows`` (splits, subsets); ``x.dense(idx)`` gathers those rows into a dense (len(idx), D) tensor with a few vectorised
ops, no per-row Python. :func:`take` and :func:`batched` work on dense tensors and
``SparseRows`` alike, so code that walks a whole split never densifies all of it.
"""

import warnings
from typing import Callable, Optional

import numpy as np
import torch


class SparseRows:
    """Rows of a CSR matrix: ``shape``, ``len``, ``x[idx]`` (sparse), ``dense(idx)`` (dense)."""

    CHUNK_ROWS = 4096

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape):
        self.shape = torch.Size((int(shape[0]), int(shape[1])))
        self.crow, self.col, self.values = crow, col, values

    @property
    def csr(self) -> torch.Tensor:
        """The same rows as a torch sparse CSR tensor (sharing memory)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(self.crow, self.col, self.values, self.shape, check_invariants=False)

    @classmethod
    def from_scipy(cls, m) -> "SparseRows":
        """From any scipy sparse matrix or array (converted to CSR; values as float32)."""
        m = m.tocsr()
        big = m.nnz >= 2**31 - 1 or m.shape[1] >= 2**31 - 1
        itype = np.int64 if big else np.int32
        return cls(
            torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=itype)),
            torch.from_numpy(np.ascontiguousarray(m.indices, dtype=itype)),
            torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)),
            m.shape,
        )

    @classmethod
    def from_torch(cls, t: torch.Tensor) -> "SparseRows":
        """From a 2-D torch sparse tensor (COO, CSR, or another layout torch converts to CSR)."""
        t = t.detach().cpu()
        if t.layout == torch.sparse_coo:
            t = t.coalesce()  # sorted by row, then column
            row, col = t.indices()
            crow = torch.cat([row.new_zeros(1), torch.cumsum(torch.bincount(row, minlength=t.shape[0]), 0)])
            return cls(crow, col, t.values().float(), t.shape)
        if t.layout != torch.sparse_csr:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                t = t.to_sparse_csr()
        return cls(t.crow_indices(), t.col_indices(), t.values().float(), t.shape)

    # ---- parts -------------------------------------------------------------------
    def row_sums(self) -> torch.Tensor:
        """Sum of each row, shape (rows,), float32 (accumulated in float64)."""
        c = torch.cat([torch.zeros(1, dtype=torch.float64), self.values.double().cumsum(0)])
        return (c[self.crow[1:].long()] - c[self.crow[:-1].long()]).float()

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"SparseRows({self.shape[0]} x {self.shape[1]}, {self.nnz} non-zeros)"

    def columns(self, idx) -> "SparseRows":
        """Columns ``idx`` (numbered 0.. in that order) of every row, again sparse: e.g. one column
        group of a ``mixed`` likelihood."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        new = torch.full((self.shape[1],), -1, dtype=torch.long, device=self.device)
        new[idx] = torch.arange(len(idx), device=self.device)
        col = new[self.col.long()]
        keep = col >= 0
        row_of_value = torch.repeat_interleave(
            torch.arange(self.shape[0], device=self.device), (self.crow[1:] - self.crow[:-1]).long()
        )
        row, col = row_of_value[keep], col[keep]
        order = torch.argsort(row * len(idx) + col)  # row by row, columns ascending within a row
        counts = torch.bincount(row, minlength=self.shape[0])
        crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).to(self.crow.dtype)
        return SparseRows(crow, col[order].to(self.col.dtype), self.values[keep][order], (self.shape[0], len(idx)))

    def with_values(self, values: torch.Tensor) -> "SparseRows":
        """The same pattern with new stored values (e.g. a static binarization)."""
        return SparseRows(self.crow, self.col, values, self.shape)

    # ---- rows --------------------------------------------------------------------
    def _index(self, idx) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(idx, slice):
            return torch.arange(*idx.indices(n), device=self.crow.device)
        if isinstance(idx, int):
            return torch.tensor([idx % n if idx < 0 else idx], device=self.crow.device)
        idx = torch.as_tensor(idx, device=self.crow.device)
        if idx.dtype == torch.bool:
            return idx.nonzero().flatten()
        return idx.long().reshape(-1)

    def _gather(self, idx: torch.Tensor):
        """(positions of the stored values of rows ``idx``, their count per row)."""
        crow = self.crow
        start = crow[idx].long()
        counts = crow[idx + 1].long() - start
        total = int(counts.sum())
        first = torch.cumsum(counts, 0) - counts  # where each row's values begin in the output
        pos = torch.arange(total, device=crow.device) - torch.repeat_interleave(
            first - start, counts, output_size=total
        )
        return pos, counts, total

    def __getitem__(self, idx) -> "SparseRows":
        idx = self._index(idx)
        counts = self.crow[idx + 1].long() - self.crow[idx].long()
        crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        col = torch.empty(int(crow[-1]), dtype=self.col.dtype, device=self.device)
        values = torch.empty(int(crow[-1]), dtype=self.values.dtype, device=self.device)
        for a in range(0, len(idx), self.CHUNK_ROWS):  # chunks bound the int64 temporaries
            pos, _, _ = self._gather(idx[a : a + self.CHUNK_ROWS])
            lo, hi = int(crow[a]), int(crow[min(len(idx), a + self.CHUNK_ROWS)])
            col[lo:hi] = self.col[pos]
            values[lo:hi] = self.values[pos]
        return SparseRows(crow.to(self.crow.dtype), col, values, (len(idx), self.shape[1]))

    def dense(self, idx=None) -> torch.Tensor:
        """Rows ``idx`` (all rows when None) as a dense float tensor of shape (len(idx), D)."""
        idx = torch.arange(self.shape[0], device=self.crow.device) if idx is None else self._index(idx)
        pos, counts, total = self._gather(idx)
        out = torch.zeros(len(idx), self.shape[1], dtype=self.dtype, device=self.device)
        rows = torch.repeat_interleave(torch.arange(len(idx), device=self.crow.device), counts, output_size=total)
        out[rows, self.col[pos].long()] = self.values[pos]
        return out

    def to(self, device) -> "SparseRows":
        return SparseRows(self.crow.to(device), self.col.to(device), self.values.to(device), self.shape)


def is_sparse(x) -> bool:
    return isinstance(x, SparseRows)


def take(x, idx) -> torch.Tensor:
    """Rows ``idx`` of ``x`` as a dense tensor (``x`` dense or :class:`SparseRows`); an int
    gives one row of shape (D,), as tensor indexing does."""
    if isinstance(x, SparseRows) or callable(getattr(x, "dense", None)):  # read by index: SparseRows, NpyRows
        return x.dense(idx)[0] if isinstance(idx, int) else x.dense(idx)
    return x[idx]


@torch.no_grad()
def batched(fn: Callable, x, batch_size: int = 1000, device: Optional[torch.device] = None):
    """``fn(dense batch)`` over the rows of ``x`` in order, outputs concatenated on the CPU
    (a tensor, or a tuple of tensors when ``fn`` returns one)."""
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = take(x, slice(i, i + batch_size))
        out = fn(xb.to(device) if device is not None else xb)
        outs.append(tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu())
    if outs and isinstance(outs[0], tuple):
        return tuple(torch.cat(p) for p in zip(*outs))
    return torch.cat(outs)


def append_columns(x: SparseRows, dense: torch.Tensor) -> SparseRows:
    """``x`` with the columns of ``dense`` (n, k) appended after its own, stored explicitly."""
    n, k = x.shape[0], int(dense.shape[1])
    if k == 0:
        return x
    counts = (x.crow[1:] - x.crow[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(n), counts)
    crow = x.crow.long() + torch.arange(n + 1) * k
    total = int(crow[-1])
    col = torch.empty(total, dtype=torch.long)
    values = torch.empty(total, dtype=x.values.dtype)
    old = torch.arange(x.nnz) + row_of * k  # each stored value's new place
    col[old], values[old] = x.col.long(), x.values
    new = (x.crow[1:].long() + torch.arange(n) * k)[:, None] + torch.arange(k)  # the appended values' places
    col[new.reshape(-1)] = (torch.arange(k) + x.shape[1]).repeat(n)
    values[new.reshape(-1)] = dense.to(x.values.dtype).reshape(-1)
    itype = x.col.dtype if total < 2**31 - 1 else torch.long
    return SparseRows(crow.to(itype), col.to(itype), values, (n, x.shape[1] + k))
