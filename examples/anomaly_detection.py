"""Anomaly detection: train a VAE without one class, then score the whole test set.

A VAE that never saw class C should explain its images badly: their -ELBO is high. For each
held-out class this trains a VAE with ``data.exclude_classes=[C]``, scores every test image by
-ELBO and by the reconstruction error ||x - E[x | z = E_q[z|x]]||^2, reports the AUROC of
"is class C" for both, and draws the score histogram per class.

    python examples/anomaly_detection.py                                   # the bundled digits
    python examples/anomaly_detection.py --data fashion-mnist --root /usr/share/datasets/fashion-mnist \\
        --config examples/configs/fashion_vae.yaml --exclude 1 8 --epochs 10   # the table in the README

Writes OUT/anomaly.json (one row per held-out class), OUT/score_histogram_C.png and the run
folders OUT/run-C (which ``pyro-vae score OUT/run-C --out scores.csv`` reads too).
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import pyro_vae  # noqa: E402


def scores(model, x, batch_size=2000):
    """-ELBO (nats) and squared reconstruction error per row: higher is more anomalous."""
    neg_elbo, recon = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            neg_elbo.append(-model.elbo(xb))
            z_mean, _ = model.encode(xb)
            recon.append(((model.decode(z_mean) - xb) ** 2).sum(-1))
    return torch.cat(neg_elbo).numpy(), torch.cat(recon).numpy()


def histogram(values, y, held_out, names, path, xlabel, title):
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 60)
    for c in np.unique(y):
        ax.hist(
            values[y == c],
            bins=bins,
            histtype="step",
            density=True,
            label=names[c],
            color="black" if c == held_out else None,
            linewidth=2 if c == held_out else 1,
        )
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def held_out_run(exclude, args, out):
    data = [f"data.name={args.data}"] + ([f"data.root={args.root}"] if args.root else [])
    t0 = time.perf_counter()
    r = pyro_vae.fit(
        args.config,
        out=str(out / f"run-{exclude}"),
        overwrite=True,
        overrides=data
        + [
            f"data.exclude_classes=[{exclude}]",
            f"train.epochs={args.epochs}",
            "trainer.progress_bar=false",
            f"name={args.data}-without-{exclude}",
        ],
    )
    train_s = time.perf_counter() - t0
    model = pyro_vae.load(r.run_dir)
    x, y = r.data.test.x, r.data.test.y.numpy()
    names = list(r.data.class_names or [str(c) for c in range(int(y.max()) + 1)])
    torch.manual_seed(0)
    score, recon = scores(model, x)
    positive = y == exclude
    row = {
        "data": args.data,
        "excluded_class": exclude,
        "excluded_name": names[exclude],
        "epochs": args.epochs,
        "score": "-ELBO",
        "auroc_score": round(float(roc_auc_score(positive, score)), 4),
        "auroc_recon_error": round(float(roc_auc_score(positive, recon)), 4),
        "mean_score_per_class": {names[c]: round(float(score[y == c].mean()), 1) for c in np.unique(y)},
        "mean_recon_error_per_class": {names[c]: round(float(recon[y == c].mean()), 1) for c in np.unique(y)},
        "train_seconds": round(train_s, 1),
    }
    histogram(
        score,
        y,
        exclude,
        names,
        out / f"score_histogram_{exclude}.png",
        "-ELBO (nats)",
        f"test set, trained without {names[exclude]}: AUROC {row['auroc_score']:.3f}",
    )
    histogram(
        recon,
        y,
        exclude,
        names,
        out / f"recon_error_histogram_{exclude}.png",
        "squared reconstruction error",
        f"trained without {names[exclude]}: AUROC {row['auroc_recon_error']:.3f}",
    )
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="data set name: digits (bundled), mnist, fashion-mnist, kmnist")
    p.add_argument("--root", default=None, help="folder with the four IDX files (mnist-like data sets)")
    p.add_argument("--config", default=None, help="YAML config (default: the library defaults)")
    p.add_argument(
        "--exclude",
        type=int,
        nargs="+",
        default=[0],
        help="classes held out of training, one run each (Fashion-MNIST: 1 = Trouser, 8 = Bag)",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="runs/anomaly")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for c in args.exclude:
        rows.append(held_out_run(c, args, out))
        print(json.dumps(rows[-1]), flush=True)
        # after each run, so a cut-off run keeps what it has
        (out / "anomaly.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
