"""``pyro-vae tune``: a hyperparameter search with Optuna, kept in an SQLite study in a folder.

    pyro-vae tune [CONFIG] [key=value ...] --space train.lr=log:1e-4:1e-2 --trials 20 --out DIR
    pyro-vae tune --resume DIR [--trials N]

Each trial is ``pyro-vae train`` on the base config with the trial's values, in
``DIR/trials/NNNN``. The objective is the model kind's selection metric on the validation
split (``best_val_<metric>`` of the run: its best epoch); a validation split of a tenth of the
training data is made when the config has none, and the test split is never used to select.
Trials are pruned at epoch ends by Optuna's median rule once a quarter of them (2 to 5) have finished,
from epoch 2 (or a quarter of the epochs) on; the last epoch always completes a trial.

``DIR`` holds ``study.db`` (the Optuna study: ``optuna-dashboard sqlite:///DIR/study.db``),
``tune.json`` (the base config, the spaces, the number of trials), ``best.yaml`` (the best
trial's config: ``pyro-vae train DIR/best.yaml`` runs it as is), ``trials.csv`` and the
pictures ``history.png`` and ``importances.png``.

Several processes may work on one study at once (``--resume DIR`` in each); a trial left
running by a process that died (kill -9, a crash) is marked failed when the study resumes.
"""

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, Interrupted, PyroVAEError, SignalReceived
from .utils import process_alive, take_pending_signal

KINDS = ("log", "float", "int", "choice")
SPEC_HELP = "log:LOW:HIGH | float:LOW:HIGH | int:LOW:HIGH | choice:A,B,C"
STUDY = "pyro_vae"


@dataclass
class Space:
    """One searched key: ``kind`` in KINDS, ``low``/``high`` for ranges, ``choices`` for choice."""

    key: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[List[str]] = None

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(self.choices)
        return f"{self.kind}:{self.low:g}:{self.high:g}"

    def suggest(self, trial):
        """The trial's value (Optuna's ``suggest_*``), as text for a ``key=value`` override."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high)))
        return repr(trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log"))


def parse_space(text: str) -> Space:
    """``KEY=SPEC`` -> Space; a one-line error for anything else."""
    key, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not key or kind not in KINDS or not rest:
        raise ConfigError(f"--space {text!r}: expected KEY=SPEC with SPEC one of {SPEC_HELP}")
    if kind == "choice":
        choices = [c.strip() for c in rest.split(",") if c.strip()]
        if len(choices) < 2:
            raise ConfigError(f"--space {text!r}: choice needs at least two values, e.g. choice:32,64,128")
        return Space(key, kind, choices=choices)
    parts = rest.split(":")
    try:
        low, high = (int(p) if kind == "int" else float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--space {text!r}: {kind} needs {kind}:LOW:HIGH with two numbers") from None
    if not low < high or not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--space {text!r}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise ConfigError(f"--space {text!r}: log needs LOW > 0")
    return Space(key, kind, float(low), float(high))


def _trial_config(base, values: Dict[str, str]):
    from .config import load_config

    return load_config(None, [f"{k}={v}" for k, v in values.items()], base=base, import_plugins=False)


def check_spaces(base, spaces: Sequence[Space]) -> None:
    """Each key exists and takes its space's ends (or choices): one line naming the space otherwise."""
    if not spaces:
        raise ConfigError(f"give at least one --space KEY=SPEC ({SPEC_HELP}), e.g. --space train.lr=log:1e-4:1e-2")
    keys = [s.key for s in spaces]
    if len(set(keys)) < len(keys):
        raise ConfigError("--space: a key is given twice")
    for s in spaces:
        values = (
            s.choices if s.kind == "choice" else [str(int(v)) if s.kind == "int" else repr(v) for v in (s.low, s.high)]
        )
        for v in values:
            try:
                _trial_config(base, {s.key: v})
            except ConfigError as e:
                raise ConfigError(f"--space {s.key}={s.spec}: {e}") from None


