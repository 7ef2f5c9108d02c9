"""Image networks on image data: the MLP against the residual conv network (the default for
images), same epochs, side by side, one thread each: test loss, bits/dim where the likelihood is a
probability of the pixel levels, seconds per epoch and 5-NN accuracy on the test codes.

    python benchmarks/images.py --data fashion --epochs 3        # writes benchmarks/images.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.train import fit  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "images.json"
DATA = {
    "digits": ["data.name=digits"],
    "fashion": ["data.name=fashion-mnist", "data.root=/usr/share/datasets/fashion-mnist"],
}
NETS = {
    "mlp": ["encoder.type=mlp", "decoder.type=mlp"],
    "resnet": [],  # the default for images
}


def knn_accuracy(model, data, k=5, n_train=20000):
    from sklearn.neighbors import KNeighborsClassifier

    tr, te = data.train, data.test
    ztr = model.encode(tr.x[:n_train])[0].numpy()
    zte = model.encode(te.x)[0].numpy()
    return float(KNeighborsClassifier(k).fit(ztr, tr.y[:n_train].numpy()).score(zte, te.y.numpy()))


def run(data, net, epochs, seed, extra):
    overrides = [*DATA[data], *NETS[net], f"train.epochs={epochs}", f"seed={seed}", "trainer.progress_bar=false"]
    t = time.perf_counter()
    r = fit(None, save=False, overrides=overrides + list(extra))
    wall = time.perf_counter() - t
    r.model.eval()
    with torch.no_grad():
        knn = knn_accuracy(r.model, r.data)
    row = {
        "data": data,
        "net": net,
        "epochs": epochs,
        "seed": seed,
        "extra": list(extra),
        "test_loss": r.metrics["test_loss"],
        "test_bpd_elbo": r.metrics.get("test_bpd_elbo"),
        "s_per_epoch": r.metrics.get("seconds_per_epoch"),
        "wall_s": wall,
        "knn5_test_codes": knn,
        "params": sum(p.numel() for p in r.model.parameters()),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["digits", "fashion"], choices=list(DATA))
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every run (e.g. a likelihood)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    old = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    runs = [run(d, n, a.epochs, s, a.extra) for d in a.data for s in a.seeds for n in a.nets]
    key = lambda r: (r["data"], r["net"], r["epochs"], r["seed"], tuple(r.get("extra", [])))  # noqa: E731
    new = {key(r) for r in runs}
    old["runs"] = [r for r in old["runs"] if key(r) not in new] + runs
    old["machine"] = {
        "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": "),
        "threads": 1,
    }
    write_json(OUT, old)


if __name__ == "__main__":
    main()
