"""Typed configuration: one schema, YAML files, dotted ``key=value`` overrides.

The fixed part of the schema is a tree of dataclasses checked by OmegaConf. The
sections a user fills by naming a registry entry (``model``, ``data``, ``prior``,
``likelihood``) hold ``name`` plus that entry's own parameters, checked against the
entry's config dataclass (or signature) once ``plugins:`` are imported, so a plugin's
model kind or data set is configured exactly like a built-in one. ``model=ssvae`` is
short for ``model.name=ssvae``; naming another entry starts that section afresh.
An unknown key, a value of the wrong type or out of range is a :class:`ConfigError`
with a one-line message, before anything is written or trained.
"""

import dataclasses
import importlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .networks import NetConfig
from .registry import field_help, option
from .tracking import logger_names
from .utils import first_line

#: config sections that name a registry entry: section -> (registry, default entry)
NAMED_SECTIONS = ("model", "data", "prior", "likelihood", "score")

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")


@dataclass
class TrainConfig:
    """``train:``: the optimisation."""

    epochs: int = option(20, "passes over the training data")
    batch_size: Optional[int] = option(
        None,
        "rows per step (per process under DDP); null = the model kind's "
        "choice: 64, or 128 for ssvae on 10,000 training rows or more",
    )
    lr: float = option(3.0e-3, "Adam learning rate")
    elbo: str = option(
        "meanfield",
        "meanfield (TraceMeanField_ELBO: analytic KL where the prior has one, else Monte Carlo) | trace "
        "(Trace_ELBO: Monte-Carlo KL) | iwae (importance weighted bound, Burda et al. 2016: K = num_particles "
        "samples per row; Pyro's RenyiELBO at alpha 0) | renyi (Renyi bound, Li & Turner 2016: alpha = "
        "renyi_alpha); iwae and renyi: model=vae and M1+M2's first stage",
    )
    num_particles: int = option(1, "samples of z per row and step (iwae, renyi: the K samples of each row's bound)")
    renyi_alpha: float = option(
        0.5, "alpha of train.elbo=renyi, not 1 (the ELBO): 0 is iwae; a lower bound of log p(x) for alpha >= 0"
    )
    kl_weight: float = option(
        1.0,
        "beta-VAE's KL weight (Higgins et al. 2017): loss = reconstruction + kl_weight * KL; "
        "elbo trace or meanfield, model=vae and M1+M2's first stage",
    )
    kl_warmup_epochs: int = option(0, "KL weight rises linearly from 0 to 1 (to kl_weight) over this many epochs")
    capacity_max: Optional[float] = option(
        None,
        "capacity schedule (Burgess et al. 2018): loss = reconstruction + capacity_gamma * |KL - C|, C rising "
        "linearly from 0 to this many nats per row; null = off (elbo trace or meanfield, model=vae and M1+M2's M1)",
    )
    capacity_epochs: Optional[int] = option(
        None, "epochs over which C rises to capacity_max; null = all training epochs (m1m2: model.m1_epochs)"
    )
    capacity_gamma: float = option(1000.0, "gamma of the capacity term: the weight of |KL - C|")
    lr_schedule: str = option("constant", "constant | cosine (per step from lr down to 0 over train.epochs)")
    gradient_clip_val: Optional[float] = option(None, "clip the gradient norm (null = off)")
    early_stopping_patience: Optional[int] = option(
        None, "stop after this many epochs without validation improvement (needs data.validation)"
    )
    eval_batch_size: int = option(2000, "rows per batch when evaluating")
    compile: str = option(
        "auto",
        "the training step: none (Pyro's ELBO run eagerly) | jit (the same ELBO recorded by torch.jit.trace once "
        "per batch shape and replayed as one graph: the same loss and gradients, less Pyro work per step; "
        "model=vae, cvae and m1m2's first stage) | auto (jit where the model kind has it, else none)",
    )

    @staticmethod
    def check(t) -> None:
        _choice("train.elbo", t.elbo, _objectives())
        _choice("train.lr_schedule", t.lr_schedule, ("constant", "cosine"))
        _choice("train.compile", t.compile, _compile_modes())
        for key in ("epochs", "batch_size", "num_particles", "eval_batch_size", "capacity_epochs"):
            if t[key] is not None and t[key] < 1:
                raise ConfigError(f"train.{key} must be at least 1 (got {t[key]})")
        if not t.lr > 0:
            raise ConfigError(f"train.lr must be positive (got {t.lr})")
        if t.kl_warmup_epochs < 0:
            raise ConfigError(f"train.kl_warmup_epochs cannot be negative (got {t.kl_warmup_epochs})")
        _check_kl_keys(t)
        if t.gradient_clip_val is not None and not t.gradient_clip_val > 0:
            raise ConfigError(f"train.gradient_clip_val must be positive or null (got {t.gradient_clip_val})")
        if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
            raise ConfigError(
                f"train.early_stopping_patience must be at least 1 or null (got {t.early_stopping_patience})"
            )


