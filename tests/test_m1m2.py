"""Stacked M1+M2: the program, the two stages in one run (resume included), the user API, and
that the stack pays off on the digits."""

import csv
import json

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import Dataset, Split
from pyro_vae.models import DataInfo
from pyro_vae.models.m1m2 import M1M2
from pyro_vae.train import build_model, fit
from pyro_vae.training import plan_for

SMALL = [
    "model=m1m2",
    "model.m1_epochs=3",
    "train.epochs=2",
    "model.z1_dim=4",
    "encoder.hidden=[32]",
    "decoder.hidden=[32]",
    "model.z2_dim=3",
    "model.m2_hidden=[16]",
    "model.classifier_hidden=[16]",
    "data.labels=40",
    "data.validation=100",
    "trainer.progress_bar=false",
]


def tiny(extra=()):
    cfg = load_config(None, SMALL + list(extra))
    return build_model(cfg, DataInfo(64, (1, 8, 8), 4, None)), cfg


def tiny_plan():
    """A tiny M1+M2, its plan set up on 100 random rows of which 12 are labelled."""
    m, cfg = tiny()
    plan = plan_for(m, cfg)
    y = torch.full((100,), -1)
    y[:12] = torch.arange(12) % 4
    data = Dataset("t", Split(torch.rand(100, 64), y), Split(torch.rand(5, 64)))
    plan.setup(data)
    return m, plan, data


@pytest.mark.slow
def test_the_elbo_is_the_stacked_programs_and_bounds_the_likelihood():
    from pyro_vae.evaluate import iwae_log_likelihood

    torch.manual_seed(0)
    m, _ = tiny()
    m.eval()
    x = torch.rand(3, 64)
    # TraceEnum_ELBO on model/guide (y summed out) against the closed-form sum over classes
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=4000, vectorize_particles=True)
    with torch.no_grad():
        by_pyro = -float(loss.loss(m.model, m.guide, x)) / 3
    by_hand = float(m.elbo(x, num_particles=4000).mean())
    assert by_pyro == pytest.approx(by_hand, abs=0.15)
    assert m.log_weights(x).shape == (3, 4)
    assert bool((iwae_log_likelihood(m, x, 300) > m.elbo(x, num_particles=50) - 0.3).all())


def test_m2_inside_takes_its_keys_from_model_m1m2():
    m, cfg = tiny(["model.classifier_dropout=0", "model.aux_loss_multiplier=7"])
    assert m.m2.data_dim == 4 and m.m2.latent_dim == 3 and m.latent_dim == 4  # z1 and z2 sizes
    assert not any(isinstance(layer, torch.nn.Dropout) for layer in m.m2.classifier.modules())
    assert any(isinstance(layer, torch.nn.Dropout) for layer in tiny()[0].m2.classifier.modules())
    plan = plan_for(m, cfg)
    assert plan.m2_plan.cfg.model.aux_loss_multiplier == 7
    assert type(m.m2.likelihood).registry_name == "gaussian"


def test_stage_one_walks_all_rows_and_both_stages_have_the_same_steps():
    m, plan, data = tiny_plan()
    loader = plan.train_dataloader(data, seed=0)
    first = list(loader)
    rows = torch.cat([b[0] for b in first])
    assert rows.shape == (100, 64) and torch.equal(rows.sort(0)[0], data.train.x.sort(0)[0])  # each row once
    loader.sampler.set_epoch(3)  # model.m1_epochs=3: M2's semi-supervised batches from here on
    second = list(loader)
    assert len(first) == len(second) == len(loader) and isinstance(second[0], dict)
    assert plan.epochs() == 5


def test_m1_and_m2_are_parts_whose_weights_keep_the_files_names():
    """M1+M2 holds a VAE (m1) and an SSVAE (m2); model.pt names M1's weights encoder.*, decoder.*, ...
    (no m1. prefix) and M2's m2.*, and loads them back; beta and num_data are M1's."""
    from pyro_vae.models import SSVAE, VAE

    m, _ = tiny()
    assert isinstance(m.m1, VAE) and isinstance(m.m2, SSVAE) and m.likelihood is m.m1.likelihood
    keys = list(m.state_dict())
    assert keys[0].startswith("encoder.") and any(k.startswith("decoder.") for k in keys)
    assert all(k.split(".")[0] in ("encoder", "decoder", "prior", "likelihood", "m2") for k in keys)
    other, _ = tiny()
    other.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), other.parameters()))
    with pytest.raises(RuntimeError):
        other.load_state_dict({"m1." + k: v for k, v in m.state_dict().items()})
    m.beta, m.num_data = 0.25, 77
    assert (m.m1.beta, m.m1.num_data) == (0.25, 77)


def test_the_stage_is_the_training_epochs_and_picks_the_loss_and_the_validation_elbo():
    m, plan, data = tiny_plan()
    assert plan.stage() == 2  # no training loader: a model is evaluated as a whole
    loader = plan.train_dataloader(data, seed=0)
    x, yv = data.train.x[:7], data.train.y[:7]
    for epoch, stage, elbo in ((0, 1, m.m1.elbo), (2, 1, m.m1.elbo), (3, 2, m.elbo)):
        loader.sampler.set_epoch(epoch)
        assert plan.stage() == stage
        batch = next(iter(loader))
        assert plan.batch_size_of(batch) == (len(batch[0]) if stage == 1 else len(batch["xu"]) + len(batch["xl"]))
        assert torch.isfinite(plan.loss(batch))
        torch.manual_seed(0)
        got = plan.validation_sums(x, yv)["loss"]
        torch.manual_seed(0)
        assert torch.equal(got, -elbo(x).sum())


