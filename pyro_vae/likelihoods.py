"""Likelihoods p(x|z): how decoder outputs become a Pyro distribution over x.

Each likelihood knows how many decoder outputs it needs per feature
(``outputs_per_feature``), which data it accepts (``check_data``) and how to turn
the decoder output of shape ``(batch, outputs_per_feature * data_dim)`` into a
distribution with ``event_shape == (data_dim,)``. The decoder output is laid out
as ``outputs_per_feature`` consecutive blocks of ``data_dim`` values.

Which values a likelihood scores: on image data, one with ``scores_levels = True`` (the
count and level likelihoods: categorical, binomial, discretized_logistic, poisson, ...)
receives the pixels as the integer levels the image holds (0..255 for 8-bit images, 0..16
for the digits); every other likelihood receives them scaled to [0,1]. The data path
(``pyro_vae.data.load_data``) reads this attribute, so no data key is needed. A likelihood
with ``levels`` set is a probability mass over the values 0..levels-1: evaluation reports
its bits per dimension.

One entry point scores and samples: ``likelihood(out, x=None)`` is the distribution of x
given the decoder output ``out``, and ``likelihood.mean(out, x=None)`` its mean. The models
pass the observed rows ``x`` wherever they score data (count likelihoods with
``library_size=observed`` scale by each row's own total); sampling and decoding pass none.
"""

import inspect
import math

import torch
import pyro.distributions as dist

from .errors import ConfigError, DataError
from .fastmath import BernoulliLogits, softplus
from .pyromodule import LocalPyroModule
from .registry import Registry
from .sparse import SparseRows

LIKELIHOODS = Registry("likelihood")
register = LIKELIHOODS.register


class Likelihood(LocalPyroModule):
    """Base class. Subclasses take ``data_dim`` plus their own config parameters and define
    ``forward(self, out)`` (optionally ``mean(self, out)``), or ``forward(self, out, x=None)``
    when the distribution depends on the observed rows ``x``."""

    context_args = ("data_dim",)
    outputs_per_feature = 1
    #: True: the encoder (and any classifier) reads log(1 + x) instead of x
    log_input = False
    #: a short hint for data that does not fit, shown in the error message
    fix_hint = "choose a likelihood that fits the data (see `pyro-vae list`)"
    #: True: image data come to it as integer pixel levels; False: scaled to [0,1]
    scores_levels = False
    #: a probability mass over the integers 0..levels-1 (bits per dimension are reported), or None
    levels = None

    def __init_subclass__(cls, **kwargs):
        """Give a subclass's ``forward`` / ``mean`` the signature ``(out, x=None)``: one written as
        ``(self, out)`` (the distribution does not depend on the observed row) is wrapped to
        accept and ignore ``x``; any other signature is a ConfigError."""
        super().__init_subclass__(**kwargs)
        for name in ("forward", "mean"):
            if name in cls.__dict__:
                setattr(cls, name, _taking_x(cls, name, cls.__dict__[name]))

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = int(data_dim)

    @property
    def output_size(self) -> int:
        return self.outputs_per_feature * self.data_dim

    def split(self, out: torch.Tensor):
        """Split decoder output into ``outputs_per_feature`` tensors of shape (..., data_dim)."""
        return out.reshape(out.shape[:-1] + (self.outputs_per_feature, self.data_dim)).unbind(-2)

    def forward(self, out: torch.Tensor, x=None) -> dist.TorchDistribution:  # pragma: no cover
        """p(x | decoder output ``out``). ``x``: the observed rows being scored, None when sampling
        or decoding; only a likelihood whose parameters depend on the observed row reads it."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor, x=None) -> torch.Tensor:
        """E[x | decoder output] (at the observed rows ``x`` when given): what reconstructions and
        sample grids show."""
        return self(out, x).mean

    def fit_data(self, x: torch.Tensor) -> None:
        """Called once with the training rows before training: statistics kept with the model
        (buffers, saved in model.pt). Default: nothing."""

    def check_data(self, x: torch.Tensor, where: str = "data", rows=None) -> None:
        """Raise DataError when ``x`` cannot be scored by this likelihood. ``rows``: the row
        number in the user's file of each row of ``x`` (for the message), if known."""
        if bool(torch.isfinite(x.sum())):  # one reduction, no mask: NaN/inf anywhere makes the sum so
            return
        bad = ~torch.isfinite(x)
        if bad.any():
            raise DataError(
                f"{where} has {int(bad.sum())} NaN/inf values (first at row {_first_row(bad, rows)}); "
                "remove or impute them before training"
            )

    def _require(self, ok: torch.Tensor, x: torch.Tensor, where: str, what: str, rows=None, hint=None) -> None:
        if not bool(ok.all()):
            bad = ~ok
            rows = _first_row(bad, rows)
            example = x[bad][0].item()
            raise DataError(
                f"likelihood {self.registry_name!r} needs {what}, but {where} has {int(bad.sum())} "
                f"values that are not (first at row {rows}: {example:g}); {hint or self.fix_hint}"
            )


