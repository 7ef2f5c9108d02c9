"""The hierarchical VAE with top-down inference (the ladder VAE, Sonderby et al. 2016; the top-down form of
Kingma et al. 2016 and NVAE, Vahdat & Kautz 2020) as a Pyro program.

L stochastic layers, z_1 next to the data and z_L on top (L = 1 + len(``model.lower_dims``); z_L has
``latent_dim`` dimensions, z_l for l < L has ``model.lower_dims[l-1]``). Write z_{>l} = [z_{l+1}, ..., z_L].

Generative model (``model``), top-down::

    z_L ~ p(z_L)                                       prior from the registry (default N(0, I))
    z_l ~ N(mu_p,l(z_{>l}), sigma_p,l(z_{>l}))         l = L-1 .. 1: p(z_l | z_{>l}), small MLPs
    x   ~ p(x | decoder([z_1, ..., z_L]))              likelihood from the registry

the decoder reading every layer (a skip from each z_l to x, as the top-down path of Kingma et al. 2016
and NVAE carries every layer above to the data). Inference (``guide``) runs in the same top-down order,
after one deterministic bottom-up pass d = body(x) (the encoder network)::

    q(z_L | x)          = N(mu(d), sigma(d))
    q(z_l | z_{>l}, x)  = N(mu_p,l + dmu_l, sigma_p,l * dsigma_l),   (dmu_l, dsigma_l) = g_l(d, z_{>l})

each lower layer's posterior a correction of its prior at the same z_{>l} (NVAE's residual normal,
Vahdat & Kautz 2020, eq. 2), so the guide shares the model's top-down networks. The ELBO::

    E_q[log p(x | z)] - KL(q(z_L|x) || p(z_L)) - sum_{l<L} E_q[KL(q(z_l | z_{>l}, x) || p(z_l | z_{>l}))]

Sample sites: ``z`` is the top layer z_L (what ``encode`` returns: the mean and scale of q(z_L|x), of
size ``latent_dim``, the code every command reads), ``z_1`` .. ``z_{L-1}`` the layers below it. ``beta``
(KL warm-up) scales every z site in model and guide. ``decode(z)`` sets each lower layer to the mean of
p(z_l | z_{>l}) below the top code z.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro import poutine

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..errors import ConfigError
from ..fastmath import softplus as fast_softplus
from ..networks import ACTIVATIONS, MLP, make_body, make_decoder
from ..pyromodule import pyro_program
from ..registry import option
from .base import MODELS, DataInfo, LatentPaths, LatentVariableModel, network_input

_UNIT = math.log(math.e - 1)  # softplus(_UNIT) = 1: a zero correction leaves the prior's scale as it is


@dataclass
class HVAEConfig:
    """``model: hvae`` keys: the layers below the top one and the width of the small networks between them."""

    lower_dims: List[int] = option(
        help="sizes of z_1 .. z_{L-1} (z_1 next to x); the top layer z_L has latent_dim", factory=lambda: [16]
    )
    hidden: int = option(128, "width of the small MLPs between the layers: p(z_l | z_>l) and the posterior's g_l")
    activation: str = option("relu", "activation of those MLPs (softplus relu elu gelu silu tanh ...)")

    @staticmethod
    def check(c) -> None:
        dims = list(c.lower_dims)
        if not dims:
            raise ConfigError("model.lower_dims must list at least one layer below the top one, e.g. [16]")
        if any(d < 1 for d in dims):
            raise ConfigError(f"model.lower_dims sizes must be positive integers (got {dims})")
        if c.activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.activation={c.activation!r} is not valid; choose one of: {', '.join(ACTIVATIONS.names())}"
            )
        if c.hidden < 1:
            raise ConfigError(f"model.hidden must be at least 1 (got {c.hidden})")


def _gaussian(raw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) from a network's raw output: scale = softplus(.) + 1e-5, in float32."""
    loc, s = raw.float().chunk(2, -1)
    return loc, fast_softplus(s) + 1e-5


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a, b] along the last dimension, the leading dimensions broadcast (importance samples in front)."""
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(lead + a.shape[-1:]), b.expand(lead + b.shape[-1:]).to(a.dtype)], -1)


class BottomUp(nn.Module):
    """The deterministic bottom-up pass d = body(x), which every layer's posterior reads, and q(z_L|x)'s head on it."""

    def __init__(self, body: nn.Module, top_dim: int):
        super().__init__()
        self.body = body
        self.out_dim = body.out_dim
        self.head = nn.Linear(body.out_dim, 2 * top_dim)

    def forward(self, x) -> torch.Tensor:
        return self.body(x)

    def top(self, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z_L | x)."""
        return _gaussian(self.head(d))


def above(dims: List[int], level: int) -> int:
    """The size of z_{>level} = [z_{level+1}, ..., z_L]."""
    return sum(dims[level:])


