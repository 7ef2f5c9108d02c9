"""The engine: config -> data -> model -> Lightning Trainer -> run directory.

``fit(cfg)`` builds the model kind's :class:`~pyro_vae.training.TrainingPlan` and
minimises its loss with Adam on a Lightning Trainer: Lightning does devices, DDP,
precision, gradient clipping, checkpoints (``ModelCheckpoint``: ``last.ckpt`` and
``best.ckpt`` every epoch), early stopping, loggers and the progress bar. The same model
and guide also train with a plain ``pyro.infer.SVI`` loop (see the tests). Only this
module imports Lightning.
"""

import contextlib
import logging
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from omegaconf import OmegaConf

import pyro

from . import config as config_mod
from . import rundir, tracking
from .data import Dataset, load_data
from .errors import ConfigError, Interrupted, PyroVAEError, SignalReceived, TrainingDiverged
from .fastmath import cpu_has_native_bf16
from .models import MODELS
from .training import TrainingPlan, plan_for
from .utils import PROFILE, first_line, save_tensors, signals_raise, take_pending_signal, write_json, write_text

log = logging.getLogger(__name__)

#: a per-datum loss above this many nats per feature means the optimisation has diverged
DIVERGED_NATS_PER_FEATURE = 1e4
CHECK_EVERY_STEPS_ON_GPU = 50  # the finiteness check syncs the host: every step on CPU, sparser on GPUs


def build_model(cfg, info):
    """Construct the model named by ``cfg.model.name`` for data described by ``info``."""
    return MODELS.get(cfg.model.name).from_config(cfg, info)


