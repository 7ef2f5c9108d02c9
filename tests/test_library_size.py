"""likelihood.library_size for poisson / negative_binomial / zinb: mean = softmax(decoder) * total."""

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.likelihoods import LIKELIHOODS

COUNTS = ("poisson", "negative_binomial", "zinb")


def build(name, data_dim=6, **params):
    return LIKELIHOODS.build({"name": name, **params}, data_dim=data_dim)


def counts_with_varying_depth(n=600, genes=40, types=3, seed=0):
    """Cells of `types` expression programs whose total counts vary 50-fold (known answer:
    the composition, not the depth, tells the types apart)."""
    rng = np.random.default_rng(seed)
    programs = rng.normal(0, 1.5, (types, genes))
    y = rng.integers(types, size=n)
    rho = np.exp(programs[y])
    rho /= rho.sum(1, keepdims=True)
    library = np.exp(rng.uniform(np.log(50), np.log(2500), n))
    mu = rho * library[:, None]
    x = rng.negative_binomial(5.0, 5.0 / (5.0 + mu))
    x[rng.random(x.shape) < 0.1] = 0
    return x.astype(np.float32), y


@pytest.mark.parametrize("name", COUNTS)
def test_observed_mean_is_softmax_of_the_decoder_times_the_total(name):
    lk = build(name, library_size="observed")
    x = torch.tensor([[0.0, 3, 1, 0, 7, 9], [1, 1, 0, 0, 0, 2]])
    out = torch.randn(2, lk.output_size)
    a = out[:, :6]
    expected = torch.softmax(a, -1) * x.sum(-1, keepdim=True)
    if name == "zinb":
        expected = expected * torch.sigmoid(-out[:, 6:])  # E[x] = (1 - pi) * mu
    assert torch.allclose(lk.mean(out, x), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(lk(out, x).mean, expected, rtol=1e-4, atol=1e-5)  # the distribution agrees
    # 10x the counts -> 10x the mean, same decoder output
    assert torch.allclose(lk.mean(out, 10 * x), 10 * expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", COUNTS)
def test_without_an_observed_row_the_median_training_total_is_used(name):
    lk = build(name, library_size="observed")
    out = torch.randn(3, lk.output_size)
    with pytest.raises(DataError, match="median training total"):
        lk.mean(out)
    train = torch.tensor([[1.0, 0, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0], [100, 0, 0, 0, 0, 0]])
    lk.fit_data(train)
    assert float(lk.typical_library) == 10.0
    assert torch.allclose(lk.mean(out), lk.mean(out, torch.full((3, 6), 10.0 / 6)), rtol=1e-5)


def test_library_size_none_keeps_the_decoder_mean():
    out = torch.randn(2, 6)
    x = torch.ones(2, 6)
    pois = build("poisson", library_size="none")
    assert torch.allclose(pois.mean(out, x), torch.nn.functional.softplus(out) + 1e-6, atol=1e-5)
    assert torch.allclose(pois.mean(out, 10 * x), pois.mean(out))
    assert not hasattr(pois, "typical_library")


def test_a_zero_row_has_a_finite_log_likelihood():
    lk = build("zinb", library_size="observed")
    out = torch.randn(2, lk.output_size)
    x = torch.tensor([[0.0] * 6, [0, 2, 0, 0, 1, 0]])
    assert torch.isfinite(lk(out, x).log_prob(x)).all()


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"name": "zinb", "library_size": "learnt"}, "library_size must be one of observed, none"),
        ({"name": "poisson", "library_size": 3}, "library_size must be one of"),
    ],
)
def test_bad_library_size_is_a_one_line_config_error(spec, words):
    with pytest.raises(ConfigError, match=words) as e:
        LIKELIHOODS.build(spec, data_dim=3)
    assert "\n" not in str(e.value)


def test_cli_bad_library_size(capsys, tmp_path):
    x, _ = counts_with_varying_depth(n=50, genes=5)
    np.save(tmp_path / "x.npy", x)
    code = main(
        [
            "train",
            "data.name=array",
            f"data.path={tmp_path / 'x.npy'}",
            "likelihood.name=zinb",
            "likelihood.library_size=learned",
            "trainer.progress_bar=false",
            "train.epochs=1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "library_size" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def varying_depth_runs():
    x, y = counts_with_varying_depth()
    common = [
        "likelihood=zinb",
        "latent_dim=2",
        "encoder.hidden=[32]",
        "decoder.hidden=[32]",
        "encoder.activation=relu",
        "decoder.activation=relu",
        "train.epochs=30",
        "train.batch_size=64",
        "trainer.progress_bar=false",
        "trainer.logger=none",
        "seed=0",
    ]
    return {
        mode: pyro_vae.fit(x, y, overrides=common + [f"likelihood.library_size={mode}"], save=False, plots=False)
        for mode in ("observed", "none")
    }


def test_library_size_beats_none_when_depth_varies(varying_depth_runs):
    obs, none = varying_depth_runs["observed"], varying_depth_runs["none"]
    assert obs.metrics["test_loss"] < none.metrics["test_loss"] - 5  # nats per cell
    assert float(obs.model.likelihood.typical_library) == pytest.approx(float(obs.data.train.x.sum(-1).median()))


def test_elbo_and_iwae_are_finite_and_ordered(varying_depth_runs):
    model = varying_depth_runs["observed"].model
    x = varying_depth_runs["observed"].data.test.x
    torch.manual_seed(0)
    elbo = model.elbo(x)
    ll = iwae_log_likelihood(model, x, 50)
    assert torch.isfinite(elbo).all() and torch.isfinite(ll).all()
    assert float(ll.mean()) >= float(elbo.mean()) - 0.5  # IWAE bound is at least the ELBO
    rec = model.reconstruct(x[:4])  # at each input's own total
    assert torch.allclose(rec.sum(-1), x[:4].sum(-1) * 1.0, rtol=0.35)


def test_ssvae_trains_on_counts_with_library_size():
    x, y = counts_with_varying_depth(n=300, genes=20)
    y = y.astype(float)
    y[30:] = np.nan  # most labels unknown
    r = pyro_vae.fit(
        x,
        y,
        overrides=[
            "model=ssvae",
            "likelihood=zinb",
            "latent_dim=2",
            "encoder.hidden=[16]",
            "decoder.hidden=[16]",
            "model.classifier_hidden=[16]",
            "train.epochs=2",
            "trainer.progress_bar=false",
            "trainer.logger=none",
        ],
        save=False,
        plots=False,
    )
    assert np.isfinite(r.metrics["test_loss"])
    assert r.model.likelihood.library_size == "observed" and r.model.likelihood.log_input


def test_the_median_total_is_saved_with_the_model(tmp_path):
    x, _ = counts_with_varying_depth(n=200, genes=10)
    r = pyro_vae.fit(
        x,
        overrides=[
            "likelihood=negative_binomial",
            "latent_dim=2",
            "encoder.hidden=[8]",
            "decoder.hidden=[8]",
            "train.epochs=1",
            "trainer.progress_bar=false",
        ],
        out=tmp_path / "run",
        plots=False,
    )
    loaded = pyro_vae.load(tmp_path / "run")
    want = float(torch.tensor(x[r.data.train.rows.numpy()]).sum(1).median())  # the lower median
    assert float(loaded.likelihood.typical_library) == pytest.approx(want)
    assert torch.allclose(loaded.sample(5).sum(-1), torch.full((5,), want), rtol=1e-4)  # E[x|z] sums to l
