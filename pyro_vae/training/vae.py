"""Training the VAE: the ELBO as a torch module on index-batched rows."""

from ..models.vae import VAE
from .base import TrainingPlan, make_elbo, register_plan
from .batches import IndexBatchSampler, RowBatches, index_loader, training_rows


@register_plan(VAE)
class ELBOPlan(TrainingPlan):
    """Minimises -ELBO with the ELBO ``train.elbo`` names (:func:`~pyro_vae.training.base.make_elbo`):
    ``ELBO(...)(model, guide)`` is an ``nn.Module``."""

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.loss_module = make_elbo(cfg.train)(model.model, model.guide)

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        x, order = training_rows(data.train.x, data.stream, world_size)
        sampler = IndexBatchSampler(len(data.train), self.cfg.train.batch_size, seed, rank, world_size, order=order)
        rows = RowBatches(x, dynamic_binarize=data.binarize == "dynamic")
        return index_loader(rows, sampler)

    def loss(self, batch):
        return self.loss_module(batch)
