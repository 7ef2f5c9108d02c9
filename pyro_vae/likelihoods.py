"""Likelihoods p(x|z): how decoder outputs become a Pyro distribution over x.

Each likelihood knows how many decoder outputs it needs per feature
(``outputs_per_feature``), which data it accepts (``check_data``) and how to turn
the decoder output of shape ``(batch, outputs_per_feature * data_dim)`` into a
distribution with ``event_shape == (data_dim,)``. The decoder output is laid out
as ``outputs_per_feature`` consecutive blocks of ``data_dim`` values.
"""
import math

import torch
import torch.nn.functional as F
import pyro.distributions as dist
from pyro.nn import PyroModule

from .errors import DataError
from .fastmath import BernoulliLogits
from .registry import Registry

LIKELIHOODS = Registry("likelihood")
register = LIKELIHOODS.register


class Likelihood(PyroModule):
    """Base class. Subclasses take ``data_dim`` plus their own config parameters."""

    context_args = ("data_dim",)
    outputs_per_feature = 1
    #: a short hint for data that does not fit, shown in the error message
    fix_hint = "choose a likelihood that fits the data (see `pyro-vae list`)"

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = int(data_dim)

    @property
    def output_size(self) -> int:
        return self.outputs_per_feature * self.data_dim

    def split(self, out: torch.Tensor):
        """Split decoder output into ``outputs_per_feature`` tensors of shape (..., data_dim)."""
        return out.reshape(out.shape[:-1] + (self.outputs_per_feature, self.data_dim)).unbind(-2)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x | decoder output]: what reconstructions and sample grids show."""
        return self(out).mean

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        """Raise DataError when ``x`` cannot be scored by this likelihood."""
        bad = ~torch.isfinite(x)
        if bad.any():
            raise DataError(
                f"{where} has {int(bad.sum())} NaN/inf values (first at row {_first_row(bad)}); "
                "remove or impute them before training"
            )

    def _require(self, ok: torch.Tensor, x: torch.Tensor, where: str, what: str) -> None:
        if not bool(ok.all()):
            bad = ~ok
            rows = _first_row(bad)
            example = x[bad][0].item()
            raise DataError(
                f"likelihood {self.registry_name!r} needs {what}, but {where} has {int(bad.sum())} "
                f"values that are not (first at row {rows}: {example:g}); {self.fix_hint}"
            )


def _first_row(mask: torch.Tensor) -> int:
    return int(mask.reshape(mask.shape[0], -1).any(-1).nonzero()[0, 0]) if mask.dim() > 0 else 0


@register("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli on values in [0,1] (binary cross-entropy; grey levels allowed, as in Pyro's example)."""

    fix_hint = "scale the data to [0,1] (data.normalize=true) or binarize it (data.binarize=static)"

    def forward(self, out):
        # validate_args=False: grey levels in [0,1] are scored with the usual cross-entropy
        # BernoulliLogits: the same log-density, computed with the fast softplus (fastmath.py)
        return BernoulliLogits(logits=out, validate_args=False).to_event(1)

    def mean(self, out):
        return torch.sigmoid(out)

    def check_data(self, x, where="data"):
        super().check_data(x, where)
        self._require((x >= 0) & (x <= 1), x, where, "values in [0,1]")


@register("gaussian")
class Gaussian(Likelihood):
    """Gaussian N(decoder mean, scale); scale: a number | learned | per_feature | per_datum."""

    def __init__(self, data_dim: int, scale="learned"):
        super().__init__(data_dim)
        self.scale_mode = scale
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            if scale <= 0:
                raise ValueError(f"scale must be positive, got {scale}")
            self.register_buffer("fixed_log_scale", torch.tensor(math.log(scale)))
        elif scale == "learned":
            self.log_scale = torch.nn.Parameter(torch.zeros(()))
        elif scale == "per_feature":
            self.log_scale = torch.nn.Parameter(torch.zeros(data_dim))
        elif scale == "per_datum":
            self.outputs_per_feature = 2
        else:
            raise ValueError(f"scale must be a positive number, learned, per_feature or per_datum (got {scale!r})")

    def _loc_scale(self, out):
        if self.scale_mode == "per_datum":
            loc, raw = self.split(out)
            return loc, F.softplus(raw) + 1e-4
        if hasattr(self, "fixed_log_scale"):
            return out, self.fixed_log_scale.exp().expand_as(out)
        return out, (self.log_scale.exp() + 1e-4).expand_as(out)

    def forward(self, out):
        loc, scale = self._loc_scale(out)
        return dist.Normal(loc, scale).to_event(1)

    def mean(self, out):
        return self._loc_scale(out)[0]
