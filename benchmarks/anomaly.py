"""Anomaly-score benchmark: every registered score, Fashion-MNIST, each class held out in turn.

For each class C in 0..9 this trains the library's default VAE for Fashion-MNIST (no config
file: a residual conv encoder and decoder; ``--config FILE`` trains that config instead, e.g.
examples/configs/fashion_vae.yaml, Pyro's reference MLP VAE) on the training set without C for the same number of epochs, fits every registered anomaly score
on that training set (scores with a second model train it for the same epochs), scores the
whole 10k test set and reports AUROC and AUPRC of "is class C" per score.

Data-set-level check: the same VAE trained on all ten classes scores the test set against
the same 10k images (a) flipped upside down, (b) inverted (1 - x), (c) with their pixels
randomly permuted (the same intensity histogram per image, no structure) and (d) Gaussian
noise with the training set's per-pixel mean and standard deviation, clipped to [0, 1].

    PYTHONPATH=. .venv/bin/python benchmarks/anomaly.py            # 10 epochs, ~30 min on one CPU thread
    PYTHONPATH=. .venv/bin/python benchmarks/anomaly.py --render   # the Markdown table

Writes benchmarks/anomaly.json after every class (a cut-off run keeps what it has) and the
run directories OUT/run-C with RUN/scores/NAME.pt, roc.png and score_histograms.png.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pyro_vae import scores as S  # noqa: E402
from pyro_vae.data import FashionMNIST  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

JSON = ROOT / "benchmarks" / "anomaly.json"
NAMES = FashionMNIST.class_names
GOALS = {"min_auroc": 0.80, "mean_auroc": 0.90, "floor": 0.5}


def train(args, out, exclude=()):
    """Train (or, when OUT already holds a model trained with these settings, load) the VAE:
    (model, dataset, train seconds or None)."""
    import pyro_vae
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data

    overrides = [
        f"data.root={args.root}",
        f"train.epochs={args.epochs}",
        "trainer.progress_bar=false",
        f"data.exclude_classes=[{','.join(str(c) for c in exclude)}]",
        f"seed={args.seed}",
    ]
    cfg = load_config(args.config, (["data=fashion-mnist"] if args.config is None else []) + overrides)
    if (Path(out) / "model.pt").is_file():
        model = pyro_vae.load(out)
        if model.config.train.epochs == args.epochs and list(model.config.data.exclude_classes) == list(exclude):
            return model, load_data(cfg), None
    from pyro_vae.train import fit

    t0 = time.perf_counter()
    r = fit(cfg, out=out, plots=False)
    r.model.config = r.config
    return r.model, r.data, time.perf_counter() - t0


def score_all(model, train_x, x, run_dir, names, seed):
    """{name: scores over x}, {name: {fit_seconds, score_seconds}}."""
    values, timing = {}, {}
    for name in names:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        s = S.prepare(S.build(name), model, train_x, run_dir=run_dir, seed=seed, refit=True)
        t1 = time.perf_counter()
        values[name] = S.compute(s, model, x)
        timing[name] = {"fit_seconds": round(t1 - t0, 1), "score_seconds": round(time.perf_counter() - t1, 1)}
    return values, timing


def held_out_run(c, args, names):
    run_dir = Path(args.out) / f"run-{c}"
    model, data, train_s = train(args, run_dir, exclude=[c])
    test = data.test
    values, timing = score_all(model, data.train.x, test.x, run_dir, names, args.seed)
    positive = test.y == c
    metrics = S.score_report(values, positive, test.y, run_dir, class_names=NAMES)
    row = {
        "held_out_class": c,
        "held_out_name": NAMES[c],
        "epochs": args.epochs,
        "test_loss_seen_classes": round(float(-model.elbo(test.x[~positive]).mean()), 2),
        "scores": {
            n: {"auroc": round(m["auroc"], 4), "auprc": round(m["auprc"], 4), **timing[n]} for n, m in metrics.items()
        },
    }
    if train_s is not None:
        row["train_seconds"] = round(train_s, 1)
    return row


def shifted_sets(test_x, train_x, seed):
    """The data-set-level anomalies: transformed copies of the test images and matched noise."""
    g = torch.Generator().manual_seed(seed)
    imgs = test_x.reshape(-1, 28, 28)
    perm = torch.argsort(torch.rand(test_x.shape, generator=g), dim=1)
    mean, std = train_x.mean(0), train_x.std(0)
    return {
        "upside_down": imgs.flip(1).reshape(test_x.shape),
        "inverted": 1.0 - test_x,
        "pixels_permuted": torch.gather(test_x, 1, perm),
        "matched_gaussian_noise": (mean + std * torch.randn(test_x.shape, generator=g)).clamp(0, 1),
    }


def dataset_level(args, names):
    run_dir = Path(args.out) / "run-all"
    model, data, train_s = train(args, run_dir)
    test_x = data.test.x
    out = {"epochs": args.epochs, "aurocs": {}, "auprcs": {}}
    # fit once, then score every set with the same fitted scores
    fitted = {}
    for name in names:
        torch.manual_seed(args.seed)
        fitted[name] = S.prepare(S.build(name), model, data.train.x, run_dir=run_dir, seed=args.seed, refit=True)
    normal = {n: S.compute(s, model, test_x) for n, s in fitted.items()}
    for set_name, x in shifted_sets(test_x, data.train.x, args.seed).items():
        values = {n: torch.cat([normal[n], S.compute(s, model, x)]) for n, s in fitted.items()}
        is_anomaly = torch.cat([torch.zeros(len(test_x), dtype=torch.bool), torch.ones(len(x), dtype=torch.bool)])
        m = S.score_report(values, is_anomaly, None, run_dir / set_name)
        out["aurocs"][set_name] = {n: round(v["auroc"], 4) for n, v in m.items()}
        out["auprcs"][set_name] = {n: round(v["auprc"], 4) for n, v in m.items()}
    return out


def summarise(rows, names):
    summary = {}
    for n in names:
        a = [r["scores"][n]["auroc"] for r in rows if n in r["scores"]]
        p = [r["scores"][n]["auprc"] for r in rows if n in r["scores"]]
        if not a:
            continue
        summary[n] = {
            "mean_auroc": round(sum(a) / len(a), 4),
            "min_auroc": round(min(a), 4),
            "mean_auprc": round(sum(p) / len(p), 4),
            "classes": len(a),
            "classes_below_0.8": sum(v < GOALS["min_auroc"] for v in a),
            "classes_below_0.5": sum(v < GOALS["floor"] for v in a),
        }
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument(
        "--classes",
        type=int,
        nargs="*",
        default=list(range(10)),
        help="held-out classes (none: only the data-set-level check)",
    )
    p.add_argument("--config", default=None, help="a config file to train (default: none, the library's defaults)")
    p.add_argument("--epochs", type=int, default=10, help="the same for every class (default: the config's 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", nargs="+", default=None, help="default: every registered score")
    p.add_argument("--no-dataset-check", action="store_true")
    p.add_argument("--out", default="runs/anomaly-benchmark")
    p.add_argument("--json", default=str(JSON))
    p.add_argument("--render", action="store_true", help="print the Markdown table of --json and exit")
    p.add_argument(
        "--merge", action="store_true", help="add these scores to the rows already in --json (models reused from --out)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared machines)")
    args = p.parse_args()
    if args.render:
        print(render(json.loads(Path(args.json).read_text())))
        return
    names = args.scores or S.ANOMALY_SCORES.names()
    torch.set_num_threads(args.threads)
    doc = {
        "benchmark": "anomaly scores, Fashion-MNIST, one class held out of training at a time",
        "config": args.config or "defaults (no config file)",
        "epochs": args.epochs,
        "seed": args.seed,
        "scores": {n: {"params": S.build(n).params()} for n in names},
        "default_score": S.DEFAULT_SCORE,
        "goals": GOALS,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        "CPU shared with other jobs (timings are indicative)",
        "held_out": [],
        "summary": {},
    }
    if args.merge and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        doc["held_out"], doc["scores"] = old["held_out"], {**old["scores"], **doc["scores"]}
        if "dataset_level" in old:
            doc["dataset_level"] = old["dataset_level"]
    all_names = list(doc["scores"])
    doc["summary"] = summarise(doc["held_out"], all_names)
    for c in args.classes:
        row = held_out_run(c, args, names)
        print(json.dumps({"class": c, **{n: v["auroc"] for n, v in row["scores"].items()}}), flush=True)
        old = next((r for r in doc["held_out"] if r["held_out_class"] == c), None)
        if old is not None:
            old["scores"].update(row.pop("scores"))
            old.update({k: v for k, v in row.items() if k not in old})
        else:
            doc["held_out"].append(row)
        doc["held_out"].sort(key=lambda r: r["held_out_class"])
        doc["summary"] = summarise(doc["held_out"], all_names)
        write_json(args.json, doc)
    if not args.no_dataset_check:
        level = dataset_level(args, names)
        if "dataset_level" in doc:
            for key in ("aurocs", "auprcs"):
                for set_name, v in level[key].items():
                    doc["dataset_level"][key].setdefault(set_name, {}).update(v)
        else:
            doc["dataset_level"] = level
        print(json.dumps(doc["dataset_level"]["aurocs"]), flush=True)
        write_json(args.json, doc)


def render(doc=None) -> str:
    """Markdown: AUROC per held-out class and score (mean, min), then the data-set-level AUROCs."""
    if doc is None:
        doc = json.loads(JSON.read_text())
    rows = doc["held_out"]
    summary = doc.get("summary", {})
    names = sorted(summary, key=lambda n: -summary[n]["mean_auroc"])
    default = S.DEFAULT_SCORE  # the library's default now (the JSON records the one at run time)
    head = ["score"] + [f"{r['held_out_class']} {r['held_out_name']}" for r in rows] + ["mean", "min", "mean AUPRC"]
    lines = [
        f"AUROC of each score for the Fashion-MNIST class held out of training "
        f"({doc['epochs']} epochs, {doc['config']}); **bold** = the default; (removed) = measured, "
        "then taken out of the library.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def label(n):
        return f"**{n}**" if n == default else n if n in S.ANOMALY_SCORES else f"{n} (removed)"

    for n in names:
        cells = [f"{r['scores'][n]['auroc']:.3f}" if n in r["scores"] else "-" for r in rows]
        s = summary[n]
        lines.append(
            "| "
            + " | ".join(
                [label(n)] + cells + [f"{s['mean_auroc']:.3f}", f"{s['min_auroc']:.3f}", f"{s['mean_auprc']:.3f}"]
            )
            + " |"
        )
    level = doc.get("dataset_level")
    if level:
        sets = list(level["aurocs"])
        lines += [
            "",
            f"Trained on all of Fashion-MNIST ({level['epochs']} epochs): AUROC of its test set "
            "against transformed copies / matched noise.",
            "",
            "| score | " + " | ".join(s.replace("_", " ") for s in sets) + " |",
            "|---|" + "---|" * len(sets),
        ]
        for n in (n for n in names if all(n in level["aurocs"][s] for s in sets)):
            lines.append("| " + " | ".join([label(n)] + [f"{level['aurocs'][s][n]:.3f}" for s in sets]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
