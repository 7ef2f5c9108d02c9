"""Training the hierarchical VAE: the VAE's plan (``train.elbo``, index batches) on its Pyro program."""

from ..models.hvae import HVAE
from .base import register_plan
from .vae import ELBOPlan


@register_plan(HVAE)
class HVAEPlan(ELBOPlan):
    """The objective ``train.elbo`` names over every z site of the ladder (the KL of each layer)."""
