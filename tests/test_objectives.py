"""Objectives by name (train.elbo: iwae, renyi), the KL weight and the capacity schedule.

The importance weighted bound is checked against Trace_ELBO (K = 1, same draws), against the
per-row log weights of the model (a minibatch estimates the full-data bound), and on PPCA data,
where log p(x) is exact in closed form: ELBO <= IWAE_K, rising with K toward log p(x).
"""

import json
import math

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import MultivariateNormal

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.errors import ConfigError
from pyro_vae.models.base import DataInfo
from pyro_vae.train import build_model
from pyro_vae.training import make_elbo, plan_for
from pyro_vae.training.objectives import IWAE, KLWeightedELBO, Renyi

from conftest import QUICK

N_DATA, BATCH = 1000, 20


@pytest.fixture(scope="module")
def vae():
    cfg = load_config(None, [*QUICK, "likelihood=gaussian"])
    m = build_model(cfg, DataInfo(6))
    m.num_data = N_DATA  # the minibatch stands for N_DATA rows: the plate scales each row by N/B
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(BATCH, 6, generator=torch.Generator().manual_seed(1))


def _loss(elbo, m, x, seed=0):
    torch.manual_seed(seed)
    return elbo.differentiable_loss(m.model, m.guide, x)


def test_iwae_with_one_sample_is_trace_elbo_on_the_same_draws(vae, x):
    ours, pyros = _loss(IWAE(num_particles=1), vae, x), _loss(Trace_ELBO(), vae, x)
    assert torch.allclose(ours, pyros)
    g1 = torch.autograd.grad(ours, vae.encoder.parameters().__next__())[0]
    g2 = torch.autograd.grad(_loss(Trace_ELBO(), vae, x), vae.encoder.parameters().__next__())[0]
    assert torch.allclose(g1, g2, atol=1e-5)


def test_a_minibatch_estimates_the_full_data_bound_row_by_row(vae, x):
    """-(N/B) sum_rows logmeanexp_k log w: each row's weights without the minibatch scale (which Pyro's
    RenyiELBO.loss puts inside the log-mean-exp, a different number)."""
    k = 5
    loss = _loss(IWAE(num_particles=k, vectorize_particles=False), vae, x)
    torch.manual_seed(0)
    w = torch.stack([vae.log_weights(x)[:, 0] for _ in range(k)])  # the same draws, in the same order
    expected = -(N_DATA / BATCH) * (torch.logsumexp(w, 0) - math.log(k)).sum()
    assert torch.allclose(loss, expected, rtol=1e-5)
    torch.manual_seed(0)
    assert abs(pyro.infer.RenyiELBO(num_particles=k).loss(vae.model, vae.guide, x) - float(loss.detach())) > 1.0


def test_without_subsampling_it_is_pyros_renyi_elbo_value_and_gradient(x):
    cfg = load_config(None, [*QUICK, "likelihood=gaussian"])
    m = build_model(cfg, DataInfo(6))  # num_data None: the minibatch is the data, no scale
    params = list(m.parameters())
    for alpha, vectorize in ((0.0, False), (0.5, False), (0.0, True)):  # the particles one by one, or at once
        ours = _loss(Renyi(alpha=alpha, num_particles=4, vectorize_particles=vectorize), m, x)
        grads = torch.autograd.grad(ours, params)
        for p in params:
            p.grad = None
        torch.manual_seed(0)
        nesting = 2 if vectorize else float("inf")  # the data plate, then the particles' plate
        pyros = pyro.infer.RenyiELBO(alpha, 4, max_plate_nesting=nesting, vectorize_particles=vectorize)
        theirs = pyros.loss_and_grads(m.model, m.guide, x)
        assert float(ours.detach()) == pytest.approx(theirs, rel=1e-5)
        assert all(torch.allclose(g, p.grad, atol=1e-4, rtol=1e-4) for g, p in zip(grads, params))


# ---------------------------------------------------------------- PPCA: the exact log-likelihood
D, LATENT, SIGMA = 5, 2, 0.5
W = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [-1.0, 0.5], [0.5, -2.0]])


def ppca_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=x)


def ppca_guide(x):
    """A fixed linear-Gaussian q(z|x), deliberately off the exact posterior (mean shrunk, scale wider)."""
    cov = torch.linalg.inv(torch.eye(LATENT) + W.T @ W / SIGMA**2)
    mean_map = 0.8 * cov @ W.T / SIGMA**2
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ mean_map.T, 1.5 * cov.diagonal().sqrt()).to_event(1))


