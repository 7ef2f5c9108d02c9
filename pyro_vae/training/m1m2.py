"""Training M1+M2 in two stages within one run (one Trainer, one checkpoint stream).

Epochs 1..``model.m1_epochs`` (null: about :data:`M1_STEPS` steps): M1's ELBO (``TraceMeanField_ELBO`` or ``Trace_ELBO`` on
``m1_model`` / ``m1_guide``) on minibatches of all training rows. The following
``train.epochs`` epochs: M2's semi-supervised objective (the :data:`~pyro_vae.training.ssvae.LOSS_TERMS`
of :class:`~pyro_vae.training.ssvae.SemiSupervisedPlan`) on M1's code means mu1(x), without gradient
(M1 held fixed), plus the codes' spread (``_spread``): together the whole program's ELBO, whose guide
reads the code mean (:mod:`pyro_vae.models.m1m2`), in closed form over z1. The stage of an epoch is a function
of the epoch number (the batch sampler's), so a resumed run continues in the right stage.

Validation: ``loss`` is M1's -ELBO during the first stage and the whole model's -ELBO after;
``accuracy`` (q(y|z1) on E[q(z1|x)]) selects the kept checkpoint, as for M2.
"""
import math
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.m1m2 import M1M2, m2_config
from .base import TrainingPlan, make_elbo, register_plan
from .batches import RowBatches, SemiSupervisedBatchSampler, _generator, index_loader
from .ssvae import SemiSupervisedPlan, check_labels


#: ``model.m1_epochs: null`` trains M1 for about this many steps (whole epochs, at least one)
M1_STEPS = 8000


class StagedBatchSampler(SemiSupervisedBatchSampler):
    """Semi-supervised steps (``{"u", "l", "seed"}``) from epoch ``first_epochs`` on; before that
    the epoch's permutation of all rows (labelled and unlabelled) cut into the same number of
    steps (``{"rows", "seed"}``), so every epoch has the same length."""

    def __init__(self, unlabelled, labelled, batch_size, labelled_batch_size, first_epochs: int, seed=0,
                 rank=0, world_size=1):
        super().__init__(unlabelled, labelled, batch_size, labelled_batch_size, seed, rank, world_size)
        self.first_epochs = int(first_epochs)

    def __iter__(self):
        if self.epoch >= self.first_epochs:
            yield from super().__iter__()
            return
        rows = torch.cat([self.u, self.l])
        order = rows[torch.randperm(len(rows), generator=_generator(self.seed, self.epoch, 1))]
        steps = len(self.bounds)
        cuts = [round(i * len(rows) / steps) for i in range(steps + 1)]
        for step in range(self._first_step(), steps):
            yield {"rows": order[cuts[step]:cuts[step + 1]][self.rank::self.world_size],
                   "seed": hash((self.seed, self.epoch, step))}


@register_plan(M1M2)
class M1M2Plan(TrainingPlan):
    """M1's ELBO for ``model.m1_epochs`` epochs, then M2's objective on M1's codes for ``train.epochs``."""

    selection = ("accuracy", "max")

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        t = cfg.train
        if t.early_stopping_patience is not None:
            raise ConfigError("model=m1m2 trains its stages for fixed epochs (model.m1_epochs, train.epochs); "
                              "set train.early_stopping_patience=null")
        self.m1_loss = make_elbo(t)(model.m1_model, model.m1_guide)
        self.m2_plan = SemiSupervisedPlan(model.m2, m2_config(cfg))
        self.stage = 2  # of the last training step; a trained model is evaluated as a whole

    def epochs(self):
        return int(self.cfg.model.m1_epochs) + int(self.cfg.train.epochs)

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
        sampler = StagedBatchSampler(rows[y < 0], rows[y >= 0], self.cfg.train.batch_size,
                                     self.m2_plan.labelled_batch_size(), self.cfg.model.m1_epochs, seed, rank,
                                     world_size)
        return index_loader(RowBatches(data.train.x, y, data.binarize == "dynamic"), sampler)

    def loss(self, batch):
        if isinstance(batch, dict):  # the second stage: M2 on M1's codes q(z1|x)
            self.stage = 2
            (mu_u, var_u), (mu_l, var_l) = self._codes(batch["xu"]), self._codes(batch["xl"])
            loss = self.m2_plan.loss({"xu": mu_u, "xl": mu_l, "yl": batch["yl"]})
            return loss + self._spread(var_u, self.m2_plan.num_unlabelled) + self._spread(var_l, self.m2_plan.num_labelled)
        self.stage = 1
        return self.m1_loss(batch[0] if isinstance(batch, (tuple, list)) else batch)

    @torch.no_grad()
    def _codes(self, x):
        """Mean and variance of q(z1|x) (M1 is fixed in the second stage)."""
        loc, scale = self.model.encoder(x)
        return loc, scale.float() ** 2

    def _spread(self, var, count):
        """sum_n sum_d var_nd / (2 s_d^2), scaled to ``count`` rows: with M2's per-code scale s, what
        E_q(z1|x)[-log N(z1; m, s)] adds to -log N(E[z1]; m, s). With it M2 fits the codes' spread too,
        and s cannot shrink below the posterior's own width (without it s collapses to 0)."""
        if not var.shape[0]:
            return var.new_zeros(())
        _, s = self.model.m2.likelihood._loc_scale(var[:1])
        return (var / (2 * s.float() ** 2)).sum() * (count / var.shape[0])

    def batch_size_of(self, batch):
        if isinstance(batch, dict):
            return self.m2_plan.batch_size_of(batch)
        return (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]

    @torch.no_grad()
    def validation_sums(self, x, y):
        elbo = self.model.m1_elbo(x) if self.stage == 1 else self.model.elbo(x)
        known = y >= 0
        return {"loss": -elbo.sum(), "count": torch.tensor(float(x.shape[0]), device=x.device),
                "correct": (self.model.predict(x)[known] == y[known]).sum().float(), "known": known.sum().float()}

    def selection_for(self, split):
        return self.m2_plan.selection_for(split)

    def metrics(self, sums):
        return self.m2_plan.metrics(sums)

    @torch.no_grad()
    def extra_plots(self, data, run_dir):
        from ..plots import confusion_matrix_plot, image_grid

        m, test, run_dir = self.model, data.test, Path(run_dir)
        if test.y is not None and bool((test.y >= 0).any()):
            mask = test.y >= 0
            confusion_matrix_plot(test.y[mask].numpy(), m.predict(test.x[mask].to(m.device)).cpu().numpy(),
                                  run_dir / "confusion_matrix.png", data.class_names)
        if data.image_shape is not None:
            torch.manual_seed(0)
            c, n = m.num_classes, 10
            y = torch.arange(c, device=m.device).repeat_interleave(n)
            names = [data.class_names[k] if data.class_names else str(k) for k in range(c)]
            image_grid(m.sample(c * n, y=y).cpu(), data.image_shape, run_dir / "conditional_generation.png",
                       ncol=n, title="rows: class y; samples through both decoders", row_labels=names)
