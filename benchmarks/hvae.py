"""The hierarchical VAE (model=hvae) against the one-level VAE: the same data, networks, epochs, seed and
everything else, one thread, seeds one after another; both scored by the same importance weighted test
log-likelihood (IWAE with --eval-k samples, seeded), beside the test ELBO, seconds per epoch and the
parameter count.

    python benchmarks/hvae.py --data digits --epochs 20 --seeds 0 1 2          # writes benchmarks/hvae.json
    python benchmarks/hvae.py --data fashion --epochs 10 --eval-k 100 --eval-rows 2000 \\
        --set encoder.type=mlp decoder.type=mlp encoder.activation=relu decoder.activation=relu
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from iwae import DATA, fit_and_score  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "hvae.json"


def run(data, model, epochs, seed, extra, eval_k, eval_rows):
    overrides = [*DATA[data], f"model={model}", *extra, f"train.epochs={epochs}", f"seed={seed}"]
    r, scored = fit_and_score(overrides, eval_k, eval_rows)
    row = {
        "data": data,
        "model": model,
        "epochs": epochs,
        "seed": seed,
        "overrides": overrides,
        "networks": " ".join(extra) or "defaults",
        **scored,
        "parameters": sum(p.numel() for p in r.model.parameters()),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["digits"], choices=list(DATA))
    ap.add_argument("--models", nargs="+", default=["vae", "hvae"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", nargs="*", default=[], help="overrides for both models (e.g. the networks)")
    ap.add_argument("--eval-k", type=int, default=1000, help="importance samples of the test log-likelihood")
    ap.add_argument("--eval-rows", type=int, default=0, help="score the first N test rows (0: all)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for d in a.data:
        for s in a.seeds:
            for m in a.models:
                save(run(d, m, a.epochs, s, a.set, a.eval_k, a.eval_rows))


def save(row):
    """Add ``row`` to hvae.json (replacing the same data, model, networks, epochs and seed), read just
    before writing, so parallel runs add up and a stopped run keeps what it measured."""
    old = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    key = lambda r: (r["data"], r["model"], r["networks"], r["epochs"], r["seed"])  # noqa: E731
    old["runs"] = [r for r in old["runs"] if key(r) != key(row)] + [row]
    old["machine"] = {
        "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip("\t :"),
        "threads": 1,
        "torch": torch.__version__,
    }
    write_json(OUT, old)


if __name__ == "__main__":
    main()