def test_iwae_bounds_the_exact_ppca_likelihood_and_rises_with_k():
    g = torch.Generator().manual_seed(123)  # not the draws' seed: their noise would be the data's own z
    x = torch.randn(2000, LATENT, generator=g) @ W.T + SIGMA * torch.randn(2000, D, generator=g)
    exact = float(MultivariateNormal(torch.zeros(D), W @ W.T + SIGMA**2 * torch.eye(D)).log_prob(x).mean())

    def bound(elbo):
        torch.manual_seed(0)
        return -float(elbo.differentiable_loss(ppca_model, ppca_guide, x)) / len(x)

    elbo = bound(Trace_ELBO())
    iwae = {k: bound(IWAE(num_particles=k)) for k in (1, 5, 50)}
    assert iwae[1] == pytest.approx(elbo, abs=1e-4)
    assert elbo < iwae[5] < iwae[50] < exact, (elbo, iwae, exact)
    assert exact - iwae[50] < 0.3 * (exact - elbo)  # most of the gap closed at K = 50
    # the Renyi bound lies between the ELBO (alpha -> 1) and the IWAE bound (alpha = 0), same K
    assert iwae[5] > bound(Renyi(alpha=0.5, num_particles=5)) > elbo


# ---------------------------------------------------------------- the KL weight and the capacity
def _train(*overrides):
    return load_config(None, [*QUICK, "likelihood=gaussian", *overrides]).train


def _recon_and_kl(m, x, seed=0):
    """-(N/B) sum log p(x|z) and (N/B) sum KL(q(z|x) || N(0, I)) in closed form, z drawn as the guide draws it."""
    torch.manual_seed(seed)
    loc, scale = m.encoder(x)
    z = dist.Normal(loc, scale).rsample()
    recon = -m.likelihood(m.decoder(z), x).log_prob(x).sum()
    kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).sum()
    return float(recon.detach()) * N_DATA / BATCH, float(kl.detach()) * N_DATA / BATCH


def test_kl_weight_zero_leaves_the_reconstruction_term(vae, x):
    recon, kl = _recon_and_kl(vae, x)
    assert float(_loss(make_elbo(_train("train.kl_weight=0")), vae, x).detach()) == pytest.approx(recon, rel=1e-5)
    assert float(_loss(make_elbo(_train("train.kl_weight=4")), vae, x).detach()) == pytest.approx(
        recon + 4 * kl, rel=1e-5
    )
    # kl_weight = 1 (meanfield) is Pyro's TraceMeanField_ELBO, the same objects as before the key
    assert float(_loss(make_elbo(_train()), vae, x).detach()) == pytest.approx(
        float(_loss(TraceMeanField_ELBO(), vae, x).detach()), rel=1e-6
    )
    assert float(_loss(KLWeightedELBO(analytic_kl=True), vae, x).detach()) == pytest.approx(recon + kl, rel=1e-5)


def test_the_capacity_term_is_gamma_times_the_distance_of_kl_from_c(vae, x):
    elbo = make_elbo(_train("train.capacity_max=30", "train.capacity_gamma=7"))
    recon, kl = _recon_and_kl(vae, x)
    per_row = kl / N_DATA
    for c in (0.0, per_row / 2, per_row * 2):  # KL above C, and below it
        elbo.capacity = c
        expected = recon + 7 * abs(kl - N_DATA * c)
        assert float(_loss(elbo, vae, x).detach()) == pytest.approx(expected, rel=1e-5)