@MODELS.register("hvae", config=HVAEConfig)
class HVAE(LatentVariableModel, LatentPaths):
    """Hierarchical VAE: z_L ~ prior, z_l ~ p(z_l | z_{>l}), x ~ likelihood(decoder(.)); top-down inference."""

    def __init__(
        self,
        encoder: BottomUp,
        decoder: nn.Module,
        top_down: nn.ModuleList,
        posterior: nn.ModuleList,
        prior,
        likelihood,
        dims: List[int],
        image_shape=None,
        num_data: Optional[int] = None,
    ):
        super().__init__(encoder, decoder, prior, likelihood, dims[-1], image_shape, num_data)
        self.top_down = top_down  # top_down[l - 1]: z_{>l} -> (mu_p,l, sigma_p,l), l = 1..L-1
        self.posterior = posterior  # posterior[l - 1]: g_l(d, z_{>l}) -> (dmu_l, dsigma_l), l = 1..L-1
        self.dims = [int(d) for d in dims]

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "HVAE":
        m = cfg.model
        dims = [int(d) for d in m.lower_dims] + [int(cfg.latent_dim)]
        hidden = int(m.hidden)
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        body = network_input(make_body(cfg.encoder, info.data_dim, info.image_shape), likelihood, info)
        encoder = BottomUp(body, dims[-1])
        lower = range(1, len(dims))
        top_down = nn.ModuleList(MLP(above(dims, lv), [hidden], 2 * dims[lv - 1], m.activation) for lv in lower)
        posterior = nn.ModuleList(
            MLP(encoder.out_dim + above(dims, lv), [hidden], 2 * dims[lv - 1], m.activation) for lv in lower
        )
        decoder = make_decoder(cfg.decoder, sum(dims), likelihood.output_size, info.data_dim, info.image_shape)
        return cls(encoder, decoder, top_down, posterior, prior, likelihood, dims, info.image_shape, info.num_data)

    # ---- the pieces -------------------------------------------------------
    def _plate(self, x):
        n = x.shape[0]
        return pyro.plate("data", self.num_data or n, subsample=torch.arange(n, device=x.device))

    def _site(self, level: int) -> str:
        """The sample site of z_level: ``z`` for the top layer, ``z_<level>`` below it."""
        return "z" if level == len(self.dims) else f"z_{level}"

    def _levels(self):
        """l = L-1 .. 1: the layers below the top, in top-down order."""
        return range(len(self.dims) - 1, 0, -1)

    def p_down(self, level: int, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of p(z_level | z_{>level}); ``s`` is z_{>level}."""
        return _gaussian(self.top_down[level - 1](s))

    def q_down(self, level: int, d: torch.Tensor, s: torch.Tensor, loc_p, scale_p) -> Tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z_level | z_{>level}, x): the prior's corrected by g_level(d, z_{>level})."""
        dloc, raw = self.posterior[level - 1](_cat(d, s)).float().chunk(2, -1)
        return loc_p + dloc, scale_p * (fast_softplus(raw + _UNIT) + 1e-5)

    # ---- the Pyro program -------------------------------------------------
    @pyro_program
    def model(self, x: torch.Tensor):
        """p(x, z_1..z_L) = p(z_L) prod_l p(z_l | z_{>l}) p(x | z_1..z_L), observed at ``x``."""
        with self._plate(x):
            with poutine.scale(scale=self.beta):
                s = pyro.sample("z", self.prior())
                for level in self._levels():
                    z = pyro.sample(self._site(level), dist.Normal(*self.p_down(level, s)).to_event(1))
                    s = _cat(z, s)
            pyro.sample("x", self.likelihood(self.decoder(s), x), obs=x)

    @pyro_program
    def guide(self, x: torch.Tensor):
        """q(z_L | x) prod_l q(z_l | z_{>l}, x), top-down, each lower layer a correction of its prior."""
        with self._plate(x):
            d = self.encoder(x)
            with poutine.scale(scale=self.beta):
                s = pyro.sample("z", dist.Normal(*self.encoder.top(d)).to_event(1))
                for level in self._levels():
                    q = self.q_down(level, d, s, *self.p_down(level, s))
                    z = pyro.sample(self._site(level), dist.Normal(*q).to_event(1))
                    s = _cat(z, s)

    def q_z(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.top(self.encoder(x))

    # ---- the user API -----------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of q(z_L|x), the top layer: shapes (batch, latent_dim)."""
        return self.q_z(x)

    def _layers_at_means(self, z: torch.Tensor) -> torch.Tensor:
        """[z_1, ..., z_L] from the top code z_L, each lower z_l at the mean of p(z_l | z_{>l})."""
        s = z
        for level in self._levels():
            s = _cat(self.p_down(level, s)[0], s)
        return s

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for the top code z = z_L, the layers below it at the means of p(z_l | z_{>l})."""
        return self.likelihood.mean(self.decoder(self._layers_at_means(z)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at the means of the top-down posterior (count likelihoods: at the input's total count)."""
        d = self.encoder(x)
        s = self.encoder.top(d)[0]
        for level in self._levels():
            s = _cat(self.q_down(level, d, s, *self.p_down(level, s))[0], s)
        return self.likelihood.mean(self.decoder(s), x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """New data: z_L ~ p(z_L), z_l ~ p(z_l | z_{>l}), then E[x|z] (``mean=True``) or x ~ p(x|z)."""
        s = self.prior().sample((n,))
        for level in self._levels():
            s = _cat(dist.Normal(*self.p_down(level, s)).sample(), s)
        out = self.decoder(s)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z_1..z_L) - log q(z_1..z_L | x) for one draw per row: shape (batch, 1). Unscaled."""
        d = self.encoder(x)
        q = dist.Normal(*self.encoder.top(d)).to_event(1)
        z = q.rsample()
        w = self.prior().log_prob(z) - q.log_prob(z)
        s = z
        for level in self._levels():
            p = dist.Normal(*self.p_down(level, s)).to_event(1)
            q = dist.Normal(*self.q_down(level, d, s, p.base_dist.loc, p.base_dist.scale)).to_event(1)
            z = q.rsample()
            w = w + p.log_prob(z) - q.log_prob(z)
            s = _cat(z, s)
        w = w + self.likelihood(self.decoder(s), x).log_prob(x)
        return w[:, None]

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-datum ELBO estimate (nats), shape (batch,); averaged over ``num_particles``."""
        return torch.stack([self.log_weights(x)[:, 0] for _ in range(num_particles)]).mean(0)
