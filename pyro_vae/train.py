"""The SVI engine: the ELBO as a torch module, optimised on a Lightning Trainer.

``fit(cfg)`` runs the whole pipeline: data -> model -> training -> evaluation ->
run directory. The Lightning module is thin: each step calls the model's loss
module (``Trace_ELBO()(model, guide)`` for the VAE) on a minibatch and lets
Lightning do devices, precision, gradient clipping and the progress bar. The same
model and guide also train with a plain ``pyro.infer.SVI`` loop (see the tests).
"""
import copy
import csv
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import pyro

from . import config as config_mod
from .data import Dataset, load_data
from .models import MODELS
from .models.vae import DataInfo
from .utils import write_json, write_text

log = logging.getLogger(__name__)


def build_model(cfg, info: DataInfo):
    """Construct the model named by ``cfg.model`` for data described by ``info``."""
    return MODELS.get(cfg.model).from_config(cfg, info)


def data_info(cfg, data: Dataset) -> DataInfo:
    return DataInfo(data.data_dim, data.image_shape, data.num_classes, len(data.train))


class SVIModule(L.LightningModule):
    """Minimises the model's loss module (a negative ELBO, scaled to the full data) with Adam."""

    def __init__(self, model, train_cfg):
        super().__init__()
        self.model = model
        self.train_cfg = train_cfg
        self.loss_fn = model.make_loss(train_cfg)

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                "the loss became NaN/inf; try a smaller train.lr, train.gradient_clip_val=10, "
                "or a likelihood that fits the data"
            )
        per_datum = value / self.model.num_data
        self.log("loss", per_datum, prog_bar=True, on_step=True, on_epoch=False)
        self._epoch_loss += per_datum * _batch_len(batch)
        self._epoch_count += _batch_len(batch)
        return loss

    def on_train_epoch_start(self):
        self._epoch_loss, self._epoch_count = 0.0, 0

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
        opt = torch.optim.Adam(params, lr=self.train_cfg.lr, fused=fused or None)
        if self.train_cfg.lr_schedule == "constant":
            return opt
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def _batch_len(batch) -> int:
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        return int(batch.get("size", next(iter(batch.values())).shape[0]))
    return batch[0].shape[0]


class EpochMonitor(Callback):
    """Per epoch: timing, KL warm-up, held-out metrics, early stopping, best state, metrics.csv."""

    def __init__(self, data: Dataset, cfg, run_dir: Optional[Path]):
        self.data, self.cfg, self.run_dir = data, cfg, run_dir
        self.rows, self.train_seconds = [], 0.0
        self.best_state, self.best_value, self.best_epoch, self.bad_epochs = None, None, None, 0
        self.held_out = data.val if data.val is not None else data.test
        self.prefix = "val" if data.val is not None else "test"
        self.average = None  # AveragedModel of the weights when train.ema_decay > 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        decay = self.cfg.train.ema_decay
        if decay and self.average is None:  # created here: the model is on its device by now
            self.average = AveragedModel(pl_module.model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                         use_buffers=True)
        if self.average is not None:  # the first update copies the weights, later ones average
            self.average.update_parameters(pl_module.model)

    def evaluated_model(self, pl_module):
        """The weights that are validated and kept: the running average, or the current ones."""
        if self.average is None:
            return pl_module.model
        averaged = self.average.module
        averaged.beta = pl_module.model.beta
        return averaged

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        warm = self.cfg.train.kl_warmup_epochs
        if warm:
            progress = trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches)
            # beta starts just above 0 (Pyro's scale must be positive) and reaches 1 after `warm` epochs
            pl_module.model.beta = min(1.0, max(progress, 0.01) / warm)

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_seconds += time.perf_counter() - self._t0
        seconds = time.perf_counter() - self._t0
        model = self.evaluated_model(pl_module)
        was_training = model.training
        model.eval()
        metrics = model.validation_metrics(self.held_out, self.cfg.train.eval_batch_size)
        model.train(was_training)
        row = {"epoch": trainer.current_epoch + 1,
               "train_loss": pl_module._epoch_loss / max(1, pl_module._epoch_count),
               "beta": float(model.beta), "lr": trainer.optimizers[0].param_groups[0]["lr"],
               "seconds": round(seconds, 3)}
        row.update({f"{self.prefix}_{k}": v for k, v in metrics.items()})
        self.rows.append(row)
        for k, v in row.items():
            if k not in ("epoch",):
                pl_module.log(k, float(v), prog_bar=k.endswith("loss") or k.endswith("accuracy"))
        if self.run_dir is not None:
            write_text(self.run_dir / "metrics.csv", rows_to_csv(self.rows))
        if self.prefix == "val":
            self._select(trainer, model, metrics)

    def _select(self, trainer, model, metrics):
        key, mode = model.selection
        value = metrics[key]
        warm = self.cfg.train.kl_warmup_epochs
        better = self.best_value is None or (value < self.best_value if mode == "min" else value > self.best_value)
        if better or trainer.current_epoch < warm:  # the bound is not comparable during warm-up
            self.best_value, self.best_epoch, self.bad_epochs = value, trainer.current_epoch + 1, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
            patience = self.cfg.train.early_stopping_patience
            if patience is not None and self.bad_epochs >= patience:
                trainer.should_stop = True


