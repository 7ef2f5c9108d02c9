"""Priors p(z): one small PyroModule per prior, registered by name.

A prior is called with no arguments and returns a Pyro distribution whose
``event_shape`` is ``(latent_dim,)`` and whose ``batch_shape`` is ``()``; the
model's ``pyro.plate`` broadcasts it over the data. Learnable priors hold their
parameters as ordinary ``nn.Parameter``s, so they train with the networks.

Register your own from your own module::

    from pyro_vae.priors import Prior, register

    @register("my_prior")
    class MyPrior(Prior):
        "One line shown by `pyro-vae list`."
        def __init__(self, latent_dim, width=1.0):
            super().__init__(latent_dim)
            self.width = width
        def forward(self):
            loc = self.zeros()  # on the model's device
            return dist.Normal(loc, self.width * torch.ones_like(loc)).to_event(1)
"""

import math

import torch
import pyro.distributions as dist

from .pyromodule import LocalPyroModule
from .registry import Registry

PRIORS = Registry("prior")
register = PRIORS.register


class Prior(LocalPyroModule):
    """Base class. Subclasses take ``latent_dim`` plus their own config parameters."""

    context_args = ("latent_dim",)
    #: True when KL(Normal guide || this prior) has a closed form known to torch/Pyro,
    #: so ``train.elbo=meanfield`` (TraceMeanField_ELBO) computes it analytically.
    analytic_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)
        # a buffer that moves with .to(device), so priors build their tensors on the right device
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def zeros(self) -> torch.Tensor:
        """A zero vector of size latent_dim on the prior's device (to build distributions from)."""
        return self._zero.expand(self.latent_dim)

    def attach(self, vae) -> None:
        """Hook called once the model is built (e.g. VampPrior needs the model's q_z)."""

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@register("normal")
class StandardNormal(Prior):
    """Standard Normal N(0, I): the classic VAE prior."""

    analytic_kl = True

    def forward(self):
        loc = self.zeros()
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


