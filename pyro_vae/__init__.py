"""pyro_vae: variational autoencoders written as Pyro programs.

Public API::

    import pyro_vae
    result = pyro_vae.fit("examples/configs/digits_vae.yaml", overrides=["train.epochs=5"])
    model = pyro_vae.load(result.run_dir)
    z, _ = model.encode(x)

Models keep their parameters local to the module
(``pyro.settings.set(module_local_params=True)``), so two models in one process
never share Pyro's global parameter store.
"""
import pyro

pyro.settings.set(module_local_params=True)

from . import likelihoods, priors  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import ConfigError, DataError, PyroVAEError  # noqa: E402
from .likelihoods import LIKELIHOODS  # noqa: E402
from .models import MODELS, VAE  # noqa: E402
from .priors import PRIORS  # noqa: E402
from .rundir import load  # noqa: E402

try:
    from .models import SSVAE  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def fit(*args, **kwargs):
    """Train from a config; see :func:`pyro_vae.train.fit` (imported lazily: Lightning is slow to import)."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["VAE", "fit", "load", "load_config", "Config", "PRIORS", "LIKELIHOODS", "MODELS",
           "priors", "likelihoods", "ConfigError", "DataError", "PyroVAEError"]
__version__ = "0.1.0"
