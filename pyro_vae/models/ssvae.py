"""Semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014), as a Pyro program.

Generative model (``model``)::

    y_n ~ Categorical(pi)                  uniform (or learned with ssvae.learn_class_prior)
    z_n ~ p(z)                             prior from the registry
    x_n ~ p(x | decoder(z_n, y_n))         likelihood from the registry

Variational posterior (``guide``)::

    y_n ~ q(y | x_n) = Categorical(classifier(x_n))      only where y_n is unobserved
    z_n ~ q(z | x_n, y_n) = Normal(encoder(x_n, y_n))

An unobserved label is summed out exactly: the y site is enumerated in parallel
(``infer={"enumerate": "parallel"}``) and ``TraceEnum_ELBO`` computes
``-U(x) = sum_y q(y|x) [-L(x, y)] - H(q(y|x))`` without a Python loop over classes.
The classifier also learns from labelled pairs through the auxiliary term
``alpha * E_labelled[-log q(y|x)]`` (Kingma et al. 2014, eq. 9). Each term is scaled to
its full count, so a minibatch loss estimates the full-data objective

    J_alpha = sum_labelled L(x, y) + sum_unlabelled U(x) + alpha * sum_labelled -log q(y|x)

Speed: the first layers of q(z|x,y) and p(x|z,y) are split into an input part and a label
part. The x part (the large 784xH product) is computed once per example and the label
part is a row lookup added to it, so enumerating C classes costs C small additions.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..data import augment_images
from ..errors import ConfigError, DataError
from ..networks import ACTIVATIONS, MLP, make_classifier
from . import MODELS
from .vae import VAE, DataInfo


class SplitInput(nn.Module):
    """h = act(W_a a + W_y[y] + b) -> MLP: a first layer split into a dense part and a label lookup.

    ``a`` has shape (..., B, A); ``y`` is an integer tensor broadcastable to (..., B).
    The dense part is computed once even when y is enumerated over classes. With
    ``label_every_layer`` every later linear layer (the output one included) also adds a
    per-class bias W_y'[y].
    """

    def __init__(self, in_dim: int, num_classes: int, hidden, out_dim: int, activation="softplus",
                 label_every_layer: bool = False):
        super().__init__()
        hidden = list(hidden) or [out_dim]
        self.first = nn.Linear(in_dim, hidden[0])
        self.label = nn.Embedding(num_classes, hidden[0])
        nn.init.normal_(self.label.weight, std=1.0 / math.sqrt(num_classes))
        self.act = ACTIVATIONS[activation]()
        self.rest = MLP(hidden[0], hidden[1:], out_dim, activation)
        self.labels_later = None
        if label_every_layer:
            sizes = [m.out_features for m in self.rest if isinstance(m, nn.Linear)]
            self.labels_later = nn.ModuleList(nn.Embedding(num_classes, d) for d in sizes)
            for e in self.labels_later:
                nn.init.zeros_(e.weight)  # starts as the first-layer-only network
        self.out_dim = out_dim

    def forward(self, a: torch.Tensor, y: torch.Tensor, a_part: Optional[torch.Tensor] = None):
        h = self.first(a) if a_part is None else a_part
        h = self.act(h + self.label(y))
        if self.labels_later is None:
            return self.rest(h)
        later = iter(self.labels_later)
        for layer in self.rest:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                h = h + next(later)(y)
        return h


@MODELS.register("ssvae")
class SSVAE(VAE):
    """M2: ``model(x, y=None)`` / ``guide(x, y=None)``, plus ``predict`` / ``predict_proba``."""

    def __init__(self, classifier: nn.Module, encoder: SplitInput, decoder: SplitInput, prior, likelihood,
                 latent_dim: int, num_classes: int, image_shape=None, aux_loss_multiplier: float = 46.0,
                 aux_scaling: str = "labelled", learn_class_prior: bool = False, augment_shift: int = 0,
                 shift_unlabelled: bool = False, consistency_weight: float = 0.0, augment_flip: bool = False,
                 vat_weight: float = 0.0, vat_eps: float = 0.3, entropy_weight: float = 0.0):
        super().__init__(encoder, decoder, prior, likelihood, latent_dim, image_shape, None)
        self.num_classes = int(num_classes)
        self.classifier = classifier
        self.class_logits = nn.Parameter(torch.zeros(self.num_classes), requires_grad=bool(learn_class_prior))
        self.aux_loss_multiplier = float(aux_loss_multiplier)
        self.aux_scaling = aux_scaling
        self.augment_shift = int(augment_shift)
        self.augment_flip = bool(augment_flip)
        self.shift_unlabelled = bool(shift_unlabelled)
        self.consistency_weight = float(consistency_weight)
        self.vat_weight, self.vat_eps = float(vat_weight), float(vat_eps)
        self.entropy_weight = float(entropy_weight)
        if (self.augment_shift or self.augment_flip) and image_shape is None:
            raise ConfigError("ssvae.augment_shift / ssvae.augment_flip need image data; "
                              "set them to 0 / false for tabular data")
        self.num_labelled = None
        self.num_unlabelled = None

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "SSVAE":
        if not info.num_classes or info.num_classes < 2:
            raise DataError("model=ssvae needs labelled data with at least 2 classes (some labels known)")
        c, s = info.num_classes, cfg.ssvae
        if s.aux_scaling not in ("labelled", "total"):
            raise ConfigError(f"ssvae.aux_scaling={s.aux_scaling!r} is not valid; choose one of: labelled, total")
        if cfg.encoder.type != "mlp" or cfg.decoder.type != "mlp":
            raise ConfigError("model=ssvae supports encoder.type=mlp and decoder.type=mlp")
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        act = cfg.encoder.activation
        classifier = make_classifier(info.data_dim, c, list(s.classifier_hidden), s.classifier_type,
                                     s.classifier_activation or act, s.classifier_dropout, info.image_shape)
        encoder = SplitInput(info.data_dim, c, list(cfg.encoder.hidden), 2 * cfg.latent_dim, act)
        decoder = SplitInput(cfg.latent_dim, c, list(cfg.decoder.hidden), likelihood.output_size,
                             cfg.decoder.activation, label_every_layer=s.decoder_label == "every")
        model = cls(classifier, encoder, decoder, prior, likelihood, cfg.latent_dim, c, info.image_shape,
                    s.aux_loss_multiplier, s.aux_scaling, s.learn_class_prior, s.augment_shift,
                    s.shift_unlabelled, s.consistency_weight, s.augment_flip, s.vat_weight, s.vat_eps,
                    s.entropy_weight)
        model.labelled_batch = s.labelled_batch_size
        return model

    # ---- networks --------------------------------------------------------------
    def _q_z(self, x, y, x_part=None):
        loc, raw = self.encoder(x, y, x_part).float().split(self.latent_dim, -1)
        from ..fastmath import softplus

        return loc, softplus(raw) + 1e-5  # float32 also under bf16 autocast: densities stay exact

    def prior_encoder(self, x):
        """q(z|x) with the label marginalised to its most likely value (used by the VampPrior)."""
        y = self.classifier(x).argmax(-1)
        return self._q_z(x, y)

    def _decode(self, z, y):
        return self.decoder(z, y)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's training-time augmentation (ssvae.augment_shift / augment_flip)."""
        return augment_images(x, self.image_shape, self.augment_shift, self.augment_flip)

    # ---- the Pyro program ------------------------------------------------------
    def _plate(self, x, size=None):
        n = x.shape[0]
        return pyro.plate("data", size or n, subsample=torch.arange(n, device=x.device))

    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, size: Optional[int] = None,
              x_classify: Optional[torch.Tensor] = None):
        """p(x, y, z) = p(y) p(z) p(x | z, y); y observed when given, else enumerated by the ELBO.
        ``x_classify`` is the guide's argument (the model ignores it)."""
        with self._pyro_context, self._plate(x, size):
            z = pyro.sample("z", self.prior())
            y = pyro.sample("y", dist.Categorical(logits=self.class_logits), obs=y)
            pyro.sample("x", self.likelihood(self._decode(z, y)), obs=x)

    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, size: Optional[int] = None,
              x_classify: Optional[torch.Tensor] = None):
        """q(y|x) (when y is unobserved) then q(z|x,y); the x part of q(z|x,y) is computed once.

        ``x_classify``: what q(y|x) looks at instead of x (a randomly shifted copy in training
        with ssvae.shift_unlabelled). Any such q is still a variational distribution, so the
        loss stays an upper bound on -log p(x) for every draw of the shift."""
        with self._pyro_context, self._plate(x, size):
            x_part = self.encoder.first(x)
            if y is None:
                logits = self.classifier(x if x_classify is None else x_classify).float()
                y = pyro.sample("y", dist.Categorical(logits=logits),
                                infer={"enumerate": "parallel"})
            loc, scale = self._q_z(x, y, x_part)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- training hooks -------------------------------------------------------
    def make_loss(self, train_cfg) -> nn.Module:
        if train_cfg.elbo == "meanfield":
            raise ConfigError("model=ssvae uses TraceEnum_ELBO; set train.elbo=trace")
        return SemiSupervisedLoss(self, train_cfg.num_particles)

    def train_batches(self, data, train_cfg, seed: int = 0):
        from ..data import SemiSupervisedBatches

        y = data.train.y
        if y is None or not bool((y >= 0).any()):
            raise DataError("model=ssvae needs some training labels (none are known); set data.labels=N")
        labelled = y >= 0
        self.num_labelled = int(labelled.sum())
        self.num_unlabelled = int((~labelled).sum())
        self.num_data = len(data.train)
        return SemiSupervisedBatches(data.train.x, y, train_cfg.batch_size, self.labelled_batch_size(train_cfg),
                                     dynamic_binarize=data.binarize == "dynamic", seed=seed)

    def labelled_batch_size(self, train_cfg):
        return max(1, min(self.num_labelled, getattr(self, "labelled_batch", None) or train_cfg.batch_size))

    def check_data(self, data) -> None:
        super().check_data(data)
        for name in ("train", "val", "test"):
            split = getattr(data, name)
            if split is not None and split.y is not None and bool((split.y >= self.num_classes).any()):
                bad = int(split.y.max())
                raise DataError(f"the {name} split has label {bad}, outside 0..{self.num_classes - 1}; "
                                f"fix the labels or set data.num_classes")

    selection = ("accuracy", "max")

    @torch.no_grad()
    def validation_metrics(self, split, batch_size: int = 2000) -> dict:
        """-ELBO per datum with the label summed out, and accuracy where labels are known."""
        device = next(self.parameters()).device
        total, correct, known = 0.0, 0, 0
        for i in range(0, len(split), batch_size):
            x = split.x[i:i + batch_size].to(device)
            total += float(-self.elbo(x).sum())
            if split.y is not None:
                y = split.y[i:i + batch_size].to(device)
                mask = y >= 0
                correct += int((self.predict(x)[mask] == y[mask]).sum())
                known += int(mask.sum())
        out = {"loss": total / max(1, len(split))}
        if known:
            out["accuracy"] = correct / known
        return out

    # ---- user API ---------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x): class probabilities, rows sum to 1."""
        return torch.softmax(self.classifier(x).float(), -1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """Posterior mean and scale of q(z|x,y), with y the predicted label when not given."""
        return self._q_z(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if y is None:
            y = torch.randint(0, self.num_classes, z.shape[:1], device=z.device)
        return self.likelihood.mean(self._decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.predict(x) if y is None else y
        return self.decode(self._q_z(x, y)[0], y)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """New data: y ~ p(y) (or the given labels), z ~ p(z), then E[x|z,y] or x ~ p(x|z,y)."""
        if y is None:
            y = dist.Categorical(logits=self.class_logits).sample((n,))
        z = self.prior().sample((n,))
        out = self._decode(z, y)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights_per_class(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C): log p(x, y=c, z_c) - log q(z_c | x, y=c), one z_c ~ q(z|x,y=c) per class."""
        b, c = x.shape[0], self.num_classes
        ys = torch.arange(c, device=x.device).repeat_interleave(b)  # (C*B,)
        xs = x.repeat(c, 1)
        loc, scale = self._q_z(xs, ys)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        log_py = torch.log_softmax(self.class_logits, -1)[ys]
        w = self.likelihood(self._decode(z, ys)).log_prob(xs) + self.prior().log_prob(z) + log_py - q.log_prob(z)
        return w.reshape(c, b).T

    def log_weights(self, x):  # pragma: no cover - the label must be summed out
        raise NotImplementedError("SSVAE sums the label out: use log_weights_per_class")

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-datum ELBO with y summed out: sum_y q(y|x) [log p(x,y,z) - log q(z|x,y)] + H(q(y|x))."""
        logq_y = torch.log_softmax(self.classifier(x).float(), -1)  # (B, C)
        w = torch.stack([self.log_weights_per_class(x) for _ in range(num_particles)]).mean(0)
        q_y = logq_y.exp()
        return (q_y * (w - logq_y)).sum(-1)

    def extra_plots(self, data, run_dir):
        from ..plots import ssvae_report

        ssvae_report(self, data, run_dir)


class SemiSupervisedLoss(nn.Module):
    """Minibatch estimate of -J_alpha: labelled ELBO + unlabelled ELBO (label enumerated) + aux term."""

    def __init__(self, model: SSVAE, num_particles: int = 1):
        super().__init__()
        self.__dict__["ssvae"] = model  # a reference, not a submodule (parameters belong to the model)
        self.unsup = TraceEnum_ELBO(max_plate_nesting=1, num_particles=num_particles)
        self.sup = Trace_ELBO(num_particles=num_particles)

    def forward(self, batch) -> torch.Tensor:
        m = self.ssvae
        loss = torch.zeros((), device=batch["xl"].device)
        xu, xl, yl = batch["xu"], batch["xl"], batch["yl"]
        if xu.shape[0] and m.num_unlabelled:
            xu_classify = None
            if m.shift_unlabelled and m.training:  # q(y|x) of the unlabelled term sees a shifted copy
                xu_classify = m.augment(xu)
            loss = loss + self.unsup.differentiable_loss(m.model, m.guide, xu, None, m.num_unlabelled, xu_classify)
        loss = loss + self.sup.differentiable_loss(m.model, m.guide, xl, yl, m.num_labelled)
        if m.training and xu.shape[0] and m.num_unlabelled:  # regularisers of q(y|x), training only
            if m.consistency_weight:
                loss = loss + m.consistency_weight * m.num_unlabelled * consistency(m, xu)
            if m.vat_weight:
                loss = loss + m.vat_weight * m.num_unlabelled * virtual_adversarial(m, xu, m.vat_eps)
            if m.entropy_weight:
                logq = torch.log_softmax(m.classifier(xu).float(), -1)
                loss = loss - m.entropy_weight * m.num_unlabelled * (logq.exp() * logq).sum(-1).mean()
        if m.training:  # the aux term sees augmented copies (if any); the ELBO terms see the data
            xl = m.augment(xl)
        ce = F.cross_entropy(m.classifier(xl).float(), yl, reduction="mean")
        per_example = m.num_labelled if m.aux_scaling == "labelled" else m.num_data
        return loss + m.aux_loss_multiplier * per_example * ce


def consistency(m: SSVAE, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(q(y|x) || q(y|x shifted)), the first q a fixed target (no gradient)."""
    with torch.no_grad():
        target = torch.log_softmax(m.classifier(x).float(), -1)
    pred = torch.log_softmax(m.classifier(m.augment(x)).float(), -1)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


VAT_XI = 1e-1  # finite-difference step of the power iteration (L2, input units)


def virtual_adversarial(m: SSVAE, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over the batch of KL(q(y|x) || q(y|x + r_adv)), the first q a fixed target, where
    r_adv (L2 norm ``eps``) is the direction that most increases that KL, from one power
    iteration started at a random direction (Miyato et al. 2018, eq. 12-14)."""
    with torch.no_grad():
        target = torch.log_softmax(m.classifier(x).float(), -1)
    d = (VAT_XI * _unit(torch.randn_like(x))).requires_grad_()
    kl = F.kl_div(torch.log_softmax(m.classifier(x + d).float(), -1), target, log_target=True,
                  reduction="batchmean")
    (grad,) = torch.autograd.grad(kl, d)
    r_adv = eps * _unit(grad.detach())
    pred = torch.log_softmax(m.classifier(x + r_adv).float(), -1)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")
