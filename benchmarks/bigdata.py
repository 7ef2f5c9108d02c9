"""Training on a ``.npy`` read from disk (``data.storage=disk``) against the same rows in memory.

Three measurements, each training run in a fresh process (1 CPU thread), written to
``benchmarks/bigdata.json``:

* ``speed``: rows per second of the same model (a Gaussian VAE on 1,000 columns) on a 0.8 GB
  file read from disk (chunked shuffling, the default; and the exact shuffle) and loaded into
  memory; the fastest of three epochs of ``--steps`` steps is timed, by the wall clock and by the
  process's CPU time (all its threads; other processes shared the CPU, which the wall clock shows).
* ``chunks``: Fashion-MNIST's 60,000 training images (pixels / 255, Bernoulli likelihood) in a
  ``.npy`` sorted by class (the hard case: neighbouring rows alike) and in their own order; the
  test loss after ``--epochs`` epochs and the rows per second for the exact shuffle and for
  chunks of 64 .. 4096 rows shuffled in a buffer of 8,192 rows, over two seeds.
* ``big``: a file of ``--big-gb`` GB streamed from disk (``--big-steps`` steps of one epoch, then the
  test split evaluated): peak anonymous memory (RssAnon, polled) and rows per second, against an
  in-memory file of its first 200,000 rows (``--big-key huge --big-gb 30 --big-test-fraction 0.01``:
  the file larger than the machine's memory).

The page cache was warm for the files that fit in it (they had just been written); no cache was dropped.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bigdata.py [--only speed chunks big] [--big-gb 10]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import machine, peak_anon, status_mb, write_array  # noqa: E402

EVAL_ROWS = 256  # backed: rows of 20,000 genes evaluated at a time (the Poisson terms of 2,000 would take ~1 GB)
COMMON = ["trainer.progress_bar=false", "trainer.logger=none", "trainer.accelerator=cpu", "train.batch_size=128"]


def child(spec: str) -> None:
    import torch

    import pyro_vae

    torch.set_num_threads(1)
    base = status_mb("RssAnon")  # before Lightning, as benchmarks/memory.py measures it
    import pyro_vae.train

    overrides = json.loads(spec)
    cpu = []  # CPU seconds of each training epoch, all threads of the process (the reader's included)
    metrics = pyro_vae.train.EpochMetrics
    start, end = metrics.on_train_epoch_start, metrics.on_train_epoch_end

    def on_start(self, trainer, module):
        self._cpu0 = time.process_time()
        start(self, trainer, module)

    def on_end(self, trainer, module):
        cpu.append(round(time.process_time() - self._cpu0, 3))
        end(self, trainer, module)

    metrics.on_train_epoch_start, metrics.on_train_epoch_end = on_start, on_end
    with peak_anon(base) as peak:
        t0 = time.perf_counter()
        r = pyro_vae.fit(None, save=False, overrides=overrides)
    print(
        json.dumps(
            {
                "fit_seconds": round(time.perf_counter() - t0, 1),
                "peak_anon_mb": round(max(peak[0], status_mb("RssAnon")), 1),
                "anon_after_imports_mb": round(base, 1),
                "storage": type(r.data.train.x).__name__,
                "train_rows": len(r.data.train),
                "steps": r.metrics.get("steps_per_epoch"),
                "epoch_seconds": [h["seconds"] for h in r.history],
                "epoch_cpu_seconds": cpu,
                "train_loss": [round(h["train_loss"], 3) for h in r.history],
                "test_loss": round(r.metrics["test_loss"], 3),
            }
        )
    )


def run(overrides) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(overrides)], capture_output=True, text=True, env=env
    )
    if r.returncode:
        raise SystemExit(f"training with {overrides} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps({"overrides": overrides[-4:], **out}), flush=True)
    return out


def rows_per_second(out: dict, steps: int, batch: int = 128, key: str = "epoch_seconds") -> float:
    return round(min(steps, out["steps"] or steps) * batch / min(out[key]), 1)


def rates(out: dict, steps: int) -> dict:
    """Rows per second of the fastest epoch: by the wall clock, and per CPU second of the process."""
    return {
        "rows_per_second": rows_per_second(out, steps),
        "rows_per_cpu_second": rows_per_second(out, steps, key="epoch_cpu_seconds"),
    }


def speed(tmp: Path, steps: int) -> dict:
    path = tmp / "speed.npy"
    write_array(path, 200_000)
    base = ["data=array", f"data.path={path}", "likelihood=gaussian", *COMMON, "train.epochs=3"]
    base += [f"trainer.extra={{limit_train_batches: {steps}}}"]
    rows = {}
    for name, keys in (
        ("memory", ["data.storage=memory"]),
        ("disk, chunks (default)", ["data.storage=disk"]),
        ("disk, exact shuffle", ["data.storage=disk", "data.shuffle=exact"]),
    ):
        out = run(base + keys)
        rows[name] = {**rates(out, steps), "peak_anon_mb": out["peak_anon_mb"]}
    path.unlink()
    return {"rows": 200_000, "columns": 1000, "steps": steps, "runs": rows}


def fashion(tmp: Path):
    from pyro_vae.data import load_idx_folder

    train, _, _ = load_idx_folder("/usr/share/datasets/fashion-mnist")
    x, y = (train.x / 255).numpy().astype(np.float32), train.y.numpy()
    order = np.argsort(y, kind="stable")
    paths = {"sorted by class": tmp / "fashion_sorted.npy", "as given": tmp / "fashion.npy"}
    np.save(paths["sorted by class"], x[order])
    np.save(paths["as given"], x)
    return paths


def chunks(tmp: Path, epochs: int, seeds) -> dict:
    out = {"epochs": epochs, "seeds": list(seeds), "buffer_rows": 8192, "files": {}}
    for name, path in fashion(tmp).items():
        runs = {}
        for label, keys in [("exact", ["data.shuffle=exact"])] + [
            (str(c), [f"data.chunk_rows={c}"]) for c in (64, 256, 1024, 4096)
        ]:
            results = []
            for seed in seeds:
                o = run(
                    ["data=array", f"data.path={path}", "likelihood=bernoulli", *COMMON, f"train.epochs={epochs}"]
                    + ["data.storage=disk", "data.shuffle_buffer=8192", f"seed={seed}", *keys]
                )
                results.append(o)
            losses = [o["test_loss"] for o in results]
            rps = [o["train_rows"] / np.mean(o["epoch_seconds"]) for o in results]
            runs[label] = {
                "test_loss": losses,
                "test_loss_mean": round(float(np.mean(losses)), 2),
                "rows_per_second": round(float(np.mean(rps)), 1),
            }
        out["files"][name] = runs
    return out


def big(tmp: Path, gb: float, steps: int, test_fraction: float) -> dict:
    n = int(gb * 1e9 / 4000)
    path, small = tmp / "big.npy", tmp / "subset.npy"
    t0 = time.perf_counter()
    write_array(path, n)
    write_seconds = time.perf_counter() - t0
    sub = np.load(path, mmap_mode="r")[:200_000]
    np.save(small, np.asarray(sub))
    del sub
    base = ["likelihood=gaussian", *COMMON, "train.epochs=1", f"trainer.extra={{limit_train_batches: {steps}}}"]
    base += [f"data.test_fraction={test_fraction}"]
    disk = run(["data=array", f"data.path={path}", "data.storage=disk", *base])
    memory = run(["data=array", f"data.path={small}", "data.storage=memory", *base])
    path.unlink()
    small.unlink()
    return {
        "rows": n,
        "columns": 1000,
        "file_gb": round(n * 4000 / 1e9, 2),
        "write_seconds": round(write_seconds, 1),
        "steps": steps,
        "test_fraction": test_fraction,
        "disk": {**disk, **rates(disk, steps)},
        "memory_subset": {**memory, **rates(memory, steps), "rows": 200_000},
    }


def write_counts_h5ad(path: Path, cells: int, genes: int, density: float, block: int = 2000) -> int:
    """A sparse AnnData of ``cells`` x ``genes`` counts (about ``density`` of them non-zero) written as an
    .h5ad a block of rows at a time (CSR: float32 values, int32 columns), never held whole in memory: two
    cell types, each with its own genes up (1 + Poisson(2) against 1 + Poisson(0.5) where non-zero). Block
    k is drawn from seed k, so a file of fewer cells holds the first rows of a larger one. Its non-zeros."""
    import anndata
    import h5py
    import pandas as pd

    obs = pd.DataFrame({"cell_type": pd.Categorical(["a"] * cells)}, index=[f"c{i}" for i in range(cells)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(genes)])
    anndata.AnnData(obs=obs, var=var).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if "X" in f:
            del f["X"]
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = np.array([cells, genes])
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), chunks=(1 << 20,), dtype="float32")
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), chunks=(1 << 20,), dtype="int32")
        indptr = np.zeros(cells + 1, dtype=np.int64)
        for k, a in enumerate(range(0, cells, block)):
            rng = np.random.default_rng(k)
            b = min(cells, a + block)
            kind = rng.integers(0, 2, b - a)
            r, c = np.nonzero(rng.random((b - a, genes), dtype=np.float32) < density)
            values = 1 + rng.poisson(np.where(c % 2 == kind[r], 2.0, 0.5)).astype(np.float32)
            lo = int(indptr[a])
            data.resize((lo + len(values),))
            indices.resize((lo + len(values),))
            data[lo:], indices[lo:] = values, c.astype(np.int32)
            indptr[a + 1 : b + 1] = lo + np.cumsum(np.bincount(r, minlength=b - a))
        x.create_dataset("indptr", data=indptr)
        nnz = int(indptr[-1])
    return nnz


def backed(tmp: Path, cells: int, genes: int, density: float, steps: int, subset: int, keep: bool = False) -> dict:
    """A sparse .h5ad streamed from disk (``data.storage=disk``) against its first ``subset`` cells in memory;
    ``keep``: the files stay in ``tmp`` (and files already there of the same size are used again)."""
    name = f"cells_{cells}x{genes}_{density}"
    path, small = tmp / f"{name}.h5ad", tmp / f"{name}_first{subset}.h5ad"
    t0 = time.perf_counter()
    if keep and path.is_file() and small.is_file():
        import h5py

        with h5py.File(path, "r") as f:
            nnz, write_seconds = int(f["X/indptr"][-1]), None
    else:
        nnz = write_counts_h5ad(path, cells, genes, density)
        write_seconds = time.perf_counter() - t0
        write_counts_h5ad(small, subset, genes, density)
    base = ["data=anndata", "likelihood=poisson", *COMMON, "train.epochs=1", f"train.eval_batch_size={EVAL_ROWS}"]
    base += [f"trainer.extra={{limit_train_batches: {steps}}}"]
    disk = run([*base, f"data.path={path}", "data.storage=disk", "data.test_fraction=0.01"])
    memory = run([*base, f"data.path={small}", "data.storage=memory", "data.test_fraction=0.05"])
    file_gb = path.stat().st_size / 1e9
    if not keep:
        path.unlink()
        small.unlink()
    return {
        "cells": cells,
        "genes": genes,
        "nonzeros": nnz,
        "density": round(nnz / (cells * genes), 4),
        "file_gb": round(file_gb, 2),
        "dense_gb": round(cells * genes * 4 / 1e9, 1),
        "write_seconds": write_seconds and round(write_seconds, 1),
        "eval_batch_size": EVAL_ROWS,
        "steps": steps,
        "disk": {**disk, **rates(disk, steps)},
        "memory_subset": {**memory, **rates(memory, steps), "rows": subset},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=["speed", "chunks", "big"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--big-gb", type=float, default=10.0)
    p.add_argument("--big-steps", type=int, default=2000)
    p.add_argument("--big-test-fraction", type=float, default=0.2)
    p.add_argument("--big-key", default="big", help="entry of bigdata.json the big run goes to")
    p.add_argument("--cells", type=int, default=600_000, help="backed: cells of the sparse .h5ad")
    p.add_argument("--genes", type=int, default=20_000, help="backed: genes of the sparse .h5ad")
    p.add_argument("--density", type=float, default=0.05, help="backed: share of non-zero counts")
    p.add_argument("--backed-steps", type=int, default=500)
    p.add_argument("--subset", type=int, default=100_000, help="backed: cells of the in-memory comparison")
    p.add_argument("--keep-dir", help="backed: write the .h5ad files here and keep them (reused when there)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    out_path = HERE / "bigdata.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for part in args.only:
            if part == "speed":
                out["speed"] = speed(Path(tmp), args.steps)
            elif part == "chunks":
                out["chunks"] = chunks(Path(tmp), args.epochs, args.seeds)
            elif part == "backed":
                where, keep = (Path(args.keep_dir), True) if args.keep_dir else (Path(tmp), False)
                out["backed"] = backed(
                    where, args.cells, args.genes, args.density, args.backed_steps, args.subset, keep
                )
            elif part == "big":
                out[args.big_key] = big(Path(tmp), args.big_gb, args.big_steps, args.big_test_fraction)
            out["machine"] = machine()
            out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
