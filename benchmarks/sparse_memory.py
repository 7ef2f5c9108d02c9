"""Peak memory of training on sparse count data: it grows with the non-zeros, not rows x columns.

For each synthetic CSR matrix (every row holds exactly ``density * columns`` non-zeros, one
column drawn in each block of 1/density columns; values Poisson(2) + 1 counts) this writes a
``scipy.sparse.save_npz`` file, then trains in a fresh process with
``data=array data.path=FILE likelihood=poisson``: the whole file is loaded (and split
99/1 into train/test, both kept as CSR), then ``data.limit`` training rows are trained for
one epoch and the 1% test split is evaluated. The child reports its peak RSS
(``resource.getrusage``) and, before touching the data, its RSS after importing torch and
pyro_vae. A dense ``.npy`` of the smallest matrix shows the dense path for comparison.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_memory.py [--quick]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = [
    (20_000, 20_000, 0.05),
    (50_000, 20_000, 0.05),
    (100_000, 20_000, 0.05),
    (200_000, 20_000, 0.05),
    (200_000, 20_000, 0.01),
]
TRAIN = [
    "likelihood=poisson",
    "data.test_fraction=0.01",
    "data.limit=2048",
    "train.epochs=1",
    "train.batch_size=128",
    "trainer.progress_bar=false",
    "trainer.logger=none",
    "trainer.accelerator=cpu",
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_csr(path: Path, rows: int, cols: int, density: float, seed: int = 0, chunk: int = 10_000) -> int:
    """A CSR matrix written with scipy.sparse.save_npz, built chunk by chunk (int32 indices, float32 counts)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    block = int(round(1 / density))
    per_row = cols // block
    indices = np.empty(rows * per_row, dtype=np.int32)
    data = np.empty(rows * per_row, dtype=np.float32)
    starts = (np.arange(per_row, dtype=np.int32) * block)[None, :]
    for a in range(0, rows, chunk):
        b = min(rows, a + chunk)
        sl = slice(a * per_row, b * per_row)
        indices[sl] = (starts + rng.integers(0, block, size=(b - a, per_row), dtype=np.int32)).ravel()
        data[sl] = rng.poisson(2.0, size=(b - a) * per_row).astype(np.float32) + 1
    indptr = np.arange(0, rows * per_row + 1, per_row, dtype=np.int64 if rows * per_row >= 2**31 else np.int32)
    m = sp.csr_matrix((data, indices, indptr), shape=(rows, cols))
    sp.save_npz(path, m, compressed=False)
    return int(m.nnz)


def child(path: str) -> None:
    """Train on ``path`` in this process and print one JSON line (runs in a fresh interpreter)."""
    import torch

    import pyro_vae

    torch.set_num_threads(1)
    base = rss_mb()
    t0 = time.perf_counter()
    r = pyro_vae.fit(None, save=False, overrides=["data=array", f"data.path={path}", *TRAIN])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak, 1),
                "rss_after_imports_mb": round(base, 1),
                "fit_seconds": round(seconds, 1),
                "steps": r.metrics["steps_per_epoch"],
                "train_is_sparse": type(r.data.train.x).__name__ == "SparseRows",
                "test_loss": round(r.metrics["test_loss"], 2),
            }
        )
    )


def measure(path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, env=env, cwd=HERE.parent
    )
    if r.returncode:
        raise SystemExit(f"training on {path} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the two smallest matrices")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    shapes = SHAPES[:2] if args.quick else SHAPES
    rows_out = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for i, (n, d, density) in enumerate(shapes):
            path = Path(tmp) / f"x{n}_{d}_{density}.npz"
            t0 = time.perf_counter()
            nnz = write_csr(path, n, d, density)
            row = {
                "rows": n,
                "columns": d,
                "density": density,
                "nnz": nnz,
                "input": "sparse npz",
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "csr_mb": round((nnz * 8 + (n + 1) * 4) / 2**20, 1),
                "dense_mb": round(n * d * 4 / 2**20, 1),
                "write_seconds": round(time.perf_counter() - t0, 1),
            }
            row.update(measure(path))
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            if i == 0:  # the same matrix as a dense .npy: the path every data set took before
                import scipy.sparse as sp

                dense_path = Path(tmp) / "dense.npy"
                np.save(dense_path, sp.load_npz(path).toarray())
                dense = dict(row, input="dense npy", file_mb=round(dense_path.stat().st_size / 2**20, 1))
                dense.update(measure(dense_path))
                rows_out.append(dense)
                print(json.dumps(dense), flush=True)
                dense_path.unlink()
            path.unlink()
    out = {
        "rows": rows_out,
        "train_overrides": TRAIN,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
        },
    }
    if not args.quick:
        (HERE / "sparse_memory.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {HERE / 'sparse_memory.json'}")


if __name__ == "__main__":
    main()
