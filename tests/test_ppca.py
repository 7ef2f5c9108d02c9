"""A linear-Gaussian VAE is probabilistic PCA, whose log-likelihood is exact in closed form.

Data x = W z + b + sigma * eps (z ~ N(0, I)). A VAE with standard Normal prior, linear
decoder and Gaussian likelihood with the noise fixed at sigma has the marginal
x ~ N(b, W W^T + sigma^2 I) for its learned W, b. After training, the importance-weighted
estimate with K=1000 must match that exact value within 0.1 nats per datum, and the ELBO
must lie below it.
"""

import pytest
import torch
from torch.distributions import MultivariateNormal

from pyro_vae.config import load_config
from pyro_vae.data import Dataset, Split
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.train import fit

D, LATENT, SIGMA = 6, 2, 0.5


W_TRUE = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [-1.0, 0.5], [0.5, -2.0], [1.0, 0.0]])
B_TRUE = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0, -0.5])


def _ppca_data(n, g):
    z = torch.randn(n, LATENT, generator=g)
    return z @ W_TRUE.T + B_TRUE + SIGMA * torch.randn(n, D, generator=g)


@pytest.mark.slow
def test_iwae_matches_the_exact_ppca_log_likelihood():
    g = torch.Generator().manual_seed(0)
    data = Dataset("ppca", Split(_ppca_data(4000, g)), Split(_ppca_data(500, g)))
    cfg = load_config(
        None,
        [
            f"latent_dim={LATENT}",
            "encoder.hidden=[]",
            "decoder.hidden=[]",
            "likelihood.name=gaussian",
            f"likelihood.scale={SIGMA}",
            "train.elbo=meanfield",
            "train.epochs=60",
            "train.batch_size=200",
            "train.lr=0.01",
            "trainer.progress_bar=false",
            "data.name=array",
            "data.path=unused.npy",
        ],
    )
    vae = fit(cfg, data=data, save=False).model
    lin = vae.decoder[0]
    w, b = lin.weight.detach(), lin.bias.detach()
    exact = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D)).log_prob(data.test.x)
    torch.manual_seed(0)
    iwae = iwae_log_likelihood(vae, data.test.x, 1000)
    elbo = torch.stack([vae.elbo(data.test.x) for _ in range(20)]).mean(0)
    assert float((iwae - exact).mean()).__abs__() < 0.1, (float(iwae.mean()), float(exact.mean()))
    assert float(elbo.mean()) < float(exact.mean())
    # training recovered the generator: W W^T is identifiable (W only up to a rotation), so
    # the learned model explains held-out data almost as well as the true parameters
    true = MultivariateNormal(B_TRUE, W_TRUE @ W_TRUE.T + SIGMA**2 * torch.eye(D)).log_prob(data.test.x)
    assert abs(float(exact.mean() - true.mean())) < 0.1, (float(exact.mean()), float(true.mean()))
