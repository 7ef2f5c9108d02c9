"""Likelihoods over pixel levels: the discretized logistic (mixture), which values each likelihood
receives from an image source, and bits per dimension."""

import json
import math

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import bits_per_dim
from pyro_vae.likelihoods import LIKELIHOODS, DiscretizedLogisticMixture
from pyro_vae.models.base import LevelsInput
from pyro_vae.train import fit


def dlog(data_dim=6, **params):
    return LIKELIHOODS.build({"name": "discretized_logistic", **params}, data_dim=data_dim)


def every_level(lik, out):
    """log P(k) of every level k for each pixel of one decoder output row: (levels, data_dim)."""
    levels = torch.arange(lik.levels, dtype=torch.float32)[:, None].expand(lik.levels, lik.data_dim)
    return lik(out.expand(lik.levels, -1)).base_dist.log_prob(levels)


@pytest.mark.parametrize("bits, mixtures", [(8, 1), (8, 3), (5, 1), (5, 4), (1, 1)])
def test_the_masses_of_all_levels_sum_to_one(bits, mixtures):
    torch.manual_seed(0)
    lik = dlog(bits=bits, mixtures=mixtures)
    out = torch.randn(1, lik.output_size) * 2
    log_p = every_level(lik, out)
    assert torch.allclose(torch.logsumexp(log_p, 0), torch.zeros(6), atol=1e-5)
    assert lik.output_size == 6 * (2 if mixtures == 1 else 3 * mixtures)


def test_log_prob_is_the_cdf_difference_of_a_logistic_mixture():
    torch.manual_seed(1)
    loc, log_scale, logits = torch.rand(4, 3) * 2 - 1, torch.rand(4, 3) * 2 - 4, torch.randn(4, 3)
    k = torch.tensor([0.0, 7.0, 200.0, 255.0])
    got = DiscretizedLogisticMixture(loc, log_scale, logits, 256).log_prob(k)
    # by hand, in float64: sum_j pi_j [F_j(c + h) - F_j(c - h)], the edge bins open-ended
    h = 1 / 255
    c = (k.double() * 2 * h - 1)[:, None]

    def cdf(x):
        return torch.sigmoid((x - loc.double()) / log_scale.double().exp())

    upper = torch.where(k[:, None] == 255, 1.0, cdf(c + h))
    lower = torch.where(k[:, None] == 0, 0.0, cdf(c - h))
    expected = torch.log((torch.softmax(logits.double(), -1) * (upper - lower)).sum(-1))
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_extreme_locations_and_scales_give_finite_log_probs_and_gradients():
    lik = dlog(data_dim=4)
    loc = torch.tensor([[1e4, -1e4, 0.0, 3.0]]).repeat(3, 1)
    raw_log_scale = torch.tensor([[-100.0], [0.0], [100.0]]).expand(3, 4)
    out = torch.cat([loc, raw_log_scale], -1).requires_grad_()
    for k in (0.0, 1.0, 128.0, 254.0, 255.0):
        log_p = lik(out).log_prob(torch.full((3, 4), k))
        assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all()
        (grad,) = torch.autograd.grad(log_p.sum(), out)
        assert torch.isfinite(grad).all()
    # a point mass far inside the range: almost all of its probability on its own level
    sharp = torch.tensor([[0.0, -7.0]])  # loc 0 is level 127.5: between levels 127 and 128
    p = every_level(dlog(data_dim=1), sharp).exp()[:, 0]
    assert abs(float(p[127] + p[128]) - 1) < 1e-3


def test_samples_are_levels_in_range_and_the_mean_is_the_mean_of_the_levels():
    torch.manual_seed(2)
    lik = dlog(data_dim=3, bits=5, mixtures=2)
    out = torch.randn(1, lik.output_size)
    d = lik(out)
    s = d.sample((4000,))
    assert s.shape == (4000, 1, 3) and torch.equal(s, s.round()) and 0 <= s.min() and s.max() <= 31
    p = every_level(lik, out).exp()
    by_hand = (p * torch.arange(32.0)[:, None]).sum(0)
    assert torch.allclose(lik.mean(out)[0], by_hand, atol=1e-3)
    assert torch.allclose(s.mean(0)[0], by_hand, atol=0.5)


