"""Users register their own prior from their own file, with no edit to the library."""
import textwrap

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
    r = fit(None, save=False, overrides=[
        f"plugins=[{plugin}]", "prior.name=wide_normal", "prior.width=3.0", "trainer.progress_bar=false",
        "train.epochs=2", "latent_dim=3", "encoder.hidden=[32]", "decoder.hidden=[32]", "train.elbo=meanfield"])
    assert type(r.model.prior).__name__ == "WideNormal" and r.model.prior.width == 3.0
    assert float(r.model.prior().stddev[0]) == 3.0
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