def _taking_x(cls, name: str, fn):
    """``fn`` (``cls``'s own ``forward`` or ``mean``) callable as ``fn(self, out, x=None)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and _binds(sig, 3) and _binds(sig, 2):
        return fn
    if sig is not None and _binds(sig, 2):

        def ignoring_x(self, out, x=None):
            return fn(self, out)

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(ignoring_x, attr, getattr(fn, attr, None))
        return ignoring_x
    raise ConfigError(
        f"likelihood class {cls.__qualname__}: {name}{sig if sig is not None else ''} must be "
        f"{name}(self, out) or {name}(self, out, x=None) (x: the observed rows, None when sampling)"
    )


def _binds(sig: inspect.Signature, n: int) -> bool:
    """Whether a call with ``n`` positional arguments fits ``sig``."""
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def _check_unit_interval(lik: "Likelihood", x: torch.Tensor, where: str, rows=None) -> None:
    """Finite values in [0,1]: one min/max pass on clean data (NaN fails both comparisons), the
    row-by-row search only when something is wrong."""
    if x.numel():
        lo, hi = torch.aminmax(x)
        if bool(lo >= 0) and bool(hi <= 1):
            return
    Likelihood.check_data(lik, x, where, rows)
    lik._require((x >= 0) & (x <= 1), x, where, "values in [0,1]", rows)


def _first_row(mask: torch.Tensor, rows=None) -> int:
    i = int(mask.reshape(mask.shape[0], -1).any(-1).nonzero()[0, 0]) if mask.dim() > 0 else 0
    return int(rows[i]) if rows is not None else i


@register("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli on values in [0,1] (binary cross-entropy; grey levels allowed, as in Pyro's example)."""

    fix_hint = (
        "for real-valued data use likelihood.name=gaussian; for integer pixel levels (0..255) use "
        "likelihood.name=discretized_logistic or categorical"
    )

    def forward(self, out):
        # validate_args=False: grey levels in [0,1] are scored with the usual cross-entropy
        # BernoulliLogits: the same log-density, computed with the fast softplus (fastmath.py)
        return BernoulliLogits(logits=out, validate_args=False).to_event(1)

    def mean(self, out):
        return torch.sigmoid(out)

    def check_data(self, x, where="data", rows=None):
        _check_unit_interval(self, x, where, rows)


class LocScale(Likelihood):
    """Base for location-scale families: the decoder gives the location; the scale is a
    fixed number, one learned scalar (``learned``), one per feature (``per_feature``), or
    predicted per datum by the decoder (``per_datum``)."""

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
            return loc, softplus(raw) + 1e-4
        if hasattr(self, "fixed_log_scale"):
            return out, self.fixed_log_scale.exp().expand_as(out)
        return out, (self.log_scale.exp() + 1e-4).expand_as(out)

    def mean(self, out):
        return self._loc_scale(out)[0]


@register("gaussian")
class Gaussian(LocScale):
    """Gaussian N(decoder mean, scale); scale: a number | learned | per_feature | per_datum."""

    def forward(self, out):
        loc, scale = self._loc_scale(out)
        return dist.Normal(loc, scale).to_event(1)


@register("laplace")
class Laplace(LocScale):
    """Laplace(decoder location, scale): an L1 reconstruction error; scale as for gaussian."""

    def forward(self, out):
        loc, scale = self._loc_scale(out)
        return dist.Laplace(loc, scale).to_event(1)


