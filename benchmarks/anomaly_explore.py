"""Exploration for issue 19: cheap latent-space anomaly scores on the reference VAE.

For each Fashion-MNIST class C held out of training, the VAE that benchmarks/anomaly.py trains
(examples/configs/fashion_vae.yaml, reused from OUT/run-C/model.pt when it was trained with the
same epochs) is run once over a training subsample and the test set; every variant below is then
computed from the cached features (posterior means and scales, the encoder's hidden layer,
reconstructions, the codes of the reconstructions, the training labels). Nothing is fitted on
the held-out class: the "bank" (stored training codes) and the "calibration" rows (for
combinations) are disjoint random subsets of the training set without C.

Variants (higher = more anomalous), each a principled guess, not a grid:

* knn_k{1,5,20,50}      Euclidean k-th nearest neighbour distance of E_q[z|x] (k=20 = latent_knn)
* knn_white_k20        the same after whitening by the bank's covariance (global Mahalanobis)
* knn_cos_k20          cosine distance of the posterior means
* knn_gauss            5th smallest Bhattacharyya distance between q(z|x) and 5000 bank rows' q(z|x_n)
* agg_posterior        -log (1/N) sum_n N(mu(x); mu_n, sigma_n^2): aggregate posterior mixture density
* knn_hidden_k20       k-th NN distance of the encoder's hidden layer (400 units)
* knn_hidden_code_k20  the same on [hidden / its scale, code / its scale]
* knn_recon_code_k20   k-th NN distance between codes of the reconstructions E_q[z | E[x|z=mu]]
* rank_knn_recon       mean of the calibration-set percentiles of knn_k20 and recon_error
* maha_class_code      min over training classes of the Mahalanobis distance of mu, tied covariance
                       (Lee et al. 2018); needs the training labels
* maha_class_hidden    the same on the encoder's hidden layer
* rel_maha_class_code  maha_class_code minus the one-class (background) Mahalanobis (Ren et al. 2021)
* knn_norm_hidden_k20  kNN (k=20) on L2-normalised hidden features (Sun et al. 2022's normalisation)
* knn_hidden_k50, knn_white_k50   k = 50 for the two best k = 20 variants
* ref_knn_pixels_k20   reference, not a model score: kNN on the raw pixels

    PYTHONPATH=. .venv/bin/python benchmarks/anomaly_explore.py --epochs 10
    PYTHONPATH=. .venv/bin/python benchmarks/anomaly_explore.py --digits   # held-out digits check

Writes benchmarks/anomaly_explore.json.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from pyro_vae import scores as S  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

JSON = ROOT / "benchmarks" / "anomaly_explore.json"
BANK, CALIBRATION = 20000, 5000


@torch.no_grad()
def features(model, x, batch=1000):
    out = {"x": [], "mu": [], "sigma": [], "hidden": [], "recon_error": [], "recon_code": []}
    model.eval()
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        h = model.encoder.body(xb)
        mu, sigma = model.encoder(xb)
        rec = model.reconstruct(xb)
        out["x"].append(xb.float())
        out["mu"].append(mu.float())
        out["sigma"].append(sigma.float())
        out["hidden"].append(h.float())
        out["recon_error"].append(((rec - xb) ** 2).sum(-1).float())
        out["recon_code"].append(model.encoder(rec)[0].float())
    return {k: torch.cat(v) for k, v in out.items()}


def kth(d_fn, q, bank, k, batch=500):
    out = []
    for i in range(0, q.shape[0], batch):
        d = d_fn(q[i : i + batch], bank)
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def euclid(a, b):
    return torch.cdist(a, b)


def cosine(a, b):
    return 1 - torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def whitener(z):
    c = torch.cov(z.T.double()) + 1e-6 * torch.eye(z.shape[1], dtype=torch.double)
    evals, evecs = torch.linalg.eigh(c)
    w = (evecs / evals.clamp_min(1e-10).sqrt()).float()
    mean = z.mean(0)
    return lambda v: (v - mean) @ w


def bhattacharyya_kth(mq, sq, mb, sb, k, batch=50):
    """k-th smallest Bhattacharyya distance between diagonal Gaussians N(mq, sq^2) and the bank's."""
    vq, vb = sq**2, sb**2
    out = []
    for i in range(0, mq.shape[0], batch):
        m, v = mq[i : i + batch, None], vq[i : i + batch, None]
        avg = (v + vb[None]) / 2
        d = ((m - mb[None]) ** 2 / avg).sum(-1) / 8 + 0.5 * (
            avg.log().sum(-1) - 0.5 * (v.log().sum(-1) + vb.log().sum(-1)[None])
        )
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def agg_posterior(z, mb, sb, batch=1000):
    """-log (1/N) sum_n N(z; mb_n, sb_n^2)."""
    prec = sb**-2  # (N, D)
    const = -sb.log().sum(-1) - 0.5 * mb.shape[1] * math.log(2 * math.pi) - 0.5 * (mb**2 * prec).sum(-1)
    out = []
    for i in range(0, z.shape[0], batch):
        zb = z[i : i + batch]
        lp = -0.5 * (zb**2) @ prec.T + zb @ (mb * prec).T + const[None]
        out.append(-(torch.logsumexp(lp, 1) - math.log(mb.shape[0])))
    return torch.cat(out)


