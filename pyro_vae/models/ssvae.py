"""Semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014), as a Pyro program.

Generative model (``model``)::

    y_n ~ Categorical(pi)                  uniform
    z_n ~ p(z)                             prior from the registry
    x_n ~ p(x | decoder(z_n, y_n))         likelihood from the registry

Variational posterior (``guide``)::

    y_n ~ q(y | x_n) = Categorical(classifier(x_n))      only where y_n is unobserved
    z_n ~ q(z | x_n, y_n) = Normal(encoder(x_n, y_n))

An unobserved label is summed out exactly: the y site is enumerated in parallel
(``infer={"enumerate": "parallel"}``) and ``TraceEnum_ELBO`` computes
``-U(x) = sum_y q(y|x) [-L(x, y)] - H(q(y|x))`` without a Python loop over classes.
The classifier also learns from labelled pairs through the auxiliary term
``alpha * E_labelled[-log q(y|x)]`` (Kingma et al. 2014, eq. 9), which, like the other
terms of the training objective, lives in :mod:`pyro_vae.training.ssvae`.

Speed: the first layers of q(z|x,y) and p(x|z,y) are split into an input part and a label
part. The x part (the large 784xH product) is computed once per example and the label
part is a row lookup added to it, so enumerating C classes costs C small additions.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro import poutine

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..errors import ConfigError, DataError
from ..fastmath import softplus
from ..networks import ACTIVATIONS, MLP, NETWORKS, activation_of, make_activation, make_classifier
from ..pyromodule import pyro_program
from ..registry import option
from .base import MODELS, Classifier, DataInfo, LatentVariableModel, network_input


@dataclass
class SSVAEConfig:
    """``model: ssvae`` keys of the model: q(y|x)'s network (the objective's keys are its plan's,
    :class:`pyro_vae.training.ssvae.SSVAEObjective`)."""

    classifier_hidden: List[int] = option(help="q(y|x): hidden layer sizes", factory=lambda: [500])
    classifier_type: str = option(
        "auto", "q(y|x): network type; auto = conv for images whose sides divide by 4, mlp otherwise"
    )
    classifier_dropout: float = option(0.5, "q(y|x): dropout after each hidden layer, training only")
    classifier_activation: Optional[str] = option("relu", "q(y|x): activation; null = encoder.activation")

    @staticmethod
    def check(c) -> None:
        if c.classifier_type != "auto" and c.classifier_type not in NETWORKS:
            raise ConfigError(
                f"model.classifier_type={c.classifier_type!r} is not valid; "
                f"choose one of: auto, {', '.join(NETWORKS.names())}"
            )
        if c.classifier_activation is not None and c.classifier_activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.classifier_activation={c.classifier_activation!r} is not valid; choose one "
                f"of: {', '.join(ACTIVATIONS.names())} (or null: encoder.activation)"
            )
        if not 0 <= c.classifier_dropout < 1:
            raise ConfigError(f"model.classifier_dropout must be in [0, 1) (got {c.classifier_dropout})")


def classifier_type(m, image_shape) -> str:
    """``model.classifier_type`` with ``auto`` resolved: conv for images whose sides divide by 4."""
    if m.classifier_type != "auto":
        return m.classifier_type
    return "conv" if image_shape is not None and image_shape[1] % 4 == 0 and image_shape[2] % 4 == 0 else "mlp"


class SplitInput(nn.Module):
    """h = act(W_a a + W_y[y] + b) -> MLP: a first layer split into a dense part and a label lookup.

    ``a`` has shape (..., B, A); ``y`` is an integer tensor broadcastable to (..., B).
    The dense part is computed once even when y is enumerated over classes.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden, out_dim: int, activation="softplus"):
        super().__init__()
        hidden = list(hidden) or [out_dim]
        self.first = nn.Linear(in_dim, hidden[0])
        self.label = nn.Embedding(num_classes, hidden[0])
        nn.init.normal_(self.label.weight, std=1.0 / math.sqrt(num_classes))
        self.act = make_activation(activation)
        self.rest = MLP(hidden[0], hidden[1:], out_dim, activation)
        self.out_dim = out_dim

    def forward(self, a: torch.Tensor, y: torch.Tensor, a_part: Optional[torch.Tensor] = None):
        h = self.first(a) if a_part is None else a_part
        return self.rest(self.act(h + self.label(y)))


