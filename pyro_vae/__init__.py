"""pyro_vae: variational autoencoders written as Pyro programs.

Public API::

    import pyro_vae
    result = pyro_vae.fit("examples/configs/digits_vae.yaml", out="runs/d", overrides=["train.epochs=5"])
    model = pyro_vae.load("runs/d")
    z, _ = model.encode(x)

Models keep their parameters local to the module
(``pyro.settings.set(module_local_params=True)``, set when the models are imported), so
two models in one process never share Pyro's global parameter store. The names below are
imported on first use, so ``pyro-vae --help`` does not wait for torch.
"""
import importlib

from .errors import ConfigError, DataError, Interrupted, PyroVAEError

_LAZY = {
    "VAE": "models", "SSVAE": "models", "LatentVariableModel": "models", "Classifier": "models", "MODELS": "models",
    "load": "rundir", "load_config": "config", "Config": "config", "PRIORS": "priors", "LIKELIHOODS": "likelihoods",
    "DATASETS": "data", "ANOMALY_SCORES": "scores",
}
_SUBMODULES = {"priors", "likelihoods", "models", "data", "config", "scores", "training", "evaluate", "plots"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")


def fit(*args, **kwargs):
    """Train from a config and write a run directory; see :func:`pyro_vae.train.fit`
    (imported on first use: Lightning is slow to import)."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["VAE", "SSVAE", "LatentVariableModel", "Classifier", "fit", "load", "load_config", "Config",
           "PRIORS", "LIKELIHOODS", "MODELS", "DATASETS", "ANOMALY_SCORES", "priors", "likelihoods",
           "ConfigError", "DataError", "Interrupted", "PyroVAEError"]
__version__ = "0.2.0"
