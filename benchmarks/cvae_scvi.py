"""The scvi-tools side of benchmarks/cvae.py; runs in scvi-tools' own environment.

Reads the .npz that cvae.py writes (x, y, batch, train_rows, test_rows), trains
``scvi.model.SCVI(adata, gene_likelihood="zinb", n_latent=10)`` with ``batch_key="batch"``
(otherwise scvi-tools' defaults; ``--no-kl-warmup``: no KL warm-up) on the training rows with the
same epochs and batch size, saves the latent means of the training and test cells to --codes and
prints one ``RESULT {json}`` line.

    python benchmarks/cvae_scvi.py --data counts.npz --codes codes.npz --epochs 50
"""

import argparse
import json
import resource
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--codes", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-kl-warmup", action="store_true", help="plan_kwargs n_epochs_kl_warmup=None: the ELBO itself")
    args = p.parse_args()
    plan = {"n_epochs_kl_warmup": None} if args.no_kl_warmup else {}

    import torch

    torch.set_num_threads(1)
    import anndata
    import pandas as pd
    import scvi
    from lightning.pytorch.callbacks import Callback

    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    d = np.load(args.data)
    x, batch, tr, te = d["x"], d["batch"], d["train_rows"], d["test_rows"]

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.t)

    def adata(rows):
        obs = pd.DataFrame({"batch": pd.Categorical([f"b{b}" for b in batch[rows]])})
        obs.index = obs.index.astype(str)
        return anndata.AnnData(x[rows], obs=obs)

    train, test = adata(tr), adata(te)
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train, batch_key="batch")
    model = scvi.model.SCVI(train, gene_likelihood="zinb", n_latent=10)
    timer = EpochTimer()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        accelerator="cpu",
        enable_progress_bar=False,
        callbacks=[timer],
        plan_kwargs=plan or None,
    )
    wall = time.perf_counter() - t0
    model.module.eval()
    np.savez(
        args.codes,
        z_train=model.get_latent_representation(train),
        z_test=model.get_latent_representation(test),
        train_rows=tr,
        test_rows=te,
    )
    row = {
        "library": "scvi-tools",
        "version": scvi.__version__,
        "torch": torch.__version__,
        "setting": {"gene_likelihood": "zinb", "n_latent": 10, "batch_key": "batch", **plan},
        "epochs": len(timer.seconds),
        "seconds_per_epoch": round(float(np.mean(timer.seconds)), 3),
        "fit_wall_seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(row))


if __name__ == "__main__":
    main()
