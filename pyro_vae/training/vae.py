"""Training the VAE: the ELBO as a torch module on index-batched rows."""
from ..models.vae import VAE
from .base import TrainingPlan, register_plan
from .batches import IndexBatchSampler, RowBatches, index_loader


@register_plan(VAE)
class ELBOPlan(TrainingPlan):
    """Minimises -ELBO with ``TraceMeanField_ELBO`` (the KL in closed form where torch knows it
    for the prior, a Monte-Carlo estimate otherwise) or ``Trace_ELBO`` (Monte-Carlo KL):
    ``ELBO(...)(model, guide)`` is an ``nn.Module``."""

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

        t = cfg.train
        if t.elbo == "meanfield":
            elbo = TraceMeanField_ELBO(num_particles=t.num_particles, vectorize_particles=False)
        else:
            elbo = Trace_ELBO(num_particles=t.num_particles)
        self.loss_module = elbo(model.model, model.guide)

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        sampler = IndexBatchSampler(len(data.train), self.cfg.train.batch_size, seed, rank, world_size)
        rows = RowBatches(data.train.x, dynamic_binarize=data.binarize == "dynamic")
        return index_loader(rows, sampler)

    def loss(self, batch):
        return self.loss_module(batch)