def rows_to_csv(rows) -> str:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@dataclass
class FitResult:
    model: torch.nn.Module
    data: Dataset
    config: object
    run_dir: Optional[Path]
    metrics: dict
    history: list = field(default_factory=list)


class SlowPrecisionWarning(UserWarning):
    """The chosen precision is supported but slow on this hardware."""


def cpu_has_native_bf16() -> bool:
    """True when oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def check_precision(cfg) -> None:
    """Warn when bf16-mixed would run on a CPU without bf16 units (there it is slower, not faster)."""
    t = cfg.trainer
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    if str(t.precision).startswith("bf16") and on_cpu and not cpu_has_native_bf16():
        warnings.warn(f"trainer.precision={t.precision} on a CPU without native bf16 (no AVX512-BF16/AMX): "
                      "bf16 matmuls are emulated and several times slower here; set trainer.precision=32-true",
                      SlowPrecisionWarning, stacklevel=3)


def default_run_dir(cfg) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def fit(cfg=None, out=None, overrides=(), data: Optional[Dataset] = None, plots: bool = True,
        save: bool = True) -> FitResult:
    """Train the model the config describes and write its run directory.

    ``cfg`` is a config (from :func:`pyro_vae.config.load_config`), a YAML path, or None
    for the defaults; ``overrides`` are ``key=value`` strings. Returns a :class:`FitResult`.
    """
    if cfg is None or isinstance(cfg, (str, Path)):
        cfg = config_mod.load_config(cfg, overrides)
    elif overrides:
        cfg = config_mod.load_config(None, overrides, base=cfg)
    config_mod.load_plugins(cfg.plugins)
    check_precision(cfg)
    pyro.set_rng_seed(int(cfg.seed))
    data = data if data is not None else load_data(cfg)
    model = build_model(cfg, data_info(cfg, data))
    model.check_data(data)
    run_dir = None
    if save:
        run_dir = Path(out) if out else default_run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", config_mod.to_yaml(cfg))

    module = SVIModule(model, cfg.train)
    monitor = EpochMonitor(data, cfg, run_dir)
    t = cfg.trainer
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*TPU available but not used.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        _quiet_lightning()
        trainer = L.Trainer(
            max_epochs=cfg.train.epochs, accelerator=t.accelerator, devices=t.devices,
            strategy=t.strategy, precision=t.precision, gradient_clip_val=cfg.train.gradient_clip_val,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=bool(t.progress_bar), num_sanity_val_steps=0,
            callbacks=[monitor, TQDMProgressBar(refresh_rate=10)] if t.progress_bar else [monitor],
            deterministic=False,
        )
        batches = model.train_batches(data, cfg.train, seed=int(cfg.seed))
        trainer.fit(module, train_dataloaders=batches)
    model = module.model
    if monitor.average is not None:  # the averaged weights, also when there is no validation split
        model.load_state_dict(monitor.average.module.state_dict())
    model = model.cpu().eval()
    model.beta = 1.0
    if monitor.best_state is not None:
        model.load_state_dict(monitor.best_state)

    from .evaluate import test_metrics

    metrics = {
        "epochs": len(monitor.rows),
        "train_loss": monitor.rows[-1]["train_loss"] if monitor.rows else float("nan"),
        "train_seconds": round(monitor.train_seconds, 3),
        "seconds_per_epoch": round(monitor.train_seconds / max(1, len(monitor.rows)), 3),
        "num_train": len(data.train),
    }
    if monitor.best_epoch is not None:
        metrics["best_epoch"] = monitor.best_epoch
        metrics[f"best_val_{model.selection[0]}"] = monitor.best_value
    metrics.update(test_metrics(model, data.test, cfg))
    if save:
        from .rundir import save_checkpoint

        save_checkpoint(run_dir, model, cfg, data_info(cfg, data))
        write_json(run_dir / "metrics.json", metrics)
        if plots:
            from .plots import run_report

            run_report(model, data, run_dir, monitor.rows)
    return FitResult(model, data, cfg, run_dir, metrics, monitor.rows)


def _quiet_lightning():
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