def class_maha(train_f, train_y, test_f):
    """min_c Mahalanobis (tied covariance) and the relative version (minus background)."""
    classes = torch.unique(train_y)
    means = torch.stack([train_f[train_y == c].mean(0) for c in classes])
    centred = train_f - means[torch.searchsorted(classes, train_y)]
    cov = centred.T.double() @ centred.double() / len(train_f) + 1e-6 * torch.eye(train_f.shape[1], dtype=torch.double)
    prec = torch.linalg.inv(cov).float()
    diff = test_f[:, None] - means[None]  # (b, C, D)
    d = torch.einsum("bcd,de,bce->bc", diff, prec, diff)
    cls = d.min(1).values
    bg_cov = torch.cov(train_f.T.double()) + 1e-6 * torch.eye(train_f.shape[1], dtype=torch.double)
    bg_prec = torch.linalg.inv(bg_cov).float()
    bd = test_f - train_f.mean(0)
    bg = torch.einsum("bd,de,be->b", bd, bg_prec, bd)
    return cls, cls - bg


def ecdf(cal, v):
    s = cal.sort().values
    return torch.searchsorted(s, v.contiguous()).float() / len(s)


def variants(tr, tr_y, te, cal):
    """{name: test scores}; tr = bank features, cal = calibration features (disjoint rows)."""
    out = {}
    for k in (1, 5, 20, 50):
        out[f"knn_k{k}"] = kth(euclid, te["mu"], tr["mu"], k)
    w = whitener(tr["mu"])
    out["knn_white_k20"] = kth(euclid, w(te["mu"]), w(tr["mu"]), 20)
    out["knn_cos_k20"] = kth(cosine, te["mu"], tr["mu"], 20)
    nb = 5000  # the pairwise Gaussian distance is D times the cost of a plain distance
    out["knn_gauss"] = bhattacharyya_kth(te["mu"], te["sigma"], tr["mu"][:nb], tr["sigma"][:nb], 5)
    out["agg_posterior"] = agg_posterior(te["mu"], tr["mu"], tr["sigma"])
    out["knn_hidden_k20"] = kth(euclid, te["hidden"], tr["hidden"], 20)
    hs, zs = tr["hidden"].std(0).norm(), tr["mu"].std(0).norm()
    cat = lambda f: torch.cat([f["hidden"] / hs, f["mu"] / zs], 1)  # noqa: E731
    out["knn_hidden_code_k20"] = kth(euclid, cat(te), cat(tr), 20)
    out["knn_norm_hidden_k20"] = kth(cosine, te["hidden"], tr["hidden"], 20)
    out["knn_recon_code_k20"] = kth(euclid, te["recon_code"], tr["recon_code"], 20)
    out["knn_hidden_k50"] = kth(euclid, te["hidden"], tr["hidden"], 50)
    out["knn_white_k50"] = kth(euclid, w(te["mu"]), w(tr["mu"]), 50)
    out["ref_knn_pixels_k20"] = kth(euclid, te["x"], tr["x"], 20)
    out["recon_error"] = te["recon_error"]
    cal_knn = kth(euclid, cal["mu"], tr["mu"], 20)
    out["rank_knn_recon"] = (ecdf(cal_knn, out["knn_k20"]) + ecdf(cal["recon_error"], te["recon_error"])) / 2
    zk = (out["knn_k20"] - cal_knn.mean()) / cal_knn.std()
    zr = (te["recon_error"] - cal["recon_error"].mean()) / cal["recon_error"].std()
    out["z_knn_recon"] = zk + zr
    if tr_y is not None:
        out["maha_class_code"], out["rel_maha_class_code"] = class_maha(tr["mu"], tr_y, te["mu"])
        out["maha_class_hidden"], out["rel_maha_class_hidden"] = class_maha(tr["hidden"], tr_y, te["hidden"])
        cal_m, _ = class_maha(tr["mu"], tr_y, cal["mu"])
        m, _ = class_maha(tr["mu"], tr_y, te["mu"])
        out["rank_maha_recon"] = (ecdf(cal_m, m) + ecdf(cal["recon_error"], te["recon_error"])) / 2
    return out


