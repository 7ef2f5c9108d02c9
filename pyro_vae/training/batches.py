"""Minibatches drawn by index from in-memory tensors, sharded across processes.

Why not a stock ``DataLoader`` over a ``TensorDataset``: its per-item fetch and collate
cost more than a 784-400-50 VAE step on a CPU. Here each step's rows are one index
tensor and one gather (``DataLoader(batch_size=None)`` only passes the index through).

Each epoch draws one permutation, seeded by (seed, epoch) and so the same on every
process, and cuts it into steps of ``world_size * batch_size`` rows; process ``rank``
takes every ``world_size``-th row of each step. The processes' batches are disjoint,
together cover the epoch once, and every process takes the same number of steps (a last
step too short to give every process a row is folded into the one before).

Rows on disk (:class:`~pyro_vae.streaming.DiskRows`) are drawn in the order of
:func:`~pyro_vae.streaming.chunked_order` (contiguous chunks in a shuffled order, rows shuffled
within a buffer; still one permutation per epoch, cut and sharded as above) and read a chunk at a
time; their loader reads the next batches in a background thread while a step runs.
"""

import queue
import threading
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..sparse import take
from ..streaming import chunked_order


def step_bounds(n: int, per_step: int, world_size: int = 1) -> List[Tuple[int, int]]:
    """[start, end) of each step over n rows: ``per_step`` rows each, the last one shorter,
    merged into the previous step when it has fewer than ``world_size`` rows."""
    if n < world_size:
        raise ValueError(f"{n} rows cannot be shared by {world_size} processes")
    bounds = [(s, min(n, s + per_step)) for s in range(0, n, per_step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded by the sequence ``keys`` (e.g. seed, epoch, step): the same keys give
    the same draws on every process and after a resume."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 1) % (2**62)
    return torch.Generator().manual_seed(seed)


class IndexBatchSampler(Sampler):
    """Yields ``{"rows": LongTensor, "seed": int}`` per step for one process (see module doc)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        order: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None,
    ):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), shuffle
        self.order = order  # (n, generator) -> the epoch's permutation; None = torch.randperm
        self.epoch = 0
        self.skip = (-1, 0)  # (epoch, steps) already done in a resumed epoch
        self.bounds = step_bounds(self.n, self.batch_size * self.world_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (also after a resume)."""
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, steps: int) -> None:
        """A run resumed from a checkpoint taken after ``steps`` steps of ``epoch``: that epoch's
        iteration starts after them (the same batches as if it had never stopped)."""
        self.skip = (int(epoch), int(steps))

    def _first_step(self) -> int:
        return self.skip[1] if self.skip[0] == self.epoch else 0

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[dict]:
        g = seeded_generator(self.seed, self.epoch)
        if not self.shuffle:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=g) if self.order is None else self.order(self.n, g)
        for step, (a, b) in enumerate(self.bounds):
            if step >= self._first_step():
                yield {"rows": order[a:b][self.rank :: self.world_size], "seed": hash((self.seed, self.epoch, step))}