def test_train_classify_encode_sample_evaluate_and_load(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 5 and "test_accuracy" in metrics and metrics["best_epoch"] > 3  # M2 epochs selected
    with open(run / "metrics.csv") as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]
    assert (run / "confusion_matrix.png").is_file() and (run / "conditional_generation.png").is_file()
    assert main(["classify", str(run), "--out", str(tmp_path / "p.csv")]) == 0
    rows = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert rows.shape == (359, 13) and np.allclose(rows[:, 2:12].sum(1), 1, atol=1e-4)
    assert main(["encode", str(run), "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (359, 4)  # M1's z1
    assert main(["sample", str(run), "-n", "6", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 64)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])

    model = pyro_vae.load(run)
    assert isinstance(model, M1M2)
    x = torch.as_tensor(np.load(tmp_path / "s.npy"), dtype=torch.float32)
    p = model.predict_proba(x)
    assert p.shape == (6, 10) and torch.allclose(p.sum(1), torch.ones(6)) and torch.equal(model.predict(x), p.argmax(1))
    assert model.encode(x)[0].shape == (6, 4) and model.encode_z2(x)[0].shape == (6, 3)
    out = model.sample(10, y=torch.arange(10))
    assert out.shape == (10, 64) and bool(((out >= 0) & (out <= 1)).all())
    assert np.array_equal(rows[:, 1].astype(int)[:50], model.predict(_test_x(run)[:50]).numpy())


def _test_x(run):
    from pyro_vae.data import load_data

    cfg = load_config(run / "config.yaml")
    return load_data(cfg).test.x


@pytest.mark.slow
def test_a_run_stopped_in_stage_one_resumes_into_stage_two_as_if_never_stopped(tmp_path):
    args = SMALL + ["model.m1_epochs=2", "train.epochs=2"]
    whole = fit(None, out=tmp_path / "whole", overrides=args, plots=False)
    run = tmp_path / "stopped"
    steps = whole.metrics["steps_per_epoch"]  # stop after the first (M1) epoch, as a crash would
    first = fit(None, out=run, overrides=args + [f"trainer.extra.max_steps={steps}"], plots=False)
    assert [r["epoch"] for r in first.history] == [1]
    resumed = fit(resume=run, overrides=["trainer.extra.max_steps=-1"], plots=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [round(r["train_loss"], 4) for r in resumed.history] == [round(r["train_loss"], 4) for r in whole.history]
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]
    assert resumed.metrics["test_loss"] == pytest.approx(whole.metrics["test_loss"], abs=1e-4)


def test_m1m2_default_stage_lengths_on_the_digits():
    """`model=m1m2 data.labels=50` with no other key trains M1 for about 8000 steps (422 epochs of the
    digits' unlabelled rows at batch 64), then train.epochs of M2; the resolved length is what the
    run's config keeps. The accuracy of these defaults is measured in benchmarks/ssvae.py (a run takes
    minutes)."""
    from pyro_vae.data import load_data

    cfg = load_config(None, ["model=m1m2", "data.labels=50", "data.validation=200"])
    data = load_data(cfg)
    model = build_model(cfg, data.info())
    plan = plan_for(model, cfg)
    plan.check_data(data)
    plan.setup(data)
    assert cfg.model.m1_epochs == 422 and plan.epochs() == 422 + cfg.train.epochs


def test_stage_two_fits_the_codes_spread_the_expected_log_density_under_q():
    """M2 learns from the code means plus sum var / (2 s^2): exactly E_q(z1|x)[-log N(z1; m, s)] -
    (-log N(E[z1]; m, s)) for M2's per-code scale s, checked here by Monte Carlo."""
    torch.manual_seed(0)
    m, cfg = tiny()
    plan = plan_for(m, cfg)
    with torch.no_grad():
        m.m2.likelihood.log_scale.copy_(torch.tensor([-1.0, -0.5, 0.0, 0.3]))
        x = torch.rand(5, 64)
        mu, var = plan._codes(x)
        loc = torch.randn(5, 4)  # any decoder mean
        lik = m.m2.likelihood(loc)
        z1 = torch.distributions.Normal(mu, var.sqrt()).sample((200000,))
        by_mc = (-lik.log_prob(z1)).mean(0) - (-lik.log_prob(mu))
    assert float(plan._spread(var, 5)) == pytest.approx(float(by_mc.sum()), rel=0.02)
    assert float(plan._spread(var, 50)) == pytest.approx(10 * float(plan._spread(var, 5)))
    assert float(plan._spread(var[:0], 50)) == 0.0


def test_stage_two_objective_is_the_stacked_programs_elbo_with_m1_fixed():
    """M2's ELBO on the code means plus the spread term equals, in expectation over z1 ~ q(z1|x), the
    M2 part of the whole program's ELBO (the guide reads the code mean): training M2 on means maximises
    the stacked model's ELBO."""
    torch.manual_seed(1)
    m, cfg = tiny()
    m.eval()
    plan = plan_for(m, cfg)
    with torch.no_grad():
        m.m2.likelihood.log_scale.copy_(torch.tensor([-1.0, -0.5, 0.0, 0.3]))
        x = torch.rand(6, 64)
        mu, var = plan._codes(x)
        k = 20000  # Monte-Carlo draws per row, all in one batch
        means = mu.repeat(k, 1)
        on_means = -m.m2.elbo(means).reshape(k, 6).mean(0) + torch.stack([plan._spread(v[None], 1) for v in var])
        z1 = torch.distributions.Normal(mu, var.sqrt()).sample((k,)).reshape(-1, 4)
        on_samples = -m.m2.elbo(z1, cond=means).reshape(k, 6).mean(0)
    assert torch.allclose(on_means, on_samples, atol=0.1), (on_means, on_samples)
