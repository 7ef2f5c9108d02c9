"""Training M1+M2 in two stages within one run (one Trainer, one checkpoint stream).

Epochs 1..``model.m1_epochs`` (null: about :data:`M1_STEPS` steps): M1's objective (``train.elbo``,
:mod:`~pyro_vae.training.objectives`, on ``model.m1.model`` / ``model.m1.guide``) on minibatches of all
training rows. The following
``train.epochs`` epochs: M2's semi-supervised objective (the :data:`~pyro_vae.training.ssvae.LOSS_TERMS`
of :class:`~pyro_vae.training.ssvae.SemiSupervisedPlan`) on M1's code means mu1(x), without gradient
(M1 held fixed), plus the codes' spread (``_spread``): together the whole program's ELBO, whose guide
reads the code mean (:mod:`pyro_vae.models.m1m2`), in closed form over z1. The stage of an epoch is a function
of the epoch number (the batch sampler's, :meth:`M1M2Plan.stage`), so a resumed run continues in the right stage.

Validation: ``loss`` is M1's -ELBO during the first stage and the whole model's -ELBO after;
``accuracy`` (q(y|z1) on E[q(z1|x)]) selects the kept checkpoint, as for M2.
"""

import math
from dataclasses import asdict, dataclass

import torch
from omegaconf import OmegaConf

from ..errors import ConfigError
from ..models.m1m2 import M1M2, m2_model_config
from ..registry import option
from .base import TrainingPlan, register_plan
from .batches import RowBatches, SemiSupervisedBatchSampler, index_loader, seeded_generator
from .objectives import make_elbo
from .ssvae import SemiSupervisedPlan, SSVAEObjective, check_labels


#: ``model.m1_epochs: null`` trains M1 for about this many steps (whole epochs, at least one)
M1_STEPS = 8000


@dataclass
class M1M2Objective:
    """``model: m1m2`` keys of M2's objective on the codes."""

    aux_loss_multiplier: float = option(30.0, "alpha of M2's auxiliary classification term, scaled to the data")

    @staticmethod
    def check(c) -> None:
        if c.aux_loss_multiplier < 0:
            raise ConfigError(f"model.aux_loss_multiplier must be >= 0 (got {c.aux_loss_multiplier})")


def m2_plan_config(cfg):
    """The config of M2's plan (:class:`~pyro_vae.training.ssvae.SemiSupervisedPlan`) inside a
    ``model: m1m2`` run: the config that builds M2, its objective on codes (no image shifts, no
    pseudo-labels) and the run's ``train`` section, whose objective keys are M1's: M2's labelled term
    keeps meanfield for ``train.elbo=iwae|renyi`` and the unweighted KL."""
    objective = dict(
        asdict(SSVAEObjective()),
        augment_shift=0,
        pseudo_label_weight=0.0,
        aux_loss_multiplier=float(cfg.model.aux_loss_multiplier),
    )
    train = dict(OmegaConf.to_container(cfg.train), kl_weight=1.0, capacity_max=None, capacity_epochs=None)
    if train.get("compile") == "jit":  # M2's objective has no compiled step: the first stage alone compiles
        train["compile"] = "auto"
    if train["elbo"] not in ("trace", "meanfield"):
        train["elbo"] = "meanfield"
    return OmegaConf.merge(m2_model_config(cfg), {"model": objective, "train": train})


class StagedBatchSampler(SemiSupervisedBatchSampler):
    """Semi-supervised steps (``{"u", "l", "seed"}``) from epoch ``first_epochs`` on; before that
    the epoch's permutation of all rows (labelled and unlabelled) cut into the same number of
    steps (``{"rows", "seed"}``), so every epoch has the same length."""

    def __init__(
        self, unlabelled, labelled, batch_size, labelled_batch_size, first_epochs: int, seed=0, rank=0, world_size=1
    ):
        super().__init__(unlabelled, labelled, batch_size, labelled_batch_size, seed, rank, world_size)
        self.first_epochs = int(first_epochs)

    @property
    def stage(self) -> int:
        """The stage of this sampler's epoch: 1 (all rows, M1) before ``first_epochs``, then 2 (M2)."""
        return 1 if self.epoch < self.first_epochs else 2

    def __iter__(self):
        if self.stage == 2:
            yield from super().__iter__()
            return
        rows = torch.cat([self.u, self.l])
        order = rows[torch.randperm(len(rows), generator=seeded_generator(self.seed, self.epoch, 1))]
        steps = len(self.bounds)
        cuts = [round(i * len(rows) / steps) for i in range(steps + 1)]
        for step in range(self._first_step(), steps):
            yield {
                "rows": order[cuts[step] : cuts[step + 1]][self.rank :: self.world_size],
                "seed": hash((self.seed, self.epoch, step)),
            }


