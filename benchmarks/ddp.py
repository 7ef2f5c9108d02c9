"""1 vs 2 processes (Lightning DDP, gloo on the CPU) for the reference VAE on Fashion-MNIST.

Each process trains on its own half of every epoch with the per-process batch size halved,
so both runs take the same global steps (batch 256). On a 2-core machine each DDP process
gets one thread: the figure says what sharding costs and saves when the processes compete
for the same cores, not what N GPUs give (there each process has its own device, and the
seconds per epoch fall roughly as 1/N plus the gradient all-reduce).

    .venv/bin/python benchmarks/ddp.py [--epochs 2] [--root /usr/share/datasets/fashion-mnist]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def run(args, out, processes, extra_env=None):
    cmd = [
        sys.executable,
        "-m",
        "pyro_vae.cli",
        "train",
        "examples/configs/fashion_vae.yaml",
        f"data.root={args.root}",
        f"train.epochs={args.epochs}",
        "trainer.progress_bar=false",
        "trainer.accelerator=cpu",
        f"train.batch_size={256 // processes}",
        "--out",
        str(out),
    ]
    if processes > 1:
        cmd += [f"trainer.devices={processes}", "trainer.strategy=ddp"]
    env = dict(os.environ, **(extra_env or {}))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{processes} process(es) failed:\n{r.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {
        "processes": processes,
        "global_batch": 256,
        "epochs": m["epochs"],
        "world_size": m["world_size"],
        "steps_per_epoch": m["steps_per_epoch"],
        "seconds_per_epoch": m["seconds_per_epoch"],
        "whole_command_seconds": round(wall, 1),
        "test_loss": round(m["test_loss"], 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(HERE / "ddp.json"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run(args, Path(tmp) / "one", 1))
        rows.append(run(args, Path(tmp) / "two", 2, {"OMP_NUM_THREADS": "1"}))
    result = {
        "benchmark": "ddp",
        "data": "fashion-mnist",
        "model": "examples/configs/fashion_vae.yaml",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
