"""Run directories: what training writes, and loading a trained model back.

A run directory holds ``config.yaml`` (the resolved config, for people), ``metrics.csv``
(one row per epoch), ``metrics.json`` (final), ``checkpoints/last.ckpt`` and
``checkpoints/best.ckpt`` (Lightning checkpoints, every epoch: ``--resume``),
``model.pt`` (the export :func:`load` reads) and PNGs. Every file is written atomically.

``model.pt`` holds only tensors, strings and numbers and is read with
``torch.load(..., weights_only=True)``; its embedded config is the one source of truth
for rebuilding the model. Loading never imports anything the caller did not name:
a run that needs a plugin is an error naming it until ``plugins=[...]`` is given.
"""

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from .errors import ConfigError, PyroVAEError
from .models.base import CHECKPOINT_FORMAT as FORMAT
from .utils import first_line, process_alive, read_weights

CHECKPOINT = "model.pt"
LOCK = ".lock"
#: what a run writes (removed first by --overwrite, so an old run's files never mix with a new one's)
RUN_FILES = ("config.yaml", "metrics.csv", "metrics.json", CHECKPOINT, "checkpoints", "tensorboard")


def package_version() -> str:
    """The installed pyro_vae's version (``unknown`` when run from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro_vae")
    except PackageNotFoundError:
        return "unknown"


def read_payload(path: Path) -> dict:
    """A checkpoint's contents, read without unpickling code; one-line errors."""
    payload = read_weights(path)
    if not isinstance(payload, dict):
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint")
    return payload


def build_from_payload(payload: dict, where, plugins: Optional[Sequence[str]] = None, overrides=()):
    """(model, cfg) from a checkpoint's config, info and weights; imports only ``plugins``."""
    from .config import load_config, load_plugins
    from .models import MODELS, DataInfo

    if "config" not in payload or "info" not in payload or "state_dict" not in payload:
        raise PyroVAEError(f"{where} is not a pyro_vae checkpoint (no config/weights inside)")
    if plugins:
        load_plugins(list(plugins))
    info = DataInfo.from_dict(payload["info"])
    try:
        cfg = load_config(None, overrides, base=OmegaConf.create(payload["config"]), import_plugins=False)
    except ConfigError as e:
        raise PyroVAEError(f"{where}: {e}") from None
    try:
        model = MODELS.get(cfg.model.name).from_config(cfg, info)
        model.load_state_dict(payload["state_dict"])
        model.data_info = info
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise PyroVAEError(
            f"{where}: its weights do not fit its config ({first_line(e, 120)}); "
            "a model saved by another pyro_vae version must be trained again"
        ) from None
    return model, cfg


def load(run_dir, plugins: Optional[Sequence[str]] = None, device="cpu"):
    """The trained model of a run directory (or a ``model.pt`` file, e.g. written by
    ``model.save(path)``), in eval mode, on ``device``.

    Reads ``model.pt`` with ``weights_only=True`` and rebuilds the model from the config
    inside it. Imports nothing but ``plugins`` (files or modules that register the run's
    own priors, likelihoods, models...)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise PyroVAEError(
            f"no {CHECKPOINT} at {path.parent if path.name == CHECKPOINT else path}; "
            "pass a run directory written by `pyro-vae train`"
        )
    payload = read_payload(path)
    if payload.get("format") != FORMAT:
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint of this version ({payload.get('format')!r})")
    model, cfg = build_from_payload(payload, path, plugins)
    _warn_if_config_edited(path.parent, cfg)
    model.eval()
    model.config = cfg
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise PyroVAEError(f"cannot move the model to device {device!r}: {first_line(e)}") from None


def _warn_if_config_edited(run_dir: Path, cfg) -> None:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return
    try:
        on_disk = OmegaConf.to_container(OmegaConf.load(p))
    except Exception:
        on_disk = None
    if on_disk != OmegaConf.to_container(cfg):
        warnings.warn(
            f"{p} differs from the config saved inside {CHECKPOINT}; the model is rebuilt from the "
            f"checkpoint's own config (config.yaml is a copy for reading, edits to it have no effect)"
        )


# ---------------------------------------------------------------- writing a run
def prepare(run_dir: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Create ``run_dir`` for a new run (or a resumed one) and take its lock.

    A folder that already holds files is refused unless ``overwrite`` (then the files a run
    writes are removed first) or ``resume``; a folder locked by a live process is refused."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise PyroVAEError(f"--out {run_dir} is a file, not a folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        _take_lock(run_dir)
        try:
            for folder in (run_dir, run_dir / "checkpoints"):  # half-written files of a killed run
                for tmp in folder.glob(".*.tmp.*"):
                    tmp.unlink()
            leftovers = [p.name for p in run_dir.iterdir() if p.name != LOCK]
            if leftovers and not (overwrite or resume):
                raise PyroVAEError(
                    f"--out {run_dir} already holds files ({', '.join(sorted(leftovers)[:4])}"
                    f"{', ...' if len(leftovers) > 4 else ''}); choose a new folder, "
                    "add --overwrite to replace that run, or --resume it"
                )
            if overwrite and not resume:
                for name in RUN_FILES:
                    p = run_dir / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
                for p in run_dir.glob("*.png"):
                    p.unlink()
        except BaseException:
            release(run_dir)
            raise
    except OSError as e:
        raise PyroVAEError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


def _take_lock(run_dir: Path) -> None:
    lock = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and process_alive(pid):
                raise PyroVAEError(
                    f"{run_dir} is being written by another process (pid {pid}); wait for it or choose another --out"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # left by a process that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise PyroVAEError(f"could not lock {run_dir}")


def release(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        lock = Path(run_dir) / LOCK
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