@register("student_t")
class StudentT(LocScale):
    """Student-t(df, decoder location, scale): robust to outliers; scale as for gaussian."""

    def __init__(self, data_dim: int, df: float = 3.0, scale="learned"):
        super().__init__(data_dim, scale)
        if df <= 0:
            raise ValueError(f"df must be positive, got {df}")
        self.df = float(df)

    def forward(self, out):
        loc, scale = self._loc_scale(out)
        return dist.StudentT(torch.full_like(loc, self.df), loc, scale).to_event(1)


@register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0,1]."""

    fix_hint = "for real-valued data use likelihood.name=gaussian"

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out.float().clamp(-30, 30)).to_event(1)

    def check_data(self, x, where="data", rows=None):
        _check_unit_interval(self, x, where, rows)


@register("beta")
class Beta(Likelihood):
    """Beta(a, b) per feature, a and b from the decoder (softplus); values strictly inside (0,1)."""

    outputs_per_feature = 2
    fix_hint = (
        "values of exactly 0 or 1 have no Beta density: squeeze them, e.g. x*0.98+0.01, or use continuous_bernoulli"
    )

    def _ab(self, out):
        a, b = self.split(out)
        return softplus(a) + 1e-3, softplus(b) + 1e-3

    def forward(self, out):
        a, b = self._ab(out)
        return dist.Beta(a, b).to_event(1)

    def mean(self, out):
        a, b = self._ab(out)
        return a / (a + b)

    def check_data(self, x, where="data", rows=None):
        super().check_data(x, where, rows)
        self._require((x > 0) & (x < 1), x, where, "values strictly inside (0,1)", rows)


class _Counts(Likelihood):
    """Shared check for count likelihoods: non-negative integers (image data: the pixel levels)."""

    fix_hint = (
        "count likelihoods need the integer counts themselves (image data sets give them their "
        "levels); for real values use likelihood.name=gaussian"
    )
    scores_levels = True
    max_value = None
    #: the hint when a value is above ``max_value``
    range_hint = None

    def check_data(self, x, where="data", rows=None):
        super().check_data(x, where, rows)
        self._require((x >= 0) & (x == x.round()), x, where, "non-negative integer counts", rows)
        if self.max_value is not None:
            self._require(x <= self.max_value, x, where, f"counts of at most {self.max_value}", rows, self.range_hint)


@register("categorical")
class Categorical(_Counts):
    """Categorical over `levels` integer values 0..levels-1 per feature (e.g. 256 grey levels)."""

    def __init__(self, data_dim: int, levels: int = 256):
        super().__init__(data_dim)
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.levels = int(levels)
        self.outputs_per_feature = self.levels
        self.max_value = self.levels - 1
        self.range_hint = "set likelihood.levels to the number of values (the digits: 17, 8-bit images: 256)"

    def _logits(self, out):  # (..., K*D) -> (..., D, K)
        return out.reshape(out.shape[:-1] + (self.levels, self.data_dim)).transpose(-1, -2).float()

    def forward(self, out):
        return dist.Categorical(logits=self._logits(out)).to_event(1)

    def mean(self, out):
        probs = self._logits(out).softmax(-1)
        return probs @ torch.arange(self.levels, dtype=probs.dtype, device=probs.device)


@register("binomial")
class Binomial(_Counts):
    """Binomial(total_count, p) per feature: integer levels 0..total_count (digits: total_count=16)."""

    def __init__(self, data_dim: int, total_count: int = 16):
        super().__init__(data_dim)
        if total_count < 1 or int(total_count) != total_count:
            raise ValueError(f"total_count must be a positive integer, got {total_count}")
        self.total_count = int(total_count)
        self.max_value = self.total_count
        self.levels = self.total_count + 1
        self.range_hint = "set likelihood.total_count to the top level (the digits: 16, 8-bit images: 255)"

    def forward(self, out):
        return dist.Binomial(total_count=self.total_count, logits=out.float(), validate_args=False).to_event(1)

    def mean(self, out):
        return self.total_count * torch.sigmoid(out)


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """A mixture of K logistics discretized to the integers 0..levels-1 (Salimans et al. 2017,
    PixelCNN++), one per element of the batch; ``event_shape == ()``.

    Level k sits at c_k = 2k/(levels-1) - 1 in [-1, 1], its bin is [c_k - h, c_k + h] with
    h = 1/(levels-1), and the two edge bins reach to -inf and +inf, so the masses of the levels
    sum to one. With F_j the CDF of component j (location mu_j, scale s_j = exp(log_scale_j)) and
    pi = softmax(logits)::

        P(k) = sum_j pi_j [F_j(c_k + h) - F_j(c_k - h)]      0 < k < levels-1
        P(0) = sum_j pi_j F_j(c_0 + h),   P(levels-1) = sum_j pi_j [1 - F_j(c_last - h)]

    The difference of two sigmoids is evaluated without subtracting them: with
    a = (c_k + h - mu)/s and b = (c_k - h - mu)/s,
    log(sigmoid(a) - sigmoid(b)) = -softplus(-a) - softplus(b) + log(1 - exp(-2h/s)),
    each term free of cancellation in float32 for any a, b and s (no CDF difference underflows, so no
    mid-bin density fallback is needed); the edge bins are -softplus(-a) and -softplus(b).

    ``loc``, ``log_scale``, ``logits``: (..., K), in the [-1, 1] coordinates of the levels;
    ``logits`` may be None for K = 1.
    """

    arg_constraints = {"loc": dist.constraints.real, "log_scale": dist.constraints.real}
    has_rsample = False

    def __init__(self, loc, log_scale, logits=None, levels: int = 256, validate_args=None):
        if logits is None:
            logits = torch.zeros_like(loc)
        self.loc, self.log_scale, self.logits = torch.broadcast_tensors(loc, log_scale, logits)
        self.levels = int(levels)
        super().__init__(self.loc.shape[:-1], torch.Size(), validate_args=validate_args)

    @dist.constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return dist.constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.loc.shape[-1:]
        new.loc, new.log_scale, new.logits = (t.expand(shape) for t in (self.loc, self.log_scale, self.logits))
        new.levels = self.levels
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = value.to(self.loc.dtype).unsqueeze(-1)
        h = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-self.log_scale)
        centre = k * (2 * h) - 1 - self.loc
        a, b = (centre + h) * inv_s, (centre - h) * inv_s
        bottom, top = k <= 0, k >= self.levels - 1
        width = torch.log((-torch.expm1(-(2 * h) * inv_s)).clamp_min(1e-38))  # log(1 - exp(-2h/s))
        log_mass = (
            torch.where(top, 0.0, -softplus(-a))
            + torch.where(bottom, 0.0, -softplus(b))
            + torch.where(bottom | top, 0.0, width)
        )
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + log_mass, -1)

    def sample(self, sample_shape=torch.Size()):
        """Integer levels (as floats, like the data): a component by its weight, a logistic draw
        x = mu + s (log u - log(1 - u)), then the level whose bin holds x."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            j = dist.Categorical(logits=self.logits).sample(sample_shape)[..., None]
            k = self.loc.shape[-1]

            def pick(t):
                return t.expand(shape + (k,)).gather(-1, j).squeeze(-1)

            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = pick(self.loc) + pick(self.log_scale).exp() * (u.log() - torch.log1p(-u))
            return ((x + 1) * ((self.levels - 1) / 2)).round().clamp(0, self.levels - 1)

    @property
    def mean(self):
        """E[k] = sum_{j < levels-1} P(k > j), computed over chunks of levels (bounded memory)."""
        h = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-self.log_scale)[..., None]
        loc = self.loc[..., None]
        weights = torch.softmax(self.logits, -1)
        total = torch.zeros_like(self.loc)
        for start in range(0, self.levels - 1, 64):
            j = torch.arange(start, min(start + 64, self.levels - 1), dtype=loc.dtype, device=loc.device)
            edge = j * (2 * h) - 1 + h  # the upper edge of level j's bin
            total = total + torch.sigmoid((loc - edge) * inv_s).sum(-1)
        return (weights * total).sum(-1)


