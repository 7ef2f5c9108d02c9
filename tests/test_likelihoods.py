import inspect
import math
import types

import pytest
import torch
import torch.nn.functional as F
import pyro.distributions as dist

from pyro_vae.cli import main
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import LIKELIHOODS, Likelihood

torch.manual_seed(0)
OUT = torch.randn(4, 6)


def build(name, data_dim=6, **params):
    return LIKELIHOODS.build({"name": name, **params}, data_dim=data_dim)


def test_bernoulli_is_binary_cross_entropy_on_grey_levels():
    x = torch.rand(4, 6)
    expected = -F.binary_cross_entropy_with_logits(OUT, x, reduction="none").sum(-1)
    assert torch.allclose(build("bernoulli")(OUT).log_prob(x), expected, atol=1e-5)


def test_gaussian_scale_modes():
    x = torch.randn(4, 6)
    fixed = build("gaussian", scale=0.5)(OUT).log_prob(x)
    assert torch.allclose(fixed, dist.Normal(OUT, 0.5).log_prob(x).sum(-1), atol=1e-5)
    per_datum = build("gaussian", scale="per_datum")
    assert per_datum.output_size == 12
    out2 = torch.cat([OUT, torch.zeros(4, 6)], -1)  # raw scale 0 -> softplus(0) = log 2
    scale = math.log(2) + 1e-4
    assert torch.allclose(per_datum(out2).log_prob(x), dist.Normal(OUT, scale).log_prob(x).sum(-1), atol=1e-4)
    assert build("gaussian", scale="per_feature").log_scale.shape == (6,)


def test_laplace_student_t_continuous_bernoulli_beta():
    x = torch.rand(4, 6) * 0.9 + 0.05
    s = math.exp(0) + 1e-4
    assert torch.allclose(build("laplace")(OUT).log_prob(x), dist.Laplace(OUT, s).log_prob(x).sum(-1), atol=1e-5)
    assert torch.allclose(
        build("student_t", df=5.0)(OUT).log_prob(x), dist.StudentT(5.0, OUT, s).log_prob(x).sum(-1), atol=1e-5
    )
    assert torch.allclose(
        build("continuous_bernoulli")(OUT).log_prob(x),
        torch.distributions.ContinuousBernoulli(logits=OUT).log_prob(x).sum(-1),
        atol=1e-4,
    )
    beta = build("beta")
    out2 = torch.cat([OUT, -OUT], -1)
    a, b = F.softplus(OUT) + 1e-3, F.softplus(-OUT) + 1e-3
    assert torch.allclose(beta(out2).log_prob(x), dist.Beta(a, b).log_prob(x).sum(-1), atol=1e-4)
    assert torch.allclose(beta.mean(out2), a / (a + b), atol=1e-5)


