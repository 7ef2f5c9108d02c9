"""Register your own prior from your own module and train with it by name.

    python examples/custom_prior.py                      # the bundled digits
    python examples/custom_prior.py --data fashion-mnist --root /usr/share/datasets/fashion-mnist

The same class works from a YAML config or the command line, loaded with `plugins:`:

    pyro-vae train 'plugins=[examples/custom_prior.py]' prior.name=logistic prior.scale=0.6
"""

import argparse

import torch
import pyro.distributions as dist
from pyro.distributions.transforms import AffineTransform, SigmoidTransform

import pyro_vae
from pyro_vae.priors import Prior, register


@register("logistic")
class LogisticPrior(Prior):
    """Factorised Logistic(0, scale): a Normal-like prior with heavier tails."""

    def __init__(self, latent_dim: int, scale: float = 0.6):
        super().__init__(latent_dim)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)
        # buffers move with the model (.to(device)), so the distribution is built on its device
        self.register_buffer("low", torch.zeros(latent_dim))
        self.register_buffer("high", torch.ones(latent_dim))

    def forward(self):
        # the inverse CDF of the logistic applied to a uniform: z = scale * logit(u)
        base = dist.Uniform(self.low, self.high)
        logistic = dist.TransformedDistribution(
            base, [SigmoidTransform().inv, AffineTransform(torch.zeros_like(self.low), self.scale)]
        )
        return logistic.to_event(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="data set name: digits (bundled), mnist, fashion-mnist, kmnist")
    p.add_argument("--root", default=None, help="folder with the four IDX files (mnist-like data sets)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="runs/custom-prior")
    args = p.parse_args()
    data = [f"data.name={args.data}"] + ([f"data.root={args.root}"] if args.root else [])
    # no closed-form KL for this prior: Trace_ELBO estimates it by Monte Carlo
    result = pyro_vae.fit(
        None,
        out=args.out,
        overwrite=True,
        overrides=data
        + [
            "prior.name=logistic",
            "prior.scale=0.6",
            "train.elbo=trace",
            f"train.epochs={args.epochs}",
            "trainer.progress_bar=false",
        ],
    )
    print(
        "prior:",
        type(result.model.prior).__name__,
        "test loss:",
        round(result.metrics["test_loss"], 2),
        "run:",
        result.run_dir,
    )


if __name__ == "__main__":
    main()