@register("discretized_logistic")
class DiscretizedLogistic(_Counts):
    """Discretized logistic (mixture) over the 2^bits pixel levels (Salimans et al. 2017, PixelCNN++).

    Each pixel's value k in 0..2^bits-1 has the probability mass of a logistic (or a mixture of
    ``mixtures`` logistics, the weights from the decoder too) on k's bin; the edge bins take the
    tails (see :class:`DiscretizedLogisticMixture`). The decoder gives, per pixel, the location
    (in [-1, 1] coordinates: level 0 at -1, the top level at 1) and the log scale (clamped at
    -7, as in PixelCNN++), plus the mixture logits when ``mixtures > 1``.

    Values: integer levels 0..2^bits-1. On image data sets this likelihood receives each pixel's
    level as the image stores it (``scores_levels``), 0..255 for 8-bit images; any other
    value (a fraction, a level above the top) is refused before training. A data set with fewer
    levels than 2^bits (the digits' 0..16) fits inside the range; its bits per dimension are
    those of a code over all 2^bits levels (for the digits bits=5, 0..31, is the smallest range
    that holds them).
    """

    def __init__(self, data_dim: int, bits: int = 8, mixtures: int = 1):
        super().__init__(data_dim)
        if int(bits) != bits or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an integer from 1 to 16, got {bits}")
        if int(mixtures) != mixtures or mixtures < 1:
            raise ValueError(f"mixtures must be a positive integer, got {mixtures}")
        self.bits, self.mixtures = int(bits), int(mixtures)
        self.levels = 2**self.bits
        self.max_value = self.levels - 1
        self.outputs_per_feature = 2 if self.mixtures == 1 else 3 * self.mixtures
        self.fix_hint = (
            f"give integer pixel levels 0..{self.max_value} (e.g. round(x * {self.max_value}) of x in [0,1])"
        )
        self.range_hint = f"likelihood.bits={self.bits} scores levels 0..{self.max_value}: raise likelihood.bits"

    def forward(self, out):
        parts = torch.stack(self.split(out.float()), -1)  # (..., D, outputs_per_feature)
        if self.mixtures == 1:
            loc, log_scale, logits = parts[..., :1], parts[..., 1:], None
        else:
            logits, loc, log_scale = parts.split(self.mixtures, -1)
        return DiscretizedLogisticMixture(
            loc, log_scale.clamp_min(-7.0), logits, self.levels, validate_args=False
        ).to_event(1)