class SemiSupervisedBatchSampler(IndexBatchSampler):
    """Per step: a shard of the unlabelled rows and a labelled minibatch cycled over the (small)
    labelled set, sharded the same way. An epoch is one pass over the unlabelled rows (or over
    the labelled rows when every row is labelled). Yields ``{"u", "l", "seed"}``."""

    def __init__(
        self,
        unlabelled: torch.Tensor,
        labelled: torch.Tensor,
        batch_size: int,
        labelled_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.u, self.l = unlabelled, labelled
        self.batch_size, self.lbatch = int(batch_size), int(labelled_batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.skip = (-1, 0)
        if len(self.l) < self.world_size:
            raise ValueError(f"{len(self.l)} labelled rows cannot be shared by {self.world_size} processes")
        if len(self.u):
            self.bounds = step_bounds(len(self.u), self.batch_size * self.world_size, self.world_size)
        else:
            self.bounds = step_bounds(len(self.l), self.lbatch * self.world_size, self.world_size)

    def _labelled_steps(self, per_step: int):
        """``per_step`` labelled rows per step for this epoch: successive seeded permutations of
        the labelled set, cut into consecutive pieces."""
        cycle, buf = 0, self.l[:0]
        while True:
            while len(buf) < per_step:
                perm = torch.randperm(len(self.l), generator=seeded_generator(self.seed, self.epoch, 7, cycle))
                buf, cycle = torch.cat([buf, self.l[perm]]), cycle + 1
            yield buf[:per_step]
            buf = buf[per_step:]

    def __iter__(self):
        g = seeded_generator(self.seed, self.epoch)
        order = self.u[torch.randperm(len(self.u), generator=g)]
        per_step = self.lbatch * self.world_size
        stream = self._labelled_steps(per_step)
        for step, (a, b) in enumerate(self.bounds):
            if len(self.u):
                u = order[a:b][self.rank :: self.world_size]
                lab = next(stream)
            else:  # every row labelled: the epoch walks the labelled set once
                u = self.u[:0]
                lab = self.l[torch.randperm(len(self.l), generator=g)][a:b]
            if step < self._first_step():
                continue
            yield {"u": u, "l": lab[self.rank :: self.world_size], "seed": hash((self.seed, self.epoch, step))}


class RowBatches(Dataset):
    """What a sampler's index becomes: the rows of ``x`` (and ``y``), binarized afresh per
    batch when ``dynamic_binarize`` (seeded by the step, so a resumed run draws the same).
    ``x`` is a dense tensor or a :class:`~pyro_vae.sparse.SparseRows` (densified per batch)."""

    def __init__(self, x: torch.Tensor, y=None, dynamic_binarize: bool = False):
        self.x, self.y, self.dynamic_binarize = x, y, dynamic_binarize

    def __len__(self):
        return self.x.shape[0]

    def rows(self, idx, seed):
        # a dense tensor's rows by index_select: the same rows as x[idx] for the samplers' non-negative
        # LongTensor indices, gathered in about half the CPU time
        xb = self.x.index_select(0, idx.to(self.x.device)) if isinstance(self.x, torch.Tensor) else take(self.x, idx)
        if self.dynamic_binarize:
            xb = torch.bernoulli(xb, generator=seeded_generator(seed))
        return xb

    def __getitem__(self, item):
        if "rows" in item:  # unsupervised / validation batches
            xb = self.rows(item["rows"], item["seed"])
            return xb if self.y is None else (xb, self.y[item["rows"]])
        yu, yl = item["u"], item["l"]
        return {"xu": self.rows(yu, item["seed"]), "xl": self.rows(yl, item["seed"] + 1), "yl": self.y[yl]}


def training_rows(x, stream: Optional[dict], world_size: int = 1):
    """(rows, order) a plan trains on: ``x`` and None (torch.randperm) in memory or with an exact
    shuffle; for rows on disk with ``stream`` ({"chunk_rows", "buffer_rows"}) a view of ``x`` that reads
    whole chunks (two buffers of them kept) and the chunked order over the same chunks, each of the
    ``world_size`` processes given chunks of its own."""
    if not stream or not getattr(x, "on_disk", False):
        return x, None
    chunk, buffer = int(stream["chunk_rows"]), int(stream["buffer_rows"])
    file_order = x.file_order()

    def order(n, g):
        return chunked_order(n, chunk, buffer, g, file_order, world_size)

    return x.chunk_cache(chunk, 2 * max(1, buffer // chunk) + 2), order


class PrefetchLoader(DataLoader):
    """A DataLoader whose batches are made ``depth`` ahead in a background thread (rows on disk:
    the reads overlap the steps). The batches and their order are the DataLoader's own."""

    depth = 4

    def __iter__(self):
        items: "queue.Queue" = queue.Queue(self.depth)
        stop = threading.Event()
        done = object()

        def work(it):
            try:
                for item in it:
                    while not stop.is_set():
                        try:
                            items.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                items.put(done)
            except BaseException as e:  # raised again in the consumer
                items.put(e)

        worker = threading.Thread(target=work, args=(super().__iter__(),), daemon=True)
        worker.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


def index_loader(rows: Dataset, sampler: Sampler) -> DataLoader:
    """The loader of ``sampler``'s index batches over ``rows`` (read ahead in a thread when the rows are
    on disk). It draws its (unused) worker seed from a generator of its own, not torch's global one,
    so the noise a run draws does not depend on where an epoch's loader was started: a run resumed
    inside an epoch draws what the uninterrupted run drew."""
    cls = PrefetchLoader if getattr(getattr(rows, "x", None), "on_disk", False) else DataLoader
    return cls(rows, batch_size=None, sampler=sampler, generator=torch.Generator())
