"""Peak memory of loading a dense float32 ``.npy`` into memory and training on it: goal <= 1.5x the array.

For each size a float32 array (rows x 1,000 columns of standard normal values) is written with
``np.lib.format.open_memmap`` in a temporary folder, then a fresh process trains
``data=array data.path=FILE likelihood=gaussian``: the whole file loaded and split 80/20 into train
and test, 16 training steps, then the test split evaluated (``--label after`` runs were given
``data.storage=memory``, the key that did not exist before). The child polls its own
anonymous memory (``RssAnon`` in /proc/self/status, every 10 ms) and also reports the kernel's
peak resident size (``ru_maxrss``, which includes file pages mapped by the process); the table
gives the peak anonymous memory above the imports' against the array's size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py [--sizes 0.25 1 4] [--label after]

Each run adds (or replaces) one labelled entry of ``benchmarks/memory.json`` (``before`` /
``after`` a change), so one file holds both measurements.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLUMNS = 1000
TRAIN = [
    "likelihood=gaussian",
    "trainer.extra={limit_train_batches: 16}",
    "train.epochs=1",
    "train.batch_size=128",
    "trainer.progress_bar=false",
    "trainer.logger=none",
    "trainer.accelerator=cpu",
]


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def peak_anon(base: float):
    """A one-item list holding the highest RssAnon (MB) seen every 10 ms while the block runs."""
    peak = [base]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], status_mb("RssAnon"))
            time.sleep(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        done.set()
        t.join()


def write_array(path: Path, rows: int, seed: int = 0, chunk: int = 50_000) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, COLUMNS))
    for a in range(0, rows, chunk):
        b = min(rows, a + chunk)
        out[a:b] = rng.standard_normal((b - a, COLUMNS), dtype=np.float32)
    out.flush()
    del out


def child(path: str, extra) -> None:
    """Train on ``path`` in this process and print one JSON line (runs in a fresh interpreter)."""
    import torch

    import pyro_vae

    torch.set_num_threads(1)
    base = status_mb("RssAnon")
    with peak_anon(base) as peak:
        t0 = time.perf_counter()
        r = pyro_vae.fit(None, save=False, overrides=["data=array", f"data.path={path}", *TRAIN, *extra])
        seconds = time.perf_counter() - t0
    peak[0] = max(peak[0], status_mb("RssAnon"))
    print(
        json.dumps(
            {
                "peak_anon_mb": round(peak[0], 1),
                "anon_after_imports_mb": round(base, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "fit_seconds": round(seconds, 1),
                "storage": type(r.data.test.x).__name__,
                "test_loss": round(r.metrics["test_loss"], 2),
            }
        )
    )


def measure(path: Path, extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run(
        [sys.executable, __file__, "--child", str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    if r.returncode:
        raise SystemExit(f"training on {path} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="array sizes in GB")
    p.add_argument("--label", default="after", help="entry of memory.json to write (before | after)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args()
    if args.child:
        return child(args.child, extra)
    rows_out = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for gb in args.sizes:
            n = int(gb * 1e9 / (4 * COLUMNS))
            path = Path(tmp) / f"x{n}.npy"
            write_array(path, n)
            row = {"rows": n, "columns": COLUMNS, "array_mb": round(n * COLUMNS * 4 / 2**20, 1)}
            row.update(measure(path, extra))
            row["peak_over_array"] = round((row["peak_anon_mb"] - row["anon_after_imports_mb"]) / row["array_mb"], 2)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            path.unlink()
    out_path = HERE / "memory.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out[args.label] = {
        "rows": rows_out,
        "train_overrides": TRAIN + extra,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
    }
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path} ({args.label})")


if __name__ == "__main__":
    main()
