"""Priors and likelihoods compared on Fashion-MNIST at equal epochs.

Section `priors`: MLP 784-400-50 (softplus), Bernoulli likelihood on grey levels, batch 256,
Adam 1e-3, Trace_ELBO; each prior trained for the same number of epochs. Reports the test
loss (-ELBO per datum) and the importance-weighted test log-likelihood (K samples on the
first N test images).

Section `likelihoods`: the same network with a standard Normal prior and each grey-level
likelihood. Their numbers are NOT comparable with each other: bernoulli scores grey levels
with a cross-entropy that is not a normalised density, continuous_bernoulli and gaussian are
densities on [0,1], categorical-256 is a probability over integer levels 0..255.

    .venv/bin/python benchmarks/priors_likelihoods.py --section priors --epochs 10
    .venv/bin/python benchmarks/priors_likelihoods.py --section likelihoods --epochs 2

Results are merged into benchmarks/priors_likelihoods.json (written atomically after each run).
"""

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyro_vae  # noqa: E402,F401
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.evaluate import iwae_log_likelihood  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

PRIORS = {
    "normal": [],
    "learned_normal": [],
    "mog (10)": ["prior.name=mog", "prior.components=10"],
    "vamp (500)": ["prior.name=vamp", "prior.components=500"],
    "flow (affine x2)": ["prior.name=flow", "prior.layers=2", "prior.transform=affine"],
    "laplace": ["prior.name=laplace"],
    "student_t (df 3)": ["prior.name=student_t", "prior.df=3.0"],
}
LIKELIHOODS = {
    "bernoulli": ["likelihood.name=bernoulli"],
    "continuous_bernoulli": ["likelihood.name=continuous_bernoulli"],
    "gaussian (learned scale)": ["likelihood.name=gaussian", "likelihood.scale=learned"],
    "categorical-256": ["likelihood.name=categorical", "likelihood.levels=256"],
}


def run(name, overrides, args, section):
    base = [
        f"data.root={args.root}",
        "data.name=fashion-mnist",
        "latent_dim=50",
        "encoder.hidden=[400]",
        "decoder.hidden=[400]",
        "train.batch_size=256",
        "train.lr=1e-3",
        f"train.epochs={args.epochs}",
        "trainer.progress_bar=false",
        f"trainer.precision={args.precision}",
    ]
    if name not in PRIORS:
        pass
    elif not any(o.startswith("prior.name") for o in overrides) and name != "normal":
        overrides = [f"prior.name={name}"] + overrides
    cfg = load_config(None, base + overrides)
    t0 = time.perf_counter()
    r = fit(cfg, save=False)
    row = {
        "section": section,
        "name": name,
        "epochs": r.metrics["epochs"],
        "test_loss": round(r.metrics["test_loss"], 2),
        "seconds_per_epoch": r.metrics["seconds_per_epoch"],
        "active_units": r.metrics.get("active_units"),
    }
    if args.iwae_samples:
        x = r.data.test.x[: args.iwae_images]
        ll = iwae_log_likelihood(r.model, x, args.iwae_samples)
        row["test_log_likelihood"] = round(float(ll.mean()), 2)
        row["iwae"] = f"K={args.iwae_samples} on the first {len(x)} test images"
        elbo = float(r.model.elbo(x).mean())
        row["test_elbo_same_images"] = round(elbo, 2)
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=["priors", "likelihoods"], required=True)
    p.add_argument("--only", nargs="*", help="names to run (default all of the section)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--iwae-samples", type=int, default=100)
    p.add_argument("--iwae-images", type=int, default=2000)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    table = PRIORS if args.section == "priors" else LIKELIHOODS
    out = Path(args.out)
    for name in args.only or list(table):
        row = run(name, table[name], args, args.section)
        row["precision"] = args.precision
        print(json.dumps(row), flush=True)
        data = json.loads(out.read_text()) if out.exists() else {"benchmark": "priors_likelihoods", "rows": []}
        data["rows"] = [r for r in data["rows"] if not (r["section"] == row["section"] and r["name"] == name)]
        data["rows"].append(row)
        data["setup"] = "Fashion-MNIST 60k/10k, MLP 784-400-50 softplus, batch 256, Adam 1e-3, Trace_ELBO; 2 CPU cores"
        write_json(out, data)


if __name__ == "__main__":
    main()