@register_plan(M1M2, config=M1M2Objective)
class M1M2Plan(TrainingPlan):
    """M1's ELBO for ``model.m1_epochs`` epochs, then M2's objective on M1's codes for ``train.epochs``."""

    selection = ("accuracy", "max")
    compiles = True  # the first stage (M1's ELBO); the second runs M2's objective eagerly

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        t = cfg.train
        if t.early_stopping_patience is not None:
            raise ConfigError(
                "model=m1m2 trains its stages for fixed epochs (model.m1_epochs, train.epochs); "
                "set train.early_stopping_patience=null"
            )
        self.objectives = [make_elbo(t)]
        self.m1_loss = self.objectives[0](model.m1.model, model.m1.guide)
        self.m1_step = self.compiled(self.m1_loss)  # as train.compile says
        self.m2_plan = SemiSupervisedPlan(model.m2, m2_plan_config(cfg))
        self.sampler = None  # of the training batches (train_dataloader): its epoch says the stage

    def stage(self) -> int:
        """1 while the training sampler's epoch is one of the first ``model.m1_epochs`` (M1's ELBO),
        2 after (M2 on M1's codes) and without a training loader (a trained model is evaluated whole)."""
        return 2 if self.sampler is None else self.sampler.stage

    def epochs(self):
        return int(self.cfg.model.m1_epochs) + int(self.cfg.train.epochs)

    def capacity_epochs(self):
        """C(t) rises over M1's stage, whose ELBO it holds."""
        return int(self.cfg.model.m1_epochs)

    def check_data(self, data):
        super().check_data(data)
        check_labels(data, self.model.num_classes, "m1m2")

    def setup(self, data):
        super().setup(data)
        self.m2_plan.cfg.train.batch_size = self.cfg.train.batch_size  # one batch size for both stages
        self.m2_plan.setup(data)
        m = self.cfg.model
        if m.m1_epochs is None:  # resolved here and saved with the run's config (resume, config.yaml)
            steps = math.ceil((self.m2_plan.num_unlabelled or self.m2_plan.num_labelled) / self.cfg.train.batch_size)
            m.m1_epochs = max(1, math.ceil(M1_STEPS / steps))

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        y = data.train.y
        rows = torch.arange(len(y))
        self.sampler = StagedBatchSampler(
            rows[y < 0],
            rows[y >= 0],
            self.cfg.train.batch_size,
            self.m2_plan.labelled_batch_size(),
            self.cfg.model.m1_epochs,
            seed,
            rank,
            world_size,
        )
        return index_loader(RowBatches(data.train.x, y, data.binarize == "dynamic"), self.sampler)

    def loss(self, batch):
        return self.m1_stage_loss(batch) if self.stage() == 1 else self.m2_stage_loss(batch)

    def m1_stage_loss(self, batch):
        """The first stage: M1's -ELBO on a batch ``(x, y)`` of all rows (y unused)."""
        return self.m1_step(batch[0])

    def m2_stage_loss(self, batch):
        """The second stage: M2's objective on M1's code means of a semi-supervised batch
        ``{"xu", "xl", "yl"}``, plus the codes' spread."""
        (mu_u, var_u), (mu_l, var_l) = self._codes(batch["xu"]), self._codes(batch["xl"])
        loss = self.m2_plan.loss({"xu": mu_u, "xl": mu_l, "yl": batch["yl"]})
        return loss + self._spread(var_u, self.m2_plan.num_unlabelled) + self._spread(var_l, self.m2_plan.num_labelled)

    @torch.no_grad()
    def _codes(self, x):
        """Mean and variance of q(z1|x) (M1 is fixed in the second stage)."""
        loc, scale = self.model.m1.encoder(x)
        return loc, scale.float() ** 2

    def _spread(self, var, count):
        """sum_n sum_d var_nd / (2 s_d^2), scaled to ``count`` rows: with M2's per-code scale s, what
        E_q(z1|x)[-log N(z1; m, s)] adds to -log N(E[z1]; m, s). With it M2 fits the codes' spread too,
        and s cannot shrink below the posterior's own width (without it s collapses to 0)."""
        if not var.shape[0]:
            return var.new_zeros(())
        s = self.model.m2.likelihood(var[:1]).base_dist.scale  # M2's Gaussian p(z1|z2,y): one scale per code
        return (var / (2 * s.float() ** 2)).sum() * (count / var.shape[0])

    def batch_size_of(self, batch):
        return batch[0].shape[0] if self.stage() == 1 else self.m2_plan.batch_size_of(batch)

    @torch.no_grad()
    def validation_sums(self, x, y):
        elbo = self.model.m1.elbo(x) if self.stage() == 1 else self.model.elbo(x)
        known = y >= 0
        return {
            "loss": -elbo.sum(),
            "count": torch.tensor(float(x.shape[0]), device=x.device),
            "correct": (self.model.predict(x)[known] == y[known]).sum().float(),
            "known": known.sum().float(),
        }

    def selection_for(self, split):
        return self.m2_plan.selection_for(split)

    def metrics(self, sums):
        return self.m2_plan.metrics(sums)

    @torch.no_grad()
    def extra_plots(self, data, run_dir):
        from ..plots import conditional_generation, confusion_matrix_report

        m = self.model
        confusion_matrix_report(m, data, run_dir)
        if data.image_shape is not None:
            torch.manual_seed(0)
            c, n = m.num_classes, 10
            y = torch.arange(c, device=m.device).repeat_interleave(n)
            conditional_generation(
                m.sample(c * n, y=y).cpu(), c, data, run_dir, n, "rows: class y; samples through both decoders"
            )
