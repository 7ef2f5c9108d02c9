"""Semi-supervised VAEs on Fashion-MNIST with their defaults: test accuracy vs number of labels.

For each label count (class balanced) and seed: train ``model=m1m2`` (or ``model=ssvae``)
with no other key than the data (Fashion-MNIST, 1000 labelled validation examples that pick
the kept epoch), and report its test accuracy. The baseline is M2's default classifier
network (conv, ReLU, dropout 0.5, 1 px shifts) trained on the labelled examples alone with
Adam, selected on the same validation set. Results are appended to benchmarks/ssvae.json as
each run finishes (re-running skips what is there).

    .venv/bin/python benchmarks/ssvae.py --model m1m2 --labels 100 600 1000 3000 --seeds 0 1 2
    .venv/bin/python benchmarks/ssvae.py --model ssvae --labels 100 600 1000 3000 --seeds 0 1 2
    .venv/bin/python benchmarks/ssvae.py --model m1m2 --data digits --labels 50 --seeds 0 1 2

The rows without "config": "defaults" ran an earlier examples/configs/ssvae_fashion.yaml
(``--config FILE``; see RESULTS.md).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.fastmath import cpu_has_native_bf16  # noqa: E402
from pyro_vae.training.augment import augment_images  # noqa: E402
from pyro_vae.models.ssvae import classifier_type  # noqa: E402
from pyro_vae.training.ssvae import augment_shift  # noqa: E402
from pyro_vae.networks import make_classifier  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


def supervised_only(data, cfg, seed, steps=2000):
    """The SSVAE's classifier network (same type, sizes, activation, dropout) trained on the
    labelled rows alone with Adam at the same learning rate and the same input shifts
    (model.augment_shift), selected on validation accuracy."""
    torch.manual_seed(seed)
    mask = data.train.y >= 0
    x, y = data.train.x[mask], data.train.y[mask]
    s = cfg.model
    net = make_classifier(
        x.shape[1],
        data.num_classes,
        list(s.classifier_hidden),
        classifier_type(s, data.image_shape),
        s.classifier_activation or cfg.encoder.activation,
        s.classifier_dropout,
        data.image_shape,
    )
    opt = torch.optim.Adam(net.parameters(), cfg.train.lr)
    evaluated = net
    best_val, best_test = -1.0, 0.0
    for step in range(steps):
        net.train()
        idx = torch.randint(0, len(x), (min(200, len(x)),))
        loss = F.cross_entropy(
            net(augment_images(x[idx], data.image_shape, augment_shift(s, data.image_shape))), y[idx]
        )
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


DATA = {
    "fashion-mnist": ["data.name=fashion-mnist", "data.root=/usr/share/datasets/fashion-mnist", "data.validation=1000"],
    "digits": ["data.name=digits", "data.validation=200"],
}


#: what the rows written before the defaults were benchmarked ran
OLD_ROWS = {"model": "ssvae", "config": "examples/configs/ssvae_fashion.yaml", "data": "fashion-mnist"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["m1m2", "ssvae"], default="m1m2", help="the model kind, with its defaults")
    p.add_argument("--data", choices=sorted(DATA), default="fashion-mnist")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the default, 20)")
    p.add_argument("--config", default=None, help="a config file instead of the defaults (earlier rows)")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"benchmark": "ssvae", "runs": []}
    setting = args.config or "defaults"
    for n in args.labels:
        for seed in args.seeds:
            key = {
                "model": args.model if not args.config else "ssvae",
                "config": setting,
                "data": args.data if not args.config else "fashion-mnist",
                "labels": n,
                "seed": seed,
                "epochs": args.epochs or 20,
                "overrides": args.set,
            }
            if any(all(r.get(k, OLD_ROWS.get(k)) == v for k, v in key.items()) for r in data["runs"]):
                continue
            overrides = ([] if args.config else [f"model={args.model}", *DATA[args.data]]) + [
                f"data.labels={n}",
                f"seed={seed}",
                "trainer.progress_bar=false",
                *args.set,
            ]
            if args.epochs:
                overrides.append(f"train.epochs={args.epochs}")
            t0 = time.perf_counter()
            cfg = load_config(args.config, overrides)
            with tempfile.TemporaryDirectory() as tmp:  # a run directory: the best validated epoch is kept
                r = fit(cfg, out=Path(tmp) / "run", plots=False)
            row = dict(
                key,
                test_accuracy=round(r.metrics["test_accuracy"], 4),
                best_val_accuracy=round(r.metrics["best_val_accuracy"], 4),
                best_epoch=r.metrics["best_epoch"],
                seconds_per_epoch=r.metrics["seconds_per_epoch"],
                train_seconds=r.metrics["train_seconds"],
                precision=r.metrics.get("precision"),
                batch_size=int(r.config.train.batch_size),  # null in the config: resolved with the data
                # q(y|x)'s convolutions follow bf16 autocast only on CPUs with native bf16
                convolutions="bf16"
                if str(r.metrics.get("precision")).startswith("bf16") and cpu_has_native_bf16()
                else "float32",
            )
            if args.model == "m1m2" and not args.config:
                m1 = int(r.config.model.m1_epochs)
                row.update(
                    m1_epochs=m1,
                    m1_seconds_per_epoch=round(statistics.mean(h["seconds"] for h in r.history[:m1]), 2),
                    m2_seconds_per_epoch=round(statistics.mean(h["seconds"] for h in r.history[m1:]), 2),
                )
            # the labels-only baseline: M2's default classifier (or the config's) on the labelled images alone
            base = (
                cfg
                if args.config
                else load_config(None, ["model=ssvae", *DATA[args.data], f"data.labels={n}", f"seed={seed}"])
            )
            row.update(
                supervised_only_accuracy=round(supervised_only(r.data, base, seed), 4),
                wall_seconds=round(time.perf_counter() - t0, 1),
            )
            print(json.dumps(row), flush=True)
            data["runs"].append(row)
            data["summary"] = summarise(data["runs"])
            write_json(out, data)


def summarise(runs):
    groups = {}
    for r in runs:
        k = tuple(r.get(c, OLD_ROWS.get(c)) for c in ("model", "config", "data")) + (
            r["labels"],
            r["epochs"],
            tuple(r["overrides"]),
        )
        groups.setdefault(k, []).append(r)
    out = []
    for (model, config, dataset, n, e, o), rs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rs]
        sup = [r["supervised_only_accuracy"] for r in rs]
        extra = {}
        if "m1_epochs" in rs[0]:
            extra = {
                "m1_epochs": rs[0]["m1_epochs"],
                "m1_seconds_per_epoch": round(statistics.mean(r["m1_seconds_per_epoch"] for r in rs), 1),
                "m2_seconds_per_epoch": round(statistics.mean(r["m2_seconds_per_epoch"] for r in rs), 1),
                "train_seconds": round(statistics.mean(r["train_seconds"] for r in rs)),
            }
        out.append(
            {
                "model": model,
                "config": config,
                "data": dataset,
                "labels": n,
                "epochs": e,
                "overrides": list(o),
                "seeds": len(rs),
                "seed_list": sorted(r["seed"] for r in rs),
                **extra,
                "ssvae_mean": round(statistics.mean(acc), 4),
                "ssvae_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
                "supervised_mean": round(statistics.mean(sup), 4),
                "supervised_sd": round(statistics.stdev(sup), 4) if len(sup) > 1 else 0.0,
                "seconds_per_epoch": round(statistics.mean(r["seconds_per_epoch"] for r in rs), 1),
            }
        )
    return out


if __name__ == "__main__":
    main()
