"""Training M2: the semi-supervised objective as a sum of named loss terms.

    J = sum_unlabelled U(x) + sum_labelled L(x, y) + alpha * sum_labelled -log q(y|x)

``unlabelled_elbo`` (TraceEnum_ELBO, the label enumerated in parallel, Monte-Carlo KL),
``labelled_elbo`` (y observed; the KL in closed form with train.elbo=meanfield) and ``aux``
(Kingma et al. 2014, eq. 9) are M2's objective; ``pseudo_label`` (images only) is not part of it.
Each term is scaled to its full count, so a
minibatch loss estimates the full-data objective.
"""

import abc
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO

from ..errors import ConfigError, DataError
from ..models.ssvae import SSVAE
from ..networks import ConvClassifier
from ..registry import Registry, option
from .augment import augment_images, strong_augment
from .base import TrainingPlan, register_plan
from .batches import RowBatches, SemiSupervisedBatchSampler, index_loader
from .objectives import make_elbo, weights_kl

LOSS_TERMS = Registry("loss term")


@dataclass
class SSVAEObjective:
    """``model: ssvae`` keys of the objective: the aux term, the image shifts and the pseudo-label term."""

    aux_loss_multiplier: float = option(30.0, "alpha of the auxiliary classification term (Kingma et al. eq. 9)")
    aux_scaling: str = option(
        "total",
        "total: alpha * N * mean over the labelled examples | labelled: alpha per labelled example (Pyro's example)",
    )
    augment_shift: Optional[int] = option(
        None,
        "aux term: labelled images shifted by up to this many pixels (training only); null = 1 for images, 0 otherwise",
    )
    pseudo_label_weight: Optional[float] = option(
        None,
        "pseudo-label term (images): unlabelled images that q(y|x) labels with confidence >= "
        "pseudo_label_threshold teach that label to strongly augmented copies, weighted like the aux "
        "term times this; 0 = off; null = 1 for images, 0 otherwise",
    )
    pseudo_label_threshold: float = option(0.95, "pseudo-label term: the confidence a label needs")

    @staticmethod
    def check(c) -> None:
        if c.aux_scaling not in ("labelled", "total"):
            raise ConfigError(f"model.aux_scaling={c.aux_scaling!r} is not valid; choose one of: labelled, total")
        if c.augment_shift is not None and c.augment_shift < 0:
            raise ConfigError(
                f"model.augment_shift must be 0 (off), a number of pixels or null (got {c.augment_shift})"
            )
        if c.aux_loss_multiplier < 0:
            raise ConfigError(f"model.aux_loss_multiplier must be >= 0 (got {c.aux_loss_multiplier})")
        if c.pseudo_label_weight is not None and c.pseudo_label_weight < 0:
            raise ConfigError(f"model.pseudo_label_weight must be >= 0 (got {c.pseudo_label_weight})")
        if not 0 <= c.pseudo_label_threshold <= 1:
            raise ConfigError(f"model.pseudo_label_threshold must be in [0, 1] (got {c.pseudo_label_threshold})")


def pseudo_label_weight(m, image_shape) -> float:
    """``model.pseudo_label_weight`` with null resolved: 1 for images, 0 otherwise."""
    if m.pseudo_label_weight is None:
        return 1.0 if image_shape is not None else 0.0
    return float(m.pseudo_label_weight)


def augment_shift(m, image_shape) -> int:
    """``model.augment_shift`` with null resolved: 1 pixel for images, 0 otherwise."""
    return (1 if image_shape is not None else 0) if m.augment_shift is None else int(m.augment_shift)


def check_objective(m, image_shape) -> None:
    """ConfigError when a term that augments images is asked for on other data."""
    if m.augment_shift and image_shape is None:
        raise ConfigError("model.augment_shift needs image data; set it to null for tabular data")
    if m.pseudo_label_weight and image_shape is None:
        raise ConfigError(
            "model.pseudo_label_weight needs image data (it augments images); set it to null or 0 for tabular data"
        )


def check_train_objective(t) -> None:
    """ConfigError for the ``train`` objectives M2 cannot use: its unlabelled term sums the label out
    with TraceEnum_ELBO, which has no importance weighted form and no KL apart from the label's terms."""
    if t.elbo not in ("trace", "meanfield"):
        raise ConfigError(
            f"model=ssvae: train.elbo={t.elbo} is not supported: the unknown label is summed out by "
            "TraceEnum_ELBO and Pyro's RenyiELBO does not enumerate; use train.elbo=meanfield or trace"
        )
    if weights_kl(t):
        raise ConfigError(
            "model=ssvae: train.kl_weight and train.capacity_max are not supported (the enumerated "
            "term's KL is not apart from the label's); set kl_weight=1, capacity_max=null (kl_warmup_epochs works)"
        )