# ------------------------------------------------------------------ the study folder
@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the tune folder (between processes working on one study)."""
    with open(folder / ".tune.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _storage(folder: Path):
    import optuna

    return optuna.storages.RDBStorage(
        f"sqlite:///{folder / 'study.db'}", engine_kwargs={"connect_args": {"timeout": 60}}
    )


def _fail_orphans(study) -> List[int]:
    """Trials left running by a process of this machine that is gone: marked failed."""
    import optuna

    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == socket.gethostname() and pid is not None and not process_alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed


def prune_callback(trial, metric: str):
    """A Lightning callback: the selection metric reported to the trial at every epoch end; the
    run stops with ``optuna.TrialPruned`` when Optuna's pruner says so."""
    import optuna
    from lightning.pytorch.callbacks import Callback

    class Prune(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            value = trainer.callback_metrics.get(metric)
            if value is None:
                return
            epoch = trainer.current_epoch + 1
            trial.report(float(value), epoch)
            if epoch < (trainer.max_epochs or 0) and trial.should_prune():  # the last epoch completes the trial
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({metric} {float(value):.4g})")

    return Prune()


def _selection(cfg) -> Tuple[str, str]:
    """(metric, 'minimize'|'maximize') of the config's model kind on a validation split."""
    from .data import load_data
    from .train import build_model
    from .training import plan_for

    data = load_data(cfg)
    plan = plan_for(build_model(cfg, data.info()), cfg)
    key, mode = plan.selection_for(data.val)
    return f"val_{key}", "minimize" if mode == "min" else "maximize"


def _with_validation(cfg):
    """The config with a validation split: the user's, else a tenth of the training data."""
    from .config import load_config
    from .data import load_data

    if cfg.data.validation:
        return cfg
    n = len(load_data(cfg).train)
    if n < 20:
        raise PyroVAEError(f"tune needs a validation split and the training data has only {n} rows")
    return load_config(None, [f"data.validation={max(1, n // 10)}"], base=cfg, import_plugins=False)


def create(folder: Path, cfg, spaces: Sequence[Space], trials: int, keep: Optional[int]) -> None:
    """A new tune folder: its settings and an empty study. The folder must be new or empty."""
    import optuna

    from . import config as config_mod
    from .utils import write_text

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PyroVAEError(f"{folder} is not empty; continue its study with: pyro-vae tune --resume {folder}")
    cfg = _with_validation(cfg)
    check_spaces(cfg, spaces)
    metric, direction = _selection(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "config": config_mod.to_yaml(cfg),
        "spaces": {s.key: s.spec for s in spaces},
        "trials": int(trials),
        "keep": keep,
        "metric": metric,
        "direction": direction,
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(
        storage=_storage(folder),
        study_name=STUDY,
        direction=direction,
    )
    write_text(folder / "tune.json", json.dumps(settings, indent=2) + "\n")


def read_settings(folder: Path) -> dict:
    path = folder / "tune.json"
    if not (folder / "study.db").is_file() or not path.is_file():
        raise PyroVAEError(f"{folder} is not a tune folder (no study.db / tune.json); start one with --out")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PyroVAEError(f"{path} is damaged ({e})") from None


def run(folder: Path, trials: Optional[int] = None, out=sys.stderr) -> dict:
    """Trials until the study has ``trials`` finished ones (completed or pruned), counting those
    that other processes are running; then the summary files. Returns the best trial's row."""
    import optuna
    from omegaconf import OmegaConf

    from .config import load_config

    folder = Path(folder)
    settings = read_settings(folder)
    if trials is not None:
        settings["trials"] = int(trials)
    target, metric = settings["trials"], settings["metric"]
    base = load_config(None, (), base=OmegaConf.create(settings["config"]), import_plugins=False)
    spaces = [parse_space(f"{k}={v}") for k, v in settings["spaces"].items()]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the median rule once a quarter of the trials (2 to 5) have finished, from epoch 2 (or a quarter of the epochs) on
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=min(5, max(2, target // 4)), n_warmup_steps=max(2, int(base.train.epochs) // 4)
    )
    study = optuna.load_study(study_name=STUDY, storage=_storage(folder), pruner=pruner)
    states = optuna.trial.TrialState
    trial = None
    try:
        while True:
            with _locked(folder):
                orphans = _fail_orphans(study)
                if orphans:
                    print(f"trials {orphans} were left running by a process that stopped: marked failed", file=out)
                counted = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING))
                if len(counted) >= target:
                    break
                # TPE keeps its state in the study; seeded by the trial's number, a study's draws are the
                # same run after run, and distinct between processes working on it at once
                study.sampler = optuna.samplers.TPESampler(seed=int(base.seed) + len(study.get_trials(deepcopy=False)))
                trial = study.ask()
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
            _one_trial(folder, study, trial, base, spaces, metric, len(counted) + 1, target, out)
            trial = None
            with _locked(folder):
                summarise(folder, study, settings)
    except (Interrupted, SignalReceived) as e:
        take_pending_signal()
        signum = e.signum if isinstance(e, SignalReceived) else e.exit_code - 128
        if trial is not None:
            study.tell(trial, state=states.FAIL)
        raise Interrupted(
            f"tune stopped by {signal.Signals(signum).name}; the finished trials are kept in {folder}; "
            f"continue with: pyro-vae tune --resume {folder}",
            signum,
        ) from None
    with _locked(folder):
        return summarise(folder, study, settings)


def _one_trial(folder, study, trial, base, spaces, metric, position, target, out) -> None:
    import optuna

    from .train import fit

    values = {s.key: s.suggest(trial) for s in spaces}
    run_dir = folder / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(folder)))
    shown = " ".join(f"{k}={v}" for k, v in values.items())
    t0 = time.perf_counter()
    try:
        cfg = _trial_config(base, values)
        with contextlib.redirect_stderr(io.StringIO()):  # a trial's epoch lines: one line per trial instead
            result = fit(cfg, out=run_dir, plots=False, callbacks=[prune_callback(trial, metric)])
    except optuna.TrialPruned as e:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        print(f"trial {trial.number} ({position}/{target}) {shown}: {e}", file=out, flush=True)
        return
    except Interrupted:
        raise
    except PyroVAEError as e:  # a setting that cannot train (diverged, a bad combination): failed
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"trial {trial.number} ({position}/{target}) {shown}: failed: {e}", file=out, flush=True)
        return
    value = result.metrics.get(f"best_{metric}")
    if value is None or not math.isfinite(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"trial {trial.number} {shown}: no {metric} (no validation epochs?)", file=out, flush=True)
        return
    trial.set_user_attr("best_epoch", int(result.metrics.get("best_epoch", 0)))
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
    study.tell(trial, float(value))
    best = study.best_trial
    print(
        f"trial {trial.number} ({position}/{target}) {shown}: {metric} {value:.5g} in {time.perf_counter() - t0:.1f} s"
        f"  (best {best.value:.5g}, trial {best.number})",
        file=out,
        flush=True,
    )


