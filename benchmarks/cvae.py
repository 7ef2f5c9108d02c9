"""Batch correction on counts: pyro_vae's VAE and CVAE (data.batch_key) against scvi-tools' SCVI(batch_key=...).

The data: :func:`counts.make_counts` (8 cell types, zero-inflated negative binomial counts, seed 0)
with ``batches=3``: each cell in one of 3 batches, batch b scaling library sizes by its own
factor and shifting the log-expression of its own fifth of the genes. All three models see the
same cells: pyro_vae's 20% test split (seed 0), scvi-tools trained on pyro_vae's training rows.
Same architecture (counts.py's PYRO_SETTING: zinb, latent 10, one hidden layer of 128) on both
sides; scvi-tools' defaults otherwise (its encoder does not see the batch, its decoder does).

Measured on the posterior means of the test cells (the same code for every model):

* ``batch_entropy`` — batch mixing: the entropy of the batches among each test cell's 50 nearest
  test neighbours, divided by log(3), averaged; 1 = neighbours from every batch in equal shares,
  0 = only the cell's own batch. Higher is better.
* ``batch_silhouette`` — the silhouette of the batch labels (euclidean, 2,000 test cells): near 0
  or below = batches mixed, near 1 = batches apart. Lower is better.
* ``knn5_accuracy`` — cell types: 5-NN fitted on the training cells' codes, scored on the test cells.
* ``celltype_silhouette`` — the silhouette of the cell types (2,000 test cells). Higher is better.
* ``seconds_per_epoch`` — each in its own process, torch.set_num_threads(1), one after the other.

    .venv/bin/python benchmarks/cvae.py                  # VAE, CVAE and scvi-tools (if its python is found)
    .venv/bin/python benchmarks/cvae.py --only pyro_vae  # no scvi-tools

scvi-tools runs from its own environment (--scvi-python, default $SCVI_PYTHON or
/work/scvi-venv/bin/python) through benchmarks/cvae_scvi.py. Writes benchmarks/cvae.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "cvae.json"
sys.path.insert(0, str(HERE))

from counts import PYRO_SETTING, make_counts, peak_rss_mb, run_child  # noqa: E402

KINDS = {"vae": ["model=vae"], "cvae": ["model=cvae", "data.batch_key=batch"]}


def run_pyro(args, kind):
    """One pyro_vae fit in this process on the AnnData of the generated counts; saves the codes."""
    import anndata
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    import pyro_vae

    d = np.load(args.data)
    obs = pd.DataFrame({"batch": [f"b{b}" for b in d["batch"]], "cell_type": [f"t{t}" for t in d["y"]]})
    obs.index = obs.index.astype(str)
    a = anndata.AnnData(X=d["x"], obs=obs)
    settings = (
        PYRO_SETTING[1:]
        + KINDS[kind]
        + [
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            "seed=0",
            "trainer.progress_bar=false",
            "trainer.logger=none",
            "trainer.accelerator=cpu",
        ]
    )
    t0 = time.perf_counter()
    r = pyro_vae.fit(a, overrides=settings, save=False, plots=False)
    wall = time.perf_counter() - t0
    m = r.model.eval()
    train, test = r.data.train, r.data.test
    z_tr, z_te = m.encode(train.x)[0].numpy(), m.encode(test.x)[0].numpy()
    np.savez(args.codes, z_train=z_tr, z_test=z_te, train_rows=train.rows.numpy(), test_rows=test.rows.numpy())
    row = {
        "library": "pyro_vae",
        "setting": settings,
        "epochs": r.metrics["epochs"],
        "seconds_per_epoch": r.metrics["seconds_per_epoch"],
        "fit_wall_seconds": round(wall, 1),
        "test_elbo": round(-r.metrics["test_loss"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch": torch.__version__,
    }
    print("RESULT " + json.dumps(row))


def batch_entropy(z, batch, k=50):
    """Mean over cells of the entropy of the batches among its k nearest neighbours / log(#batches)."""
    from sklearn.neighbors import NearestNeighbors

    nb = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    n_b = int(batch.max()) + 1
    shares = np.stack([(batch[nb] == b).mean(1) for b in range(n_b)], 1)
    h = -(np.where(shares > 0, shares * np.log(np.maximum(shares, 1e-12)), 0.0)).sum(1)
    return float(h.mean() / np.log(n_b))


def scores(codes, y, batch):
    """The module docstring's measures of one model's codes."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    tr, te = codes["train_rows"], codes["test_rows"]
    z_tr, z_te = codes["z_train"], codes["z_test"]
    sub = np.random.default_rng(0).permutation(len(te))[:2000]
    return {
        "batch_entropy": round(batch_entropy(z_te, batch[te]), 4),
        "batch_silhouette": round(float(silhouette_score(z_te[sub], batch[te][sub])), 4),
        "knn5_accuracy": round(float(KNeighborsClassifier(5).fit(z_tr, y[tr]).score(z_te, y[te])), 4),
        "celltype_silhouette": round(float(silhouette_score(z_te[sub], y[te][sub])), 4),
    }


def cpu_name():
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cells", type=int, default=10000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--only", choices=["pyro_vae", "scvi"])
    p.add_argument("--scvi-python", default=os.environ.get("SCVI_PYTHON", "/work/scvi-venv/bin/python"))
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--codes", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.side in KINDS:
        return run_pyro(args, args.side)

    x, y, batch = make_counts(args.cells, args.genes, batches=args.batches)
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "counts.npz"
    np.savez(data, x=x, y=y, batch=batch)
    common = [f"--epochs={args.epochs}", f"--batch-size={args.batch_size}"]
    lib = x.sum(1)
    record = {
        "data": {
            "cells": int(x.shape[0]),
            "genes": int(x.shape[1]),
            "cell_types": int(y.max() + 1),
            "batches": int(args.batches),
            "library_median_per_batch": [float(np.median(lib[batch == b])) for b in range(args.batches)],
        },
        "runs": {},
    }
    rows = None
    kinds = list(KINDS) if args.only in (None, "pyro_vae") else ["vae"]
    for kind in kinds:
        codes = tmp / f"{kind}.npz"
        run = run_child([sys.executable, __file__, f"--side={kind}", f"--data={data}", f"--codes={codes}", *common])
        c = np.load(codes)
        rows = c["train_rows"], c["test_rows"]
        if args.only != "scvi":
            record["runs"][kind] = {**run, **scores(c, y, batch)}
            print(kind, {k: v for k, v in record["runs"][kind].items() if k != "setting"}, flush=True)
    if args.only in (None, "scvi"):
        if not Path(args.scvi_python).exists():
            print(f"scvi-tools: no python at {args.scvi_python}; skipped", flush=True)
        else:
            np.savez(data, x=x, y=y, batch=batch, train_rows=rows[0], test_rows=rows[1])
            for name, extra in (("scvi", []), ("scvi_kl_warmup_off", ["--no-kl-warmup"])):
                codes = tmp / f"{name}.npz"
                script = [args.scvi_python, str(HERE / "cvae_scvi.py"), f"--data={data}", f"--codes={codes}"]
                run = run_child(script + common + extra)
                record["runs"][name] = {**run, **scores(np.load(codes), y, batch)}
                print(name, {k: v for k, v in record["runs"][name].items() if k != "setting"}, flush=True)
    record["machine"] = {"cpu": cpu_name(), "threads": 1, "cores": os.cpu_count()}
    record["epochs"], record["batch_size"] = args.epochs, args.batch_size
    if not args.no_write:
        sys.path.insert(0, str(ROOT))
        from pyro_vae.utils import write_json

        write_json(OUT, record)


if __name__ == "__main__":
    main()
