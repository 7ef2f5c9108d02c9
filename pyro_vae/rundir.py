"""Run directories: save a trained model as plain tensors + its config, and load it back.

The checkpoint ``model.pt`` holds only tensors, strings and numbers, so it is read
with ``torch.load(..., weights_only=True)``: loading never unpickles code.
"""
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .errors import PyroVAEError
from .utils import atomic_path

CHECKPOINT = "model.pt"
FORMAT = "pyro_vae/1"


def save_checkpoint(run_dir, model, cfg, info) -> Path:
    path = Path(run_dir) / CHECKPOINT
    payload = {
        "format": FORMAT,
        "config": OmegaConf.to_yaml(cfg),
        "info": info.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load(run_dir, map_location="cpu"):
    """The trained model of a run directory (in eval mode), rebuilt from its config."""
    from .config import load_config
    from .models.vae import DataInfo
    from .train import build_model

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise PyroVAEError(f"no checkpoint at {path}; pass a run directory written by `pyro-vae train`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise PyroVAEError(f"could not read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint")
    cfg = load_config(None, base=OmegaConf.create(payload["config"]))
    model = build_model(cfg, DataInfo.from_dict(payload["info"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    model.config = cfg
    return model


def load_config_of(run_dir):
    from .config import load_config

    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise PyroVAEError(f"{run_dir} has no config.yaml; pass a run directory written by `pyro-vae train`")
    return load_config(p)
