"""Experiment tracking through Lightning's loggers: ``trainer.logger`` names one or several.

* ``csv``: ``metrics.csv`` in the run folder (always written unless ``none``: ``--resume`` reads it).
* ``tensorboard``: TensorBoard event files in ``RUN/tensorboard``; at the end of a run the test
  codes go to TensorBoard's embedding projector, with labels and, for images, thumbnails.
* ``mlflow``: a local SQLite store by default (``trainer.tracking_uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<folder holding the run>/mlflow.db`` with the
  artifacts beside it in ``mlartifacts/``): no server needed, ``mlflow ui --backend-store-uri``
  that URI shows every run of the folder.
* ``wandb``: Weights & Biases, offline (files in ``RUN/wandb``, ``wandb sync`` uploads them)
  unless the user is logged in (``WANDB_API_KEY``, ``~/.netrc``) or sets ``WANDB_MODE``.

Each logs the resolved config as parameters, one row of metrics per epoch, the final test
metrics, and (MLflow, W&B) the run folder's pictures and ``model.pt`` as artifacts. Lightning
logs from rank zero only under DDP, and the end of a run happens there.
"""

import logging
import os
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb", "none")
#: the package each logger needs, and the extra that installs it
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}

log = logging.getLogger("pyro_vae")


def logger_names(value) -> List[str]:
    """``trainer.logger`` as a list of names (``csv`` first unless ``none``); a one-line error
    for an unknown name, or ``none`` beside another."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(n).strip().lower() for n in names]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"trainer.logger: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("trainer.logger: none cannot be combined with other loggers")
        return []
    return ["csv"] + [n for i, n in enumerate(names) if n != "csv" and n not in names[:i]]


def check_installed(names) -> None:
    """A one-line error naming the extra for a logger whose package is missing."""
    import importlib.util

    for name in names:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            package, extra = EXTRAS[name]
            raise ConfigError(f"trainer.logger={name} needs the {package} package: pip install 'pyro_vae[{extra}]'")


def mlflow_uri(cfg_uri: Optional[str], run_dir: Path) -> str:
    """The MLflow tracking URI: the key, else ``$MLFLOW_TRACKING_URI``, else an SQLite file in the
    folder that holds the run."""
    if cfg_uri:
        return str(cfg_uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def _wandb_offline() -> bool:
    """Offline unless W&B's own settings say otherwise (WANDB_MODE, an API key in the
    environment or in ~/.netrc)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return False
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def make_loggers(cfg, run_dir: Optional[Path]) -> list:
    """Lightning loggers for ``trainer.logger`` writing under ``run_dir`` (none without a folder)."""
    names = logger_names(cfg.trainer.logger)
    if run_dir is None or not names:
        return []
    check_installed(names)
    from lightning.pytorch.loggers import CSVLogger

    run_dir = Path(run_dir)
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    experiment = cfg.trainer.experiment or "pyro_vae"
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = mlflow_uri(cfg.trainer.tracking_uri, run_dir)
        artifacts = None
        if uri.startswith("sqlite:///") and not cfg.trainer.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
            artifacts = (Path(run_dir).resolve().parent / "mlartifacts").as_uri()
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up lines
        loggers.append(
            MLFlowLogger(
                experiment_name=experiment, run_name=run_dir.name, tracking_uri=uri, artifact_location=artifacts
            )
        )
    if "wandb" in names:
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(project=experiment, name=run_dir.name, save_dir=str(run_dir), offline=_wandb_offline())
        )
    return loggers


def flat_params(cfg) -> dict:
    """The resolved config as ``{dotted.key: value}`` (lists as their text)."""
    from omegaconf import OmegaConf

    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def log_config(loggers, cfg) -> None:
    """The resolved config as each tracker's parameters (the CSV logger writes hparams.yaml)."""
    params = flat_params(cfg)
    for logger in loggers:
        if type(logger).__name__ in ("MLFlowLogger", "WandbLogger", "TensorBoardLogger"):
            logger.log_hyperparams(params)


def log_finish(loggers, run_dir: Optional[Path], metrics: dict, epoch: int, model=None, data=None) -> None:
    """The test metrics (at the last epoch's step), the run's pictures and ``model.pt`` as artifacts,
    the TensorBoard projector; then each logger closed."""
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    files = []
    if run_dir is not None:
        files = sorted(Path(run_dir).glob("*.png")) + [p for p in [Path(run_dir) / "model.pt"] if p.is_file()]
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "CSVLogger":
            continue
        if kind == "MLFlowLogger":
            logger.log_metrics({k: v for k, v in numbers.items() if k.startswith("test_")}, step=epoch)
            client = logger.experiment
            for f in files:
                client.log_artifact(logger.run_id, str(f))
        elif kind == "WandbLogger":
            import wandb

            run = logger.experiment
            for k, v in numbers.items():
                run.summary[k] = v
            if files:
                artifact = wandb.Artifact(f"run-{run.id}", type="model")
                for f in files:
                    artifact.add_file(str(f))
                run.log_artifact(artifact)
        elif kind == "TensorBoardLogger":
            logger.log_metrics({k: v for k, v in numbers.items() if k.startswith("test_")}, step=epoch)
            if model is not None and data is not None:
                write_projector(logger.experiment, model, data)
        logger.finalize("success")
    wandb_runs = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    for lg in wandb_runs:
        lg.experiment.finish()


def write_projector(writer, model, data, max_points: int = 2000) -> None:
    """The test codes (posterior means; at most ``max_points`` rows) in TensorBoard's embedding
    projector, with their labels and, for image data, thumbnails."""
    import torch

    split = data.test if data.test is not None and len(data.test) else data.train
    n = min(max_points, len(split))
    from .sparse import batched, take

    x = take(split.x, torch.arange(n))
    codes, _ = batched(model.encode, x, 1000, model.device)
    labels = None
    if split.y is not None:
        names = data.info().class_names
        labels = [str(names[int(v)]) if names and 0 <= int(v) < len(names) else str(int(v)) for v in split.y[:n]]
    thumbs = None
    shape = data.info().image_shape
    if shape is not None:
        thumbs = torch.as_tensor(x)[:, : model.data_dim].float().reshape(n, *shape)  # the pixels, not covariates
        lo, hi = thumbs.amin(), thumbs.amax()
        thumbs = (thumbs - lo) / (hi - lo).clamp_min(1e-8)
        if thumbs.shape[1] not in (1, 3):
            thumbs = thumbs[:, :1]
    writer.add_embedding(codes.float(), metadata=labels, label_img=thumbs, tag="test_codes")
    writer.flush()
