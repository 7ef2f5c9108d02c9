"""Stacked semi-supervised VAE "M1+M2" (Kingma, Rezende, Mohamed & Welling 2014, section 3.2).

M1 is a VAE (:class:`~pyro_vae.models.vae.VAE`: any registered prior and likelihood)
learnt on all inputs; M2 (:class:`~pyro_vae.models.ssvae.SSVAE`) is then learnt on M1's
posterior codes z1 instead of the inputs, with a Gaussian likelihood. The whole
generative model (``model``)::

    y_n ~ Categorical(pi),  z2_n ~ N(0, I)                       M2's priors
    z1_n ~ Normal(p(z1 | z2_n, y_n))                             M2's decoder, Gaussian
    x_n ~ p(x | decoder(z1_n))                                   M1's decoder and likelihood

and its variational posterior (``guide``)::

    z1_n ~ q(z1 | x_n) = N(mu1(x_n), s1(x_n))                    M1's encoder
    y_n ~ q(y | mu1(x_n))  (enumerated)                          M2's classifier, on the code mean
    z2_n ~ q(z2 | mu1(x_n), y_n)                                 M2's encoder, on the code mean

The model holds M1 (``m1``, a :class:`~pyro_vae.models.vae.VAE` on x) and M2 (``m2``, an
:class:`~pyro_vae.models.ssvae.SSVAE` on z1) and delegates to them. Training is in two stages
(:class:`pyro_vae.training.M1M2Plan`): ``model.m1_epochs`` epochs of M1's own ELBO (z1 ~ its prior,
``m1.model`` / ``m1.guide``), then ``train.epochs`` epochs of M2's
semi-supervised objective on M1's code means mu1(x), M1 held fixed. With M2's guide reading the
code mean, the z1 sample enters the ELBO only through log p(z1|z2,y), whose expectation under
q(z1|x) is M2's Gaussian log-density at mu1(x) minus sum_d s1_d^2 / (2 s_d^2) (s: M2's scale per
code): the second stage maximises exactly this program's ELBO, M1's terms being fixed.
``encode`` gives M1's code z1 (``model.z1_dim``); :meth:`M1M2.encode_z2` gives M2's z2.
"""

from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import pyro
import pyro.distributions as dist
from omegaconf import OmegaConf
from pyro import poutine

from ..errors import ConfigError
from ..networks import activation_of
from ..registry import option
from ..pyromodule import LocalPyroModule, pyro_program
from .base import MODELS, Classifier, DataInfo, LatentPaths, LatentVariableModel
from .ssvae import SSVAE, SSVAEConfig
from .vae import VAE


@dataclass
class M1M2Config:
    """``model: m1m2`` keys: the stages' epochs, the code sizes and M2 (on the codes); M1 is
    ``encoder``, ``decoder``, ``prior`` and ``likelihood`` with ``model.z1_dim`` (not ``latent_dim``)."""

    m1_epochs: Optional[int] = option(
        None,
        "epochs of M1 (the VAE, on all inputs) before M2 trains on its "
        "codes for train.epochs; null = enough for about 8000 steps",
    )
    z1_dim: int = option(50, "M1's code size (z1, what M2 sees); replaces latent_dim")
    z2_dim: int = option(50, "M2's latent size (z2)")
    m2_hidden: List[int] = option(help="M2's q(z2|z1,y) and p(z1|z2,y): hidden layer sizes", factory=lambda: [500])
    classifier_hidden: List[int] = option(help="q(y|z1): hidden layer sizes", factory=lambda: [500])
    classifier_dropout: float = option(0.5, "q(y|z1): dropout after each hidden layer, training only")

    @staticmethod
    def check(c) -> None:
        if c.m1_epochs is not None and c.m1_epochs < 1:
            raise ConfigError(f"model.m1_epochs must be at least 1 (got {c.m1_epochs})")
        if c.z1_dim < 1 or c.z2_dim < 1:
            raise ConfigError(f"model.z1_dim and model.z2_dim must be at least 1 (got {c.z1_dim}, {c.z2_dim})")
        if not 0 <= c.classifier_dropout < 1:
            raise ConfigError(f"model.classifier_dropout must be in [0, 1) (got {c.classifier_dropout})")


