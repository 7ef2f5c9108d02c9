"""pyro_vae: variational autoencoders written as Pyro programs.

Public API::

    import pyro_vae
    result = pyro_vae.fit("examples/configs/digits_vae.yaml", out="runs/d", overrides=["train.epochs=5"])
    model = pyro_vae.load("runs/d")
    z, _ = model.encode(x)

Models keep their parameters local to the module
(``pyro.settings.set(module_local_params=True)``), so two models in one process
never share Pyro's global parameter store.
"""
import pyro

pyro.settings.set(module_local_params=True)

from . import likelihoods, priors  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .data import DATASETS  # noqa: E402
from .errors import ConfigError, DataError, Interrupted, PyroVAEError  # noqa: E402
from .likelihoods import LIKELIHOODS  # noqa: E402
from .models import MODELS, SSVAE, VAE, Classifier, LatentVariableModel  # noqa: E402
from .priors import PRIORS  # noqa: E402
from .rundir import load  # noqa: E402


def fit(*args, **kwargs):
    """Train from a config and write a run directory; see :func:`pyro_vae.train.fit`
    (imported on first use: Lightning is slow to import)."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["VAE", "SSVAE", "LatentVariableModel", "Classifier", "fit", "load", "load_config", "Config",
           "PRIORS", "LIKELIHOODS", "MODELS", "DATASETS", "priors", "likelihoods",
           "ConfigError", "DataError", "Interrupted", "PyroVAEError"]
__version__ = "0.2.0"