@register("learned_normal")
class LearnedNormal(Prior):
    """Diagonal Normal N(loc, diag(scale^2)) with learnable loc and scale."""

    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = torch.nn.Parameter(torch.zeros(self.latent_dim))
        self.log_scale = torch.nn.Parameter(torch.zeros(self.latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class DiagGaussianMixture(dist.MixtureSameFamily):
    """sum_k w_k N(loc_k, diag(scale_k^2)) with a log-density computed by matrix products.

    log N(z; m, s) summed over D = -1/2 [z^2 . s^-2 - 2 z . m s^-2 + m^2 . s^-2] - sum log s - D/2 log 2pi,
    so scoring N points against K components costs (N x D) @ (D x K) products instead of an
    (N, K, D) intermediate: VampPrior with 500 components stays cheap, also for IWAE.
    """

    def log_prob(self, z):
        comp = self.component_distribution.base_dist
        loc, scale = comp.loc, comp.scale  # (K, D)
        if loc.dim() != 2:  # expanded (batched) mixtures: use the generic path
            return super().log_prob(z)
        prec = scale.float().pow(-2)
        loc = loc.float()
        zf = z.float()
        lead = zf.shape[:-1]
        zf = zf.reshape(-1, zf.shape[-1])
        quad = zf.pow(2) @ prec.T - 2 * zf @ (loc * prec).T + (loc.pow(2) * prec).sum(-1)
        const = scale.float().log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        comp_lp = -0.5 * quad - const  # (N, K)
        mix = torch.log_softmax(self.mixture_distribution.logits.float(), -1)
        return torch.logsumexp(comp_lp + mix, -1).reshape(lead)

    def expand(self, batch_shape, _instance=None):
        # keep the fast log_prob under pyro.plate: scoring broadcasts over any leading shape
        new = self._get_checked_instance(DiagGaussianMixture, _instance)
        new.__dict__.update(self.__dict__)
        new._batch_shape = torch.Size(batch_shape)
        dist.TorchDistribution.__init__(new, torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._expanded_sample = True
        return new

    def sample(self, sample_shape=torch.Size()):
        base = DiagGaussianMixture(self.mixture_distribution, self.component_distribution)
        shape = torch.Size(sample_shape) + self.batch_shape
        return dist.MixtureSameFamily.sample(base, shape)


def _gaussian_mixture(logits, locs, scales):
    """sum_k softmax(logits)_k N(locs_k, diag(scales_k^2)); event_shape (D,)."""
    return DiagGaussianMixture(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))


@register("mog")
class MixtureOfGaussians(Prior):
    """Mixture of K learnable diagonal Gaussians (weights, means and scales all learned)."""

    def __init__(self, latent_dim: int, components: int = 10, init_spread: float = 1.0):
        super().__init__(latent_dim)
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        g = torch.Generator().manual_seed(0)
        self.locs = torch.nn.Parameter(init_spread * torch.randn(components, self.latent_dim, generator=g))
        self.log_scales = torch.nn.Parameter(torch.zeros(components, self.latent_dim))
        self.logits = torch.nn.Parameter(torch.zeros(components))

    def forward(self):
        return _gaussian_mixture(self.logits, self.locs, self.log_scales.exp())


@register("vamp")
class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), K learnable pseudo-inputs u_k.

    The pseudo-inputs live in data space and go through the VAE's own encoder, so the
    prior is a mixture of the encoder's posteriors. Initialised uniformly in
    [init_low, init_high] (the data's range for images scaled to [0,1]).
    """

    def __init__(self, latent_dim: int, components: int = 500, init_low: float = 0.0, init_high: float = 1.0):
        super().__init__(latent_dim)
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        self.components = int(components)
        self.init_low, self.init_high = float(init_low), float(init_high)
        self.pseudo_inputs = None

    def attach(self, vae) -> None:
        g = torch.Generator().manual_seed(0)
        u = self.init_low + (self.init_high - self.init_low) * torch.rand(self.components, vae.data_dim, generator=g)
        self.pseudo_inputs = torch.nn.Parameter(u)
        # a bound method, not a submodule: the encoder's weights belong to the model
        self._encode = vae.q_z

    def forward(self):
        if self.pseudo_inputs is None:
            raise RuntimeError("VampPrior needs attach(vae) before use")
        loc, scale = self._encode(self.pseudo_inputs)
        return _gaussian_mixture(torch.zeros_like(loc[:, 0]), loc, scale)


@register("flow")
class FlowPrior(Prior):
    """Normalizing flow on N(0, I) with Pyro's transforms: `transform` = affine | spline, `layers` deep.

    affine: affine autoregressive (IAF/MAF-style) layers with `hidden` units and a permutation
    between layers; spline: neural spline autoregressive layers. Density by change of variables.
    """

    def __init__(self, latent_dim: int, layers: int = 2, transform: str = "affine", hidden: int = 64):
        super().__init__(latent_dim)
        import pyro.distributions.transforms as T

        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        if transform not in ("affine", "spline"):
            raise ValueError(f"transform must be affine or spline, got {transform!r}")
        if self.latent_dim < 2:
            raise ValueError("a flow prior needs latent_dim >= 2 (autoregressive layers)")
        modules, parts = [], []
        for i in range(int(layers)):
            make = T.affine_autoregressive if transform == "affine" else T.spline_autoregressive
            layer = make(self.latent_dim, hidden_dims=[hidden, hidden])
            modules.append(layer)
            # used inverted (MAF direction): scoring z ~ q(z|x), which every ELBO step does,
            # is one network pass; only sampling from the prior runs the sequential direction
            parts.append(layer.inv)
            if i < layers - 1:
                parts.append(T.Permute(torch.arange(self.latent_dim - 1, -1, -1)))
        self.transforms = torch.nn.ModuleList(modules)
        self._all = parts

    def forward(self):
        loc = self.zeros()
        base = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
        return dist.TransformedDistribution(base, self._all)


@register("laplace")
class LaplacePrior(Prior):
    """Factorised Laplace(0, scale): heavier tails and sparser codes than the Normal."""

    def __init__(self, latent_dim: int, scale: float = 1.0):
        super().__init__(latent_dim)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self):
        loc = self.zeros()
        return dist.Laplace(loc, torch.full_like(loc, self.scale)).to_event(1)


@register("student_t")
class StudentTPrior(Prior):
    """Factorised Student-t(df, 0, scale): heavy tails; df -> infinity recovers the Normal."""

    def __init__(self, latent_dim: int, df: float = 3.0, scale: float = 1.0):
        super().__init__(latent_dim)
        if df <= 0 or scale <= 0:
            raise ValueError(f"df and scale must be positive, got df={df}, scale={scale}")
        self.df, self.scale = float(df), float(scale)

    def forward(self):
        loc = self.zeros()
        return dist.StudentT(torch.full_like(loc, self.df), loc, torch.full_like(loc, self.scale)).to_event(1)