def test_bits_per_dim_by_hand():
    # 2 bits: levels 0..3 at -1, -1/3, 1/3, 1, bins of half-width 1/3; loc 0, scale 1 (raw outputs 0):
    # P(0) = P(3) = sigmoid(-2/3), P(1) = P(2) = 1/2 - sigmoid(-2/3)
    lik = dlog(data_dim=4, bits=2)
    log_p = lik(torch.zeros(1, 8)).log_prob(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    edge = 1 / (1 + math.exp(2 / 3))
    by_hand = -(2 * math.log2(edge) + 2 * math.log2(0.5 - edge)) / 4
    assert bits_per_dim(-float(log_p), 4) == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx(2.0983, abs=1e-4)
    # a uniform categorical over 256 levels codes each pixel in 8 bits
    uniform = LIKELIHOODS.build({"name": "categorical", "levels": 256}, data_dim=5)
    log_p = uniform(torch.zeros(1, 5 * 256)).log_prob(torch.tensor([[0.0, 3.0, 100.0, 254.0, 255.0]]))
    assert bits_per_dim(-float(log_p), 5) == pytest.approx(8.0, rel=1e-6)


@pytest.mark.parametrize(
    "params, x, words",
    [
        ({}, [[0.5, 2.0]], "round(x * 255)"),
        ({}, [[256.0, 2.0]], "at most 255"),
        ({"bits": 4}, [[16.0, 2.0]], "raise likelihood.bits"),
        ({}, [[-1.0, 2.0]], "integer"),
    ],
)
def test_values_it_cannot_score_are_one_line_errors(params, x, words):
    with pytest.raises(DataError) as e:
        dlog(data_dim=2, **params).check_data(torch.tensor(x), where="the train split")
    assert words in str(e.value) and "row 0" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", [{"bits": 0}, {"bits": 17}, {"mixtures": 0}, {"bits": 2.5}])
def test_bad_parameters(spec):
    with pytest.raises(ConfigError):
        dlog(**spec)


@pytest.mark.parametrize(
    "likelihood",
    [
        ["likelihood.name=discretized_logistic"],
        ["likelihood.name=discretized_logistic", "likelihood.mixtures=3"],
        ["likelihood.name=categorical", "likelihood.levels=17"],
        ["likelihood.name=binomial"],
    ],
)
def test_likelihoods_over_levels_train_on_the_digits_with_no_data_key(quick, likelihood):
    r = fit(None, save=False, plots=False, overrides=quick + likelihood + ["train.epochs=3", "evaluate.iwae_samples=4"])
    x = r.data.train.x
    assert float(x.max()) == 16 and torch.equal(x, x.round())  # the likelihood sees the digits' levels
    assert isinstance(r.model.encoder.body, LevelsInput) and r.model.encoder.body.scale == 1 / 16  # the network, [0,1]
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    m = r.metrics
    assert m["test_bpd_elbo"] == pytest.approx(m["test_loss"] / (64 * math.log(2)))
    assert m["test_bpd"] == pytest.approx(-m["test_log_likelihood"] / (64 * math.log(2)))
    assert 0 < m["test_bpd"] < 8
    s = r.model.sample(8, mean=False)
    assert torch.equal(s, s.round()) and 0 <= float(s.min()) and float(s.max()) <= r.model.likelihood.levels - 1


def test_a_density_on_grey_levels_reports_no_bits_per_dim(quick):
    r = fit(None, save=False, plots=False, overrides=quick + ["train.epochs=1", "evaluate.iwae_samples=4"])
    assert 0 <= float(r.data.train.x.min()) and float(r.data.train.x.max()) == 1  # bernoulli: scaled
    assert "test_loss" in r.metrics and not any("bpd" in k for k in r.metrics)


def test_the_semi_supervised_model_sums_labels_out_of_a_mixture(quick):
    over = ["model=ssvae", "data.labels=100", "likelihood.name=discretized_logistic", "likelihood.mixtures=2"]
    small = ["model.classifier_type=mlp", "model.augment_shift=0", "model.pseudo_label_weight=0", "data.limit=600"]
    r = fit(None, save=False, plots=False, overrides=quick + over + small + ["train.epochs=1"])
    assert math.isfinite(r.metrics["test_bpd_elbo"]) and r.metrics["test_accuracy"] > 0.2


def test_metrics_json_and_evaluate_report_bits_per_dim(quick, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *quick, "likelihood.name=discretized_logistic", "train.epochs=1", "--out", str(out)]
    assert main(args) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert "test_bpd_elbo" in saved and "test_bpd" not in saved  # no IWAE asked
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iwae-samples", "8"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_bpd_elbo"] == pytest.approx(saved["test_bpd_elbo"], rel=0.05)
    assert metrics["test_bpd"] == pytest.approx(-metrics["test_log_likelihood"] / (64 * math.log(2)))
    assert main(["list"]) == 0
    assert "discretized_logistic(bits=8, mixtures=1)" in capsys.readouterr().out
