"""PyroModules whose parameters stay in the module, without a process-wide setting.

Pyro keeps a :class:`~pyro.nn.PyroModule`'s parameters either in its global parameter store
(the default) or in the module itself (``pyro.settings.module_local_params``). This library's
priors, likelihoods and models always use the second, so two models in one process never share
parameters by name; but importing it changes nothing: the mode is entered for the duration of
each call (:class:`LocalPyroModule.__call__` and :func:`pyro_program`) and left on return, and
Pyro programs of the user's own keep the mode the user chose.
"""

import contextlib
import functools

import pyro
from pyro.nn import PyroModule
from pyro.nn.module import pyro_method


def local_params():
    """Pyro's module-local parameter mode for a ``with`` block (nothing to do when it is on)."""
    if pyro.settings.get("module_local_params"):
        return contextlib.nullcontext()
    return pyro.settings.context(module_local_params=True)


class LocalPyroModule(PyroModule):
    """A PyroModule built and called in module-local parameter mode."""

    def __init__(self, name: str = ""):
        with local_params():  # the module's Pyro context keeps its own parameter state
            super().__init__(name)

    def __call__(self, *args, **kwargs):
        with local_params():
            return super().__call__(*args, **kwargs)


def pyro_program(fn):
    """Pyro's ``pyro_method`` (the module's Pyro context: its parameters are ``param`` sites)
    in module-local parameter mode: for ``model`` / ``guide`` and other methods that run Pyro."""
    method = pyro_method(fn)

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with local_params():
            return method(self, *args, **kwargs)

    return run
