"""What every model kind is: a Pyro program (``model`` / ``guide``) plus the user API.

A model kind subclasses :class:`LatentVariableModel` and registers itself in
:data:`MODELS` with a small config dataclass (its ``model.*`` keys)::

    @MODELS.register("vae", config=VAEConfig)
    class VAE(LatentVariableModel):
        ...

The abstract methods are the whole interface the rest of the library relies on;
classifiers add :class:`Classifier`, models with a continuous code to walk along add
:class:`LatentPaths`. Nothing here trains: the training side of each kind lives in
:mod:`pyro_vae.training`.
"""

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from ..errors import PyroVAEError
from ..networks import reads_input
from ..pyromodule import LocalPyroModule
from ..registry import Registry
from ..utils import save_tensors

MODELS = Registry("model")


@dataclass
class DataInfo:
    """What a model needs to know about its data to be rebuilt from a config."""

    data_dim: int
    image_shape: Optional[Tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    num_data: Optional[int] = None
    class_names: Optional[List[str]] = None  # label k's name, when the data named its classes
    levels: Optional[int] = None  # images: the pixel levels L of the source (values 0..L-1)
    covariates: Optional[List[dict]] = None  # the data's covariates (Dataset.covariate_specs): keys, names, scales

    def to_dict(self):
        d = {
            "data_dim": self.data_dim,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "num_classes": self.num_classes,
            "num_data": self.num_data,
        }
        if self.class_names:
            d["class_names"] = [str(c) for c in self.class_names]
        if self.levels:
            d["levels"] = int(self.levels)
        if self.covariates:
            d["covariates"] = [dict(c) for c in self.covariates]
        return d

    @classmethod
    def from_dict(cls, d):
        shape = d.get("image_shape")
        names = d.get("class_names")
        return cls(
            d["data_dim"],
            tuple(shape) if shape else None,
            d.get("num_classes"),
            d.get("num_data"),
            list(names) if names else None,
            d.get("levels"),
            d.get("covariates"),
        )


class LevelsInput(torch.nn.Module):
    """``module(x / (levels - 1))``: pixel levels 0..levels-1 seen in [0,1]."""

    def __init__(self, module: torch.nn.Module, levels: int):
        super().__init__()
        self.module = module
        self.scale = 1.0 / (int(levels) - 1)
        self.out_dim = getattr(module, "out_dim", None)

    def forward(self, x, *args, **kwargs):
        return self.module(x * self.scale, *args, **kwargs)


def network_input(module: torch.nn.Module, likelihood, info: DataInfo) -> torch.nn.Module:
    """``module`` as the first network to see the data. Image pixels reach a likelihood over
    integer levels as levels 0..L-1 (``likelihood.scores_levels``) and every other likelihood
    scaled to [0,1]; the network sees [0,1] either way (levels / (L-1), L the source's level
    count). Otherwise :func:`pyro_vae.networks.reads_input` (log(1 + x) for count likelihoods)."""
    if info.levels and getattr(likelihood, "scores_levels", False) and not getattr(likelihood, "log_input", False):
        return LevelsInput(module, info.levels)
    return reads_input(module, likelihood)


#: the layout of ``model.pt`` (see :meth:`LatentVariableModel.save` and ``pyro_vae.load``)
CHECKPOINT_FORMAT = "pyro_vae/2"


def export_payload(model, cfg, info: DataInfo) -> dict:
    """What ``model.pt`` holds: only strings, numbers and tensors (read with ``weights_only=True``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": OmegaConf.to_yaml(cfg),
        "info": info.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


class _ModelMeta(type(LocalPyroModule), abc.ABCMeta):
    """PyroModule's metaclass with abstract-method checks."""


class LatentVariableModel(LocalPyroModule, metaclass=_ModelMeta):
    """Base class of every model kind.

    ``model(x, ...)`` is the generative program p(x, z, ...) and ``guide(x, ...)`` the
    variational posterior q(z, ... | x); both run inside ``pyro.plate("data", num_data,
    subsample=...)`` so a minibatch loss estimates the full-data objective. ``beta``
    scales the continuous latent sites in both (KL warm-up).
    """

    def __init__(
        self, encoder, decoder, prior, likelihood, latent_dim: int, image_shape=None, num_data: Optional[int] = None
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.latent_dim = int(latent_dim)
        self.data_dim = likelihood.data_dim
        self.image_shape = image_shape
        self.num_data = num_data  # plate size (training-set size); None = the minibatch is the whole data
        self.beta = 1.0  # KL weight: scales the z sites of model and guide (1 = the ELBO)
        prior.attach(self)

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, info: DataInfo) -> "LatentVariableModel":
        """Build from a resolved config (``cfg.model`` holds this kind's keys) and the data's shape."""

    @abc.abstractmethod
    def model(self, x: torch.Tensor, *args, **kwargs):
        """The generative model, observed at ``x``."""

    @abc.abstractmethod
    def guide(self, x: torch.Tensor, *args, **kwargs):
        """The variational posterior given ``x``."""

    @abc.abstractmethod
    def q_z(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z|x), with gradients (priors built from the encoder, e.g. VampPrior)."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and scale of the continuous code: shapes (batch, latent_dim)."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] under the likelihood."""

    @abc.abstractmethod
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` new data points from the prior: E[x|z] (``mean=True``) or draws of x."""

    @abc.abstractmethod
    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Importance weights log p(x, c, z_c) - log q(z_c | x, c) for one z_c ~ q per row and
        component c, shape (batch, K); discrete latents are summed out exactly over the K
        columns, so log p(x) = logsumexp_c log E_q[exp w_c] (K = 1 without discrete latents)."""

    @abc.abstractmethod
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-row ELBO estimate (nats), shape (batch,)."""

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each input."""
        return self.decode(self.encode(x)[0])

    def inputs(self, split):
        """The rows this model reads for a data split (``x``, and for a conditional model its
        covariates appended): what ``encode`` / ``elbo`` / ``log_weights`` take."""
        return split.x

    def save(self, path, overwrite: bool = False) -> Path:
        """Write this model as ``model.pt`` (weights + config; what :func:`pyro_vae.load` reads).

        ``path`` is a file, or an existing folder (then ``path/model.pt``). The file is written
        atomically and an existing one is kept unless ``overwrite=True``. Models returned by
        :func:`pyro_vae.fit` and :func:`pyro_vae.load` know their config and can be saved."""
        cfg, info = getattr(self, "config", None), getattr(self, "data_info", None)
        if cfg is None or info is None:
            raise PyroVAEError(
                "this model has no config attached; save the model of pyro_vae.fit(...).model or pyro_vae.load(...)"
            )
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "model.pt"
        if path.exists() and not overwrite:
            raise PyroVAEError(f"{path} exists; choose another path or pass overwrite=True")
        save_tensors(export_payload(self, cfg, info), path)
        return path

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class Classifier(abc.ABC):
    """A model that also predicts a class label."""

    num_classes: int

    @abc.abstractmethod
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, shape (batch, num_classes); rows sum to 1."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each row."""
        return self.predict_proba(x).argmax(-1)


class LatentPaths:
    """Walks through a continuous code decoded to data: interpolation and traversals."""

    latent_dim: int

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
            z[i * len(values) : (i + 1) * len(values), d] = values
        return self.decode(z)