def test_the_plan_raises_c_linearly_and_warm_up_scales_the_kl():
    cfg = load_config(None, [*QUICK, "train.epochs=4", "train.capacity_max=20", "train.capacity_epochs=2"])
    plan = plan_for(build_model(cfg, DataInfo(64)), cfg)
    for done, c in ((0.0, 0.0), (0.5, 5.0), (1.0, 10.0), (3.0, 20.0)):
        plan.schedule(done)
        assert plan.objectives[0].capacity == pytest.approx(c)
        assert plan.schedule_metrics() == {"capacity": pytest.approx(c)}
    cfg = load_config(None, [*QUICK, "train.epochs=4", "train.capacity_max=20"])  # null: over all epochs
    plan = plan_for(build_model(cfg, DataInfo(64)), cfg)
    plan.schedule(1.0)
    assert plan.objectives[0].capacity == pytest.approx(5.0)
    # warm-up and kl_weight compose: beta * kl_weight on the KL
    cfg = load_config(None, [*QUICK, "train.kl_warmup_epochs=4", "train.kl_weight=2", "likelihood=gaussian"])
    m = build_model(cfg, DataInfo(6))
    m.num_data = N_DATA
    plan = plan_for(m, cfg)
    plan.schedule(1.0)
    assert m.beta == pytest.approx(0.25)
    x = torch.randn(BATCH, 6)
    recon, kl = _recon_and_kl(m, x)
    assert float(_loss(plan.objectives[0], m, x).detach()) == pytest.approx(recon + 0.5 * kl, rel=1e-5)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.elbo=renyi", "train.renyi_alpha=1"], "renyi_alpha must be a finite number other than 1"),
        (["train.renyi_alpha=nan"], "renyi_alpha must be a finite number"),
        (["train.elbo=iwae", "train.kl_weight=4"], "train.elbo=iwae has none"),
        (["train.elbo=renyi", "train.capacity_max=10"], "train.elbo=renyi has none"),
        (["train.capacity_max=10", "train.kl_weight=4"], "leave train.kl_weight at 1"),
        (["train.capacity_max=10", "train.kl_warmup_epochs=3"], "both schedule the KL term"),
        (["train.capacity_epochs=3"], "needs train.capacity_max"),
        (["train.capacity_max=-1"], "capacity_max must be >= 0"),
        (["train.capacity_max=5", "train.capacity_gamma=0"], "capacity_gamma must be positive"),
        (["train.kl_weight=-1"], "kl_weight must be >= 0"),
        (["train.elbo=iwea"], "choose one of: iwae, meanfield, renyi, trace"),
    ],
)
def test_bad_objective_keys_are_one_line_errors(overrides, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key, words", [("train.elbo=iwae", "does not enumerate"), ("train.kl_weight=2", "not supported")]
)
def test_m2_says_what_it_cannot_use(key, words, capsys):
    assert main(["train", *QUICK, "model=ssvae", "data.labels=50", key, "--out", "/nonexistent/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "model=ssvae" in err and len(err.splitlines()) == 1


def test_cli_trains_with_iwae_saves_loads_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *QUICK, "train.epochs=1", "train.elbo=iwae", "train.num_particles=5", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "metrics.json").read_text())
    model = pyro_vae.load(out)
    assert model.config.train.elbo == "iwae" and model.config.train.num_particles == 5
    x = torch.rand(7, 64)
    assert torch.isfinite(model.elbo(x)).all()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iwae-samples", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_log_likelihood"] > -metrics["test_loss"] - 1.0  # IWAE-20 is above the ELBO (noise aside)
    assert abs(metrics["test_loss"] - saved["test_loss"]) < 1.0


def test_m1m2_weighs_its_first_stage_and_keeps_m2s_elbo():
    small = [*QUICK, "model=m1m2", "data.labels=50", "model.m1_epochs=3"]
    info = DataInfo(64, num_classes=10, num_data=100)
    cfg = load_config(None, [*small, "train.elbo=iwae", "train.num_particles=3"])
    plan = plan_for(build_model(cfg, info), cfg)
    assert isinstance(plan.objectives[0], IWAE)
    assert plan.m2_plan.cfg.train.elbo == "meanfield"  # M2's labelled term: its ELBO
    cfg = load_config(None, [*small, "train.elbo=trace", "train.capacity_max=6"])
    plan = plan_for(build_model(cfg, info), cfg)
    plan.schedule(1.5)  # C rises over M1's 3 epochs
    assert isinstance(plan.objectives[0], KLWeightedELBO) and plan.objectives[0].capacity == pytest.approx(3.0)
    assert plan.m2_plan.cfg.train.capacity_max is None and plan.m2_plan.cfg.train.elbo == "trace"


def test_a_capacity_run_logs_c_rising_each_epoch(quick):
    from pyro_vae.train import fit

    r = fit(None, save=False, overrides=[*quick, "train.epochs=2", "train.capacity_max=10", "train.capacity_gamma=5"])
    caps = [row["capacity"] for row in r.history]
    assert 0 < caps[0] < 5 < caps[1] <= 10  # C at each epoch's last step: (epochs done) / 2 * 10
    assert all(math.isfinite(row["train_loss"]) for row in r.history)