def split_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm[: min(BANK, n - CALIBRATION)], perm[-CALIBRATION:]


def fashion(args):
    from anomaly import train

    rows = []
    for c in args.classes:
        t0 = time.perf_counter()
        model, data, _ = train(args, Path(args.out) / f"run-{c}", exclude=[c])
        torch.manual_seed(args.seed)
        bank_i, cal_i = split_rows(len(data.train.x), args.seed)
        tr, cal = features(model, data.train.x[bank_i]), features(model, data.train.x[cal_i])
        te = features(model, data.test.x)
        v = variants(tr, data.train.y[bank_i], te, cal)
        positive = data.test.y == c
        row = {"held_out_class": c, "aurocs": {n: round(S.auroc_auprc(s, positive)["auroc"], 4) for n, s in v.items()}}
        rows.append(row)
        print(json.dumps({"class": c, "seconds": round(time.perf_counter() - t0), **row["aurocs"]}), flush=True)
    return rows


def digits(args):
    """Digits (scikit-learn), each digit held out in turn, the default digits VAE (fewer rows: a
    bank of all training rows but a calibration set of 150)."""
    global BANK, CALIBRATION
    from pyro_vae.config import load_config
    from pyro_vae.train import fit

    BANK, CALIBRATION = 100000, 150
    rows = []
    for c in range(10):
        for seed in args.digit_seeds:
            cfg = load_config(None, ["trainer.progress_bar=false", f"seed={seed}", f"data.exclude_classes=[{c}]"])
            r = fit(cfg, save=False, plots=False)
            model, data = r.model, r.data
            bank_i, cal_i = split_rows(len(data.train.x), seed)
            tr, cal = features(model, data.train.x[bank_i]), features(model, data.train.x[cal_i])
            te = features(model, data.test.x)
            v = variants(tr, data.train.y[bank_i], te, cal)
            positive = data.test.y == c
            row = {
                "held_out_class": c,
                "seed": seed,
                "aurocs": {n: round(S.auroc_auprc(s, positive)["auroc"], 4) for n, s in v.items()},
            }
            rows.append(row)
            print(json.dumps({"digit": c, "seed": seed, **row["aurocs"]}), flush=True)
    return rows


