"""Anomaly detection: train a VAE on Fashion-MNIST without one class, score the test set.

A VAE that never saw class C should explain its images badly: their -ELBO (or
-log p(x) with --iwae-samples) is high. Reports the AUROC of "is class C" from the score
and from the reconstruction error, and draws the score histogram per class.

    .venv/bin/python examples/anomaly_detection.py --exclude 1 --epochs 10 --out runs/anomaly
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.data import CLASS_NAMES  # noqa: E402
from pyro_vae.evaluate import anomaly_scores, auroc  # noqa: E402
from pyro_vae.plots import _plt, save_figure  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--exclude", type=int, default=1, help="class left out of training (1 = Trouser)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iwae-samples", type=int, default=0)
    p.add_argument("--out", default="runs/anomaly")
    args = p.parse_args()
    out = Path(args.out)
    r = fit("examples/configs/fashion_vae.yaml", out=out / "run", overrides=[
        f"data.root={args.root}", f"data.exclude_classes=[{args.exclude}]", f"train.epochs={args.epochs}",
        "trainer.progress_bar=false", "name=fashion-anomaly"])
    test = r.data.test
    torch.manual_seed(0)
    s = anomaly_scores(r.model, test.x, args.iwae_samples)
    positive = test.y == args.exclude
    names = CLASS_NAMES["fashion-mnist"]
    result = {
        "excluded_class": args.exclude, "excluded_name": names[args.exclude], "epochs": args.epochs,
        "score": "-log p(x) (IWAE K=%d)" % args.iwae_samples if args.iwae_samples else "-ELBO",
        "auroc_score": round(auroc(s["score"], positive), 4),
        "auroc_recon_error": round(auroc(s["recon_error"], positive), 4),
        "mean_score_per_class": {names[c]: round(float(s["score"][test.y == c].mean()), 1) for c in range(10)},
    }
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(float(np.percentile(s["score"], 0.5)), float(np.percentile(s["score"], 99.5)), 60)
    for c in range(10):
        vals = s["score"][test.y == c].numpy()
        style = dict(lw=2.5, color="black") if c == args.exclude else dict(lw=1, alpha=0.8)
        ax.hist(vals, bins=bins, histtype="step", density=True, label=names[c] + (" (held out)" if c == args.exclude else ""), **style)
    ax.set_xlabel(f"anomaly score: {result['score']} (nats)")
    ax.set_ylabel("density")
    ax.set_title(f"Fashion-MNIST test scores, trained without {names[args.exclude]}: AUROC {result['auroc_score']:.3f}")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, out / "score_histogram.png")
    write_json(out / "anomaly.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