LIBRARY_SIZES = ("observed", "none")


def row_totals(x: torch.Tensor) -> torch.Tensor:
    """Sum of each row (dense, torch sparse or :class:`SparseRows`): the library size l of a row of counts."""
    if isinstance(x, SparseRows):
        return x.row_sums()
    if x.is_sparse:
        return torch.sparse.sum(x, 1).to_dense().float()
    return x.float().sum(-1)


def columns_of(x, columns: torch.Tensor):
    """Columns ``columns`` of the rows ``x`` (dense, torch sparse, or :class:`SparseRows`, kept sparse)."""
    if isinstance(x, SparseRows):
        return x.columns(columns)
    if x.is_sparse:
        return x.to_dense()[:, columns]
    return x[..., columns]


class _LibraryCounts(_Counts):
    """Counts whose mean may be scaled by each row's total count (the library size, as in scVI).

    ``library_size=none``: the decoder output gives the mean directly (see each subclass).
    ``library_size=observed`` (Lopez et al. 2018, scVI with the observed library size): the
    decoder gives proportions over the features and the row's total count scales them::

        rho = softmax(a)          a: the decoder's mean block, rho sums to 1 over features
        l   = sum_j x_j           the observed row's total count (at least 1e-8)
        mu  = rho * l             the mean of x, per feature

    so the latent code describes composition, not sequencing depth, and a row with 10x the
    counts gets 10x the mean. Without an observed row (``decode``, ``sample``) ``l`` is the
    median total of the training rows, stored with the model (``typical_library``).
    Encoders read log(1 + x) (``log_input``), as scVI's do.
    """

    log_input = True

    def __init__(self, data_dim: int, library_size: str = "observed"):
        super().__init__(data_dim)
        if library_size not in LIBRARY_SIZES:
            raise ValueError(f"library_size must be one of {', '.join(LIBRARY_SIZES)} (got {library_size!r})")
        self.library_size = library_size
        if library_size == "observed":
            # NaN until fit_data: decoding without an observed row before training is an error
            self.register_buffer("typical_library", torch.tensor(float("nan")))

    def fit_data(self, x):
        if self.library_size == "observed":
            self.typical_library.fill_(float(row_totals(x).median()))

    def _log_mean(self, a: torch.Tensor, x=None) -> torch.Tensor:
        """log mu = log softmax(a) + log l (library_size=observed only)."""
        if x is not None:
            log_l = row_totals(x).clamp_min(1e-8).log()[..., None]
        else:
            if torch.isnan(self.typical_library):
                raise DataError(
                    f"likelihood {self.registry_name!r} with library_size=observed needs the "
                    "observed rows or a trained model (the median training total)"
                )
            log_l = self.typical_library.clamp_min(1e-8).log()
        return torch.log_softmax(a.float(), -1) + log_l


