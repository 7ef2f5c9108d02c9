"""Why the unlabelled data add little to M2 on Fashion-MNIST: what the unlabelled ELBO asks of q(y|x).

For an unlabelled image, the unlabelled ELBO is maximised over q(y|x) by the model's own
posterior p(y|x) ~ p(y) exp L(x, y), where L(x, y) is the ELBO of x under label y. This script
trains examples/configs/ssvae_fashion.yaml (100 labels unless overridden), then on the test
images estimates L(x, y) for every class (mean of --particles importance log weights) and
reports how peaked that posterior is, how accurate its argmax is (a generative classifier),
and how often it agrees with q(y|x). Results are appended to benchmarks/ssvae_posterior.json.

    .venv/bin/python benchmarks/ssvae_posterior.py --set train.epochs=3
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


@torch.no_grad()
def posterior_stats(model, x, y, particles=20, batch=1000):
    model.eval()
    L, q = [], []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        L.append(torch.stack([model.log_weights(xb) for _ in range(particles)]).mean(0))
        q.append(torch.softmax(model.classifier(xb).float(), -1))
    L, q = torch.cat(L), torch.cat(q)
    post = torch.softmax(L, -1)
    top2 = L.topk(2, -1).values
    return {
        "q_accuracy": float((q.argmax(1) == y).float().mean()),
        "generative_accuracy": float((L.argmax(1) == y).float().mean()),
        "agreement_q_vs_generative": float((q.argmax(1) == L.argmax(1)).float().mean()),
        "median_gap_best_vs_second_nats": float((top2[:, 0] - top2[:, 1]).median()),
        "median_range_over_classes_nats": float((L.max(1).values - L.min(1).values).median()),
        "mean_max_posterior": float(post.max(1).values.mean()),
        "mean_max_q": float(q.max(1).values.mean()),
        "mean_elbo_nats": float(L.logsumexp(-1).mean()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--config", default="examples/configs/ssvae_fashion.yaml")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"benchmark": "ssvae_posterior", "runs": []}
    cfg = load_config(
        args.config, [f"data.labels={args.labels}", f"seed={args.seed}", "trainer.progress_bar=false", *args.set]
    )
    t0 = time.perf_counter()
    r = fit(cfg, save=False, plots=False)
    stats = posterior_stats(r.model, r.data.test.x, r.data.test.y, args.particles)
    row = dict(
        labels=args.labels,
        seed=args.seed,
        overrides=args.set,
        particles=args.particles,
        test_accuracy=round(r.metrics["test_accuracy"], 4),
        best_epoch=r.metrics["best_epoch"],
        **{k: round(v, 4) for k, v in stats.items()},
        wall_seconds=round(time.perf_counter() - t0, 1),
    )
    print(json.dumps(row), flush=True)
    data["runs"].append(row)
    write_json(out, data)


if __name__ == "__main__":
    main()
