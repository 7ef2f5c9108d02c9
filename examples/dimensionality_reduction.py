"""Dimensionality reduction: k-NN accuracy on VAE latent means vs PCA with as many dimensions.

Trains the reference VAE on Fashion-MNIST (labels unused), encodes train and test images
to their posterior means, and classifies the test codes with k-nearest neighbours fitted on
the train codes; the same for PCA projections. Also draws the 2-D latent map.

    .venv/bin/python examples/dimensionality_reduction.py --latent-dim 10 --epochs 10 --out runs/dimred
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.plots import latent_map  # noqa: E402
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402


def knn_accuracy(train_codes, train_y, test_codes, test_y, k):
    clf = KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_y)
    return float((clf.predict(test_codes) == test_y).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--latent-dim", type=int, nargs="+", default=[2, 10])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=20000, help="train codes used to fit k-NN")
    p.add_argument("--out", default="runs/dimred")
    args = p.parse_args()
    out = Path(args.out)
    results = []
    for d in args.latent_dim:
        r = fit("examples/configs/fashion_vae.yaml", out=out / f"vae-z{d}", overrides=[
            f"data.root={args.root}", f"latent_dim={d}", f"train.epochs={args.epochs}",
            "trainer.progress_bar=false", f"name=fashion-z{d}"])
        tr, te = r.data.train.subset(slice(0, args.train_subset)), r.data.test
        z_tr, z_te = r.model.encode(tr.x)[0].numpy(), r.model.encode(te.x)[0].numpy()
        pca = PCA(d, random_state=0).fit(tr.x.numpy())
        p_tr, p_te = pca.transform(tr.x.numpy()), pca.transform(te.x.numpy())
        row = {"dims": d, "epochs": args.epochs, "k": args.k, "active_units": r.metrics["active_units"],
               "knn_accuracy_vae": round(knn_accuracy(z_tr, tr.y.numpy(), z_te, te.y.numpy(), args.k), 4),
               "knn_accuracy_pca": round(knn_accuracy(p_tr, tr.y.numpy(), p_te, te.y.numpy(), args.k), 4),
               "test_loss": round(r.metrics["test_loss"], 2)}
        results.append(row)
        print(json.dumps(row), flush=True)
        if d == 2:
            latent_map(torch.from_numpy(z_te), te.y, out / "latent_map_2d.png", r.data.class_names,
                       title="Fashion-MNIST test set: 2-D VAE latent means")
    write_json(out / "dimred.json", {"results": results, "train_subset_for_knn": args.train_subset})


if __name__ == "__main__":
    main()
