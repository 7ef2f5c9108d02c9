"""Training objectives by name (``train.elbo``): Pyro ELBOs, each a torch module ``ELBO(...)(model, guide)``.

* ``meanfield`` — ``TraceMeanField_ELBO``: E_q[log p(x|z)] - KL(q(z|x) || p(z)), the KL in closed form
  where torch knows it for the prior, a Monte-Carlo estimate otherwise.
* ``trace`` — ``Trace_ELBO``: the same bound, the KL estimated by Monte Carlo.
* ``iwae`` — the importance weighted bound (Burda, Grosse & Salakhutdinov 2016)::

      L_K(x) = E[log 1/K sum_k w_k],   w_k = p(x, z_k) / q(z_k|x),   z_k ~ q(z|x)

  with K = ``train.num_particles``: L_1 is the ELBO, and L_K rises with K toward log p(x).
* ``renyi`` — the variational Renyi bound (Li & Turner 2016), alpha = ``train.renyi_alpha``::

      L_alpha(x) = 1/(1 - alpha) log E[1/K sum_k w_k^(1 - alpha)]

  alpha = 0 is ``iwae``; alpha -> 1 the ELBO; a lower bound of log p(x) for alpha >= 0.

``iwae`` and ``renyi`` are Pyro's ``RenyiELBO`` (:class:`ImportanceWeightedELBO`) with the weights of
each row kept apart: Pyro's own estimate multiplies every row's log weight by the minibatch scale N/B
before the log-mean-exp, which changes the bound under subsampling; here the log-mean-exp is taken over
each row's unscaled weights and its result scaled by N/B, so a minibatch estimates the full-data bound.

The KL weight ``train.kl_weight`` (beta-VAE, Higgins et al. 2017) and the capacity schedule
(Burgess et al. 2018) need the KL apart from the reconstruction: :class:`KLWeightedELBO` reads both
from one pair of traces (guide, then the model replayed on its draws)::

    recon = E_q[-log p(x|z)],  KL = KL(q(z|x) || p(z))      (closed form with meanfield, else Monte Carlo)
    loss  = recon + kl_weight * KL                           (beta-VAE)
    loss  = recon + gamma * |KL - N * C(t)|                  (capacity: C(t) nats per row, N rows)

The warm-up (``train.kl_warmup_epochs``) scales the latent sites of model and guide (``model.beta``),
so it multiplies the KL term of every objective here (inside each importance weight for ``iwae``/``renyi``).
"""

import math
from typing import Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_item, torch_sum
from torch.distributions import kl_divergence

from ..errors import ConfigError
from ..registry import Registry

#: ``train.elbo`` names -> objective classes: Pyro ELBOs that build themselves from the ``train`` section
#: (classmethod ``from_train``); ``separates_kl`` says whether train.kl_weight and the capacity apply, and
#: ``analytic_kl`` whether their KL is in closed form. A plugin registers its own the same way.
OBJECTIVES = Registry("objective", configurable=False)


def _common_plates(model_trace):
    """The plates every sample site of the model is in (the data plate)."""
    stacks = [set(s["cond_indep_stack"]) for s in model_trace.nodes.values() if s["type"] == "sample"]
    return set.intersection(*stacks) if stacks else set()


def data_size(model_trace) -> float:
    """How many rows the traced minibatch stands for: the full size of the plates every site is in."""
    n = 1.0
    for frame in _common_plates(model_trace):
        n *= float(frame.full_size or frame.size)
    return n


def subsample_scale(model_trace) -> float:
    """N/B: the scale the subsampled plates that every site is in give each site's log-density."""
    s = 1.0
    for frame in _common_plates(model_trace):
        s *= float(frame.full_size or frame.size) / float(frame.size)
    return s