def m1_networks(cfg) -> dict:
    """M1's ``encoder`` / ``decoder`` types: ``auto`` means the MLP for M1, also on images (the choice is
    measured in benchmarks/RESULTS.md, "M1+M2 with the convolutional M1"); ``resnet`` can be asked for."""
    return {key: {"type": "mlp"} for key in ("encoder", "decoder") if cfg[key].type == "auto"}


def m2_model_config(cfg):
    """The ``model: ssvae`` config that builds M2 inside a ``model: m1m2`` config: an MLP q(y|z1), a
    Gaussian likelihood (one learned scale per code dimension) and a N(0, I) prior."""
    m = cfg.model
    ssvae = dict(
        asdict(SSVAEConfig()),
        name="ssvae",
        classifier_type="mlp",
        classifier_hidden=list(m.classifier_hidden),
        classifier_dropout=float(m.classifier_dropout),
        classifier_activation="relu",
    )
    net = {"type": "mlp", "hidden": list(m.m2_hidden), "activation": activation_of(cfg.encoder, "mlp")}
    return OmegaConf.create(
        {
            "model": ssvae,
            "latent_dim": int(m.z2_dim),
            "encoder": net,
            "decoder": net,
            "prior": {"name": "normal"},
            "likelihood": {"name": "gaussian", "scale": "per_feature"},
        }
    )


