"""Users register their own prior or likelihood from their own file, with no edit to the library."""

import textwrap

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.train import fit

PLUGIN = '''
import torch
import pyro.distributions as dist
from pyro_vae.priors import Prior, register


@register("wide_normal")
class WideNormal(Prior):
    """N(0, width^2 I): a test plugin."""

    analytic_kl = True

    def __init__(self, latent_dim, width=2.0):
        super().__init__(latent_dim)
        self.width = width

    def forward(self):
        loc = self.zeros()
        return dist.Normal(loc, torch.full_like(loc, self.width)).to_event(1)
'''


def test_a_prior_registered_in_a_user_file_trains_from_the_config(tmp_path):
    plugin = tmp_path / "my_priors.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    r = fit(
        None,
        save=False,
        overrides=[
            f"plugins=[{plugin}]",
            "prior.name=wide_normal",
            "prior.width=3.0",
            "trainer.progress_bar=false",
            "train.epochs=2",
            "latent_dim=3",
            "encoder.hidden=[32]",
            "decoder.hidden=[32]",
            "train.elbo=meanfield",
        ],
    )
    assert type(r.model.prior).__name__ == "WideNormal" and r.model.prior.width == 3.0
    assert float(r.model.prior().stddev[0]) == 3.0
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


LIKELIHOOD_PLUGIN = '''
import pyro.distributions as dist
from pyro_vae.likelihoods import Likelihood, register


@register("unit_normal")
class UnitNormal(Likelihood):
    """N(decoder output, 1): a test plugin whose forward takes the decoder output only."""

    def forward(self, out):
        return dist.Normal(out, 1.0).to_event(1)
'''

SMALL = ["trainer.progress_bar=false", "train.epochs=2", "latent_dim=2", "encoder.hidden=[16]", "decoder.hidden=[16]"]


@pytest.fixture
def own_likelihoods(monkeypatch):
    """The likelihood registry as it is now, restored when the test ends (a plugin's entry goes)."""
    monkeypatch.setattr(LIKELIHOODS, "_classes", dict(LIKELIHOODS._classes))


def test_a_likelihood_written_without_the_observed_rows_trains_like_the_built_in_one(tmp_path, own_likelihoods):
    plugin = tmp_path / "my_likelihoods.py"
    plugin.write_text(textwrap.dedent(LIKELIHOOD_PLUGIN))
    mine = fit(None, save=False, plots=False, overrides=[f"plugins=[{plugin}]", "likelihood=unit_normal", *SMALL])
    built_in = fit(None, save=False, plots=False, overrides=["likelihood=gaussian", "likelihood.scale=1.0", *SMALL])
    assert type(mine.model.likelihood).__name__ == "UnitNormal"
    assert [h["train_loss"] for h in mine.history] == pytest.approx(
        [h["train_loss"] for h in built_in.history], rel=1e-6
    )
    assert mine.metrics["test_loss"] == pytest.approx(built_in.metrics["test_loss"], rel=1e-6)
    x = mine.data.test.x[:8]
    assert torch.allclose(mine.model.reconstruct(x), built_in.model.reconstruct(x))


def test_a_likelihood_plugin_with_another_forward_signature_is_a_one_line_error(tmp_path, capsys, own_likelihoods):
    plugin = tmp_path / "bad_likelihoods.py"
    plugin.write_text(
        textwrap.dedent(LIKELIHOOD_PLUGIN).replace("def forward(self, out):", "def forward(self, out, x, scale):")
    )
    assert main(["train", f"plugins=[{plugin}]", "likelihood=unit_normal", *SMALL, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "likelihood class UnitNormal: forward(self, out, x, scale) must be" in err[0], err
    assert "unit_normal" not in LIKELIHOODS