class _SurrogateLoss:
    """``differentiable_loss`` of Pyro's Trace_ELBO and TraceMeanField_ELBO as their surrogate loss alone.

    Pyro returns ``loss + (surrogate - surrogate.item())``: the value of the ELBO estimate with the
    gradient of the surrogate. Where every guide site is reparameterized (no score-function term) the
    two are the same estimate, and the surrogate alone has the same value and gradient without reading
    the loss back to the host each step, which ``torch.jit.trace`` would record as a constant
    (``train.compile=jit``). A guide with a score-function term keeps Pyro's form."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate, exact = 0.0, 0.0, True
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + loss_particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
            exact = exact and all(
                is_identically_zero(site["score_parts"].score_function)
                for site in guide_trace.nodes.values()
                if site["type"] == "sample"
            )
        if exact:
            return surrogate
        return loss + (surrogate - torch_item(surrogate))


@OBJECTIVES.register("meanfield")
class MeanFieldELBO(_SurrogateLoss, TraceMeanField_ELBO):
    """E_q[log p(x|z)] - KL(q||p), the KL in closed form where the prior has one (Pyro's TraceMeanField_ELBO)."""

    separates_kl = True  # train.kl_weight and the capacity schedule apply
    analytic_kl = True

    @classmethod
    def from_train(cls, t) -> ELBO:
        return cls(num_particles=t.num_particles, vectorize_particles=False)


@OBJECTIVES.register("trace")
class MonteCarloELBO(_SurrogateLoss, Trace_ELBO):
    """E_q[log p(x,z) - log q(z|x)]: the ELBO with a Monte-Carlo KL (Pyro's Trace_ELBO)."""

    separates_kl = True
    analytic_kl = False

    @classmethod
    def from_train(cls, t) -> ELBO:
        return cls(num_particles=t.num_particles)


class _FromDifferentiableLoss:
    """``loss`` and ``loss_and_grads`` (what ``pyro.infer.SVI`` calls) from ``differentiable_loss``."""

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


class ImportanceWeightedELBO(_FromDifferentiableLoss, RenyiELBO):
    """The Renyi bound 1/(1-alpha) log 1/K sum_k w_k^(1-alpha) per row, scaled to the full data.

    ``differentiable_loss`` makes it a torch module like the other ELBOs (Pyro's ``RenyiELBO`` has only
    ``loss`` and ``loss_and_grads``): its gradient is sum_k softmax((1-alpha) log w)_k grad log w_k, the
    IWAE gradient at alpha = 0. Every guide site must be reparameterized (no score-function terms)."""

    separates_kl = False
    analytic_kl = False

    def __init__(
        self, alpha: float = 0.0, num_particles: int = 2, vectorize_particles: bool = True, max_plate_nesting: int = 1
    ):
        # max_plate_nesting: the model's own nested plates (the data plate); the particles' plate goes left of them
        vectorize = vectorize_particles and num_particles > 1
        nesting = max_plate_nesting + 1 if vectorize else float("inf")
        super().__init__(alpha, num_particles, max_plate_nesting=nesting, vectorize_particles=vectorize)

    def log_weights(self, model, guide, *args, **kwargs):
        """log w of each particle and row, without the minibatch scale: shape (K, rows), and N/B. The K
        particles run at once in a plate of their own (``vectorize_particles``, Pyro's; the networks
        take leading batch dimensions) or one after another."""
        weights, scale = [], 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    w = w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise ConfigError(
                            f"train.elbo={self.name}: the guide's site {name!r} has no reparameterized sampler; "
                            "use train.elbo=trace or meanfield"
                        )
                    w = w - torch_sum(site["log_prob"], sum_dims)
            scale = subsample_scale(model_trace)  # the particles' plate has no subsample: scale 1
            weights.append(torch.as_tensor(w) / scale)
        if self.vectorize_particles:
            return weights[0], scale  # one trace, the particles along the first dimension
        return torch.stack(weights), scale

    @property
    def name(self) -> str:
        return "iwae" if self.alpha == 0 else "renyi"

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """-(N/B) sum_rows 1/(1-alpha) logmeanexp_k((1-alpha) log w_k)."""
        log_w, scale = self.log_weights(model, guide, *args, **kwargs)
        a = 1.0 - self.alpha
        bound = (torch.logsumexp(a * log_w, 0) - math.log(log_w.shape[0])) / a
        return -scale * bound.sum()


@OBJECTIVES.register("iwae")
class IWAE(ImportanceWeightedELBO):
    """Importance weighted bound (Burda et al. 2016), K = train.num_particles: Pyro's RenyiELBO at alpha = 0."""

    @classmethod
    def from_train(cls, t) -> ELBO:
        return cls(alpha=0.0, num_particles=t.num_particles)


@OBJECTIVES.register("renyi")
class Renyi(ImportanceWeightedELBO):
    """Variational Renyi bound (Li & Turner 2016), alpha = train.renyi_alpha, K = train.num_particles."""

    @classmethod
    def from_train(cls, t) -> ELBO:
        return cls(alpha=float(t.renyi_alpha), num_particles=t.num_particles)


class KLWeightedELBO(_FromDifferentiableLoss, ELBO):
    """recon + kl_weight * KL, or with ``gamma`` the capacity objective recon + gamma * |KL - N * capacity|.

    ``capacity`` (C, nats per row) is set before each step by the training plan's schedule. The KL of a
    latent site is in closed form with ``analytic_kl`` where torch knows it, else log q - log p at the draw.
    With kl_weight = 1 and no gamma this is the ELBO of ``meanfield`` (``analytic_kl``) or ``trace``."""

    def __init__(
        self, analytic_kl: bool, kl_weight: float = 1.0, gamma: Optional[float] = None, num_particles: int = 1
    ):
        super().__init__(num_particles=num_particles, vectorize_particles=False)
        self.analytic_kl = analytic_kl
        self.kl_weight = float(kl_weight)
        self.gamma = None if gamma is None else float(gamma)
        self.capacity = 0.0

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _site_kl(self, model_site, guide_site):
        if self.analytic_kl:
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
                return scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
            except NotImplementedError:
                pass
        return guide_site["log_prob_sum"] - model_site["log_prob_sum"]

    def terms(self, model, guide, *args, **kwargs):
        """(recon, KL, N): the reconstruction term and the KL, each summed over the rows and scaled to the
        N rows the minibatch stands for, averaged over ``num_particles`` draws."""
        recon = kl = 0.0
        n = 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if site["is_observed"]:
                    recon = recon - site["log_prob_sum"]
                elif name in guide_trace.nodes:
                    kl = kl + self._site_kl(site, guide_trace.nodes[name])
                else:  # a latent site of the model alone: its log-density is part of log p
                    kl = kl - site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():  # guide sites the model does not have
                if site["type"] == "sample" and name not in model_trace.nodes:
                    kl = kl + site["log_prob_sum"]
            n = data_size(model_trace)
        return recon / self.num_particles, kl / self.num_particles, n

    def differentiable_loss(self, model, guide, *args, **kwargs):
        recon, kl, n = self.terms(model, guide, *args, **kwargs)
        if self.gamma is None:
            return recon + self.kl_weight * kl
        return recon + self.gamma * torch.abs(kl - n * self.capacity)


def weights_kl(t) -> bool:
    """Whether ``train`` weighs the KL term apart (``kl_weight`` != 1 or the capacity schedule)."""
    return float(t.kl_weight) != 1.0 or t.capacity_max is not None


def make_elbo(t) -> ELBO:
    """The objective ``train.elbo`` names, with ``train.num_particles`` draws per row, the KL weighed
    by ``train.kl_weight`` or the capacity schedule (``train.capacity_*``) when they are set."""
    cls = OBJECTIVES.get(t.elbo)
    if not weights_kl(t):
        return cls.from_train(t)
    if not getattr(cls, "separates_kl", False):
        raise ConfigError(
            f"train.kl_weight and train.capacity_max weigh the ELBO's KL term; train.elbo={t.elbo} has none "
            "apart from the reconstruction: use train.elbo=meanfield or trace"
        )
    gamma = float(t.capacity_gamma) if t.capacity_max is not None else None
    return KLWeightedELBO(cls.analytic_kl, float(t.kl_weight), gamma, int(t.num_particles))


def capacity_at(t, epochs_done: float, span: int) -> float:
    """C(t) = capacity_max * min(1, epochs_done / span) nats per row (Burgess et al. 2018)."""
    return float(t.capacity_max) * min(1.0, epochs_done / max(1, span))


def warmup_at(t, epochs_done: float) -> float:
    """The warm-up factor of the KL term: from just above 0 (Pyro's scale must be positive) to 1 over
    ``train.kl_warmup_epochs`` epochs."""
    return min(1.0, max(epochs_done, 0.01) / t.kl_warmup_epochs)