def _compile_modes():
    from .training import COMPILE_MODES

    return COMPILE_MODES


def _objectives():
    from .training import OBJECTIVES

    return OBJECTIVES.names()


def _objective(name):
    from .training import OBJECTIVES

    return OBJECTIVES.get(name)


def _check_kl_keys(t) -> None:
    """The Renyi alpha, the KL weight and the capacity schedule: values, and the combinations that make sense."""
    if not math.isfinite(t.renyi_alpha) or t.renyi_alpha == 1:
        raise ConfigError(
            f"train.renyi_alpha must be a finite number other than 1 (got {t.renyi_alpha}); alpha = 1 is the ELBO: "
            "train.elbo=trace"
        )
    if not (math.isfinite(t.kl_weight) and t.kl_weight >= 0):
        raise ConfigError(f"train.kl_weight must be >= 0 (got {t.kl_weight})")
    if not (math.isfinite(t.capacity_gamma) and t.capacity_gamma > 0):
        raise ConfigError(f"train.capacity_gamma must be positive (got {t.capacity_gamma})")
    weighted = t.kl_weight != 1 or t.capacity_max is not None
    if weighted and not getattr(_objective(t.elbo), "separates_kl", False):
        raise ConfigError(
            f"train.kl_weight and train.capacity_max weigh the ELBO's KL term; train.elbo={t.elbo} has none "
            "apart from the reconstruction: use train.elbo=meanfield or trace"
        )
    if t.capacity_max is None:
        if t.capacity_epochs is not None:
            raise ConfigError("train.capacity_epochs needs train.capacity_max (the capacity schedule is off)")
        return
    if not (math.isfinite(t.capacity_max) and t.capacity_max >= 0):
        raise ConfigError(f"train.capacity_max must be >= 0 nats or null (got {t.capacity_max})")
    if t.kl_weight != 1:
        raise ConfigError(
            "train.capacity_max weighs the KL by capacity_gamma * |KL - C|: leave train.kl_weight at 1 "
            "(or set capacity_max=null for a beta-VAE)"
        )
    if t.kl_warmup_epochs:
        raise ConfigError(
            "train.capacity_max and train.kl_warmup_epochs both schedule the KL term: use one "
            "(capacity_epochs sets how fast C rises)"
        )


@dataclass
class TrainerConfig:
    """``trainer:``: passed to ``lightning.Trainer``."""

    accelerator: str = option("auto", "auto (a GPU when there is one) | cpu | gpu | mps")
    devices: Any = option(1, "devices per node (a number, a list, or auto); > 1 trains with DDP")
    num_nodes: int = option(1, "machines (multi-node DDP)")
    strategy: str = option("auto", "auto | ddp | ddp_spawn | ... (Lightning's strategies)")
    precision: str = option(
        "auto",
        "auto: bf16-mixed on a CPU with bf16 units (AVX512-BF16/AMX), 32-true "
        "elsewhere | 32-true | bf16-mixed | 16-mixed",
    )
    progress_bar: Optional[bool] = option(None, "null: a bar on a terminal, one line per epoch otherwise")
    logger: Any = option(
        "csv",
        "csv (metrics.csv) | tensorboard | mlflow | wandb | none, or a list such as [tensorboard, mlflow]: "
        "csv is always written (unless none); mlflow and wandb are extras (pip install 'pyro_vae[mlflow]')",
    )
    tracking_uri: Optional[str] = option(
        None,
        "MLflow tracking URI (a server, a database); null: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<folder holding the run>/mlflow.db with the artifacts in mlartifacts/ beside it",
    )
    experiment: str = option("pyro_vae", "MLflow experiment / W&B project the run is logged under")
    extra: Dict[str, Any] = option(
        help="any other lightning.Trainer argument, e.g. {accumulate_grad_batches: 2, max_time: '00:01:00:00'}",
        factory=dict,
    )

    @staticmethod
    def check(t) -> None:
        _choice("trainer.accelerator", t.accelerator, ACCELERATORS)
        _choice("trainer.precision", str(t.precision), PRECISIONS)
        logger_names(OmegaConf.to_object(t.logger) if OmegaConf.is_list(t.logger) else t.logger)
        if t.num_nodes < 1:
            raise ConfigError(f"trainer.num_nodes must be at least 1 (got {t.num_nodes})")
        d = t.devices
        if not (d == "auto" or (isinstance(d, int) and (d >= 1 or d == -1)) or OmegaConf.is_list(d)):
            raise ConfigError(
                f"trainer.devices must be a positive number, a list of device indices or auto (got {d!r})"
            )