@register("poisson")
class Poisson(_LibraryCounts):
    """Poisson(rate) per feature: rate = softplus(decoder) (library_size=none) or softmax(decoder) * l.

    library_size: observed (mean = proportions * the row's total count) | none (see _LibraryCounts).
    """

    def _rate(self, out, x=None):
        if self.library_size == "none":
            return softplus(out.float()) + 1e-6
        return self._log_mean(out, x).exp() + 1e-8

    def forward(self, out, x=None):
        return dist.Poisson(self._rate(out, x), validate_args=False).to_event(1)

    def mean(self, out, x=None):
        return self._rate(out, x)


def _nb_terms(theta, a, x):
    """log NB(x; theta, logits a) = c + e, split at x = 0::

        c = log NB(0) = -theta * softplus(a)
        e = x * (a - softplus(a)) + lgamma(theta + x) - lgamma(theta) - lgamma(x + 1)   (0 at x = 0)

    One softplus (torch: two logsigmoids) and lgamma(theta) on theta's own shape, one per
    feature (torch broadcasts it to the batch first; its gradient, digamma, is slow on CPUs)."""
    sp = softplus(a)
    c = -theta * sp
    e = x * (a - sp) + torch.lgamma(theta + x) - torch.lgamma(theta) - torch.lgamma(x + 1)
    return c, e


class _NBLogits(dist.NegativeBinomial):
    """torch's NegativeBinomial(total_count, logits) with a faster log_prob (same values)."""

    theta = None  # total_count before broadcasting, when known (lost by expand: then the broadcast one)

    def log_prob(self, value):
        c, e = _nb_terms(self.total_count if self.theta is None else self.theta, self.logits, value)
        return c + e


def _keep_theta(cls):
    """``expand`` (Pyro's plates call it) keeps the unbroadcast total_count."""

    def expand(self, batch_shape, _instance=None):
        new = super(cls, self).expand(batch_shape, _instance)
        new.theta = self.theta
        return new

    cls.expand = expand
    return cls


_keep_theta(_NBLogits)


@_keep_theta
class _ZINBLogits(dist.ZeroInflatedNegativeBinomial):
    """Pyro's ZeroInflatedNegativeBinomial (gate logits g) with a faster log_prob (same values)::

    x > 0:  log(1 - pi) + log NB(x)      = -softplus(g) + c + e
    x = 0:  log(pi + (1 - pi) NB(0))     = -softplus(g) + c + softplus(g - c)
    """

    theta = None

    def log_prob(self, value):
        theta = self.base_dist.total_count if self.theta is None else self.theta
        c, e = _nb_terms(theta, self.base_dist.logits, value)
        g = self.gate_logits
        return c - softplus(g) + torch.where(value > 0, e, softplus(g - c))


def _with_theta(d, theta):
    d.theta = theta
    return d


class _NB(_LibraryCounts):
    """Negative binomial with a learned inverse dispersion theta per feature: mean mu,
    variance mu + mu^2 / theta. NB(total_count=theta, logits=log mu - log theta)."""

    def __init__(self, data_dim: int, library_size: str = "observed"):
        super().__init__(data_dim, library_size)
        self.log_total_count = torch.nn.Parameter(torch.zeros(data_dim))  # log theta

    def _logits(self, a, x=None):
        if self.library_size == "none":
            return a.float()  # mu = theta * exp(a)
        return self._log_mean(a, x) - self.log_total_count


@register("negative_binomial")
class NegativeBinomial(_NB):
    """Negative binomial with a learned dispersion per feature: overdispersed counts.

    Mean mu = softmax(decoder) * l (library_size=observed; l the row's total count) or
    theta * exp(decoder) (none); variance mu + mu^2 / theta with theta learned per feature.
    """

    def forward(self, out, x=None):
        theta = self.log_total_count.exp()
        return _with_theta(
            _NBLogits(total_count=theta, logits=self._logits(out, x), validate_args=False), theta
        ).to_event(1)

    def mean(self, out, x=None):
        return self.log_total_count.exp() * torch.exp(self._logits(out, x))


