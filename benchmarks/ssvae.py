"""Semi-supervised VAE (M2) on Fashion-MNIST: test accuracy vs number of labels.

For each label count (class balanced) and seed: train examples/configs/ssvae_fashion.yaml
for a fixed epoch budget, keep the epoch with the best accuracy on 1000 held-out labelled
validation examples, and report its test accuracy. The baseline is the same classifier
network (the config's q(y|x): type, sizes, dropout, input shifts and flips) trained on the labelled
examples alone with Adam, selected on the same validation set. Results are appended to
benchmarks/ssvae.json as each run finishes (re-running skips what is there).

    .venv/bin/python benchmarks/ssvae.py --labels 100 600 1000 3000 --seeds 0 1 2 --epochs 20
    # few labels (100): flips and the consistency term on the unlabelled images
    .venv/bin/python benchmarks/ssvae.py --labels 100 --epochs 20 --set model.augment_flip=true \
        model.consistency_weight=10
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.training.augment import augment_images  # noqa: E402
from pyro_vae.models.ssvae import augment_shift, classifier_type  # noqa: E402
from pyro_vae.networks import make_classifier  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


def supervised_only(data, cfg, seed, steps=2000):
    """The SSVAE's classifier network (same type, sizes, activation, dropout) trained on the
    labelled rows alone with Adam at the same learning rate and the same input shifts
    and flips (model.augment_shift, augment_flip), selected on validation accuracy."""
    torch.manual_seed(seed)
    mask = data.train.y >= 0
    x, y = data.train.x[mask], data.train.y[mask]
    s = cfg.model
    net = make_classifier(x.shape[1], data.num_classes, list(s.classifier_hidden), classifier_type(s, data.image_shape),
                          s.classifier_activation or cfg.encoder.activation, s.classifier_dropout, data.image_shape)
    opt = torch.optim.Adam(net.parameters(), cfg.train.lr)
    evaluated = net
    best_val, best_test = -1.0, 0.0
    for step in range(steps):
        net.train()
        idx = torch.randint(0, len(x), (min(200, len(x)),))
        loss = F.cross_entropy(net(augment_images(x[idx], data.image_shape, augment_shift(s, data.image_shape), s.augment_flip)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            evaluated.eval()
            with torch.no_grad():
                val = float((evaluated(data.val.x).argmax(1) == data.val.y).float().mean())
                if val > best_val:
                    best_val = val
                    best_test = float((evaluated(data.test.x).argmax(1) == data.test.y).float().mean())
    return best_test


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--config", default="examples/configs/ssvae_fashion.yaml")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"benchmark": "ssvae", "runs": []}
    for n in args.labels:
        for seed in args.seeds:
            key = {"labels": n, "seed": seed, "epochs": args.epochs, "overrides": args.set}
            if any(all(r.get(k) == v for k, v in key.items()) for r in data["runs"]):
                continue
            overrides = [f"data.labels={n}", f"seed={seed}", f"train.epochs={args.epochs}",
                         "trainer.progress_bar=false", *args.set]
            t0 = time.perf_counter()
            cfg = load_config(args.config, overrides)
            r = fit(cfg, save=False, plots=False)
            row = dict(key, test_accuracy=round(r.metrics["test_accuracy"], 4),
                       best_val_accuracy=round(r.metrics["best_val_accuracy"], 4),
                       best_epoch=r.metrics["best_epoch"], seconds_per_epoch=r.metrics["seconds_per_epoch"],
                       supervised_only_accuracy=round(supervised_only(r.data, cfg, seed), 4),
                       wall_seconds=round(time.perf_counter() - t0, 1))
            print(json.dumps(row), flush=True)
            data["runs"].append(row)
            data["summary"] = summarise(data["runs"])
            write_json(out, data)


def summarise(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["labels"], r["epochs"], tuple(r["overrides"])), []).append(r)
    out = []
    for (n, e, o), rs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rs]
        sup = [r["supervised_only_accuracy"] for r in rs]
        out.append({"labels": n, "epochs": e, "overrides": list(o), "seeds": len(rs),
                    "ssvae_mean": round(statistics.mean(acc), 4),
                    "ssvae_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
                    "supervised_mean": round(statistics.mean(sup), 4),
                    "supervised_sd": round(statistics.stdev(sup), 4) if len(sup) > 1 else 0.0,
                    "seconds_per_epoch": round(statistics.mean(r["seconds_per_epoch"] for r in rs), 1)})
    return out


if __name__ == "__main__":
    main()
