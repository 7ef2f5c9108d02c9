"""The VAE as a Pyro program, written like the math.

Generative model (``model``)::

    z_n ~ p(z)                      prior from the registry (default N(0, I))
    x_n ~ p(x | decoder(z_n))       likelihood from the registry (default Bernoulli)

Variational posterior (``guide``)::

    z_n ~ q(z | x_n) = Normal(loc(x_n), scale(x_n))

Both run inside ``pyro.plate("data", num_data, subsample=...)`` so a minibatch
loss is scaled to estimate the full-data ELBO. With ``Trace_ELBO`` the loss is
``E_q[-log p(x|z)] + KL(q(z|x) || p(z))``: reconstruction plus KL.
``beta`` (KL warm-up) scales the z sites in model and guide, i.e. the KL term.
The training side (loss module, batches, validation) is :class:`pyro_vae.training.ELBOPlan`.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..networks import GaussianEncoder, make_body, make_decoder
from ..pyromodule import pyro_program
from .base import MODELS, DataInfo, LatentPaths, LatentVariableModel, network_input


@dataclass
class VAEConfig:
    """The VAE has no keys of its own: latent_dim, encoder, decoder, prior and likelihood say it all."""


@MODELS.register("vae", config=VAEConfig)
class VAE(LatentVariableModel, LatentPaths):
    """Variational autoencoder: z ~ prior, x ~ likelihood(decoder(z)); q(z|x) Gaussian."""

    def __init__(
        self,
        encoder: GaussianEncoder,
        decoder: torch.nn.Module,
        prior,
        likelihood,
        latent_dim: int,
        image_shape=None,
        num_data: Optional[int] = None,
    ):
        super().__init__(encoder, decoder, prior, likelihood, latent_dim, image_shape, num_data)

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "VAE":
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        body = network_input(make_body(cfg.encoder, info.data_dim, info.image_shape), likelihood, info)
        encoder = GaussianEncoder(body, cfg.latent_dim)
        decoder = make_decoder(cfg.decoder, cfg.latent_dim, likelihood.output_size, info.data_dim, info.image_shape)
        return cls(encoder, decoder, prior, likelihood, cfg.latent_dim, info.image_shape, info.num_data)

    # ---- the Pyro program -------------------------------------------------
    def _plate(self, x):
        n = x.shape[0]
        size = self.num_data or n
        return pyro.plate("data", size, subsample=torch.arange(n, device=x.device))

    @pyro_program
    def model(self, x: torch.Tensor):
        """p(x, z) = p(z) p(x|z), observed at ``x`` (shape (batch, data_dim))."""
        with self._plate(x):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z), x), obs=x)

    @pyro_program
    def guide(self, x: torch.Tensor):
        """q(z|x) = Normal(loc(x), scale(x))."""
        # pyro_method enters the module's Pyro context, so the networks' parameters are param
        # sites and a plain SVI + pyro.optim loop finds them too
        with self._plate(x):
            loc, scale = self.encoder(x)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def q_z(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    # ---- the user API -----------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and scale of q(z|x): the latent code (dimensionality reduction)."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] under the likelihood (count likelihoods with ``library_size=observed``: at the
        median total count of the training rows)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] at the posterior mean of each input (count likelihoods: at the input's total count)."""
        return self.likelihood.mean(self.decoder(self.encoder(x)[0]), x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """New data: z ~ p(z), then E[x|z] (``mean=True``) or x ~ p(x|z)."""
        z = self.prior().sample((n,))
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z) - log q(z|x) for one z ~ q(z|x) per row: shape (batch, 1). Unscaled."""
        loc, scale = self.encoder(x)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        w = self.likelihood(self.decoder(z), x).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)
        return w[:, None]

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-datum ELBO estimate (nats), shape (batch,); averaged over ``num_particles``."""
        return torch.stack([self.log_weights(x)[:, 0] for _ in range(num_particles)]).mean(0)
