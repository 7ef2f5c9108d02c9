"""pythae's VAE in the reference shape, trained by its TrainingPipeline (run by the peer environment).

Encoder 784-400 (softplus) -> mu (50) and log-variance (50); decoder 50-400 (softplus) -> 784
sigmoid means; pythae's ``reconstruction_loss="bce"`` (Bernoulli cross-entropy on the grey
levels, summed over pixels) plus its analytic KL: the loss is -ELBO per image in nats. Batch
and learning rate as given, Adam, no evaluation set during training (``keep_best_on_train``,
which pythae needs then); at the end the loss of the trained model over the 10k test images.
Prints one line ``PYTHAE_RESULT {json}``: test_loss, epochs, epoch_seconds.

    peers/bin/python benchmarks/peers/pythae_vae.py --root /usr/share/datasets/fashion-mnist --epochs 10
"""

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def read_images(path: Path) -> np.ndarray:
    """An IDX image file (gzipped or not) as float32 (N, 1, 28, 28) in [0, 1]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return (np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols) / 255.0).astype(np.float32)


def find(root: Path, stem: str) -> Path:
    for p in (root / f"{stem}.gz", root / stem):
        if p.exists():
            return p
    raise SystemExit(f"pythae_vae: {root} has no {stem}(.gz)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cuda", action="store_true")
    args = p.parse_args()

    from pythae.data.datasets import DatasetOutput
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(784, args.hidden)
            self.mu = nn.Linear(args.hidden, args.latent)
            self.log_var = nn.Linear(args.hidden, args.latent)

        def forward(self, x):
            h = nn.functional.softplus(self.hidden(x.reshape(x.shape[0], -1)))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(args.latent, args.hidden)
            self.out = nn.Linear(args.hidden, 784)

        def forward(self, z):
            h = nn.functional.softplus(self.hidden(z))
            return ModelOutput(reconstruction=torch.sigmoid(self.out(h)).reshape(z.shape[0], 1, 28, 28))

    class EpochTimer(TrainingCallback):
        def __init__(self):
            self.seconds = []

        def on_epoch_begin(self, training_config, **kwargs):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            self.seconds.append(round(time.perf_counter() - self._t0, 3))

    root = Path(args.root)
    train = read_images(find(root, "train-images-idx3-ubyte"))
    test = read_images(find(root, "t10k-images-idx3-ubyte"))
    device = "cuda" if args.cuda else "cpu"

    model = VAE(
        VAEConfig(input_dim=(1, 28, 28), latent_dim=args.latent, reconstruction_loss="bce"),
        encoder=Encoder(),
        decoder=Decoder(),
    )
    config = BaseTrainerConfig(
        output_dir=args.out_dir,
        num_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        optimizer_cls="Adam",
        keep_best_on_train=True,
        no_cuda=not args.cuda,
        seed=0,
    )
    timer = EpochTimer()
    pipeline = TrainingPipeline(model=model, training_config=config)
    pipeline(train_data=train, callbacks=[timer])

    trained = pipeline.model.to(device).eval()
    total = 0.0
    x_all = torch.from_numpy(test)
    with torch.no_grad():
        for i in range(0, len(x_all), 2000):
            x = x_all[i : i + 2000].to(device)
            total += float(trained(DatasetOutput(data=x)).loss) * len(x)
    try:
        from importlib.metadata import version

        pythae_version = version("pythae")
    except Exception:  # pragma: no cover
        pythae_version = None
    print(
        "PYTHAE_RESULT "
        + json.dumps(
            {
                "test_loss": total / len(x_all),
                "epochs": args.epochs,
                "epoch_seconds": timer.seconds,
                "pythae": pythae_version,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