def _m1_keys_at_top_level(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: M1's weights are saved without the ``m1.`` in their names
    (``encoder.*``, ``decoder.*``, ``prior.*``, ``likelihood.*``), M2's under ``m2.*``; the order is kept."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    for key in keys:
        value = state_dict.pop(key)
        state_dict[prefix + key[len(prefix) + 3 :] if key.startswith(prefix + "m1.") else key] = value


def _m1_keys_under_m1(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """load_state_dict pre-hook, the inverse of :func:`_m1_keys_at_top_level`: every key outside ``m2.`` is M1's."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "m2.")]:
        state_dict[prefix + "m1." + key[len(prefix) :]] = state_dict.pop(key)


def _m1_attribute(name: str, doc: str, settable: bool = False) -> property:
    """A property of M1M2 that reads (and with ``settable`` writes) ``self.m1.<name>``."""
    setter = (lambda self, value: setattr(self.m1, name, value)) if settable else None
    return property(lambda self: getattr(self.m1, name), setter, doc=doc)


@MODELS.register("m1m2", config=M1M2Config)
class M1M2(LatentVariableModel, Classifier, LatentPaths):
    """M1+M2: a VAE on x (M1: encoder, decoder, prior, likelihood; code z1) with M2 on its codes.

    The parts are ``m1`` (:class:`VAE`) and ``m2`` (:class:`SSVAE`). ``encoder``, ``decoder``, ``prior`` and ``likelihood`` are M1's; ``beta`` and ``num_data`` are
    M1's too (the KL weight and plate size of both M1's program and the whole one). ``model.pt``
    stores M1's weights under their own names (``encoder.*``, ...) and M2's under ``m2.*``."""

    encoder = _m1_attribute("encoder", "M1's q(z1|x) network")
    decoder = _m1_attribute("decoder", "M1's p(x|z1) network")
    prior = _m1_attribute("prior", "M1's prior p(z1), what M1 alone learns with")
    likelihood = _m1_attribute("likelihood", "M1's likelihood p(x|z1)")
    beta = _m1_attribute("beta", "KL weight of the continuous sites (z1 of M1, z2 of the whole program)", True)
    num_data = _m1_attribute("num_data", "plate size: the training-set size (None: the minibatch)", True)

    def __init__(self, m1: VAE, m2: SSVAE):
        LocalPyroModule.__init__(self)  # no parts of its own (LatentVariableModel's): they are m1's and m2's
        self.m1 = m1
        self.m2 = m2
        self.latent_dim, self.data_dim, self.image_shape = m1.latent_dim, m1.data_dim, m1.image_shape
        self.num_classes = m2.num_classes
        self.register_state_dict_post_hook(_m1_keys_at_top_level)
        self.register_load_state_dict_pre_hook(_m1_keys_under_m1)

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "M1M2":
        z1 = int(cfg.model.z1_dim)
        m1 = VAE.from_config(OmegaConf.merge(cfg, {"latent_dim": z1}, m1_networks(cfg)), info)
        m2 = SSVAE.from_config(m2_model_config(cfg), DataInfo(z1, None, info.num_classes, info.num_data))
        return cls(m1, m2)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """M1's codes of ``x``, what M2 learns from and classifies: the means E[q(z1|x)]."""
        return self.m1.encoder(x)[0]

    # ---- the whole model as one Pyro program ----------------------------------------------
    def _plate(self, x):
        n = x.shape[0]
        return pyro.plate("data", self.num_data or n, subsample=torch.arange(n, device=x.device))

    @pyro_program
    def model(self, x: torch.Tensor):
        """p(x, y, z1, z2) = p(y) p(z2) p(z1|z2,y) p(x|z1), observed at ``x``; y is enumerated."""
        m1, m2 = self.m1, self.m2
        with self._plate(x):
            y = pyro.sample("y", dist.Categorical(logits=m2.class_logits))
            with poutine.scale(scale=self.beta):
                z2 = pyro.sample("z2", m2.prior())
            z1 = pyro.sample("z1", m2.likelihood(m2.decoder(z2, y)))
            pyro.sample("x", m1.likelihood(m1.decoder(z1), x), obs=x)

    @pyro_program
    def guide(self, x: torch.Tensor):
        """q(z1|x) q(y|mu1(x)) q(z2|mu1(x),y), y enumerated in parallel; mu1(x) = E[q(z1|x)]."""
        m2 = self.m2
        with self._plate(x):
            loc, scale = self.m1.encoder(x)
            pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            y = pyro.sample("y", dist.Categorical(logits=m2.classifier(loc).float()), infer={"enumerate": "parallel"})
            loc2, scale2 = m2.q_z_given_y(loc, y)
            with poutine.scale(scale=self.beta):
                pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))

    # ---- the user API -----------------------------------------------------------------
    def q_z(self, x: torch.Tensor):
        """M1's q(z1|x), with gradients."""
        return self.m1.q_z(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor):
        """Mean and scale of M1's q(z1|x): the code z1."""
        return self.m1.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z1] under M1's likelihood."""
        return self.m1.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """M1's reconstruction: E[x|z1] at the mean of q(z1|x)."""
        return self.m1.reconstruct(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|z1) at z1 = the mean of q(z1|x): class probabilities, rows sum to 1."""
        return self.m2.predict_proba(self.codes(x))

    @torch.no_grad()
    def encode_z2(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """Mean and scale of M2's q(z2|z1,y) at z1 = E[q(z1|x)], y the predicted label when not given."""
        return self.m2.encode(self.codes(x), y)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """New data through both decoders: y ~ p(y) (or the given labels), z2 ~ p(z2), z1 ~ p(z1|z2,y)
        (its mean with ``mean=True``), then E[x|z1] (``mean=True``) or x ~ p(x|z1)."""
        z1 = self.m2.sample(n, mean=mean, y=y)
        out = self.m1.decoder(z1)
        return self.m1.likelihood.mean(out) if mean else self.m1.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C): log p(x, y=c, z1, z2_c) - log q(z1, z2_c | x, y=c) with one z1 ~ q(z1|x) per
        row shared by the classes and one z2_c ~ q(z2|mu1(x),c) per class (M2's weights on z1)."""
        m1 = self.m1
        loc, scale = m1.encoder(x)
        q = dist.Normal(loc, scale).to_event(1)
        z1 = q.rsample()
        w1 = m1.likelihood(m1.decoder(z1), x).log_prob(x) - q.log_prob(z1)
        return w1[:, None] + self.m2.log_weights(z1, cond=loc)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-datum ELBO of the whole model, y summed out: E_q(z1|x)[log p(x|z1) - log q(z1|x)
        + sum_y q(y|mu1) (log p(z1, y, z2) - log q(z2|mu1,y) - log q(y|mu1))], mu1 = E[q(z1|x)]."""
        m1 = self.m1
        out = []
        for _ in range(num_particles):
            loc, scale = m1.encoder(x)
            q = dist.Normal(loc, scale).to_event(1)
            z1 = q.sample()
            log_px = m1.likelihood(m1.decoder(z1), x).log_prob(x)
            out.append(log_px - q.log_prob(z1) + self.m2.elbo(z1, cond=loc))
        return torch.stack(out).mean(0)
