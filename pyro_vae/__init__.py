"""pyro_vae: variational autoencoders written as Pyro programs.

Public API::

    import pyro_vae
    result = pyro_vae.fit("examples/configs/digits_vae.yaml", out="runs/d", overrides=["train.epochs=5"])
    model = pyro_vae.load("runs/d")
    z, _ = model.encode(x)
    r = pyro_vae.fit(x_array)                # your own rows (NumPy, torch, pandas, scipy sparse, AnnData)
    r.model.save("my_model.pt")              # pyro_vae.load("my_model.pt") reads it back

Models keep their parameters in the module (Pyro's module-local mode, entered for each call and
left on return: importing the package changes no setting), so two models in one process never
share Pyro's global parameter store. The names below are
imported on first use, so ``pyro-vae --help`` does not wait for torch; ``__init__.pyi`` shows
them to type checkers and editors.
"""

import importlib

from .errors import ConfigError, DataError, Interrupted, PyroVAEError

_LAZY = {
    "VAE": "models",
    "SSVAE": "models",
    "CVAE": "models",
    "HVAE": "models",
    "LatentVariableModel": "models",
    "Classifier": "models",
    "MODELS": "models",
    "load": "rundir",
    "load_config": "config",
    "Config": "config",
    "PRIORS": "priors",
    "LIKELIHOODS": "likelihoods",
    "DATASETS": "data",
    "ANOMALY_SCORES": "scores",
    "FitResult": "train",
    "Dataset": "data",
    "Split": "data",
    "load_data": "data",
    "iwae_log_likelihood": "evaluate",
    "test_metrics": "evaluate",
}
_SUBMODULES = {"priors", "likelihoods", "models", "data", "config", "scores", "training", "evaluate", "plots"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")


def fit(x=None, y=None, *, config=None, overrides=(), out=None, **kwargs):
    """Train a model and write its run directory; returns a :class:`pyro_vae.train.FitResult`
    (``.model``, ``.metrics``, ``.history``, ``.run_dir``, ``.data``).

    Two ways in:

    * your data: ``fit(x, y=None, config=None, overrides=[...])`` with ``x`` a NumPy array, torch
      tensor, pandas frame (one row per example; images are flattened), a scipy / torch sparse
      matrix (kept sparse, densified per minibatch), ``np.load("x.npy", mmap_mode="r")`` (read from
      disk by index when too big for memory: ``data.storage=auto``) or an AnnData (``data.layer``,
      ``data.label_key``, ``data.batch_key``) and ``y`` optional labels (-1 / NaN = unknown, for
      ``model=ssvae``); 20% of the rows are held out as the test split (``data.test_fraction``);
    * a config: ``fit("cfg.yaml" or None, out=..., overrides=[...])``, the data named in it.

    ``overrides`` are the command line's ``key=value`` strings. Other keywords go to
    :func:`pyro_vae.train.fit` (``save``, ``plots``, ``resume``, ``overwrite``). Lightning is
    imported on first use.
    """
    from .train import fit as _fit

    if x is None or isinstance(x, (str, bytes)) or _is_config(x) or hasattr(x, "__fspath__"):
        if y is not None or config is not None:
            raise TypeError("fit(config_path, ...) takes no y / config=; pass arrays as fit(x, y, config=...)")
        return _fit(x, out=out, overrides=overrides, **kwargs)
    from .config import load_config
    from .data import InMemory, load_data

    cfg = load_config(config, ["data=memory", *overrides])
    if cfg.data.name != "memory":
        raise ConfigError(
            f"fit(x) trains on x; drop data.name={cfg.data.name} (the data keys such as "
            "data.test_fraction and data.validation still apply)"
        )
    return _fit(cfg, out=out, data=load_data(cfg, InMemory(x, y)), **kwargs)


def save(model, path, overwrite: bool = False):
    """Write ``model`` (from :func:`fit` or :func:`load`) to ``path`` as ``model.pt``; the same as
    ``model.save(path, overwrite)``. Returns the file written; :func:`load` reads it back."""
    return model.save(path, overwrite=overwrite)


def _is_config(x) -> bool:
    from omegaconf import DictConfig

    return isinstance(x, (DictConfig, dict))


__all__ = [
    "fit",
    "FitResult",
    "load",
    "save",
    "VAE",
    "SSVAE",
    "CVAE",
    "HVAE",
    "LatentVariableModel",
    "Classifier",
    "load_config",
    "Config",
    "load_data",
    "Dataset",
    "Split",
    "iwae_log_likelihood",
    "test_metrics",
    "PRIORS",
    "LIKELIHOODS",
    "MODELS",
    "DATASETS",
    "ANOMALY_SCORES",
    "priors",
    "likelihoods",
    "models",
    "data",
    "scores",
    "evaluate",
    "ConfigError",
    "DataError",
    "Interrupted",
    "PyroVAEError",
]
__version__ = "0.3.0"
