"""Model kinds by name (``model:`` in the config): the math, no training code."""
from .base import MODELS, Classifier, DataInfo, LatentPaths, LatentVariableModel  # noqa: F401
from .ssvae import SSVAE  # noqa: F401  (registers "ssvae")
from .vae import VAE  # noqa: F401  (registers "vae")
