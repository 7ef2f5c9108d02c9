"""The training plan: what the engine needs to train one model kind."""

import abc
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, DataError
from ..likelihoods import Likelihood, Mixed
from ..models.base import MODELS, LatentVariableModel
from ..pyromodule import TracedProgram
from ..sparse import is_sparse
from ..streaming import row_chunks, stats_rows
from .batches import IndexBatchSampler, RowBatches, index_loader
from .objectives import KLWeightedELBO, capacity_at, warmup_at

_PLANS: Dict[type, type] = {}

#: ``train.compile``: the training step as Pyro runs it, recorded once per batch shape and replayed, or
#: the second where the model kind has it
COMPILE_MODES = ("none", "jit", "auto")


def register_plan(model_cls: type, config: Optional[type] = None):
    """Class decorator: the plan that trains ``model_cls`` (and its subclasses without a plan of their own).
    ``config``: a dataclass of the keys the plan reads (its objective's), joined to the model kind's
    ``model.*`` keys."""

    def decorator(plan_cls):
        _PLANS[model_cls] = plan_cls
        if config is not None:
            MODELS.add_keys(model_cls.registry_name, config)
        return plan_cls

    return decorator


def plan_for(model: LatentVariableModel, cfg) -> "TrainingPlan":
    """The training plan of ``model``'s kind (the nearest class in its MRO with one)."""
    for cls in type(model).__mro__:
        if cls in _PLANS:
            return _PLANS[cls](model, cfg)
    raise ConfigError(
        f"model kind {type(model).__name__} has no training plan; register one with "
        "@pyro_vae.training.register_plan(YourModel)"
    )


class _RowOfValue:
    """Maps a stored value's position in a sparse matrix to its row (in the user's numbering)."""

    def __init__(self, crow, rows=None):
        self.crow, self.rows = crow, rows

    def __getitem__(self, i):
        r = int(torch.searchsorted(self.crow, torch.as_tensor(int(i), dtype=self.crow.dtype), right=True)) - 1
        return int(self.rows[r]) if self.rows is not None else r


def check_likelihood(likelihood, x, where: str, rows=None) -> None:
    """``likelihood.check_data`` on dense rows, or on a sparse matrix's stored values (and one
    zero when some entries are implicit zeros), the error naming the right row either way; a
    ``mixed`` likelihood's groups each on their own columns."""
    if getattr(x, "on_disk", False) and getattr(x, "sparse", False):  # a sparse file, a chunk of CSR rows at a time
        for chunk, chunk_rows in row_chunks(x, rows, as_read=True):
            check_likelihood(likelihood, chunk, where, chunk_rows)
        return
    if not is_sparse(x):  # a chunk of rows at a time: bounded temporaries, rows on disk read once
        for chunk, chunk_rows in row_chunks(x, rows):
            likelihood.check_data(chunk, where=where, rows=chunk_rows)
        return
    if isinstance(likelihood, Mixed):
        for part, c in zip(likelihood.parts, likelihood.columns):
            check_likelihood(part, x.columns(c), f"{where} (columns {c.tolist()})", rows)
        return
    likelihood.check_data(x.values[:, None], where=where, rows=_RowOfValue(x.crow, rows))
    counts = x.crow[1:] - x.crow[:-1]
    short = (counts < x.shape[1]).nonzero()
    if len(short):  # implicit zeros: they must fit the likelihood too
        first = int(short[0, 0])
        likelihood.check_data(torch.zeros(1, 1), where=where, rows=[int(rows[first]) if rows is not None else first])


