"""Evaluation: importance-weighted log-likelihood, latent diagnostics, anomaly scores, latent paths.

One digits VAE, trained once without class 0, serves every test (its run directory is
what the CLI commands read).
"""

import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae import scores as S
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.plots import interpolation_grid, score_histograms, traversal_grid
from pyro_vae.train import fit

from conftest import QUICK

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits VAE trained without class 0 (the anomaly tests score class 0 as unseen)."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    return fit(
        None,
        out=run,
        plots=False,
        overrides=[*QUICK, "train.epochs=25", "train.elbo=meanfield", "data.exclude_classes=[0]"],
    )


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


def test_iwae_chunking_bounds_memory_without_changing_the_estimate(trained):
    x = trained.data.test.x[:3]
    torch.manual_seed(0)
    small_chunks = iwae_log_likelihood(trained.model, x, 2000, max_rows=500)
    torch.manual_seed(1)
    one_chunk = iwae_log_likelihood(trained.model, x, 2000, max_rows=10**6)
    assert small_chunks.shape == (3,) and bool(torch.isfinite(small_chunks).all())
    # same estimator, different random draws: with K=2000 they agree to well under a nat
    assert torch.allclose(small_chunks, one_chunk, atol=0.2)
    with pytest.raises(ValueError):
        iwae_log_likelihood(trained.model, x, 0)


def test_scores_rank_noise_and_a_held_out_class_above_the_training_classes(trained):
    test = trained.data.test
    torch.manual_seed(0)
    noise = torch.rand(100, 64)
    x = torch.cat([test.x, noise])
    elbo = S.compute(S.build("neg_elbo"), trained.model, x)
    recon = S.compute(S.build("recon_error"), trained.model, x)
    is_noise = torch.cat([torch.zeros(len(test)), torch.ones(100)])
    assert S.auroc_auprc(elbo, is_noise)["auroc"] > 0.95
    assert S.auroc_auprc(recon, is_noise)["auroc"] > 0.95
    held_out = test.y == 0
    assert S.auroc_auprc(elbo[: len(test)], held_out)["auroc"] > 0.6


def test_latent_diagnostics_in_metrics(trained):
    m = trained.metrics
    assert 0 < m["active_units"] <= m["latent_dim"] == 4
    assert len(m["kl_per_dim"]) == 4 and all(k >= 0 for k in m["kl_per_dim"])
    # the default stays cheap: no IWAE unless evaluate.iwae_samples asks for it
    assert "test_log_likelihood" not in m
    on_disk = json.loads((trained.run_dir / "metrics.json").read_text())
    assert on_disk["active_units"] == m["active_units"] and len(on_disk["kl_per_dim"]) == 4


def test_latent_path_and_histogram_plots_from_python(trained, tmp_path):
    vae, test = trained.model, trained.data.test
    line = interpolation_grid(vae, test.x[0], test.x[1], tmp_path / "i.png", steps=6)
    assert line.shape == (6, 64)
    # the path starts and ends at the decoded codes of the two inputs
    ends = vae.decode(vae.encode(test.x[:2])[0])
    assert torch.allclose(line[[0, -1]], ends, atol=1e-5)
    imgs = traversal_grid(vae, tmp_path / "t.png", x=test.x[0], dims=[0, 2], values=[-2.0, 0.0, 2.0])
    assert imgs.shape == (6, 64)
    score_histograms({"noise": torch.randn(len(test))}, test.y, tmp_path / "h.png", highlight=[0])
    for name in ("i.png", "t.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_score_evaluate_and_generation_from_the_cli(trained, tmp_path, capsys):
    run = str(trained.run_dir)
    assert main(["score", run, "--out", str(tmp_path / "scores.csv")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(printed[-2])
    assert result["anomaly_classes"] == [0] and result["score"] == S.DEFAULT_SCORE and result["auroc"] > 0.6
    assert 0 < result["auprc"] <= 1
    for name in ("scores.roc.png", "scores.score_histograms.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert (trained.run_dir / "scores" / f"{S.DEFAULT_SCORE}.pt").is_file()  # fitted once, kept with the run
    rows = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    assert rows.shape == (359, 3) and set(np.unique(rows[:, 2])) == set(range(10))
    # an array file is scored row by row, in order; noise scores far above the test images
    torch.manual_seed(0)
    np.save(tmp_path / "noise.npy", torch.rand(20, 64).numpy())
    assert (
        main(
            [
                "score",
                run,
                "--data",
                str(tmp_path / "noise.npy"),
                "--score",
                "neg_log_likelihood",
                "num_samples=20",
                "--out",
                str(tmp_path / "noise.csv"),
            ]
        )
        == 0
    )
    assert (
        main(["score", run, "--score", "neg_log_likelihood", "num_samples=20", "--out", str(tmp_path / "nll.csv")]) == 0
    )
    noise = np.loadtxt(tmp_path / "noise.csv", delimiter=",", skiprows=1)
    nll = np.loadtxt(tmp_path / "nll.csv", delimiter=",", skiprows=1)
    assert noise.shape == (20, 2) and noise[:, 1].mean() > nll[:, 1].mean() + 10
    capsys.readouterr()
    assert main(["evaluate", run, "--iwae-samples", "50"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_log_likelihood"] > -metrics["test_loss"] - 0.5
    assert main(["sample", run, "--interpolate", "0", "5", "--out", str(tmp_path / "i.png")]) == 0
    assert (tmp_path / "i.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["sample", run, "--traverse", "--steps", "5", "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["sample", run, "--traverse", "--steps", "5", "--out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (4 * 5, 64)
    capsys.readouterr()
    assert main(["sample", run, "--interpolate", "0", "9999", "--out", str(tmp_path / "i.png")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert (
        main(["score", run, "--score", "neg_log_likelihood", "num_samples=-1", "--out", str(tmp_path / "s.csv")]) == 2
    )
    assert main(["score", run, "--score", "nonsense", "--out", str(tmp_path / "s.csv")]) == 2
    assert main(["score", run, "--out", str(tmp_path / "s.txt")]) == 2


@pytest.mark.slow
def test_scores_and_log_likelihood_of_the_semi_supervised_model(tmp_path, capsys):
    """For model=ssvae the label is summed out of both the ELBO and the IWAE estimate."""
    pytest.importorskip("pyro_vae.models.ssvae")
    run = tmp_path / "m2"
    assert (
        main(
            [
                "train",
                "model=ssvae",
                "latent_dim=3",
                "encoder.hidden=[16]",
                "decoder.hidden=[16]",
                "model.classifier_hidden=[16]",
                "trainer.progress_bar=false",
                "data.labels=50",
                "train.epochs=2",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iwae-samples", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_log_likelihood"] > -metrics["test_loss"] - 0.5
    assert (
        main(["score", str(run), "--anomaly-class", "3", "--score", "neg_elbo", "--out", str(tmp_path / "s.csv")]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert 0 <= result["auroc"] <= 1
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1).shape == (359, 3)
    capsys.readouterr()
    assert main(["sample", str(run), "--interpolate", "0", "1", "--out", str(tmp_path / "i.png")]) == 2
    assert "model=vae" in capsys.readouterr().err