def summarise(folder: Path, study, settings: dict) -> dict:
    """``trials.csv``, ``best.yaml``, the pictures; trial folders beyond the best ``keep`` removed."""
    import optuna
    from omegaconf import OmegaConf

    from . import config as config_mod
    from .utils import atomic_path, write_text

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    keys = list(settings["spaces"])
    with atomic_path(folder / "trials.csv", sync=False) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", settings["metric"], *keys, "best_epoch", "seconds", "run_dir"])
        for t in trials:
            w.writerow(
                [t.number, t.state.name, "" if t.value is None else t.value]
                + [t.params.get(k, "") for k in keys]
                + [t.user_attrs.get(k, "") for k in ("best_epoch", "seconds", "run_dir")]
            )
    done = [t for t in trials if t.state == states.COMPLETE]
    if not done:
        return {}
    best = study.best_trial
    base = OmegaConf.create(settings["config"])
    cfg = _trial_config(base, {k: str(v) for k, v in best.params.items()})
    write_text(
        folder / "best.yaml",
        f"# tune trial {best.number}: {settings['metric']} {best.value:.6g}\n" + config_mod.to_yaml(cfg),
    )
    keep = settings.get("keep")
    if keep is not None:
        ranked = sorted(done, key=lambda t: t.value, reverse=settings["direction"] == "maximize")
        kept = {t.number for t in ranked[:keep]}
        for t in trials:
            if t.state != states.RUNNING and t.number not in kept and t.user_attrs.get("run_dir"):
                shutil.rmtree(folder / t.user_attrs["run_dir"], ignore_errors=True)
    _pictures(folder, study, len(done))
    return {"number": best.number, "value": best.value, "params": best.params, "finished": len(done)}


def _pictures(folder: Path, study, completed: int) -> None:
    """Optuna's optimisation history and parameter importances (from two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    from .utils import atomic_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("history.png", ov.plot_optimization_history)]
        if completed >= 2 and len(study.best_trial.params) >= 1:
            plots.append(("importances.png", ov.plot_param_importances))
        for name, plot in plots:
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every value the same
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            with atomic_path(folder / name, sync=False) as tmp:
                fig.savefig(tmp, dpi=100, format="png")
            plt.close(fig)