class LossTerm(abc.ABC):
    """One term of the semi-supervised loss; ``active`` says whether the config turns it on."""

    context_args = ("plan",)  # the library passes the plan; a term has no parameters of its own

    def __init__(self, plan: "SemiSupervisedPlan"):
        self.plan = plan

    def active(self) -> bool:
        return True

    @abc.abstractmethod
    def __call__(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """This term's contribution to the minibatch loss (scaled to the full data)."""


@LOSS_TERMS.register("unlabelled_elbo")
class UnlabelledELBO(LossTerm):
    """-sum_unlabelled U(x): the label summed out exactly (TraceEnum_ELBO, parallel enumeration)."""

    def __init__(self, plan):
        super().__init__(plan)
        self.elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=plan.cfg.train.num_particles)

    def active(self):
        return self.plan.num_unlabelled > 0

    def __call__(self, batch):
        xu, m = batch["xu"], self.plan.model
        if not xu.shape[0]:
            return xu.new_zeros(())
        return self.elbo.differentiable_loss(m.model, m.guide, xu, None, self.plan.num_unlabelled)


@LOSS_TERMS.register("labelled_elbo")
class LabelledELBO(LossTerm):
    """-sum_labelled L(x, y): y observed (Trace_ELBO, or TraceMeanField_ELBO with train.elbo=meanfield)."""

    def __init__(self, plan):
        super().__init__(plan)
        self.elbo = make_elbo(plan.cfg.train)
        plan.objectives.append(self.elbo)

    def __call__(self, batch):
        m = self.plan.model
        return self.elbo.differentiable_loss(m.model, m.guide, batch["xl"], batch["yl"], self.plan.num_labelled)


@LOSS_TERMS.register("aux")
class AuxClassification(LossTerm):
    """alpha * -log q(y|x) on the labelled pairs (augmented copies in training).

    Scaled per labelled example (``aux_scaling: labelled``, Pyro's example) or to the data size (``total``)."""

    def __call__(self, batch):
        plan, m, c = self.plan, self.plan.model, self.plan.cfg.model
        xl = plan.augment(batch["xl"]) if m.training else batch["xl"]
        ce = F.cross_entropy(m.classifier(xl).float(), batch["yl"], reduction="mean")
        per_example = plan.num_labelled if c.aux_scaling == "labelled" else m.num_data
        return c.aux_loss_multiplier * per_example * ce


@LOSS_TERMS.register("pseudo_label")
class PseudoLabel(LossTerm):
    """Pseudo-labels (FixMatch-style, Sohn et al. 2020): q(y|x)'s confident labels taught to augmented copies.

    w * alpha * N * mean_unlabelled[1(max_y q(y|x) >= t) * -log q(y_hat | strong(x))]: q(y|x) without
    dropout labels each unlabelled image, and where its top class y_hat is confident it is taught to a
    strongly augmented copy (:func:`strong_augment`); on a CPU a conv q(y|x) runs its body on the
    confident copies only. Not part of M2's ELBO; weighed like the aux term
    (w = ``model.pseudo_label_weight``, t = ``pseudo_label_threshold``)."""

    def __init__(self, plan):
        super().__init__(plan)
        self.weight = pseudo_label_weight(plan.cfg.model, plan.model.image_shape)

    def active(self):
        return self.weight > 0 and self.plan.num_unlabelled > 0

    def __call__(self, batch):
        m, c = self.plan.model, self.plan.cfg.model
        xu, clf = batch["xu"], m.classifier
        if not m.training or not xu.shape[0]:
            return xu.new_zeros(())
        # the labelling pass: q(y|x) without dropout; a conv q(y|x) keeps its body's output on xu for
        # the guide's q(y|x) in the unlabelled term of this step (SemiSupervisedPlan.loss releases it)
        feats = clf.keep_features(xu).detach() if isinstance(clf, ConvClassifier) else None
        with torch.no_grad():
            clf.eval()
            try:
                logits = clf(xu) if feats is None else clf.head(feats)
                conf, target = torch.softmax(logits.float(), -1).max(-1)
            finally:
                clf.train()
        keep = conf >= c.pseudo_label_threshold
        strong = strong_augment(xu, m.image_shape)
        if feats is None or xu.device.type != "cpu":  # on a GPU, picking rows would wait for the device
            logits = clf(strong)
        else:  # the body only on the confident rows: the others add nothing (the same draws and value)
            rows = keep.nonzero().squeeze(1)
            h = feats.new_zeros(feats.shape)
            if rows.numel():
                h = h.index_copy(0, rows, clf[0](strong[rows]).to(h.dtype))
            logits = clf.head(h)
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        return self.weight * c.aux_loss_multiplier * m.num_data * (keep.float() * ce).mean()


