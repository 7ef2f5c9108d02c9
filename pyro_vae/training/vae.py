"""Training the VAE: the ELBO as a torch module on index-batched rows."""

from ..models.vae import VAE
from .base import TrainingPlan, register_plan
from .batches import IndexBatchSampler, RowBatches, index_loader, training_rows
from .objectives import make_elbo


@register_plan(VAE)
class ELBOPlan(TrainingPlan):
    """Minimises the objective ``train.elbo`` names (:func:`~pyro_vae.training.objectives.make_elbo`: an
    ELBO, the importance weighted or Renyi bound, the KL weighed or held at a capacity):
    ``ELBO(...)(model, guide)`` is an ``nn.Module``, run as ``train.compile`` says."""

    compiles = True

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.objectives = [make_elbo(cfg.train)]
        self.loss_module = self.objectives[0](model.model, model.guide)
        self.step_loss = self.compiled(self.loss_module)

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        x, order = training_rows(data.train.x, data.stream, world_size)
        sampler = IndexBatchSampler(len(data.train), self.cfg.train.batch_size, seed, rank, world_size, order=order)
        rows = RowBatches(x, dynamic_binarize=data.binarize == "dynamic")
        return index_loader(rows, sampler)

    def loss(self, batch):
        return self.step_loss(batch)
