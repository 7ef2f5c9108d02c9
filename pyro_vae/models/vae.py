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
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.nn import PyroModule

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..networks import GaussianEncoder, make_body, make_decoder
from . import MODELS


@dataclass
class DataInfo:
    """What a model needs to know about its data to be rebuilt from a config."""

    data_dim: int
    image_shape: Optional[Tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    num_data: Optional[int] = None

    def to_dict(self):
        return {
            "data_dim": self.data_dim,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "num_classes": self.num_classes,
            "num_data": self.num_data,
        }

    @classmethod
    def from_dict(cls, d):
        shape = d.get("image_shape")
        return cls(d["data_dim"], tuple(shape) if shape else None, d.get("num_classes"), d.get("num_data"))


@MODELS.register("vae")
class VAE(PyroModule):
    """Variational autoencoder: ``model(x)`` and ``guide(x)`` plus the methods users expect."""

    def __init__(self, encoder: GaussianEncoder, decoder: torch.nn.Module, prior, likelihood,
                 latent_dim: int, image_shape=None, num_data: Optional[int] = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.data_dim = likelihood.data_dim
        self.image_shape = image_shape
        self.num_data = num_data  # plate size; None = the minibatch is the whole data set
        self.beta = 1.0  # KL weight (warm-up)
        prior.attach(self)

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "VAE":
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        body = make_body(cfg.encoder, info.data_dim, info.image_shape)
        encoder = GaussianEncoder(body, cfg.latent_dim)
        decoder = make_decoder(cfg.decoder, cfg.latent_dim, likelihood.output_size, info.data_dim, info.image_shape)
        return cls(encoder, decoder, prior, likelihood, cfg.latent_dim, info.image_shape, info.num_data)

    # ---- the Pyro program -------------------------------------------------
    def _plate(self, x):
        n = x.shape[0]
        size = self.num_data or n
        return pyro.plate("data", size, subsample=torch.arange(n, device=x.device))

    def model(self, x: torch.Tensor):
        """p(x, z) = p(z) p(x|z), observed at ``x`` (shape (batch, data_dim))."""
        with self._pyro_context, self._plate(x):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor):
        """q(z|x) = Normal(loc(x), scale(x))."""
        # entering the module's Pyro context (as PyroModule.__call__ does) makes the networks'
        # parameters visible as param sites, so a plain SVI + pyro.optim loop finds them too
        with self._pyro_context, self._plate(x):
            loc, scale = self.encoder(x)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- the user API -----------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and scale of q(z|x): the latent code (dimensionality reduction)."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] under the likelihood."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each input."""
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """New data: z ~ p(z), then E[x|z] (``mean=True``) or x ~ p(x|z)."""
        z = self.prior().sample((n,))
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z) - log q(z|x) for one z ~ q(z|x) per row: shape (batch,). Unscaled."""
        loc, scale = self.encoder(x)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        return self.likelihood(self.decoder(z)).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-datum ELBO estimate (nats), shape (batch,); averaged over ``num_particles``."""
        return torch.stack([self.log_weights(x) for _ in range(num_particles)]).mean(0)

    # ---- training hooks used by pyro_vae.train (any model type provides these) -----
    def make_loss(self, train_cfg) -> torch.nn.Module:
        """The ELBO as a torch module: ``Trace_ELBO(...)(model, guide)``; call it on a batch."""
        from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

        if train_cfg.elbo == "meanfield":
            if not self.prior.analytic_kl:
                from ..errors import ConfigError

                raise ConfigError(
                    f"train.elbo=meanfield needs an analytic KL, which prior {self.prior.registry_name!r} "
                    "does not have; use train.elbo=trace"
                )
            elbo = TraceMeanField_ELBO(num_particles=train_cfg.num_particles, vectorize_particles=False)
        else:
            elbo = Trace_ELBO(num_particles=train_cfg.num_particles)
        return elbo(self.model, self.guide)

    def train_batches(self, data, train_cfg, seed: int = 0):
        from ..data import IndexBatches

        self.num_data = len(data.train)
        return IndexBatches(data.train.x, train_cfg.batch_size, shuffle=True,
                            dynamic_binarize=data.binarize == "dynamic", seed=seed)

    def check_data(self, data) -> None:
        """Raise DataError (naming rows and a fix) if any split does not fit the likelihood."""
        for split_name in ("train", "val", "test"):
            split = getattr(data, split_name)
            if split is not None:
                self.likelihood.check_data(split.x, where=f"the {split_name} split")

    @torch.no_grad()
    def validation_metrics(self, split, batch_size: int = 2000) -> dict:
        """Mean negative ELBO per datum (nats) on ``split``: the model-selection score."""
        device = next(self.parameters()).device
        total = 0.0
        for i in range(0, len(split), batch_size):
            total += float(-self.elbo(split.x[i:i + batch_size].to(device)).sum())
        return {"loss": total / max(1, len(split))}

    selection = ("loss", "min")  # which validation metric picks the kept checkpoint

    # ---- generation helpers ---------------------------------------------------
    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """Decode the straight line between the posterior means of x_a and x_b: (steps, data_dim)."""
        z_a, z_b = self.encode(x_a[None])[0], self.encode(x_b[None])[0]
        t = torch.linspace(0, 1, steps, device=z_a.device)[:, None]
        return self.decode((1 - t) * z_a + t * z_b)

    @torch.no_grad()
    def traverse(self, x: Optional[torch.Tensor] = None, dims=None, values=None) -> torch.Tensor:
        """Vary one latent dimension at a time around the code of x (or 0): (len(dims)*len(values), data_dim)."""
        z0 = self.encode(x[None])[0][0] if x is not None else torch.zeros(self.latent_dim)
        dims = list(range(min(self.latent_dim, 10))) if dims is None else list(dims)
        values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values, dtype=torch.float32)
        z = z0.repeat(len(dims) * len(values), 1)
        for i, d in enumerate(dims):
            z[i * len(values):(i + 1) * len(values), d] = values
        return self.decode(z)
