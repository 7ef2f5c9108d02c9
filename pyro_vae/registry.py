"""Name -> class registries for priors, likelihoods and models.

A registry maps a short name (used in YAML and on the command line) to a class.
``Registry.build({"name": "vamp", "components": 10}, latent_dim=8)`` checks the
parameters against the class's ``__init__`` signature before constructing it, so
a typo is an error naming the valid parameters instead of a silent default.
Users add their own entries from their own module with the decorator::

    from pyro_vae import priors

    @priors.register("my_prior")
    class MyPrior(priors.Prior):
        ...
"""
import inspect
from typing import Any, Callable, Dict, Iterable, Mapping

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: Dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            self._classes[name] = cls
            cls.registry_name = name
            return cls

        return decorator

    def names(self) -> list:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._classes[name]

    def user_params(self, name: str) -> Dict[str, inspect.Parameter]:
        """The parameters a config may set for ``name`` (the signature minus context args)."""
        cls = self.get(name)
        sig = inspect.signature(cls.__init__)
        context = set(getattr(cls, "context_args", ()))
        return {
            k: p
            for k, p in sig.parameters.items()
            if k != "self" and k not in context and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def check(self, spec: Mapping[str, Any]) -> None:
        """Raise ConfigError unless ``spec`` names a registered class with valid parameters."""
        if "name" not in spec:
            raise ConfigError(f"{self.kind} needs a 'name'; valid {self.kind}s: {', '.join(self.names())}")
        name = spec["name"]
        allowed = self.user_params(name)
        for key in spec:
            if key != "name" and key not in allowed:
                valid = ", ".join(allowed) or "none"
                raise ConfigError(
                    f"{self.kind} {name!r} has no parameter {key!r}; its parameters: {valid}"
                )
        for key, p in allowed.items():
            if p.default is inspect.Parameter.empty and key not in spec:
                raise ConfigError(f"{self.kind} {name!r} needs parameter {key!r}")

    def build(self, spec: Mapping[str, Any], **context: Any):
        """Construct the class named by ``spec['name']`` with the spec's parameters plus ``context``."""
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
        self.check(spec)
        cls = self.get(spec.pop("name"))
        wanted = set(getattr(cls, "context_args", ()))
        kwargs = {k: v for k, v in context.items() if k in wanted}
        try:
            return cls(**kwargs, **spec)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{self.kind} {cls.registry_name!r}: {e}") from e

    def describe(self) -> Iterable[str]:
        """One line per entry: name and parameters with defaults (for --help and the README)."""
        for name in self.names():
            params = []
            for k, p in self.user_params(name).items():
                params.append(k if p.default is inspect.Parameter.empty else f"{k}={p.default!r}")
            doc = (inspect.getdoc(self._classes[name]) or "").split("\n")[0]
            yield f"{name}({', '.join(params)}): {doc}"
