import pytest
import torch
import pyro.distributions as dist
from torch.distributions import kl_divergence

from pyro_vae.config import load_config
from pyro_vae.errors import ConfigError
from pyro_vae.models import DataInfo
from pyro_vae.training import plan_for
from pyro_vae.priors import PRIORS
from pyro_vae.train import build_model, fit

PRIOR_SPECS = {
    "normal": {},
    "learned_normal": {},
    "mog": {"components": 3},
    "vamp": {"components": 5},
    "flow": {"layers": 2},
    "laplace": {},
    "student_t": {"df": 4.0},
}


def _vae(prior, likelihood="bernoulli", extra=(), latent_dim=2, data_dim=64):
    cfg = load_config(
        None,
        [
            f"latent_dim={latent_dim}",
            "encoder.hidden=[32]",
            "decoder.hidden=[32]",
            f"prior.name={prior}",
            f"likelihood.name={likelihood}",
            *extra,
        ]
        + [f"prior.{k}={v}" for k, v in PRIOR_SPECS.get(prior, {}).items()],
    )
    return build_model(cfg, DataInfo(data_dim, (1, 8, 8) if data_dim == 64 else None, None, None))


def test_every_prior_is_registered_with_its_documented_parameters():
    assert set(PRIOR_SPECS) <= set(PRIORS.names())
    assert "components" in PRIORS.user_params("vamp") and "df" in PRIORS.user_params("student_t")


@pytest.mark.parametrize("name", sorted(PRIOR_SPECS))
def test_prior_density_is_normalised_in_2d(name):
    torch.manual_seed(0)
    vae = _vae(name)
    with torch.no_grad():
        for p in vae.prior.parameters():  # move learnable priors away from their initial values
            p.add_((0.05 if name == "flow" else 0.3) * torch.randn_like(p))
        d = vae.prior()
        lim, n = {"student_t": (40.0, 1601), "flow": (20.0, 1201)}.get(name, (12.0, 801))
        g = torch.linspace(-lim, lim, n)
        zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        mass = d.log_prob(zz).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", ["normal", "learned_normal"])
def test_monte_carlo_kl_matches_analytic_kl(name):
    torch.manual_seed(0)
    vae = _vae(name, latent_dim=3)
    with torch.no_grad():
        for p in vae.prior.parameters():
            p.add_(0.5 * torch.randn_like(p))
        q = dist.Normal(torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, 1.5, 0.8])).to_event(1)
        p = vae.prior()
        z = q.sample((200000,))
        mc = (q.log_prob(z) - p.log_prob(z)).mean()
        assert float(mc) == pytest.approx(float(kl_divergence(q, p)), abs=0.02)
    assert vae.prior.analytic_kl


@pytest.mark.parametrize("name", ["vamp", "flow"])
def test_meanfield_elbo_falls_back_to_a_monte_carlo_kl_without_a_closed_form(name):
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    torch.manual_seed(0)
    vae = _vae(name)
    assert not vae.prior.analytic_kl
    x = torch.rand(16, 64)
    with torch.no_grad():
        mc = torch.stack([Trace_ELBO().differentiable_loss(vae.model, vae.guide, x) for _ in range(300)]).mean()
        mf = torch.stack(
            [TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x) for _ in range(300)]
        ).mean()
    assert float(mf) == pytest.approx(float(mc), rel=5e-3)


# likelihood -> (config overrides, transform of the digits levels 0..16)
LIKELIHOOD_DATA = {
    "bernoulli": ([], lambda c: c / 16),
    "continuous_bernoulli": ([], lambda c: c / 16),
    "beta": ([], lambda c: c / 16 * 0.98 + 0.01),
    "gaussian": (["likelihood.scale=learned"], lambda c: c / 16),
    "laplace": ([], lambda c: c / 16),
    "student_t": ([], lambda c: c / 16),
    "categorical": (["likelihood.levels=17"], lambda c: c),
    "binomial": (["likelihood.total_count=16"], lambda c: c),
    "poisson": ([], lambda c: c),
    "negative_binomial": ([], lambda c: c),
    "zinb": ([], lambda c: c),
    "mixed": (["likelihood.groups=[{columns: [0,1,2,3,4,5,6,7], name: gaussian}]"], lambda c: c[:, :8] / 16),
}


@pytest.fixture(scope="module")
def digit_counts():
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data[:256], dtype=torch.float32)


@pytest.mark.parametrize("prior", sorted(PRIOR_SPECS))
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOOD_DATA))
def test_every_prior_trains_with_every_likelihood(prior, likelihood, digit_counts):
    torch.manual_seed(0)
    extra, transform = LIKELIHOOD_DATA[likelihood]
    x = transform(digit_counts)
    vae = _vae(prior, likelihood, extra, data_dim=x.shape[1])
    vae.likelihood.check_data(x)
    vae.num_data = len(x)
    loss_fn = plan_for(vae, load_config()).loss
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        batch = x[torch.randint(0, len(x), (64,))]
        loss = loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-8:]) < sum(losses[:8])


def test_fit_end_to_end_with_vamp_prior_and_binomial_counts():
    r = fit(
        None,
        save=False,
        overrides=[
            "trainer.progress_bar=false",
            "train.epochs=2",
            "latent_dim=4",
            "encoder.hidden=[64]",
            "decoder.hidden=[64]",
            "prior.name=vamp",
            "prior.components=20",
            "likelihood.name=binomial",
            "likelihood.total_count=16",
        ],
    )
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.model.sample(3).max() <= 16


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["prior.name=mog", "prior.components=0"], "at least 1"),
        (["prior.name=flow", "prior.transform=magic"], "affine or spline"),
        (["prior.name=student_t", "prior.df=-1"], "positive"),
        (["prior.name=vamp", "prior.componentz=3"], "no parameter 'componentz'"),
    ],
)
def test_bad_prior_parameters(overrides, words):
    with pytest.raises(ConfigError, match=words):
        cfg = load_config(None, overrides)
        build_model(cfg, DataInfo(64, (1, 8, 8), None, None))
