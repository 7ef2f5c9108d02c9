"""Priors p(z): one small PyroModule per prior, registered by name.

A prior is called with no arguments and returns a Pyro distribution whose
``event_shape`` is ``(latent_dim,)`` and whose ``batch_shape`` is ``()``; the
model's ``pyro.plate`` broadcasts it over the data. Learnable priors hold their
parameters as ordinary ``nn.Parameter``s, so they train with the networks.

Register your own from your own module::

    from pyro_vae.priors import Prior, register

    @register("my_prior")
    class MyPrior(Prior):
        "One line shown by `pyro-vae list`."
        def __init__(self, latent_dim, width=1.0):
            super().__init__(latent_dim)
            self.width = width
        def forward(self):
            return dist.Normal(torch.zeros(self.latent_dim), self.width).to_event(1)
"""
import torch
import pyro.distributions as dist
from pyro.nn import PyroModule

from .registry import Registry

PRIORS = Registry("prior")
register = PRIORS.register


class Prior(PyroModule):
    """Base class. Subclasses take ``latent_dim`` plus their own config parameters."""

    context_args = ("latent_dim",)
    #: True when KL(Normal guide || this prior) has a closed form known to torch/Pyro,
    #: so ``train.elbo=meanfield`` (TraceMeanField_ELBO) computes it analytically.
    analytic_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)
        # a buffer that moves with .to(device), so priors build their tensors on the right device
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def attach(self, vae) -> None:
        """Hook called once the VAE is built (e.g. VampPrior needs the encoder)."""

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@register("normal")
class StandardNormal(Prior):
    """Standard Normal N(0, I): the classic VAE prior."""

    analytic_kl = True

    def forward(self):
        loc = self._zero.expand(self.latent_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)
