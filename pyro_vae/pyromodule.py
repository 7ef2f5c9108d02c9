"""PyroModules whose parameters stay in the module, without a process-wide setting.

Pyro keeps a :class:`~pyro.nn.PyroModule`'s parameters either in its global parameter store
(the default) or in the module itself (``pyro.settings.module_local_params``). This library's
priors, likelihoods and models always use the second, so two models in one process never share
parameters by name; but importing it changes nothing: the mode is entered for the duration of
each call (:class:`LocalPyroModule.__call__` and :func:`pyro_program`) and left on return, and
Pyro programs of the user's own keep the mode the user chose.

:class:`TracedProgram` compiles a function of such programs (an ELBO's loss) with ``torch.jit.trace``,
which Pyro's own JIT (``JitTrace_ELBO``) cannot do for module-local parameters.
"""

import contextlib
import functools
import warnings
from typing import List

import pyro
import torch
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


def param_leaves(trace) -> List[torch.Tensor]:
    """The tensors the ``param`` sites of ``trace`` read, as leaves: a constrained value's unconstrained
    tensor (``value.unconstrained()``), else the value itself; once each, in site order. This works in
    both parameter modes: a module-local parameter is never in the global store, but its site holds it."""
    leaves, seen = [], set()
    for site in trace.nodes.values():
        if site["type"] != "param":
            continue
        value = site["value"]
        leaf = value.unconstrained() if callable(getattr(value, "unconstrained", None)) else value
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            leaves.append(leaf)
    return leaves


def _autocast(device: str):
    """(enabled, dtype) of autocast on ``device``'s type."""
    try:
        return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    except (AttributeError, TypeError):  # torch < 2.4: one function per device type
        if device == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _signature(value):
    """What a traced graph is specialised to in one argument: a tensor's shape, dtype and device, else the value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.device.index)
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return value


def _flatten(value, out: list):
    """The tensors of ``value`` (a tensor, or dicts / lists / tuples of them) in a fixed order."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten(v, out)
    return out


def _rebuild(value, tensors):
    """``value`` with its tensors taken in turn from the iterator ``tensors`` (the inverse of _flatten)."""
    if isinstance(value, torch.Tensor):
        return next(tensors)
    if isinstance(value, dict):
        return {k: _rebuild(value[k], tensors) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuild(v, tensors) for v in value)
    return value


class TracedProgram:
    """``fn(*args)``, a function that runs Pyro programs and returns a tensor (an ELBO's loss), compiled by
    ``torch.jit.trace`` once per input signature and then replayed: the tensor operations it recorded,
    run one after another without Pyro's Python work (its handlers, traces and sites).

    Pyro's own ``pyro.ops.jit.trace`` (behind ``JitTrace_ELBO``) finds the parameters by their names in the
    global parameter store, where module-local ``PyroModule`` parameters never are (``KeyError``). Here
    the parameters are the tensors themselves: the ``param`` sites of a first run (:func:`param_leaves`)
    and the parameters and buffers of ``modules``, all passed to the trace as inputs, so the graph reads
    the very tensors the optimiser updates in place, in either parameter mode, and looks up no name.

    ``scalars``: ``(object, attribute)`` pairs of numbers that may change between calls (a KL warm-up
    factor, a capacity): each call passes their current values as 0-dim tensor inputs, set on the object
    while the graph is recorded, so they are not baked into it as constants. A new graph is recorded
    when the signature changes: the shapes, dtypes and devices of the tensor arguments (a last batch of
    another size), the other arguments, autocast, grad mode, the modules' training flags, or the identity
    of a parameter. Recording draws no random numbers from the caller's stream: the first replay makes
    the same draws an eager call would.
    """

    def __init__(self, fn, modules=(), scalars=()):
        self.fn = fn
        self.modules = list(modules)
        self.scalars = list(scalars)
        self.graphs = {}  # signature -> (traced graph, its parameter inputs)

    def _tensors_of_modules(self):
        out = []
        for m in self.modules:
            out += list(m.parameters()) + list(m.buffers())
        return out

    def _key(self, args, module_tensors):
        device = next((t.device.type for t in _flatten(args, [])), "cpu")  # autocast's device type
        autocast = _autocast(device)
        training = tuple(m.training for m in self.modules)
        return _signature(args), autocast, torch.is_grad_enabled(), training, tuple(map(id, module_tensors))

    def _record(self, args, module_tensors):
        import pyro.poutine as poutine

        with poutine.block(), poutine.trace(param_only=True) as first, torch.no_grad():
            self.fn(*args)
        params = list({id(t): t for t in module_tensors + param_leaves(first.trace)}.values())
        data = _flatten(args, [])
        n_params, n_data = len(params), len(data)

        def replay(*inputs):
            values = _rebuild(args, iter(inputs[n_params : n_params + n_data]))
            old = [getattr(obj, attr) for obj, attr in self.scalars]
            try:
                for (obj, attr), value in zip(self.scalars, inputs[n_params + n_data :]):
                    setattr(obj, attr, value)
                return self.fn(*values)
            finally:
                for (obj, attr), value in zip(self.scalars, old):
                    setattr(obj, attr, value)

        device = next((t.device.type for t in data), "cpu")
        enabled, dtype = _autocast(device)
        # autocast's cache of cast weights (filled by the run above) would enter the graph as constants
        uncached = torch.autocast(device, dtype=dtype, cache_enabled=False) if enabled else contextlib.nullcontext()
        with pyro.validation_enabled(False), warnings.catch_warnings(), uncached:
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
            graph = torch.jit.trace(replay, tuple(params + data + self._scalar_inputs()), check_trace=False)
        return graph, params

    def _scalar_inputs(self):
        return [torch.tensor(float(getattr(obj, attr))) for obj, attr in self.scalars]

    def __call__(self, *args):
        module_tensors = self._tensors_of_modules()
        key = self._key(args, module_tensors)
        if key not in self.graphs:
            devices = [t.device for t in _flatten(args, []) if t.device.type == "cuda"][:1]
            with torch.random.fork_rng(devices=devices):  # recording leaves the caller's random stream as it was
                self.graphs[key] = self._record(args, module_tensors)
        graph, params = self.graphs[key]
        # the recorded operations one by one, each with its own autograd as in an eager step (autocast's
        # casts as recorded): no TorchScript graph optimisation, whose autodiff and autocast pass differ
        with torch.jit.optimized_execution(False):
            return graph(*params, *_flatten(args, []), *self._scalar_inputs())