def test_count_likelihoods_match_their_distributions():
    k = torch.randint(0, 5, (4, 6)).float()
    cat = build("categorical", levels=5)
    logits = torch.randn(4, 5 * 6)
    by_hand = torch.log_softmax(logits.reshape(4, 5, 6).transpose(1, 2), -1)
    expected = by_hand.gather(-1, k.long()[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(cat(logits).log_prob(k), expected, atol=1e-5)
    assert torch.allclose(
        build("binomial", total_count=4)(OUT).log_prob(k),
        torch.distributions.Binomial(4, logits=OUT).log_prob(k).sum(-1),
        atol=1e-4,
    )
    # library_size=none: the decoder gives the mean itself (observed: tests/test_library_size.py)
    assert torch.allclose(
        build("poisson", library_size="none")(OUT).log_prob(k),
        torch.distributions.Poisson(F.softplus(OUT) + 1e-6).log_prob(k).sum(-1),
        atol=1e-4,
    )
    nb = build("negative_binomial", library_size="none")
    assert torch.allclose(
        nb(OUT).log_prob(k),
        torch.distributions.NegativeBinomial(torch.ones(6), logits=OUT).log_prob(k).sum(-1),
        atol=1e-4,
    )
    zinb = build("zinb", library_size="none")
    gate = torch.full((4, 6), -50.0)  # no zero inflation: reduces to the negative binomial
    assert torch.allclose(zinb(torch.cat([OUT, gate], -1)).log_prob(k), nb(OUT).log_prob(k), atol=1e-4)


def test_mixed_sums_its_column_groups():
    mixed = build(
        "mixed",
        data_dim=5,
        groups=[
            {"columns": [0, 1], "name": "gaussian", "scale": 1.0},
            {"columns": [2], "name": "categorical", "levels": 3},
            {"columns": [3, 4], "name": "bernoulli"},
        ],
    )
    assert mixed.output_size == 2 + 3 + 2
    out = torch.randn(4, 7)
    x = torch.tensor([[0.5, -1.0, 2.0, 1.0, 0.0]]).expand(4, 5)
    expected = (
        dist.Normal(out[:, :2], 1.0).log_prob(x[:, :2]).sum(-1)
        + torch.log_softmax(out[:, 2:5], -1)[:, 2]
        - F.binary_cross_entropy_with_logits(out[:, 5:], x[:, 3:], reduction="none").sum(-1)
    )
    assert torch.allclose(mixed(out).log_prob(x), expected, atol=1e-5)
    assert mixed(out).sample().shape == (4, 5) and mixed.mean(out).shape == (4, 5)
    with pytest.raises(ConfigError, match="exactly once"):
        build("mixed", data_dim=5, groups=[{"columns": [0, 1], "name": "gaussian"}])


@pytest.mark.parametrize(
    "name, params, x, words",
    [
        ("bernoulli", {}, [[0.2, 1.5]], "values in [0,1]"),
        ("beta", {}, [[0.0, 0.5]], "strictly inside (0,1)"),
        ("poisson", {}, [[-1.0, 2.0]], "non-negative integer"),
        ("binomial", {"total_count": 16}, [[0.5, 2.0]], "non-negative integer"),
        ("binomial", {"total_count": 16}, [[17.0, 2.0]], "likelihood.total_count"),
        ("binomial", {"total_count": 4}, [[5.0, 2.0]], "at most 4"),
        ("categorical", {"levels": 3}, [[3.0, 0.0]], "at most 2"),
        ("gaussian", {}, [[float("nan"), 0.0]], "NaN/inf"),
    ],
)
def test_data_that_does_not_fit_is_a_clear_error(name, params, x, words):
    with pytest.raises(DataError) as e:
        build(name, data_dim=2, **params).check_data(torch.tensor(x), where="the train split")
    assert words in str(e.value) and "row 0" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"name": "gaussian", "scale": -1}, "positive"),
        ({"name": "gaussian", "scale": "huge"}, "per_datum"),
        ({"name": "gaussian", "sigma": 1}, "no parameter 'sigma'"),
        ({"name": "categorical", "levels": 1}, "at least 2"),
        ({"name": "binomial", "total_count": 2.5}, "positive integer"),
        ({"name": "gausian"}, "valid likelihoods"),
    ],
)
def test_bad_likelihood_parameters(spec, words):
    with pytest.raises(ConfigError, match=words):
        LIKELIHOODS.build(spec, data_dim=3)


def test_cli_refuses_levels_above_the_likelihood_range(capsys):
    # the digits' levels 0..16 reach past the 3-bit range 0..7: refused before training, naming the key
    args = ["train", "likelihood.name=discretized_logistic", "likelihood.bits=3", "trainer.progress_bar=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "likelihood.bits" in err and "at most 7" in err and len(err.splitlines()) == 1


def test_a_likelihood_written_without_the_observed_rows_accepts_and_ignores_them():
    class OneArgument(Likelihood):
        def forward(self, out):
            return dist.Normal(out, 1.0).to_event(1)

        def mean(self, out):
            return 2 * out

    lk = OneArgument(6)
    x = torch.randn(4, 6)
    assert torch.equal(lk(OUT, x).log_prob(x), lk(OUT).log_prob(x))
    assert torch.equal(lk.mean(OUT, x), 2 * OUT) and torch.equal(lk.mean(OUT), 2 * OUT)
    for name in ("forward", "mean"):
        method = getattr(OneArgument, name)
        assert list(inspect.signature(method).parameters) == ["self", "out", "x"]
        assert method.__qualname__.endswith(f"OneArgument.{name}")


def test_a_likelihood_whose_mean_comes_from_its_distribution_passes_the_observed_rows_on():
    class RowScaled(Likelihood):
        def forward(self, out, x=None):
            return dist.Poisson(out.exp() * (1.0 if x is None else x.sum(-1, keepdim=True))).to_event(1)

    lk = RowScaled(6)
    x = torch.ones(4, 6)
    assert torch.allclose(lk.mean(OUT, x), 6 * OUT.exp()) and torch.allclose(lk.mean(OUT), OUT.exp())


def _no_arguments(self):
    pass


def _x_required(self, out, x):
    pass


def _extra_required(self, out, x=None, *, scale):
    pass


def _three_positional(self, out, x, y):
    pass


@pytest.mark.parametrize("name", ["forward", "mean"])
@pytest.mark.parametrize("fn", [_no_arguments, _x_required, _extra_required, _three_positional])
def test_any_other_forward_or_mean_signature_is_a_one_line_config_error(name, fn):
    with pytest.raises(
        ConfigError,
        match=rf"likelihood class Odd: {name}\(self.*\) must be {name}\(self, out\) "
        rf"or {name}\(self, out, x=None\)",
    ) as e:
        types.new_class("Odd", (Likelihood,), exec_body=lambda ns: ns.update({name: fn}))
    assert "\n" not in str(e.value)
