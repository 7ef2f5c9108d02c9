"""Name -> class registries: every kind of thing a user names in a config.

A registry maps a short name (used in YAML and on the command line) to a class.
An entry's parameters are either a small config dataclass given at registration
(``register("ssvae", config=SSVAEConfig)``: typed, commented, printed by
``pyro-vae config``) or, without one, the class's ``__init__`` signature minus the
context arguments the library passes itself. Either way a typo is an error naming
the valid parameters, never a silent default. Users add their own entries from their
own file with the decorator::

    from pyro_vae import priors

    @priors.register("my_prior")
    class MyPrior(priors.Prior):
        ...
"""

import dataclasses
import inspect
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from .errors import ConfigError
from .utils import first_line


def option(default=dataclasses.MISSING, help: str = "", factory=None):
    """A config dataclass field with a one-line description (shown by `pyro-vae config`)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(config_cls) -> Dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}


class Registry:
    """Names -> classes (with each one's config dataclass): ``@REGISTRY.register("name", config=...)``,
    ``.get(name)``, ``.names()``; the config's ``name`` key picks an entry. ``configurable=False``:
    a config only names an entry, which is built without arguments (e.g. activations), so no
    parameter of it is settable or listed."""

    def __init__(self, kind: str, key: str = "name", configurable: bool = True):
        self.kind = kind
        self.key = key  # the config key that names an entry ("name", or "type" for networks)
        self.configurable = configurable
        self._classes: Dict[str, Any] = {}

    def register(self, name: str, config: Optional[type] = None) -> Callable[[Any], Any]:
        """Class decorator: ``@REGISTRY.register("name", config=ItsConfig)``."""

        def decorator(cls):
            self._classes[name] = cls
            cls.registry_name = name
            if config is not None:
                cls.config_class = config
            return cls

        return decorator

    def names(self) -> list:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str):
        if name not in self._classes:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())} "
                f"(your own: register it in a file and list it under plugins:)"
            )
        return self._classes[name]

    def config_class(self, name: str) -> Optional[type]:
        return getattr(self.get(name), "config_class", None)

    def add_keys(self, name: str, config: type) -> None:
        """Join the fields of the dataclass ``config`` (and its ``check``) to entry ``name``'s keys:
        keys defined beside other code that reads them, such as a model kind's training objective."""
        cls = self.get(name)
        cls.config_class = joined_config(self.config_class(name), config)

    def user_params(self, name: str) -> Dict[str, inspect.Parameter]:
        """The parameters a config may set for ``name`` (the signature minus context args)."""
        cls = self.get(name)
        if not self.configurable:
            return {}
        conf = self.config_class(name)
        if conf is not None:
            return {
                f.name: inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default_of(f))
                for f in dataclasses.fields(conf)
            }
        sig = inspect.signature(cls.__init__)
        context = set(getattr(cls, "context_args", ()))
        return {
            k: p
            for k, p in sig.parameters.items()
            if k != "self" and k not in context and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def resolve(self, spec: Mapping[str, Any]) -> Dict[str, Any]:
        """``spec`` with every parameter present (defaults filled in), checked and typed."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
        if self.key not in spec:
            raise ConfigError(f"{self.kind} needs a '{self.key}'; valid {self.kind}s: {', '.join(self.names())}")
        name = spec[self.key]
        allowed = self.user_params(name)
        for key in spec:
            if key != self.key and key not in allowed:
                valid = ", ".join(allowed) or "none"
                raise ConfigError(f"{self.kind} {name!r} has no parameter {key!r}; its parameters: {valid}")
        conf = self.config_class(name)
        if conf is None:
            for key, p in allowed.items():
                if p.default is inspect.Parameter.empty and key not in spec:
                    raise ConfigError(f"{self.kind} {name!r} needs parameter {key!r}")
            return spec
        params = {k: v for k, v in spec.items() if k != self.key}
        try:
            typed = OmegaConf.merge(OmegaConf.structured(conf), params)
            values = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as e:
            key = getattr(e, "key", None) or getattr(e, "full_key", "")
            raise ConfigError(f"{self.kind} {name!r}: bad value for {key}: {first_line(e)}") from None
        check = getattr(conf, "check", None)
        if check is not None:  # the dataclass's own cross-field checks
            check(typed)
        return {self.key: name, **values}

    def build(self, spec: Mapping[str, Any], **context: Any):
        """Construct the entry named by ``spec`` with its parameters plus ``context``
        (entries without a config dataclass)."""
        spec = self.resolve(spec)
        cls = self.get(spec.pop(self.key))
        wanted = set(getattr(cls, "context_args", ()))
        kwargs = {k: v for k, v in context.items() if k in wanted}
        try:
            return cls(**kwargs, **spec)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{self.kind} {cls.registry_name!r}: {e}") from e

    def describe(self) -> Iterable[str]:
        """One line per entry: name, parameters with defaults, first docstring line."""
        for name in self.names():
            params = []
            for k, p in self.user_params(name).items():
                params.append(k if p.default is inspect.Parameter.empty else f"{k}={p.default!r}")
            doc = (inspect.getdoc(self._classes[name]) or "").split("\n")[0]
            yield f"{name}({', '.join(params)}): {doc}"


def joined_config(first: Optional[type], second: type) -> type:
    """A config dataclass with the fields of ``first`` then ``second``, checked by both."""
    if first is None:
        return second
    parts = [c for c in (first, second) if getattr(c, "check", None)]

    def check(c) -> None:
        for part in parts:
            part.check(c)

    namespace = {"check": staticmethod(check), "__doc__": first.__doc__}
    return dataclasses.make_dataclass(first.__name__, [], bases=(second, first), namespace=namespace)


def _default_of(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty
