"""Speed of the reference VAE on Fashion-MNIST (Pyro's examples/vae/vae.py setup).

MLP 784-400-50 (softplus), Bernoulli likelihood on grey levels (no binarization),
batch 256, Adam 1e-3, Trace_ELBO. Trains N epochs per variant and writes seconds
per epoch (training only) and the test loss (-ELBO per datum, nats) to JSON.

    .venv/bin/python benchmarks/vae_speed.py --epochs 2 --out benchmarks/vae_speed.json

Reference on this machine type (2 cores): Pyro's own vae.py takes 6.6 s/epoch and
reaches a test loss of about 269 after 2 epochs.
"""
import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyro_vae  # noqa: E402
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.train import cpu_has_native_bf16, fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist"
VARIANTS = {
    "fp32": ["trainer.precision=32-true"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "fp32, meanfield (analytic KL)": ["trainer.precision=32-true", "train.elbo=meanfield"],
}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--root", default=ROOT)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    results = []
    for name in args.variants:
        cfg = load_config("examples/configs/fashion_vae.yaml", [
            f"data.root={args.root}", f"train.epochs={args.epochs}", "trainer.progress_bar=false",
            *VARIANTS[name]])
        t0 = time.perf_counter()
        r = fit(cfg, save=False)
        m = r.metrics
        row = {"variant": name, "epochs": m["epochs"], "seconds_per_epoch": m["seconds_per_epoch"],
               "per_epoch_seconds": [row["seconds"] for row in r.history],
               "test_loss": round(m["test_loss"], 2), "wall_seconds": round(time.perf_counter() - t0, 1),
               "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        print(json.dumps(row), flush=True)
        results.append(row)
    write_json(args.out, {
        "benchmark": "vae_speed", "setup": "Fashion-MNIST 60k/10k, MLP 784-400-50 softplus, Bernoulli, batch 256, Adam 1e-3",
        "reference": {"pyro_examples_vae_py_seconds_per_epoch": 6.6, "pyro_examples_vae_py_test_loss_2_epochs": 269},
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "cpu": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(),
                    "torch": torch.__version__, "pyro": __import__("pyro").__version__},
        "results": results,
    })


if __name__ == "__main__":
    main()