class SVIModule(L.LightningModule):
    """Minimises the plan's loss (a negative ELBO, scaled to the full data) with Adam; held-out
    metrics in ``validation_step`` (sums reduced across processes)."""

    def __init__(self, plan: TrainingPlan, cfg, info, data_fingerprint: Optional[str] = None):
        super().__init__()
        self.plan = plan
        self.model = plan.model
        self.cfg, self.info = cfg, info
        self.data_fingerprint = data_fingerprint
        self.val_metrics = {}
        self._loss_sum = self._count = None

    # ---- training ----------------------------------------------------------------
    def on_train_epoch_start(self):
        self._loss_sum = torch.zeros((), device=self.device)
        self._count = 0

    def training_step(self, batch, batch_idx):
        try:
            loss = self.plan.loss(batch)
        except ValueError as e:  # a distribution's parameters became NaN/inf: the networks diverged
            if "invalid values" not in str(e):
                raise
            self._diverged(float("nan"))
        n = self.plan.batch_size_of(batch)
        per_datum = loss.detach() / self.model.num_data
        if self._loss_sum is None:  # a run resumed inside an epoch skips on_train_epoch_start
            self.on_train_epoch_start()
        self._loss_sum += per_datum * n  # stays on the device: no host sync per step
        self._count += n
        if self.device.type == "cpu" or batch_idx % CHECK_EVERY_STEPS_ON_GPU == 0:
            value = float(per_datum)
            if not math.isfinite(value) or value > DIVERGED_NATS_PER_FEATURE * self.model.data_dim:
                self._diverged(value)
        return loss

    def _diverged(self, value: float):
        raise TrainingDiverged(
            f"the loss {'became NaN/inf' if not math.isfinite(value) else f'diverged ({value:.3g} nats per datum)'}"
            f" in epoch {self.current_epoch + 1}; try a smaller train.lr, train.gradient_clip_val=10, "
            "or a likelihood that fits the data"
        )

    def take_epoch_loss(self) -> float:
        """The epoch's mean loss per datum; the sum starts again."""
        loss = float(self._loss_sum) / max(1, self._count) if self._loss_sum is not None else float("nan")
        self._loss_sum = None
        return loss

    # ---- validation ----------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = {}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        for k, v in self.plan.validation_sums(x, y).items():
            self._val_sums[k] = self._val_sums.get(k, 0.0) + v.detach().double()

    def on_validation_epoch_end(self):
        sums = {}
        for k in sorted(self._val_sums):
            v = self._val_sums[k]
            sums[k] = self.trainer.strategy.reduce(v, reduce_op="sum") if self.trainer.world_size > 1 else v
        self.val_metrics = {f"val_{k}": v for k, v in self.plan.metrics(sums).items()}
        if self.trainer.state.fn == "validate":  # trainer.validate(); in fit, EpochMetrics reports once per epoch
            self.log_dict(self.val_metrics)

    def take_val_metrics(self) -> dict:
        """The last validation's metrics (empty in an epoch without validation); cleared."""
        metrics, self.val_metrics = {k: float(v) for k, v in self.val_metrics.items()}, {}
        return metrics

    # ---- optimiser and checkpoints -------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
        opt = torch.optim.Adam(params, lr=self.cfg.train.lr, fused=fused or None)
        if self.cfg.train.lr_schedule == "constant":
            return opt
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # the config (resume needs nothing else) and the random state, so a resumed run draws the
        # same z noise as an uninterrupted one (the batch order is a function of seed and epoch)
        checkpoint["pyro_vae"] = {
            "format": rundir.FORMAT,
            "version": rundir.package_version(),
            "config": OmegaConf.to_yaml(self.cfg),
            "info": self.info.to_dict(),
            "data": self.data_fingerprint,
            "torch_rng": torch.get_rng_state(),
            "epoch_loss": None if self._loss_sum is None else [float(self._loss_sum), self._count],
        }
        if torch.cuda.is_available():
            checkpoint["pyro_vae"]["cuda_rng"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        meta = checkpoint.get("pyro_vae", {})
        if meta.get("epoch_loss"):  # taken inside an epoch: its loss so far, for the epoch's row
            self._loss_sum = torch.tensor(meta["epoch_loss"][0], device=self.device)
            self._count = int(meta["epoch_loss"][1])
        if "torch_rng" in meta:
            torch.set_rng_state(meta["torch_rng"])
        if "cuda_rng" in meta and torch.cuda.is_available() and len(meta["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(meta["cuda_rng"])


def interrupted(signum: int, where: str, run_dir: Optional[Path], folder_made: bool = True) -> Interrupted:
    """The one line an interrupted run ends with: what was saved and the command that goes on."""
    name = signal.Signals(signum).name
    last = run_dir / "checkpoints" / "last.ckpt" if run_dir is not None else None
    if last is None:
        what = "nothing was saved (no run folder)"
    elif not folder_made or not run_dir.is_dir():
        what = "nothing was saved, the run folder was not made yet; run the same command again"
    elif last.is_file():
        what = f"saved {last}; continue with: pyro-vae train --resume {run_dir}"
    elif (run_dir / "config.yaml").is_file():
        what = (
            f"no epoch was saved yet; start over with: pyro-vae train {run_dir / 'config.yaml'} "
            f"--out {run_dir} --overwrite"
        )
    else:
        what = "no epoch was saved yet; run the same command again with --overwrite"
    return Interrupted(f"interrupted by {name} {where}; {what}", signum)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the file and renaming it into place: a kill
    or a full disk during a save leaves the previous checkpoint whole and loadable."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_tensors(
            checkpoint,
            path,
            hint="the previous checkpoint is kept: make room, then continue with: "
            f"pyro-vae train --resume {Path(path).parents[1]}",
        )


class EpochMetrics(Callback):
    """One row per epoch (epoch, losses, held-out metrics, beta, lr, seconds): to the progress bar,
    ModelCheckpoint / EarlyStopping (callback metrics), the loggers, and, without a progress
    bar, one printed line. Keeps the run's training seconds across resumes."""

    def __init__(self, epochs: int, print_lines: bool = False):
        self.epochs, self.print_lines = epochs, print_lines
        self.rows = []
        self.train_seconds = 0.0  # epochs of the whole run, validation included (kept across resumes)
        self.epoch_seconds = self.val_seconds = 0.0  # of this process, for --profile
        self.batch_seconds = 0.0  # of this process: from each batch's start hook to its end hook, for --profile

    @property
    def step_seconds(self) -> float:
        """Seconds of this process's epochs outside validation: the optimisation steps and the loop around them."""
        return max(0.0, self.epoch_seconds - self.val_seconds)

    def state_dict(self):
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state):
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()  # also for a run resumed inside an epoch (no epoch start)

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._tb = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch_seconds += time.perf_counter() - self._tb

    def on_validation_start(self, trainer, pl_module):
        self._tv = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self.val_seconds += time.perf_counter() - self._tv

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = time.perf_counter() - self._t0
        self.train_seconds += seconds
        self.epoch_seconds += seconds
        row = {"epoch": trainer.current_epoch + 1, "train_loss": pl_module.take_epoch_loss()}
        row.update(pl_module.take_val_metrics())
        row.update(
            {
                "beta": float(pl_module.model.beta),
                **pl_module.plan.schedule_metrics(),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "seconds": round(seconds, 3),
            }
        )
        self.rows.append(row)
        pl_module.log_dict({k: v for k, v in row.items() if k != "epoch"}, logger=False, prog_bar=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(row, step=row["epoch"])
                logger.save()
            if self.print_lines:
                parts = [f"epoch {row['epoch']}/{self.epochs}"]
                parts += [f"{k} {v:.4g}" for k, v in row.items() if k.endswith(("loss", "accuracy"))]
                parts.append(f"{seconds:.1f} s")
                print("  ".join(parts), file=sys.stderr, flush=True)


class KLSchedule(Callback):
    """Before every step, the plan's KL schedule at the epochs done so far (fractional): the warm-up
    factor beta and the capacity C(t) (:meth:`~pyro_vae.training.TrainingPlan.schedule`)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.plan.schedule(trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches))


class StopOnSignal(Callback):
    """SIGINT / SIGTERM while training: the step in flight finishes, the run is saved (inside an
    epoch: a checkpoint of the steps so far; at an epoch's last step: that epoch, as usual) and
    training stops with one line saying what was saved and how to go on. A second signal stops
    at once, keeping the last epoch's checkpoint."""

    def __init__(self, run_dir: Optional[Path] = None, state: Optional[dict] = None):
        self.run_dir = run_dir
        self.state = state if state is not None else {}  # fit's record of where the run is, for its messages
        self.stop_signal = None
        self._handlers = {}

    def on_train_start(self, trainer, pl_module):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after Lightning's own handlers
            try:
                self._handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread
                pass
        dropped = take_pending_signal()  # a signal during start-up whose exception Python dropped
        if dropped is not None:
            self.stop_signal = dropped  # stops after the first step, saved

    def teardown(self, trainer, pl_module, stage):
        for sig, handler in self._handlers.items():  # a signal after the last step raises again
            if handler is not None:
                signal.signal(sig, handler)
        self._handlers = {}

    def _request_stop(self, signum, frame):
        if self.stop_signal is not None:
            raise SignalReceived(signum)
        self.stop_signal = signum

    def on_train_epoch_start(self, trainer, pl_module):
        self.state["where"] = f"in epoch {trainer.current_epoch + 1}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stop_signal is not None and batch_idx + 1 < trainer.num_training_batches:
            self.interrupt(
                trainer,
                f"in epoch {trainer.current_epoch + 1} after step {batch_idx + 1}/{trainer.num_training_batches}",
                mid_epoch=True,
            )

    def on_train_epoch_end(self, trainer, pl_module):
        if self.stop_signal is not None:  # the checkpoints save this epoch, then fit stops
            trainer.should_stop = True

    def interrupt(self, trainer, where: str, mid_epoch: bool):
        """Save what can be saved and stop with a one-line message (exit 128 + signal)."""
        if self.run_dir is not None and mid_epoch and trainer.world_size == 1:
            trainer.save_checkpoint(str(self.run_dir / "checkpoints" / "last.ckpt"))  # resume continues the epoch
        raise interrupted(self.stop_signal, where, self.run_dir)


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (best validated weights), its data,
    config, run directory, final metrics and the per-epoch history."""

    model: torch.nn.Module
    data: Dataset
    config: object
    run_dir: Optional[Path]
    metrics: dict
    history: list = field(default_factory=list)


class SlowPrecisionWarning(UserWarning):
    """The chosen precision is supported but slow on this hardware."""


def _on_cpu(t) -> bool:
    return t.accelerator == "cpu" or (
        t.accelerator == "auto"
        and not torch.cuda.is_available()
        and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    )


def resolve_precision(t) -> str:
    """``trainer.precision`` as Lightning takes it: ``auto`` is bf16-mixed when training on a CPU
    with native bf16 units (the products run in bfloat16, densities and parameters stay float32)
    and 32-true everywhere else."""
    if str(t.precision) != "auto":
        return str(t.precision)
    return "bf16-mixed" if _on_cpu(t) and cpu_has_native_bf16() else "32-true"


def check_precision(cfg) -> None:
    """Warn when bf16-mixed would run on a CPU without bf16 units (there it is slower, not faster)."""
    t = cfg.trainer
    on_cpu = _on_cpu(t)
    if str(t.precision).startswith("bf16") and on_cpu and not cpu_has_native_bf16():
        warnings.warn(
            f"trainer.precision={t.precision} on a CPU without native bf16 (no AVX512-BF16/AMX): "
            "bf16 matmuls are emulated and several times slower here; set trainer.precision=32-true",
            SlowPrecisionWarning,
            stacklevel=3,
        )


def default_run_dir(cfg) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def launched_rank() -> int:
    """This process's global rank as set by a DDP launcher (0 for the process a user started)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class _Resume:
    """What ``--resume`` continues: the checkpoint, its config, where it stopped, its data's checksum."""

    cfg: object
    ckpt: Path
    done_epochs: int
    mid_epoch: Optional[tuple]  # (epoch, steps done) when the checkpoint was taken inside an epoch
    data_fingerprint: Optional[str]


def _resume_config(resume, overrides) -> _Resume:
    ckpt = Path(resume) / "checkpoints" / "last.ckpt"
    if not Path(resume).is_dir():
        raise PyroVAEError(f"--resume {resume}: no such run directory")
    if not ckpt.is_file():
        fresh = Path(resume) / "config.yaml"
        again = (
            f"pyro-vae train {fresh} --out {resume} --overwrite"
            if fresh.is_file()
            else "the run's own command with --overwrite"
        )
        raise PyroVAEError(
            f"--resume {resume}: no checkpoints/last.ckpt there (the run saved no epoch yet); "
            f"start it again instead: {again}"
        )
    payload = rundir.read_payload(ckpt)
    meta = payload.get("pyro_vae")
    if not isinstance(meta, dict) or "config" not in meta:
        raise PyroVAEError(f"{ckpt} is not a pyro_vae training checkpoint")
    if meta.get("format") != rundir.FORMAT:
        raise PyroVAEError(
            f"{ckpt} was written by pyro_vae {meta.get('version', 'before 0.3')} "
            f"(format {meta.get('format')!r}, this version reads {rundir.FORMAT!r}); "
            f"resume it with that version, or start over with --overwrite"
        )
    cfg = config_mod.load_config(None, overrides, base=OmegaConf.create(meta["config"]))
    try:  # epochs whose batches were all processed (a checkpoint taken mid-epoch excludes that epoch)
        loops = payload["loops"]["fit_loop"]
        done = int(loops["epoch_progress"]["current"]["processed"])
        batches = loops["epoch_loop.batch_progress"]
        mid = (int(payload["epoch"]), int(batches["current"]["processed"])) if not batches["is_last_batch"] else None
    except (KeyError, TypeError, ValueError):
        raise PyroVAEError(f"{ckpt} is not a pyro_vae training checkpoint (no loop state)") from None
    return _Resume(cfg, ckpt, done, mid if mid and mid[1] > 0 else None, meta.get("data"))


def _check_same_data(resume: _Resume, fingerprint: str, run_dir) -> None:
    if resume.data_fingerprint is not None and resume.data_fingerprint != fingerprint:
        raise PyroVAEError(
            f"--resume {run_dir}: the data differ from those the run was trained on (checksum "
            f"{fingerprint}, the run's {resume.data_fingerprint}): a data file changed since; "
            "restore it, or start over with --overwrite"
        )


def _rows_before(path: Path, last_epoch: int) -> list:
    """The metrics.csv rows of epochs 1..last_epoch (later rows were written before a crash and
    are about to be redone)."""
    import csv
    import io

    if not path.is_file():
        return []
    rows = []
    for r in csv.DictReader(io.StringIO(path.read_text())):
        row = {k: float(v) for k, v in r.items() if k != "step" and v not in ("", None)}
        if "epoch" in row and row["epoch"] <= last_epoch:
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def _checkpoints(folder: Path, selection) -> list:
    """``best.ckpt`` when there is a selection metric, then ``last.ckpt`` after every epoch.

    ``last`` is a checkpoint of its own (no monitor, top 1: the newest epoch) rather than
    ``save_last``, which Lightning 2.6 writes only in a step that also saved a top-k file.
    ``best`` comes first so that ``last.ckpt`` holds its updated state."""
    common = dict(
        dirpath=str(folder),
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
    )
    best = []
    if selection is not None:
        key, mode = selection
        best = [ModelCheckpoint(filename="best", monitor=f"val_{key}", mode=mode, **common)]
    return best + [ModelCheckpoint(filename="last", monitor=None, **common)]


def _trainer(
    cfg, run_dir, metrics: EpochMetrics, selection, has_val: bool, epochs: Optional[int] = None, extra_callbacks=()
):
    t = cfg.trainer
    callbacks = [metrics, *extra_callbacks]
    if run_dir is not None:
        callbacks += _checkpoints(run_dir / "checkpoints", selection if has_val else None)
    if cfg.train.early_stopping_patience is not None and has_val:
        key, mode = selection
        callbacks.append(
            EarlyStopping(
                monitor=f"val_{key}",
                mode=mode,
                patience=cfg.train.early_stopping_patience,
                check_on_train_epoch_end=True,
            )
        )
    # no LearningRateMonitor: EpochMetrics' one row per epoch carries lr to every logger, and the
    # monitor's own rows would break metrics.csv's one-row-per-epoch layout
    bar = t.progress_bar if t.progress_bar is not None else sys.stderr.isatty()
    if bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    metrics.print_lines = not bar
    kwargs = dict(
        max_epochs=epochs or cfg.train.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t),
        gradient_clip_val=cfg.train.gradient_clip_val,
        logger=tracking.make_loggers(cfg, run_dir) or False,
        enable_checkpointing=run_dir is not None,
        enable_model_summary=False,
        enable_progress_bar=bool(bar),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        use_distributed_sampler=False,
        deterministic=False,
        plugins=[AtomicCheckpointIO()] if run_dir is not None else None,
        limit_val_batches=1.0 if has_val else 0,
    )
    extra = OmegaConf.to_container(t.extra)
    clash = sorted(set(extra) & set(kwargs))
    if clash:
        raise ConfigError(
            f"trainer.extra.{clash[0]} is set by pyro_vae; use its own key instead (`pyro-vae config` lists them)"
        )
    try:
        return L.Trainer(**kwargs, **extra)
    except Exception as e:  # ValueError, Lightning's MisconfigurationException and the like
        raise ConfigError(f"bad trainer setting: {first_line(e)}") from None


def fit(
    cfg=None,
    out=None,
    overrides=(),
    data: Optional[Dataset] = None,
    plots: bool = True,
    save: bool = True,
    resume=None,
    overwrite: bool = False,
    callbacks: Sequence = (),
) -> Optional[FitResult]:
    """Train the model the config describes and write its run directory.

    ``cfg`` is a config (from :func:`pyro_vae.config.load_config`), a YAML path, or None
    for the defaults; ``overrides`` are ``key=value`` strings. ``resume`` continues the run
    directory's last checkpoint with its own config (same optimizer and schedule state,
    epoch counter and data order). ``out`` must be new or empty unless ``overwrite``.
    Returns a :class:`FitResult` (None in the extra processes of a multi-process run).
    ``callbacks``: more Lightning callbacks for the trainer (e.g. ``pyro-vae tune``'s pruning).

    SIGINT / SIGTERM at any moment end it with :class:`~pyro_vae.errors.Interrupted`, whose
    message says what was saved and the command that continues or restarts the run.
    """
    # a resumed run's folder is there from the start: a signal at any moment says how to go on
    state = {
        "where": "while starting",
        "run_dir": Path(resume) if resume is not None and save else None,
        "made": resume is not None,
    }
    with signals_raise():
        try:
            return _fit(state, cfg, out, overrides, data, plots, save, resume, overwrite, callbacks)
        except SignalReceived as e:
            take_pending_signal()
            raise interrupted(e.signum, state["where"], state["run_dir"], state["made"]) from None


@dataclass
class _Run:
    """What ``_prepare`` settles before anything is built: the config, the data and the folder."""

    cfg: object
    data: Dataset
    run_dir: Optional[Path]
    resumed: Optional[_Resume]
    info: object  # DataInfo: what the model is built for
    fingerprint: str
    rank_zero: bool


@dataclass
class _Built:
    """The model, its training plan and how its epochs are selected."""

    model: torch.nn.Module
    plan: TrainingPlan
    has_val: bool
    selection: Optional[tuple]


def _fit(state, cfg, out, overrides, data, plots, save, resume, overwrite, callbacks=()):
    run = _prepare(state, cfg, out, overrides, data, save, resume)
    built = _build(state, run)
    # the plan has filled in the data-dependent defaults: from here on config.yaml, the checkpoints
    # and model.pt hold this config, and nothing may change it
    OmegaConf.set_readonly(run.cfg, True)
    try:
        return _train_and_finish(state, run, built, overwrite, plots, callbacks)
    finally:
        OmegaConf.set_readonly(run.cfg, None)  # the caller's to use as it likes


def _train_and_finish(state, run, built, overwrite, plots, callbacks=()):
    with warnings.catch_warnings():
        _quiet_lightning()
        metrics, stop = EpochMetrics(built.plan.epochs()), StopOnSignal(run.run_dir, state)
        t = run.cfg.train
        extra = [stop] + ([KLSchedule()] if t.kl_warmup_epochs or t.capacity_max is not None else [])
        extra += list(callbacks)
        with PROFILE.phase("Lightning Trainer"):  # validates trainer.* before the folder is touched
            trainer = _trainer(
                run.cfg, run.run_dir, metrics, built.selection, built.has_val, built.plan.epochs(), extra
            )
        with _run_folder(state, run, overwrite):
            module = _run(state, trainer, run, built, metrics, stop)
            if not trainer.is_global_zero:
                return None
            state["where"] = "after training, while evaluating and writing model.pt (every epoch is saved)"
            return _finish(trainer, module, run, built, metrics, plots)


def _prepare(state, cfg, out, overrides, data, save, resume) -> _Run:
    """The config (a resumed run's own), the seed, the data (checked against a resumed run's)."""
    resumed = _resume_config(resume, overrides) if resume is not None else None
    if resumed is not None:
        cfg, out = resumed.cfg, resume
    elif cfg is None or isinstance(cfg, (str, Path)):
        cfg = config_mod.load_config(cfg, overrides)
    else:
        cfg = config_mod.load_config(None, overrides, base=cfg)
    check_precision(cfg)
    pyro.set_rng_seed(int(cfg.seed))
    run_dir = Path(os.environ.get("PYRO_VAE_RUN_DIR") or out or default_run_dir(cfg)) if save else None
    state.update(run_dir=run_dir, made=resumed is not None, where="while loading the data")
    with PROFILE.phase("data"):
        data = data if data is not None else load_data(cfg)
    fingerprint = data.fingerprint()
    if resumed is not None:
        _check_same_data(resumed, fingerprint, run_dir)
    return _Run(cfg, data, run_dir, resumed, data.info(), fingerprint, launched_rank() == 0)


def _build(state, run: _Run) -> _Built:
    state["where"] = "while building the model"
    with PROFILE.phase("model and training plan"):
        model = build_model(run.cfg, run.info)
        plan = plan_for(model, run.cfg)
        plan.check_data(run.data)
        plan.setup(run.data)
    has_val = run.data.val is not None and len(run.data.val) > 0
    return _Built(model, plan, has_val, plan.selection_for(run.data.val) if has_val else plan.selection)


@contextlib.contextmanager
def _run_folder(state, run: _Run, overwrite: bool):
    """The run folder made (or reopened by --resume) and locked for the block; rank zero only."""
    owner = run.run_dir is not None and run.rank_zero
    if owner:
        rundir.prepare(run.run_dir, overwrite=overwrite, resume=run.resumed is not None)
        state["made"] = True
        os.environ["PYRO_VAE_RUN_DIR"] = str(run.run_dir)  # the same folder in DDP's extra processes
    try:
        yield
    finally:
        if owner:
            rundir.release(run.run_dir)
            os.environ.pop("PYRO_VAE_RUN_DIR", None)


def _run(state, trainer, run: _Run, built: _Built, metrics: EpochMetrics, stop: StopOnSignal) -> "SVIModule":
    """The config written, earlier rows carried over on --resume, then ``trainer.fit``."""
    state["where"] = "before the first epoch"
    if run.run_dir is not None and run.rank_zero:
        write_text(run.run_dir / "config.yaml", config_mod.to_yaml(run.cfg))
        tracking.log_config(trainer.loggers, run.cfg)
        if run.resumed is not None:  # Lightning's CSVLogger starts a fresh file: carry the earlier rows over
            metrics.rows = _rows_before(run.run_dir / "metrics.csv", run.resumed.done_epochs)
            for logger in trainer.loggers:
                for row in metrics.rows:
                    logger.log_metrics(row, step=row["epoch"])
                logger.save()
    module = SVIModule(built.plan, run.cfg, run.info, run.fingerprint)
    _train(trainer, module, run, built, metrics)
    if stop.stop_signal is not None:  # the signal came after the last step: that epoch is saved
        stop.interrupt(trainer, f"after epoch {trainer.current_epoch}", mid_epoch=False)
    return module


def _train(trainer, module, run: _Run, built: _Built, metrics: EpochMetrics) -> None:
    """``trainer.fit`` on the plan's index batches (continuing a resumed run); times it for --profile."""
    rank, world, cfg = trainer.global_rank, trainer.world_size, run.cfg
    loader = built.plan.train_dataloader(run.data, int(cfg.seed), rank, world)
    if run.resumed is not None and run.resumed.mid_epoch is not None:
        loader.sampler.resume_at(*run.resumed.mid_epoch)
    val_loader = (
        built.plan.eval_dataloader(run.data.val, cfg.train.eval_batch_size, rank, world) if built.has_val else None
    )
    ckpt_path = str(run.resumed.ckpt) if run.resumed is not None else None
    t_fit = time.perf_counter()
    try:
        trainer.fit(
            module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt_path, weights_only=True
        )
    except (TrainingDiverged, PyroVAEError):
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        if ckpt_path is not None:
            raise PyroVAEError(f"could not resume from {ckpt_path}: {first_line(e)}") from None
        raise
    fit_seconds = time.perf_counter() - t_fit
    steps = min(metrics.batch_seconds, metrics.step_seconds)
    PROFILE.add("training steps (forward, backward, optimiser)", steps)
    PROFILE.add("loop around the steps (next batch, hooks)", metrics.step_seconds - steps)
    PROFILE.add("validation", metrics.val_seconds)
    PROFILE.add(
        "Lightning loop (checkpoints, logging, start/stop)",
        max(0.0, fit_seconds - metrics.step_seconds - metrics.val_seconds),
    )


def _finish(trainer, module, run: _Run, built: _Built, rows: EpochMetrics, plots: bool) -> FitResult:
    """The best epoch's weights, the test metrics, model.pt, metrics.json and the pictures."""
    cfg, data, run_dir, plan, info = run.cfg, run.data, run.run_dir, built.plan, run.info
    model = module.model
    device = trainer.strategy.root_device
    best = run_dir / "checkpoints" / "best.ckpt" if run_dir is not None else None
    metrics = {
        "epochs": trainer.current_epoch,
        "train_loss": rows.rows[-1]["train_loss"] if rows.rows else float("nan"),
        "train_seconds": round(rows.train_seconds, 3),
        "seconds_per_epoch": round(rows.train_seconds / max(1, len(rows.rows)), 3),
        "num_train": len(data.train),
        "world_size": trainer.world_size,
        "precision": resolve_precision(cfg.trainer),
        "steps_per_epoch": trainer.num_training_batches,
    }
    t_best = time.perf_counter()
    if best is not None and best.is_file():
        state = rundir.read_payload(best)["state_dict"]
        module.load_state_dict(state)
        cb = trainer.checkpoint_callback
        metrics["best_epoch"] = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]) + 1
        metrics[f"best_{cb.monitor}"] = float(cb.best_model_score)
    PROFILE.add("best checkpoint reload", time.perf_counter() - t_best)
    model = model.to(device).eval()
    model.beta = 1.0

    from .evaluate import test_metrics

    with PROFILE.phase("test metrics"):
        metrics.update(test_metrics(plan, data.test, cfg, seed=int(cfg.seed)))
    model.config, model.data_info = cfg, info  # what model.save and pyro_vae.load need
    if run_dir is not None:
        with PROFILE.phase("save model.pt, metrics.json"):
            try:
                model.save(run_dir / rundir.CHECKPOINT, overwrite=True)
            except PyroVAEError as e:
                raise PyroVAEError(
                    f"{e}; checkpoints/last.ckpt holds every epoch: make room, then pyro-vae train --resume {run_dir}"
                ) from None
            write_json(run_dir / "metrics.json", metrics)
        if plots:
            from .plots import run_report

            run_report(model, data, run_dir, rows.rows, plan)
        with PROFILE.phase("trackers: test metrics, artifacts"):
            tracking.log_finish(trainer.loggers, run_dir, metrics, trainer.current_epoch, model, data)
    return FitResult(model.cpu(), data, cfg, run_dir, metrics, rows.rows)


#: Lightning's warnings that do not apply to how pyro_vae runs it (the last: the divergence check says it in one line)
LIGHTNING_NOISE = (
    ".*does not have many workers.*",
    ".*TPU available but not used.*",
    ".*LeafSpec.*",
    ".*Experiment logs directory.*",
    ".*Checkpoint directory.*exists and is not empty.*",
    ".*that ended before the epoch ended.*",
    ".*`training_step` returned `None`.*",
    ".*no `val_dataloader`.*",
    ".*smaller than the logging interval.*",
    "Encountered NaN.*",
)


def _quiet_lightning():
    """Inside a ``warnings.catch_warnings()`` block: Lightning's noise off, its info logs too."""
    for pattern in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", pattern)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
