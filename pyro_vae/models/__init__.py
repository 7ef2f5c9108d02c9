"""Model kinds by name (``model:`` in the config): the math, no training code."""

from .base import MODELS, Classifier, DataInfo, LatentPaths, LatentVariableModel  # noqa: F401
from .ssvae import SSVAE  # noqa: F401  (registers "ssvae")
from .m1m2 import M1M2  # noqa: F401  (registers "m1m2")
from .vae import VAE  # noqa: F401  (registers "vae")
from .cvae import CVAE  # noqa: F401  (registers "cvae")
from .hvae import HVAE  # noqa: F401  (registers "hvae")
