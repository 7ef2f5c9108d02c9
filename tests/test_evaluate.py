import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.evaluate import anomaly_scores, auroc, iwae_log_likelihood
from pyro_vae.train import fit

from conftest import QUICK


@pytest.fixture(scope="module")
def trained():
    """A digits VAE trained without class 0 (for the anomaly tests)."""
    out_dir = None
    r = fit(None, save=False, overrides=[*QUICK, "train.epochs=25", "train.elbo=meanfield", "data.exclude_classes=[0]"])
    return r


def test_iwae_is_non_decreasing_in_k_on_average(trained):
    torch.manual_seed(0)
    x = trained.data.test.x[:150]
    ll = [float(iwae_log_likelihood(trained.model, x, k).mean()) for k in (1, 10, 100)]
    assert ll[0] < ll[1] < ll[2] + 0.05


def test_iwae_with_one_sample_is_the_elbo_in_expectation(trained):
    torch.manual_seed(0)
    x = trained.data.test.x[:100].repeat(20, 1)
    one = iwae_log_likelihood(trained.model, x, 1)
    elbo = trained.model.elbo(x)
    se = float(torch.cat([one, elbo]).std()) * (2 / len(x)) ** 0.5
    assert abs(float(one.mean() - elbo.mean())) < 4 * se


def test_iwae_memory_is_bounded_by_chunks(trained):
    torch.manual_seed(0)
    x = trained.data.test.x[:3]
    small_chunks = iwae_log_likelihood(trained.model, x, 2000, max_rows=500)
    assert small_chunks.shape == (3,) and bool(torch.isfinite(small_chunks).all())


def test_scores_rank_noise_and_a_held_out_class_above_the_training_classes(trained):
    test = trained.data.test
    torch.manual_seed(0)
    noise = torch.rand(100, 64)
    s = anomaly_scores(trained.model, torch.cat([test.x, noise]))
    is_noise = torch.cat([torch.zeros(len(test)), torch.ones(100)])
    assert auroc(s["score"], is_noise) > 0.95
    held_out = test.y == 0
    assert auroc(s["score"][: len(test)], held_out) > 0.6


def test_latent_diagnostics_in_metrics(trained):
    m = trained.metrics
    assert 0 < m["active_units"] <= m["latent_dim"] == 4
    assert len(m["kl_per_dim"]) == 4 and all(k >= 0 for k in m["kl_per_dim"])


def test_score_evaluate_and_generation_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "train.epochs=5", "data.exclude_classes=[0]", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["score", str(run), "--out", str(tmp_path / "scores.csv")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(printed[-1])
    assert result["anomaly_classes"] == [0] and 0 <= result["auroc_neg_elbo"] <= 1
    rows = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    assert rows.shape == (359, 4)
    assert main(["evaluate", str(run), "--iwae-samples", "50"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_log_likelihood"] > -metrics["test_loss"] - 0.5
    assert main(["sample", str(run), "--interpolate", "0", "5", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["sample", str(run), "--traverse", "--steps", "5", "--out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (4 * 5, 64)
    assert main(["sample", str(run), "--interpolate", "0", "9999", "--out", str(tmp_path / "i.png")]) == 2
