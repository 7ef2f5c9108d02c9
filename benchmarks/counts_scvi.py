"""The scvi-tools side of benchmarks/counts.py; runs in scvi-tools' own environment.

Reads the .npz that counts.py writes (x, y, train_rows, test_rows), trains
``scvi.model.SCVI(adata, gene_likelihood="zinb", n_latent=10)`` (otherwise scvi-tools'
defaults: 1 hidden layer of 128, batch norm, dropout 0.1, per-gene dispersion, observed
library size, log1p encoder input, KL warm-up over 400 epochs) on the training rows with
the same epochs and batch size, then prints one ``RESULT {json}`` line: held-out
get_marginal_ll per cell (log p(x), nats, higher is better), seconds per epoch, fit wall
time, peak RSS and 5-NN accuracy of the latent means.

    python benchmarks/counts_scvi.py --data counts.npz --epochs 50 [--extra train:n_epochs_kl_warmup=null]
"""

import argparse
import json
import resource
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iwae-samples", type=int, default=100)
    p.add_argument(
        "--extra",
        default="",
        help="comma-separated model:key=value / train:key=value "
        "(plan keys of SCVI.train's plan_kwargs); value parsed as JSON",
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    import anndata
    import scvi
    from lightning.pytorch.callbacks import Callback
    from sklearn.neighbors import KNeighborsClassifier

    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    d = np.load(args.data)
    x, y, tr, te = d["x"], d["y"], d["train_rows"], d["test_rows"]
    model_kw, plan_kw = {}, {}
    for item in filter(None, args.extra.split(",")):
        where, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        (model_kw if where == "model" else plan_kw)[k] = json.loads(v)

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.t)

    train = anndata.AnnData(x[tr])
    test = anndata.AnnData(x[te])
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, gene_likelihood="zinb", n_latent=10, **model_kw)
    timer = EpochTimer()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        accelerator="cpu",
        enable_progress_bar=False,
        callbacks=[timer],
        plan_kwargs=plan_kw or None,
    )
    wall = time.perf_counter() - t0
    model.module.eval()
    torch.manual_seed(0)
    ll = model.get_marginal_ll(
        test, n_mc_samples=args.iwae_samples, return_mean=False, n_mc_samples_per_pass=min(args.iwae_samples, 100)
    )
    z_tr = model.get_latent_representation(train)
    z_te = model.get_latent_representation(test)
    knn = KNeighborsClassifier(5).fit(z_tr, y[tr]).score(z_te, y[te])
    row = {
        "library": "scvi-tools",
        "version": scvi.__version__,
        "torch": torch.__version__,
        "setting": {"gene_likelihood": "zinb", "n_latent": 10, **model_kw, **plan_kw},
        "epochs": len(timer.seconds),
        "seconds_per_epoch": round(float(np.mean(timer.seconds)), 3),
        "fit_wall_seconds": round(wall, 1),
        "test_log_likelihood": round(float(np.mean(np.asarray(ll))), 2),
        "iwae_samples": args.iwae_samples,
        "knn5_accuracy": round(float(knn), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(row))


if __name__ == "__main__":
    main()