def k_check(args):
    """Plain kNN on the posterior means, k in (1, 3, 5, 10, 20), each over three random banks of
    BANK training rows: is the difference between k values larger than the bank's randomness?"""
    from anomaly import train

    ks, seeds, aurocs = (1, 3, 5, 10, 20), (0, 1, 2), {}
    for c in args.classes:
        model, data, _ = train(args, Path(args.out) / f"run-{c}", exclude=[c])
        te = S.compute_fn(lambda m, xb: m.encode(xb)[0], model, data.test.x)
        codes = S.compute_fn(lambda m, xb: m.encode(xb)[0], model, data.train.x)
        positive = data.test.y == c
        for seed in seeds:
            bank = codes[torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))[:BANK]]
            d = torch.cat(
                [
                    torch.cdist(te[i : i + 500], bank).topk(max(ks), dim=1, largest=False).values
                    for i in range(0, len(te), 500)
                ]
            )
            for k in ks:
                aurocs.setdefault(str(k), {}).setdefault(str(seed), []).append(
                    round(S.auroc_auprc(d[:, k - 1], positive)["auroc"], 4)
                )
        print(json.dumps({"class": c, **{k: v["0"][-1] for k, v in aurocs.items()}}), flush=True)
    summary = {
        k: {s: {"mean_auroc": round(sum(a) / len(a), 4), "min_auroc": round(min(a), 4)} for s, a in v.items()}
        for k, v in aurocs.items()
    }
    return {"epochs": args.epochs, "classes": args.classes, "bank_rows": BANK, "aurocs": aurocs, "summary": summary}


def summarise(rows):
    names = list(rows[0]["aurocs"])
    out = {}
    for n in names:
        a = [r["aurocs"][n] for r in rows]
        out[n] = {"mean_auroc": round(sum(a) / len(a), 4), "min_auroc": round(min(a), 4)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["mean_auroc"]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/anomaly-benchmark")
    p.add_argument("--digits", action="store_true", help="the held-out digits check instead")
    p.add_argument("--digit-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--k-check",
        action="store_true",
        help="only the plain code kNN for k in 1 3 5 10 20 over three random banks (seeds 0 1 2)",
    )
    p.add_argument("--json", default=str(JSON))
    args = p.parse_args()
    torch.set_num_threads(1)
    doc = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    if args.digits:
        rows = digits(args)
        doc["digits"] = {
            "config": "the default digits VAE (pyro-vae train with no config)",
            "seeds": args.digit_seeds,
            "held_out": rows,
            "summary": summarise(rows),
        }
    elif args.k_check:
        doc[f"fashion_mnist_{args.epochs}_epochs_k_by_bank_seed"] = k_check(args)
    else:
        key = f"fashion_mnist_{args.epochs}_epochs"
        kept = {r["held_out_class"]: r for r in doc.get(key, {}).get("held_out", [])}  # other classes' rows
        kept.update({r["held_out_class"]: r for r in fashion(args)})
        rows = [kept[c] for c in sorted(kept)]
        doc[key] = {
            "config": "examples/configs/fashion_vae.yaml",
            "epochs": args.epochs,
            "seed": args.seed,
            "bank_rows": BANK,
            "calibration_rows": CALIBRATION,
            "held_out": rows,
            "summary": summarise(rows),
        }
    write_json(args.json, doc)
    if args.k_check:
        for k, v in doc[f"fashion_mnist_{args.epochs}_epochs_k_by_bank_seed"]["summary"].items():
            print(
                f"k={k}: "
                + "  ".join(f"bank seed {s}: mean {m['mean_auroc']:.3f} min {m['min_auroc']:.3f}" for s, m in v.items())
            )
        return
    key = "digits" if args.digits else f"fashion_mnist_{args.epochs}_epochs"
    for n, s in doc[key]["summary"].items():
        print(f"{n:24s} mean {s['mean_auroc']:.3f}  min {s['min_auroc']:.3f}")


if __name__ == "__main__":
    main()