@dataclass
class EvaluateConfig:
    """``evaluate:``: final test metrics."""

    iwae_samples: int = option(0, "> 0: add test_log_likelihood (importance weighted, K samples) to metrics.json")

    @staticmethod
    def check(e) -> None:
        if e.iwae_samples < 0:
            raise ConfigError(f"evaluate.iwae_samples must be >= 0 (got {e.iwae_samples})")


@dataclass
class Config:
    """A whole run."""

    name: str = option("vae", "run name (default run directory runs/<name>-<time>)")
    seed: int = option(0, "seeds data splits, label selection, initialisation, batches and sampling")
    model: Dict[str, Any] = option(help="model kind (`pyro-vae list`) and its keys", factory=lambda: {"name": "vae"})
    latent_dim: int = option(8, "size of z")
    encoder: NetConfig = field(default_factory=NetConfig, metadata={"help": "q(z|x)'s network"})
    decoder: NetConfig = field(default_factory=NetConfig, metadata={"help": "p(x|z)'s network"})
    prior: Dict[str, Any] = option(help="p(z): registry name + its parameters", factory=lambda: {"name": "normal"})
    likelihood: Dict[str, Any] = option(
        help="p(x|z): registry name + its parameters", factory=lambda: {"name": "bernoulli"}
    )
    data: Dict[str, Any] = option(help="data set (`pyro-vae list`) and its keys", factory=lambda: {"name": "digits"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"help": "lightning.Trainer"})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, metadata={"help": "final metrics"})
    score: Dict[str, Any] = option(
        help="anomaly score of `pyro-vae score` (`pyro-vae list`) and its parameters",
        factory=lambda: {"name": _default_score()},
    )
    plugins: List[str] = option(
        help="your .py files (or modules) imported first: your own registered entries", factory=list
    )


def _default_score() -> str:
    from .scores import DEFAULT_SCORE

    return DEFAULT_SCORE


def _choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def registries():
    """section -> registry, for the sections that name an entry (imported late: they import the math)."""
    from .data import DATASETS
    from .likelihoods import LIKELIHOODS
    from .models import MODELS
    from .priors import PRIORS
    from .scores import ANOMALY_SCORES
    from . import training  # noqa: F401  (its plans join their objectives' keys to the model kinds)

    return {"model": MODELS, "data": DATASETS, "prior": PRIORS, "likelihood": LIKELIHOODS, "score": ANOMALY_SCORES}


def _normalise(layer: Dict[str, Any]) -> Dict[str, Any]:
    """``model: ssvae`` -> ``model: {name: ssvae}`` (the same for data, prior, likelihood)."""
    for key in NAMED_SECTIONS:
        if isinstance(layer.get(key), str):
            layer[key] = {"name": layer[key]}
    return layer


def _overrides_layer(overrides: Sequence[str]) -> Dict[str, Any]:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} must look like key=value (e.g. train.epochs=5)")
    rewritten = [
        f"{o.split('=', 1)[0]}.name={o.split('=', 1)[1]}" if o.split("=", 1)[0] in NAMED_SECTIONS else o
        for o in overrides
    ]
    return OmegaConf.to_container(OmegaConf.from_dotlist(rewritten))


