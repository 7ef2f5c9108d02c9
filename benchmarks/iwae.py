"""Training with the importance weighted bound against the ELBO: the library's defaults for each data
set, trained with train.elbo=meanfield (the default) and train.elbo=iwae (K samples per row), same
epochs, seed and everything else, one thread; both scored by the same importance weighted test
log-likelihood (IWAE with --eval-k samples, seeded), beside the test ELBO and seconds per epoch.

    python benchmarks/iwae.py --data digits --epochs 20 --seeds 0 1 2       # writes benchmarks/iwae.json
    python benchmarks/iwae.py --data fashion --epochs 3 --eval-k 100 --eval-rows 2000
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.evaluate import iwae_log_likelihood  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "iwae.json"
DATA = {
    "digits": ["data.name=digits"],
    "fashion": ["data.name=fashion-mnist", "data.root=/usr/share/datasets/fashion-mnist"],
}


def objective(elbo, k):
    return ["train.elbo=meanfield"] if elbo == "meanfield" else [f"train.elbo={elbo}", f"train.num_particles={k}"]


def fit_and_score(overrides, eval_k, eval_rows):
    """Train with ``overrides`` (no run folder), then score the first ``eval_rows`` test rows (all when 0) by the
    IWAE-``eval_k`` log-likelihood (seed 0): the fitted result and the row's measured fields."""
    t = time.perf_counter()
    r = fit(None, save=False, overrides=overrides + ["trainer.progress_bar=false"])
    wall = time.perf_counter() - t
    x = r.data.test.x[:eval_rows] if eval_rows else r.data.test.x
    torch.manual_seed(0)
    t = time.perf_counter()
    ll = float(iwae_log_likelihood(r.model.eval(), x, eval_k).mean())
    return r, {
        "test_log_likelihood": ll,
        "eval_k": eval_k,
        "eval_rows": int(x.shape[0]),
        "test_loss": r.metrics["test_loss"],
        "active_units": r.metrics.get("active_units"),
        "s_per_epoch": r.metrics.get("seconds_per_epoch"),
        "wall_s": wall,
        "eval_s": time.perf_counter() - t,
    }


def run(data, elbo, k, epochs, seed, eval_k, eval_rows):
    overrides = [*DATA[data], *objective(elbo, k), f"train.epochs={epochs}", f"seed={seed}"]
    _, scored = fit_and_score(overrides, eval_k, eval_rows)
    row = {
        "data": data,
        "elbo": elbo,
        "k": k if elbo != "meanfield" else 1,
        "epochs": epochs,
        "seed": seed,
        "overrides": overrides,
        **scored,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["digits"], choices=list(DATA))
    ap.add_argument("--elbos", nargs="+", default=["meanfield", "iwae"])
    ap.add_argument("--k", type=int, default=5, help="train.num_particles of iwae")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-k", type=int, default=1000, help="importance samples of the test log-likelihood")
    ap.add_argument("--eval-rows", type=int, default=0, help="score the first N test rows (0: all)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = [run(d, e, a.k, a.epochs, s, a.eval_k, a.eval_rows) for d in a.data for s in a.seeds for e in a.elbos]
    old = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}  # read last: parallel runs add up
    key = lambda r: (r["data"], r["elbo"], r["k"], r["epochs"], r["seed"])  # noqa: E731
    new = {key(r) for r in runs}
    old["runs"] = [r for r in old["runs"] if key(r) not in new] + runs
    old["machine"] = {
        "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip("\t :"),
        "threads": 1,
        "torch": torch.__version__,
    }
    write_json(OUT, old)


if __name__ == "__main__":
    main()