def check_labels(data, num_classes: int, kind: str) -> None:
    """DataError unless some training labels are known and every label is below ``num_classes``."""
    y = data.train.y
    if y is None or not bool((y >= 0).any()):
        raise DataError(
            f"model={kind} needs some training labels (none are known); give labels "
            "(data.labels_path or a label column) for some rows"
        )
    for name, split in data.splits():
        if split.y is not None and bool((split.y >= num_classes).any()):
            raise DataError(
                f"the {name} split has label {int(split.y.max())}, outside "
                f"0..{num_classes - 1}; fix the labels or set data.num_classes"
            )


@register_plan(SSVAE, config=SSVAEObjective)
class SemiSupervisedPlan(TrainingPlan):
    """M2's objective: the sum of the active :data:`LOSS_TERMS`; selects on validation accuracy."""

    selection = ("accuracy", "max")

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        check_objective(cfg.model, model.image_shape)
        check_train_objective(cfg.train)
        self.num_labelled = self.num_unlabelled = 0
        self.terms = []

    def augment(self, x):
        return augment_images(x, self.model.image_shape, augment_shift(self.cfg.model, self.model.image_shape))

    def check_data(self, data):
        super().check_data(data)
        check_labels(data, self.model.num_classes, "ssvae")

    def setup(self, data):
        super().setup(data)
        labelled = data.train.y >= 0
        self.num_labelled = int(labelled.sum())
        self.num_unlabelled = int((~labelled).sum())
        self.terms = [t for t in (cls(self) for cls in (LOSS_TERMS.get(n) for n in LOSS_TERMS.names())) if t.active()]

    def default_batch_size(self, rows):
        """128 rows a step on training sets of 10,000 rows or more; 64 on smaller ones, which need the
        extra steps per epoch."""
        return 128 if rows >= 10_000 else 64

    def labelled_batch_size(self) -> int:
        return max(1, min(self.num_labelled, self.cfg.train.batch_size))

    def train_dataloader(self, data, seed, rank=0, world_size=1):
        y = data.train.y
        rows = torch.arange(len(y))
        sampler = SemiSupervisedBatchSampler(
            rows[y < 0], rows[y >= 0], self.cfg.train.batch_size, self.labelled_batch_size(), seed, rank, world_size
        )
        return index_loader(RowBatches(data.train.x, y, data.binarize == "dynamic"), sampler)

    def loss(self, batch):
        try:
            return sum(term(batch) for term in self.terms)
        finally:
            if isinstance(self.model.classifier, ConvClassifier):
                self.model.classifier.release()

    def eval_dataloader(self, split, batch_size, rank=0, world_size=1):
        # the ELBO sums the label out: B rows compute C*B rows; keep C*B near batch_size (on a CPU,
        # elementwise work on tensors past the caches is several times slower per element)
        return super().eval_dataloader(split, max(1, batch_size // self.model.num_classes), rank, world_size)

    def batch_size_of(self, batch):
        return batch["xu"].shape[0] + batch["xl"].shape[0]

    @torch.no_grad()
    def validation_sums(self, x, y):
        sums = super().validation_sums(x, y)
        known = y >= 0
        sums["correct"] = (self.model.predict(x)[known] == y[known]).sum().float()
        sums["known"] = known.sum().float()
        return sums

    def selection_for(self, split):
        known = split.y is not None and bool((split.y >= 0).any())
        return self.selection if known else ("loss", "min")  # no labels to measure accuracy on

    def metrics(self, sums):
        out = super().metrics(sums)
        if float(sums.get("known", 0)):
            out["accuracy"] = float(sums["correct"]) / float(sums["known"])
        return out

    def extra_plots(self, data, run_dir):
        from ..plots import ssvae_report

        ssvae_report(self.model, data, run_dir)