def _yaml_layer(path) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = OmegaConf.load(p)
    except Exception as e:  # YAML syntax errors carry the line
        mark = getattr(e, "problem_mark", None)
        where = f"{p}, line {mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"could not read {where}: {getattr(e, 'problem', None) or first_line(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{p} must hold a YAML mapping (key: value lines)")
    return OmegaConf.to_container(loaded)


def _merge(cfg: Dict[str, Any], layer: Dict[str, Any], where: str) -> Dict[str, Any]:
    layer = _normalise(dict(layer))
    for key in NAMED_SECTIONS:
        new = layer.get(key)
        if isinstance(new, dict) and "name" in new and new["name"] != (cfg.get(key) or {}).get("name"):
            cfg[key] = {}  # another entry: its own parameters, not the previous one's
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = first_line(e)
        if "ConfigKeyError" in type(e).__name__ or "not in" in msg:
            raise ConfigError(
                f"unknown config key {key or msg} ({where}); `pyro-vae config` prints every key"
            ) from None
        raise ConfigError(
            f"bad config value for {key} ({where}): {msg}" if key else f"bad config ({where}): {msg}"
        ) from None
    return OmegaConf.to_container(merged)


def load_config(
    path: Optional[str] = None, overrides: Sequence[str] = (), base=None, import_plugins: bool = True
) -> DictConfig:
    """Defaults <- ``base`` <- YAML file <- ``key=value`` overrides, checked and resolved.

    ``import_plugins=False`` (loading a saved run) imports nothing: an entry that only a
    plugin registers is then an error naming the plugin."""
    cfg = OmegaConf.to_container(OmegaConf.structured(Config))
    if base is not None:
        saved = OmegaConf.to_container(base) if OmegaConf.is_config(base) else dict(base)
        # runs saved before data.normalize was retired name it; every likelihood now gets the values it scores
        (saved.get("data") or {}).pop("normalize", None)
        cfg = _merge(cfg, saved, "saved config")
    if path is not None:
        cfg = _merge(cfg, _yaml_layer(path), str(path))
    if overrides:
        cfg = _merge(cfg, _overrides_layer(overrides), "command line")
    cfg["plugins"] = [_plugin_path(p) for p in cfg["plugins"]]
    if import_plugins:
        load_plugins(cfg["plugins"])
    return resolve(cfg)


def resolve(cfg: Dict[str, Any]) -> DictConfig:
    """Fill every named section with its entry's parameters and check all values."""
    regs = registries()
    for key in NAMED_SECTIONS:
        try:
            cfg[key] = regs[key].resolve(cfg[key])
        except ConfigError as e:
            missing = [p for p in cfg["plugins"] if p not in _LOADED]
            if missing and "unknown" in str(e):
                raise ConfigError(
                    f"{e}; it may come from plugin {', '.join(missing)}, which was not imported: "
                    "pass it explicitly (pyro_vae.load(run, plugins=[...]) or --plugin FILE)"
                ) from None
            raise
    out = OmegaConf.create(cfg)
    for key, net in (("encoder", out.encoder), ("decoder", out.decoder)):
        NetConfig.check(net, key)
    if out.latent_dim < 1:
        raise ConfigError(f"latent_dim must be at least 1 (got {out.latent_dim})")
    TrainConfig.check(out.train)
    TrainerConfig.check(out.trainer)
    EvaluateConfig.check(out.evaluate)
    if out.train.early_stopping_patience is not None and not out.data.validation:
        raise ConfigError("train.early_stopping_patience needs a validation split: set data.validation=N")
    return out


# ---------------------------------------------------------------- plugins
_LOADED: set = set()


def _plugin_path(mod: str) -> str:
    """.py files are stored as absolute paths, so a run loads from any folder."""
    return str(Path(mod).expanduser().resolve()) if str(mod).endswith(".py") else str(mod)


def load_plugins(modules: Sequence[str]) -> None:
    """Import user modules (by dotted name or .py path) so their registry entries exist."""
    for mod in modules:
        mod = _plugin_path(mod)
        if mod in _LOADED:
            continue
        try:
            if mod.endswith(".py"):
                p = Path(mod)
                if not p.is_file():
                    raise ConfigError(f"plugin file not found: {mod}")
                name = f"pyro_vae_plugin_{p.stem}_{abs(hash(mod)) % 10**8}"
                spec = importlib.util.spec_from_file_location(name, p)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                importlib.import_module(mod)
        except ConfigError:
            raise
        except Exception as e:
            tb = e.__traceback__
            line = None
            while tb is not None:  # the deepest frame inside the plugin file
                if tb.tb_frame.f_code.co_filename == mod:
                    line = tb.tb_lineno
                tb = tb.tb_next
            where = f"{mod}, line {line}" if line else mod
            raise ConfigError(f"plugin {where} failed to import: {type(e).__name__}: {first_line(e)}") from None
        _LOADED.add(mod)


# ---------------------------------------------------------------- printing
def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def commented_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with one comment per key (``pyro-vae config``)."""
    regs = registries()
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    lines: List[str] = []

    def line(pad, key, value, text):
        if isinstance(value, (list, dict, bool)) or value is None:
            shown = json.dumps(value)  # flow style: valid YAML on one line
        else:
            shown = OmegaConf.to_yaml({"v": value}).strip()[3:].strip()
        lines.append(f"{pad}{key}: {shown}" + (f"  # {text}" if text else ""))

    top = field_help(Config)
    for key, value in OmegaConf.to_container(cfg).items():
        if key in NAMED_SECTIONS or dataclasses.is_dataclass(types.get(key)):
            lines.append(f"{key}:  # {top.get(key, '')}")
            if key in NAMED_SECTIONS:
                reg = regs[key]
                conf = reg.config_class(value["name"])
                helps = field_help(conf) if conf else {}
                helps["name"] = f"one of: {', '.join(reg.names())}"
            else:
                helps = field_help(types[key])
            for k, v in value.items():
                line("  ", k, v, helps.get(k, ""))
        else:
            line("", key, value, top.get(key, ""))
    return "\n".join(lines) + "\n"