class TrainingPlan(abc.ABC):
    """Loss, batches, validation metrics, selection, data checks and extra plots of a model kind.

    ``loss(batch)`` is the minibatch estimate of the full-data objective (a negative ELBO,
    plus any extra terms) that the engine minimises; ``validation_sums`` returns sums over
    a batch that add up across batches and processes, and ``metrics(sums)`` turns them into
    the metrics (``selection`` names the one that picks the kept checkpoint).
    """

    selection: Tuple[str, str] = ("loss", "min")
    #: whether :meth:`compiled` records the kind's loss (``train.compile=jit``); a kind sets it once its
    #: compiled loss is tested equal to the eager one
    compiles: bool = False

    def __init__(self, model: LatentVariableModel, cfg):
        self.model, self.cfg = model, cfg
        self.objectives = []  # the ELBOs of the loss (make_elbo's): the KL schedule sets their capacity
        if getattr(cfg.train, "compile", "none") == "jit" and not self.compiles:
            raise ConfigError(
                f"train.compile=jit: model={type(model).registry_name} has no compiled training step; "
                "use train.compile=auto or none"
            )

    # ---- data ----------------------------------------------------------------
    def check_data(self, data) -> None:
        """Raise DataError (naming rows and a fix) if any split does not fit the likelihood."""
        for name, split in data.splits():
            if split.x.shape[1] != self.model.data_dim:
                raise DataError(
                    f"the {name} split has {split.x.shape[1]} columns; the model expects {self.model.data_dim}"
                )
            check_likelihood(self.model.likelihood, split.x, f"the {name} split", split.rows)

    def setup(self, data) -> None:
        """Called once before training: counts the loss needs (plate sizes) and the likelihood's
        statistics of the training rows (e.g. the median library size of count likelihoods)."""
        self.model.num_data = len(data.train)
        likelihood = self.model.likelihood
        if type(likelihood).fit_data is not Likelihood.fit_data:  # it keeps statistics: rows read for it only then
            likelihood.fit_data(stats_rows(data.train.x))
        if self.cfg.train.batch_size is None:  # resolved here and saved with the run's config
            self.cfg.train.batch_size = self.default_batch_size(len(data.train))

    def default_batch_size(self, rows: int) -> int:
        """``train.batch_size`` when the config leaves it null, for a training set of ``rows`` rows."""
        return 64

    def epochs(self) -> int:
        """How many epochs the engine trains (``train.epochs``; staged kinds add their stages)."""
        return int(self.cfg.train.epochs)

    @abc.abstractmethod
    def train_dataloader(self, data, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        """This process's shard of each epoch's minibatches."""

    def eval_dataloader(self, split, batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Batches of ``(x, y)`` (y = -1 where unknown) over ``split`` in order, sharded."""
        y = split.y if split.y is not None else torch.full((len(split),), -1, dtype=torch.long)
        sampler = IndexBatchSampler(len(split), batch_size, rank=rank, world_size=world_size, shuffle=False)
        return index_loader(RowBatches(split.x, y), sampler)

    # ---- objective -------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, batch) -> torch.Tensor:
        """Minibatch estimate of the full-data loss (nats)."""

    def compiled(self, loss):
        """``loss`` (a function of the batch's tensors that runs the model's Pyro programs) as
        ``train.compile`` says: itself (``none``, or ``auto`` for a kind that does not compile), or a
        :class:`~pyro_vae.pyromodule.TracedProgram`: recorded by ``torch.jit.trace`` once per batch shape
        and replayed, with the warm-up factor ``model.beta`` and the capacity C(t) read at every step."""
        mode = getattr(self.cfg.train, "compile", "none")
        if mode == "none" or not self.compiles:
            return loss
        scalars = [(self.model, "beta")] + [(o, "capacity") for o in self.objectives if isinstance(o, KLWeightedELBO)]
        return TracedProgram(loss, modules=[self.model], scalars=scalars)

    def batch_size_of(self, batch) -> int:
        return batch.shape[0]

    # ---- the KL term's schedule ----------------------------------------------------
    def schedule(self, epochs_done: float) -> None:
        """Before every training step, ``epochs_done`` (fractional) epochs in: the warm-up factor
        ``model.beta`` (``train.kl_warmup_epochs``) and the capacity C(t) (``train.capacity_*``)."""
        t = self.cfg.train
        if t.kl_warmup_epochs:
            self.model.beta = warmup_at(t, epochs_done)
        if t.capacity_max is not None:
            c = capacity_at(t, epochs_done, t.capacity_epochs or self.capacity_epochs())
            for objective in self.objectives:
                if isinstance(objective, KLWeightedELBO):
                    objective.capacity = c

    def capacity_epochs(self) -> int:
        """The epochs over which C(t) rises when ``train.capacity_epochs`` is null: all of them."""
        return self.epochs()

    def schedule_metrics(self) -> Dict[str, float]:
        """The schedule's values for the epoch's row: the capacity C (nats per row) when it is on."""
        caps = [o.capacity for o in self.objectives if isinstance(o, KLWeightedELBO) and o.gamma is not None]
        return {"capacity": float(caps[0])} if caps else {}

    # ---- validation ------------------------------------------------------------
    @torch.no_grad()
    def validation_sums(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Additive sums over a batch: here the negative ELBO and the row count."""
        return {"loss": -self.model.elbo(x).sum(), "count": torch.tensor(float(x.shape[0]), device=x.device)}

    def selection_for(self, split) -> Tuple[str, str]:
        """The (metric, min|max) that picks the kept checkpoint on this validation split."""
        return self.selection

    def metrics(self, sums: Dict[str, float]) -> Dict[str, float]:
        return {"loss": float(sums["loss"]) / max(1.0, float(sums["count"]))}

    @torch.no_grad()
    def evaluate(self, split, batch_size: int = 2000, device: Optional[torch.device] = None) -> Dict[str, float]:
        """The validation metrics of ``split`` in one process (test metrics, ``pyro-vae evaluate``)."""
        device = device or self.model.device
        totals: Dict[str, float] = {}
        for x, y in self.eval_dataloader(split, batch_size):
            for k, v in self.validation_sums(x.to(device), y.to(device)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return self.metrics(totals)

    def extra_plots(self, data, run_dir) -> None:
        """Plots of this model kind beyond the common ones (run directory PNGs)."""
