"""Do the defaults hold against a search? `pyro-vae tune` studies on the digits, selected on
validation data only, then the best trial and the defaults compared on the test split.

Two studies, each at most --trials trials (default 20), on the bundled digits with a validation
split of a tenth of the training data (the split `pyro-vae tune` makes):

* vae: the default VAE (20 epochs); searched: train.lr, train.batch_size, latent_dim, train.elbo,
  train.kl_warmup_epochs (the keys benchmarks/defaults.py's grid chose).
* m2:  model=ssvae with 50 labels (20 epochs); searched: train.lr, train.batch_size, latent_dim,
  model.aux_loss_multiplier.

Then the defaults and the study's best.yaml are trained with seeds 0, 1, 2 on the same split; the
test metric (never used to select) of each goes to benchmarks/tune_defaults.json.

    python benchmarks/tune_defaults.py [--trials 20] [--only vae|m2]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "tune_defaults.json"
CLI = [sys.executable, "-m", "pyro_vae.cli"]

STUDIES = {
    "vae": {
        "base": ["data=digits", "train.epochs=20"],
        "spaces": [
            "train.lr=log:3e-4:1e-2",
            "train.batch_size=choice:32,64,128",
            "latent_dim=choice:4,8,16",
            "train.elbo=choice:trace,meanfield",
            "train.kl_warmup_epochs=int:0:5",
        ],
        "metric": ("val_loss", "test_loss", "min"),
    },
    "m2": {
        "base": ["model=ssvae", "data=digits", "data.labels=50", "train.epochs=20"],
        "spaces": [
            "train.lr=log:3e-4:1e-2",
            "train.batch_size=choice:32,64,128",
            "latent_dim=choice:4,8,16",
            "model.aux_loss_multiplier=log:3:300",
        ],
        "metric": ("val_accuracy", "test_accuracy", "max"),
    },
}


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def _train(args, out):
    r = subprocess.run(CLI + ["train", *args, "--out", str(out)], capture_output=True, text=True, env=_env())
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads((Path(out) / "metrics.json").read_text())


def study(name, trials, work):
    spec = STUDIES[name]
    folder = work / f"tune-{name}"
    args = ["tune", *spec["base"], "--trials", str(trials), "--out", str(folder), "--keep", "1"]
    for s in spec["spaces"]:
        args += ["--space", s]
    t0 = time.perf_counter()
    r = subprocess.run(CLI + args, capture_output=True, text=True, env=_env())
    if r.returncode:
        raise SystemExit(r.stderr)
    seconds = time.perf_counter() - t0
    settings = json.loads((folder / "tune.json").read_text())
    import csv

    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    val_key, test_key, mode = spec["metric"]
    best_yaml = folder / "best.yaml"
    validation = [a for a in settings["config"].splitlines() if a.strip().startswith("validation:")][0].split()[-1]
    compare = {}
    for label, args_of in (
        ("defaults", lambda seed: [*spec["base"], f"data.validation={validation}", f"seed={seed}"]),
        ("tuned", lambda seed: [str(best_yaml), f"seed={seed}"]),
    ):
        runs = []
        for seed in (0, 1, 2):
            m = _train(args_of(seed), work / f"{name}-{label}-{seed}")
            runs.append({"seed": seed, "val": m.get(f"best_{val_key}"), "test": m[test_key]})
        tests = [r["test"] for r in runs]
        compare[label] = {
            "runs": runs,
            "test_mean": statistics.mean(tests),
            "test_sd": statistics.stdev(tests),
        }
    best = [r for r in rows if r["state"] == "COMPLETE"]
    best = sorted(best, key=lambda r: float(r[val_key]), reverse=mode == "max")[0]
    return {
        "base": spec["base"],
        "validation": int(validation),
        "spaces": spec["spaces"],
        "trials": rows,
        "states": {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")},
        "study_seconds": round(seconds, 1),
        "best": {k: best[k] for k in best if k not in ("run_dir",)},
        "metric": {"selection": val_key, "reported": test_key, "mode": mode},
        "compare": compare,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--only", choices=sorted(STUDIES))
    a = p.parse_args()
    result = json.loads(OUT.read_text()) if OUT.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="tune-defaults-"))
    try:
        for name in [a.only] if a.only else list(STUDIES):
            result[name] = study(name, a.trials, work)
            result["machine"] = f"{platform.processor() or platform.machine()}, 1 thread per run"
            OUT.write_text(json.dumps(result, indent=2) + "\n")
            c = result[name]["compare"]
            print(
                f"{name}: tuned {c['tuned']['test_mean']:.4f} ± {c['tuned']['test_sd']:.4f} vs defaults "
                f"{c['defaults']['test_mean']:.4f} ± {c['defaults']['test_sd']:.4f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
