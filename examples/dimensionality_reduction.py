"""Dimensionality reduction: k-NN accuracy on VAE latent means vs PCA with as many dimensions.

Trains a VAE (labels unused), encodes the train and test images to their posterior means,
and classifies the test codes with k-nearest neighbours fitted on the train codes; the same
for PCA projections. Also draws the test codes of a 2-D latent space.

    python examples/dimensionality_reduction.py                       # the bundled digits
    python examples/dimensionality_reduction.py --data fashion-mnist --root /usr/share/datasets/fashion-mnist \\
        --config examples/configs/fashion_vae.yaml --epochs 10        # the table in the README

Writes OUT/dimred.json and OUT/latent_map_2d.png; the run folders are OUT/vae-zD.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

import pyro_vae  # noqa: E402


def knn_accuracy(train_codes, train_y, test_codes, test_y, k):
    clf = KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_y)
    return float((clf.predict(test_codes) == test_y).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="data set name: digits (bundled), mnist, fashion-mnist, kmnist")
    p.add_argument("--root", default=None, help="folder with the four IDX files (mnist-like data sets)")
    p.add_argument("--config", default=None, help="YAML config (default: the library defaults)")
    p.add_argument("--latent-dim", type=int, nargs="+", default=[2, 10])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=20000, help="train codes used to fit k-NN")
    p.add_argument("--out", default="runs/dimred")
    args = p.parse_args()
    out = Path(args.out)
    data = [f"data.name={args.data}"] + ([f"data.root={args.root}"] if args.root else [])
    results = []
    for d in args.latent_dim:
        r = pyro_vae.fit(
            args.config,
            out=str(out / f"vae-z{d}"),
            overwrite=True,
            overrides=data
            + [
                f"latent_dim={d}",
                f"train.epochs={args.epochs}",
                "trainer.progress_bar=false",
                f"name={args.data}-z{d}",
            ],
        )
        model = pyro_vae.load(r.run_dir)
        tr_x, tr_y = r.data.train.x[: args.train_subset], r.data.train.y[: args.train_subset].numpy()
        te_x, te_y = r.data.test.x, r.data.test.y.numpy()
        z_tr, z_te = model.encode(tr_x)[0].detach().numpy(), model.encode(te_x)[0].detach().numpy()
        pca = PCA(d, random_state=0).fit(tr_x.numpy())
        p_tr, p_te = pca.transform(tr_x.numpy()), pca.transform(te_x.numpy())
        row = {
            "dims": d,
            "epochs": args.epochs,
            "k": args.k,
            "active_units": r.metrics.get("active_units"),
            "knn_accuracy_vae": round(knn_accuracy(z_tr, tr_y, z_te, te_y, args.k), 4),
            "knn_accuracy_pca": round(knn_accuracy(p_tr, tr_y, p_te, te_y, args.k), 4),
            "test_loss": round(r.metrics["test_loss"], 2),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if d == 2:
            fig, ax = plt.subplots(figsize=(6, 6))
            sc = ax.scatter(z_te[:, 0], z_te[:, 1], c=te_y, cmap="tab10", s=3)
            ax.legend(*sc.legend_elements(), title="class", loc="best", fontsize=7)
            ax.set_title(f"{args.data} test set: 2-D VAE latent means")
            fig.savefig(out / "latent_map_2d.png", dpi=120)
            plt.close(fig)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dimred.json").write_text(
        json.dumps({"data": args.data, "results": results, "train_subset_for_knn": args.train_subset}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
