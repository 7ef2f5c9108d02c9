"""Anomaly detection: train a VAE on Fashion-MNIST without one class, score the test set.

A VAE that never saw class C should explain its images badly: their -ELBO (or
-log p(x) with --iwae-samples) is high. For each held-out class this trains the reference
VAE (examples/configs/fashion_vae.yaml) with ``data.exclude_classes=[C]``, scores the whole
10k test set, reports the AUROC of "is class C" from the score and from the reconstruction
error ||x - E[x | z = E_q[z|x]]||^2, and draws the score histogram per class.

    .venv/bin/python examples/anomaly_detection.py --exclude 1 8 --epochs 10 --out runs/anomaly

Writes OUT/anomaly.json (one row per held-out class), OUT/score_histogram_C.png and the
run directories OUT/run-C (which ``pyro-vae score OUT/run-C --out scores.csv`` reads too).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pyro_vae.data import CLASS_NAMES  # noqa: E402
from pyro_vae.evaluate import anomaly_scores, auroc  # noqa: E402
from pyro_vae.plots import score_histogram  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


def held_out_run(exclude, args, out):
    names = CLASS_NAMES["fashion-mnist"]
    t0 = time.perf_counter()
    r = fit(str(ROOT / "examples/configs/fashion_vae.yaml"), out=out / f"run-{exclude}", overrides=[
        f"data.root={args.root}", f"data.exclude_classes=[{exclude}]", f"train.epochs={args.epochs}",
        "trainer.progress_bar=false", f"name=fashion-without-{exclude}"])
    train_s = time.perf_counter() - t0
    test = r.data.test
    torch.manual_seed(0)
    t0 = time.perf_counter()
    s = anomaly_scores(r.model, test.x, args.iwae_samples)
    score_s = time.perf_counter() - t0
    positive = test.y == exclude
    score_name = f"-log p(x) (IWAE K={args.iwae_samples})" if args.iwae_samples else "-ELBO"
    # where does the held-out class rank? the fraction of training-class images it out-scores
    row = {
        "excluded_class": exclude, "excluded_name": names[exclude], "epochs": args.epochs,
        "score": score_name,
        "auroc_score": round(auroc(s["score"], positive), 4),
        "auroc_recon_error": round(auroc(s["recon_error"], positive), 4),
        "test_loss_seen_classes": round(float(s["score"][~positive].mean()), 2) if not args.iwae_samples else None,
        "mean_score_per_class": {names[c]: round(float(s["score"][test.y == c].mean()), 1) for c in range(10)},
        "mean_recon_error_per_class": {names[c]: round(float(s["recon_error"][test.y == c].mean()), 1)
                                       for c in range(10)},
        "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1),
    }
    score_histogram(s["score"], test.y, out / f"score_histogram_{exclude}.png", highlight=[exclude],
                    class_names=names, xlabel=f"anomaly score: {score_name} (nats)",
                    title=f"Fashion-MNIST test set, trained without {names[exclude]}: AUROC {row['auroc_score']:.3f}")
    score_histogram(s["recon_error"], test.y, out / f"recon_error_histogram_{exclude}.png", highlight=[exclude],
                    class_names=names, xlabel="squared reconstruction error",
                    title=f"trained without {names[exclude]}: AUROC {row['auroc_recon_error']:.3f}")
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--exclude", type=int, nargs="+", default=[1, 8],
                   help="classes held out of training, one run each (1 = Trouser, 8 = Bag)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iwae-samples", type=int, default=0, help="score -log p(x) with K samples instead of -ELBO")
    p.add_argument("--out", default="runs/anomaly")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for c in args.exclude:
        rows.append(held_out_run(c, args, out))
        print(json.dumps(rows[-1]), flush=True)
        write_json(out / "anomaly.json", rows)  # after each run, so a cut-off run keeps what it has


if __name__ == "__main__":
    main()