@MODELS.register("ssvae", config=SSVAEConfig)
class SSVAE(LatentVariableModel, Classifier):
    """M2 (Kingma et al. 2014): ``model(x, y=None)`` / ``guide(x, y=None)``; the label summed out when unknown."""

    def __init__(
        self,
        classifier: nn.Module,
        encoder: SplitInput,
        decoder: SplitInput,
        prior,
        likelihood,
        latent_dim: int,
        num_classes: int,
        image_shape=None,
    ):
        super().__init__(encoder, decoder, prior, likelihood, latent_dim, image_shape)
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.register_buffer("class_logits", torch.zeros(self.num_classes))  # uniform p(y)

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "SSVAE":
        if not info.num_classes or info.num_classes < 2:
            raise DataError("model=ssvae needs labelled data with at least 2 classes (some labels known)")
        c, m = info.num_classes, cfg.model
        if {cfg.encoder.type, cfg.decoder.type} - {"auto", "mlp"}:
            raise ConfigError(
                "model=ssvae's q(z|x,y) and p(x|z,y) are MLPs: keep encoder.type and decoder.type auto or mlp"
            )
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        act = activation_of(cfg.encoder, "mlp")
        classifier = make_classifier(
            info.data_dim,
            c,
            list(m.classifier_hidden),
            classifier_type(m, info.image_shape),
            m.classifier_activation or act,
            m.classifier_dropout,
            info.image_shape,
        )
        classifier = network_input(classifier, likelihood, info)
        encoder = SplitInput(info.data_dim, c, list(cfg.encoder.hidden), 2 * cfg.latent_dim, act)
        encoder.first = network_input(encoder.first, likelihood, info)
        decoder = SplitInput(
            cfg.latent_dim, c, list(cfg.decoder.hidden), likelihood.output_size, activation_of(cfg.decoder, "mlp")
        )
        return cls(classifier, encoder, decoder, prior, likelihood, cfg.latent_dim, c, info.image_shape)

    # ---- networks --------------------------------------------------------------
    def q_z_given_y(self, x, y, x_part=None):
        """loc and scale of q(z|x,y), with gradients; ``x_part``: the first layer's x part when already
        computed (then ``x`` is not read)."""
        loc, raw = self.encoder(x, y, x_part).float().split(self.latent_dim, -1)
        return loc, softplus(raw) + 1e-5  # float32 also under bf16 autocast: densities stay exact

    def q_z(self, x):
        """q(z|x) with the label set to its most likely value under q(y|x) (with gradients;
        priors built from the encoder, such as the VampPrior, use it)."""
        return self.q_z_given_y(x, self.classifier(x).argmax(-1))

    # ---- the Pyro program ------------------------------------------------------
    def _plate(self, x, size=None):
        n = x.shape[0]
        return pyro.plate("data", size or self.num_data or n, subsample=torch.arange(n, device=x.device))

    @pyro_program
    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, size: Optional[int] = None):
        """p(x, y, z) = p(y) p(z) p(x | z, y); y observed when given, else enumerated by the ELBO.
        ``size``: the plate size (how many rows this minibatch stands for)."""
        with self._plate(x, size):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            y = pyro.sample("y", dist.Categorical(logits=self.class_logits), obs=y)
            pyro.sample("x", self.likelihood(self.decoder(z, y), x), obs=x)

    @pyro_program
    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, size: Optional[int] = None):
        """q(y|x) (when y is unobserved) then q(z|x,y); the x part of q(z|x,y) is computed once."""
        with self._plate(x, size):
            x_part = self.encoder.first(x)
            if y is None:
                logits = self.classifier(x).float()
                y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            loc, scale = self.q_z_given_y(x, y, x_part)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- user API ---------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x): class probabilities, rows sum to 1."""
        return torch.softmax(self.classifier(x).float(), -1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """Posterior mean and scale of q(z|x,y), with y the predicted label when not given."""
        return self.q_z_given_y(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """E[x|z,y]; a label drawn from p(y) per row when not given."""
        if y is None:
            y = dist.Categorical(logits=self.class_logits).sample(z.shape[:1])
        return self.likelihood.mean(self.decoder(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.predict(x) if y is None else y
        return self.likelihood.mean(self.decoder(self.q_z_given_y(x, y)[0], y), x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """New data: y ~ p(y) (or the given labels), z ~ p(z), then E[x|z,y] or x ~ p(x|z,y)."""
        if y is None:
            y = dist.Categorical(logits=self.class_logits).sample((n,))
        z = self.prior().sample((n,))
        out = self.decoder(z, y)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(batch, C): log p(x, y=c, z_c) - log q(z_c | x, y=c), one z_c ~ q(z|x,y=c) per class.
        ``cond``: what q(z|., y) reads instead of ``x`` (M1+M2: the code mean while x is a code sample)."""
        b, c = x.shape[0], self.num_classes
        ys = torch.arange(c, device=x.device).repeat_interleave(b)  # (C*B,)
        xs = x.repeat(c, 1)
        x_part = self.encoder.first(x if cond is None else cond).repeat(c, 1)  # once per row, not per class
        loc, scale = self.q_z_given_y(None, ys, x_part)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        log_py = torch.log_softmax(self.class_logits, -1)[ys]
        w = self.likelihood(self.decoder(z, ys), xs).log_prob(xs) + self.prior().log_prob(z) + log_py - q.log_prob(z)
        return w.reshape(c, b).T

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-datum ELBO with y summed out: sum_y q(y|x) [log p(x,y,z) - log q(z|x,y)] + H(q(y|x));
        q(y|.) and q(z|., y) read ``cond`` instead of ``x`` when it is given."""
        logq_y = torch.log_softmax(self.classifier(x if cond is None else cond).float(), -1)  # (B, C)
        w = torch.stack([self.log_weights(x, cond) for _ in range(num_particles)]).mean(0)
        q_y = logq_y.exp()
        return (q_y * (w - logq_y)).sum(-1)
