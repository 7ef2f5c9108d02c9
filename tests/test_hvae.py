"""The hierarchical VAE (model=hvae): its Pyro program against its importance weights, training with every
objective and the warm-up, saving and loading, the user API's shapes, the CLI, and bad keys."""

import csv
import json

import numpy as np
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.models import DataInfo
from pyro_vae.train import build_model

NET = ["model=hvae", "model.lower_dims=[6]", "model.hidden=32"]


def _model(overrides=()):
    cfg = load_config(None, ["latent_dim=3", "encoder.hidden=[32]", "decoder.hidden=[32]", *NET, *overrides])
    data = load_data(cfg)
    return build_model(cfg, DataInfo(data.data_dim, data.image_shape, None, len(data.train))), data


@pytest.fixture(scope="module")
def trained():
    from tests.conftest import QUICK

    return pyro_vae.fit(None, overrides=[*QUICK, *NET, "train.epochs=12"], save=False)


def test_sites_shapes_and_the_warm_up_scale_every_layer():
    m, data = _model(["model.lower_dims=[6,5]"])
    x = data.train.x[:5]
    m.beta = 0.25
    guide = poutine.trace(m.guide).get_trace(x)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x)
    guide.compute_log_prob()
    model.compute_log_prob()
    sizes = {n: s["value"].shape for n, s in guide.nodes.items() if s["type"] == "sample" and n != "data"}
    assert sizes == {"z": (5, 3), "z_2": (5, 5), "z_1": (5, 6)}  # z is the top layer z_L
    for name in ("z", "z_2", "z_1"):
        assert guide.nodes[name]["scale"] == model.nodes[name]["scale"] == pytest.approx(0.25 * len(data.train) / 5)
    assert model.nodes["x"]["scale"] == pytest.approx(len(data.train) / 5)
    loc, scale = m.encode(x)
    assert loc.shape == scale.shape == (5, 3) and bool((scale > 0).all())
    assert m.sample(4).shape == m.decode(loc[:4]).shape == m.reconstruct(x[:4]).shape == (4, 64)
    assert m.sample(4, mean=False).shape == (4, 64)


def test_log_weights_are_the_pyro_programs_on_the_same_draws():
    """log_weights (evaluate, IWAE, validation) and the model/guide pair (training) state the same bound: on
    the same noise, log p(x, z) - log q(z|x) from Pyro's traces equals log_weights row by row."""
    m, data = _model(["model.lower_dims=[6,5]"])
    with torch.no_grad():  # a posterior away from its prior, so every layer's KL term counts
        for net in m.posterior:
            net[-1].bias.normal_()
    x = data.test.x[:50]
    m.num_data = None
    torch.manual_seed(0)
    guide = poutine.trace(m.guide).get_trace(x)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x)
    guide.compute_log_prob()
    model.compute_log_prob()
    from_pyro = sum(s["log_prob"] for s in model.nodes.values() if s["type"] == "sample" and s["name"] != "data")
    from_pyro = from_pyro - sum(s["log_prob"] for n, s in guide.nodes.items() if s["type"] == "sample" and n != "data")
    torch.manual_seed(0)
    ours = m.log_weights(x)[:, 0]
    assert torch.allclose(from_pyro, ours, atol=1e-4)
    kl_lower = guide.nodes["z_1"]["log_prob"] - model.nodes["z_1"]["log_prob"]
    assert float(kl_lower.detach().abs().mean()) > 0.5  # the check would see a lower layer's term missing


def test_trains_loss_falls_and_iwae_bounds_the_elbo(trained):
    h = trained.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 2
    m, x = trained.model.eval(), trained.data.test.x[:200]
    torch.manual_seed(0)
    elbo = float(m.elbo(x, num_particles=20).mean())
    iwae = float(iwae_log_likelihood(m, x, 200).mean())
    assert elbo < iwae < elbo + 5
    assert trained.metrics["active_units"] >= 1  # the top layer carries information about x


@pytest.mark.parametrize("objective", [["train.elbo=trace"], ["train.elbo=iwae", "train.num_particles=3"]])
def test_other_objectives_and_the_warm_up_train(quick, objective):
    r = pyro_vae.fit(
        None, overrides=[*quick, *NET, *objective, "train.kl_warmup_epochs=2", "train.epochs=4"], save=False
    )
    assert np.isfinite(r.metrics["test_loss"]) and r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_any_registered_prior_on_the_top_layer(quick):
    r = pyro_vae.fit(None, overrides=[*quick, *NET, "prior=vamp", "prior.components=20", "train.epochs=2"], save=False)
    assert np.isfinite(r.metrics["test_loss"])


def test_save_and_load_give_the_same_iwae(trained, tmp_path):
    path = trained.model.save(tmp_path / "model.pt")
    loaded = pyro_vae.load(path)
    x = trained.data.test.x[:100]
    values = []
    for m in (trained.model.eval(), loaded):
        torch.manual_seed(0)
        values.append(iwae_log_likelihood(m, x, 50))
    assert torch.allclose(values[0], values[1], atol=1e-4)
    assert loaded.dims == [6, 4] and torch.allclose(loaded.encode(x)[0], trained.model.encode(x)[0], atol=1e-6)


@pytest.mark.parametrize(
    "keys, message",
    [
        (["model.lower_dims=[]"], "model.lower_dims must list at least one layer"),
        (["model.lower_dims=[8,0]"], "model.lower_dims sizes must be positive"),
        (["model.hidden=0"], "model.hidden must be at least 1"),
        (["model.activation=swish"], "model.activation='swish' is not valid; choose one of"),
        (["model.layers=3"], "model 'hvae' has no parameter 'layers'"),
        (["model.lower_dims=abc"], "bad value for lower_dims"),
    ],
)
def test_bad_keys_are_one_line_errors(quick, keys, message):
    with pytest.raises(pyro_vae.ConfigError, match=message.replace("[", "\\[")) as e:
        pyro_vae.fit(None, overrides=[*quick, "model=hvae", *keys], save=False)
    assert len(str(e.value).splitlines()) == 1


def test_cli_train_resume_evaluate_sample_encode_score_and_list(quick, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *quick, *NET, "train.epochs=2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iwae-samples", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_log_likelihood"] > -metrics["test_loss"] - 1
    assert main(["sample", str(run), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 64)
    assert main(["encode", str(run), "--out", str(tmp_path / "z.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "z.csv")))
    assert list(rows[0])[:5] == ["row", "z0", "z1", "z2", "z3"] and "z4" not in rows[0]
    assert main(["score", str(run), "--out", str(tmp_path / "scores.csv")]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "hvae(lower_dims=[16], hidden=128" in capsys.readouterr().out
