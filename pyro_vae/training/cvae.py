"""Training the conditional VAE: the VAE's ELBO on rows that carry their covariates.

Before training, each split's rows get the model's design appended (``CVAE.inputs``:
one-hot label / batch, standardised continuous covariates), so the index batches, their DDP
shards, a resumed run's batches, validation and every command that reads a split hand the
model its covariates with its rows.
"""

from pathlib import Path

import torch

from ..models.cvae import CVAE
from ..errors import DataError
from ..sparse import is_sparse
from ..streaming import AppendedRows, stats_rows
from .base import check_likelihood, register_plan
from .batches import IndexBatchSampler, RowBatches, index_loader, seeded_generator, training_rows
from .vae import ELBOPlan


class ConditionedRowBatches(RowBatches):
    """Rows with their design appended; dynamic binarization draws the data columns only."""

    def __init__(self, x, data_dim: int, dynamic_binarize: bool = False):
        super().__init__(x, None, dynamic_binarize)
        self.data_dim = int(data_dim)

    def rows(self, idx, seed):
        if not self.dynamic_binarize:
            return super().rows(idx, seed)
        self.dynamic_binarize = False
        try:
            xb = super().rows(idx, seed)
        finally:
            self.dynamic_binarize = True
        d = self.data_dim
        return torch.cat([torch.bernoulli(xb[:, :d], generator=seeded_generator(seed)), xb[:, d:]], 1)


@register_plan(CVAE)
class CVAEPlan(ELBOPlan):
    """The ELBO of q(z|x,c) and p(x|z,c) (``train.elbo``), c carried with each row."""

    def check_data(self, data):
        m = self.model
        for name, split in data.splits():
            if m.cond_dim and split.x.shape[1] == m.data_dim + m.cond_dim:
                continue  # rows conditioned by an earlier run on the same data
            if split.x.shape[1] != m.data_dim:
                raise DataError(f"the {name} split has {split.x.shape[1]} columns; the model expects {m.data_dim}")
            check_likelihood(m.likelihood, split.x, f"the {name} split", split.rows)
            m.split_design(split)  # DataError when a covariate is missing or unknown

    def setup(self, data):
        if data.train.x.shape[1] == self.model.data_dim:  # the likelihood's statistics from the data columns
            super().setup(data)
        else:
            self.model.num_data = len(data.train)
            x, d = data.train.x, self.model.data_dim
            if isinstance(x, AppendedRows):
                self.model.likelihood.fit_data(stats_rows(x.rows))
            else:
                self.model.likelihood.fit_data(x.columns(torch.arange(d)) if is_sparse(x) else x[:, :d])
            if self.cfg.train.batch_size is None:
                self.cfg.train.batch_size = self.default_batch_size(len(data.train))
        for _, split in data.splits():
            split.x = self.model.inputs(split)

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        x, order = training_rows(data.train.x, data.stream, world_size)  # rows on disk: in shuffled chunks
        sampler = IndexBatchSampler(len(data.train), self.cfg.train.batch_size, seed, rank, world_size, order=order)
        rows = ConditionedRowBatches(x, self.model.data_dim, data.binarize == "dynamic")
        return index_loader(rows, sampler)

    def extra_plots(self, data, run_dir):
        """Images conditioned on the label: ``conditional_samples.png``, one row per class."""
        m = self.model
        if data.image_shape is None or not any(t.kind == "label" for t in m.terms):
            return
        from ..plots import image_grid

        label = next(t for t in m.terms if t.kind == "label")
        n = 8
        torch.manual_seed(0)
        x = torch.cat([m.sample(n, covariates={"label": k}).cpu() for k in range(label.size)])
        image_grid(
            x, data.image_shape, Path(run_dir) / "conditional_samples.png", ncol=n, title="row k: samples of class k"
        )