@register("zinb")
class ZINB(_NB):
    """Zero-inflated negative binomial (single-cell counts): the decoder gives the mean and gate logits.

    p(x) = pi * [x = 0] + (1 - pi) * NB(x; mu, theta), pi = sigmoid(gate); mu as for
    negative_binomial (library_size=observed: softmax(decoder) * the row's total count).
    """

    outputs_per_feature = 2

    def forward(self, out, x=None):
        a, gate = self.split(out.float())
        theta = self.log_total_count.exp()
        return _with_theta(
            _ZINBLogits(total_count=theta, logits=self._logits(a, x), gate_logits=gate, validate_args=False), theta
        ).to_event(1)

    def mean(self, out, x=None):
        a, gate = self.split(out.float())
        return torch.sigmoid(-gate) * self.log_total_count.exp() * torch.exp(self._logits(a, x))


class _MixedColumns(dist.TorchDistribution):
    """Independent groups of columns, each with its own distribution; event_shape (D,)."""

    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self, parts, columns, data_dim):
        self.parts, self.columns, self.data_dim = parts, columns, data_dim
        batch_shape = parts[0].batch_shape
        super().__init__(batch_shape, torch.Size([data_dim]), validate_args=False)

    def log_prob(self, value):
        return sum(d.log_prob(value[..., c]) for d, c in zip(self.parts, self.columns))

    def _scatter(self, pieces):
        out = pieces[0].new_empty(pieces[0].shape[:-1] + (self.data_dim,))
        for piece, c in zip(pieces, self.columns):
            out[..., c] = piece.to(out.dtype)
        return out

    def sample(self, sample_shape=torch.Size()):
        return self._scatter([d.sample(sample_shape) for d in self.parts])

    def expand(self, batch_shape, _instance=None):
        return _MixedColumns([d.expand(batch_shape) for d in self.parts], self.columns, self.data_dim)


@register("mixed")
class Mixed(Likelihood):
    """Tabular data whose column groups each have their own likelihood.

    groups: [{columns: [0,1,2,3], name: gaussian}, {columns: [4], name: categorical, levels: 3},
             {columns: [5,6], name: bernoulli}]  -- every column in exactly one group.
    """

    def __init__(self, data_dim: int, groups=()):
        super().__init__(data_dim)
        groups = [dict(g) for g in groups]
        if not groups:
            raise ValueError("mixed needs groups: [{columns: [...], name: ...}, ...]")
        seen = []
        for g in groups:
            if "columns" not in g or "name" not in g:
                raise ValueError("each mixed group needs 'columns' and 'name'")
            seen += list(g["columns"])
        if sorted(seen) != list(range(data_dim)):
            raise ValueError(f"mixed groups must cover columns 0..{data_dim - 1} exactly once (got {sorted(seen)})")
        self.columns = [torch.tensor(list(g.pop("columns")), dtype=torch.long) for g in groups]
        self.parts = torch.nn.ModuleList([LIKELIHOODS.build(g, data_dim=len(c)) for g, c in zip(groups, self.columns)])
        self.sizes = [p.output_size for p in self.parts]

    @property
    def output_size(self) -> int:
        return sum(self.sizes)

    def _groups(self, out, x=None):
        """(part, its decoder outputs, its observed columns or None) for each column group."""
        xs = [None] * len(self.columns) if x is None else [x[..., c] for c in self.columns]
        return zip(self.parts, out.split(self.sizes, -1), xs)

    def forward(self, out, x=None):
        parts = [p(o, xc) for p, o, xc in self._groups(out, x)]
        return _MixedColumns(parts, self.columns, self.data_dim)

    def fit_data(self, x):
        for p, c in zip(self.parts, self.columns):
            p.fit_data(columns_of(x, c))

    def mean(self, out, x=None):
        pieces = [p.mean(o, xc) for p, o, xc in self._groups(out, x)]
        res = pieces[0].new_empty(out.shape[:-1] + (self.data_dim,))
        for piece, c in zip(pieces, self.columns):
            res[..., c] = piece.to(res.dtype)
        return res

    def check_data(self, x, where="data", rows=None):
        super().check_data(x, where, rows)
        for p, c in zip(self.parts, self.columns):
            p.check_data(x[:, c], where=f"{where} (columns {c.tolist()})", rows=rows)
