"""Soak: a long digits run interrupted and resumed many times ends as if it had never stopped.

    python benchmarks/soak.py [--epochs 300] [--interruptions 20] [--seed 0]

Trains the default digits VAE once without a break, then the same command again, stopped
at random moments (SIGTERM and kill -9 in turn; one in five during start-up) and continued with ``--resume`` until it
has been stopped ``--interruptions`` times and finishes. Checks that ``metrics.csv`` holds
every epoch once, in order, and that the final test loss equals the uninterrupted run's
(one CPU process, one thread: to 1e-4). Writes ``benchmarks/soak.json``.
"""

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "pyro_vae.cli", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def epochs_in_csv(run: Path) -> list:
    with open(run / "metrics.csv") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f)]


def _read_stderr(proc, seen: threading.Event, lines: list) -> None:
    """Sets ``seen`` at the process's first epoch line (or its end); keeps its lines."""
    for line in proc.stderr:
        lines.append(line.rstrip())
        if line.startswith("epoch "):
            seen.set()
    seen.set()  # the process ended


def stopped_run(command, run: Path, interruptions: int, share: float, rng) -> list:
    """Start, stop at a random moment, resume, ... ``interruptions`` times; then run to the end.

    Every fifth stop comes 0.2-3 s after the start (mostly the start-up: imports, data, model);
    the others a random time, up to 1.2 ``share``, after the process finished an epoch of its own.
    Each stop is logged with the exit code and the process's last line."""
    log, fresh = [], list(command)
    for i in range(interruptions):
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        argv = CLI + ["--resume", str(run)] if (run / "checkpoints" / "last.ckpt").is_file() else fresh
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        seen, lines = threading.Event(), []
        reader = threading.Thread(target=_read_stderr, args=(proc, seen, lines), daemon=True)
        reader.start()
        if i % 5 == 4:
            delay = float(rng.uniform(0.2, 3.0))
        else:
            seen.wait(300)
            delay = float(rng.uniform(0.0, 1.2) * share)
        time.sleep(delay)
        when = "training" if seen.is_set() else "start-up"
        if proc.poll() is not None:  # finished before the signal: no more interruptions possible
            log.append({"signal": None, "when": when, "exit": proc.returncode})
            break
        proc.send_signal(sig)
        proc.wait(timeout=300)
        reader.join(timeout=10)
        done = epochs_in_csv(run)[-1] if (run / "metrics.csv").is_file() and epochs_in_csv(run) else 0
        said = [ln for ln in lines if ln.startswith("pyro-vae:")]
        log.append(
            {
                "signal": signal.Signals(sig).name,
                "when": when,
                "after_s": round(delay, 2),
                "exit": proc.returncode,
                "epochs_in_csv": done,
                "said": said[-1] if said else None,
            }
        )
        if not (run / "checkpoints" / "last.ckpt").is_file():  # stopped before the first epoch
            fresh = list(command) + ["--overwrite"]
    argv = CLI + ["--resume", str(run)] if (run / "checkpoints" / "last.ckpt").is_file() else fresh
    final = subprocess.run(argv, capture_output=True, text=True, env=ENV)
    if final.returncode != 0:
        raise SystemExit(f"the last resume failed: {final.stderr.strip().splitlines()[-1]}")
    return log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--interruptions", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "soak.json"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        whole, run = Path(tmp) / "whole", Path(tmp) / "stopped"
        base = ["data.name=digits", f"train.epochs={args.epochs}", "trainer.progress_bar=false"]
        t0 = time.perf_counter()
        subprocess.run(CLI + base + ["--out", str(whole)], capture_output=True, check=True, env=ENV)
        whole_s = time.perf_counter() - t0
        train_s = json.loads((whole / "metrics.json").read_text())["train_seconds"]
        t0 = time.perf_counter()
        log = stopped_run(CLI + base + ["--out", str(run)], run, args.interruptions, train_s / args.interruptions, rng)
        stopped_s = time.perf_counter() - t0
        a = json.loads((whole / "metrics.json").read_text())
        b = json.loads((run / "metrics.json").read_text())
        epochs = epochs_in_csv(run)
    import lightning
    import torch

    result = {
        "command": " ".join(["pyro-vae", "train", *base]),
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": 1,
        "interruptions": sum(1 for r in log if r["signal"]),
        "stops_ended_as_signalled": sum(1 for r in log if r["signal"] and r["exit"] in (143, -9)),
        "sigterm": sum(1 for r in log if r["signal"] == "SIGTERM"),
        "sigkill": sum(1 for r in log if r["signal"] == "SIGKILL"),
        "every_epoch_once": epochs == list(range(1, args.epochs + 1)),
        "test_loss_uninterrupted": a["test_loss"],
        "test_loss_stopped": b["test_loss"],
        "test_loss_difference": abs(a["test_loss"] - b["test_loss"]),
        "wall_seconds_uninterrupted": round(whole_s, 1),
        "wall_seconds_stopped": round(stopped_s, 1),
        "log": log,
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
        "machine": platform.processor() or platform.machine(),
    }
    result["held"] = (
        result["every_epoch_once"]
        and result["test_loss_difference"] <= 1e-4
        and result["interruptions"] == result["stops_ended_as_signalled"] == args.interruptions
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=2))
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
