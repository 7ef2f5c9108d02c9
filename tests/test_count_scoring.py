"""Count likelihoods score observed rows at the rows' own total counts in every model kind, and
``likelihood=mixed`` trains on sparse rows (its groups checked on their own columns)."""

import numpy as np
import pytest
import pyro
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import Split
from pyro_vae.models import MODELS, DataInfo
from pyro_vae.train import build_model

sp = pytest.importorskip("scipy.sparse")

COUNTS = ("poisson", "negative_binomial", "zinb", "mixed")
MIXED_COUNTS = (
    "likelihood.groups=[{columns: [0,1,2,3,4,5,6,7,8,9], name: poisson}, "
    "{columns: [10,11,12,13,14,15,16,17,18,19], name: zinb}]"
)
SMALL = {
    "vae": ["latent_dim=3", "encoder.hidden=[16]", "decoder.hidden=[16]"],
    "cvae": ["latent_dim=3", "encoder.hidden=[16]", "decoder.hidden=[16]"],  # conditioned on the label
    "hvae": ["latent_dim=3", "encoder.hidden=[16]", "decoder.hidden=[16]", "model.lower_dims=[3]", "model.hidden=16"],
    "ssvae": ["latent_dim=3", "encoder.hidden=[16]", "decoder.hidden=[16]", "model.classifier_hidden=[16]"],
    "m1m2": [
        "model.z1_dim=3",
        "encoder.hidden=[16]",
        "decoder.hidden=[16]",
        "model.z2_dim=2",
        "model.m2_hidden=[8]",
        "model.classifier_hidden=[8]",
    ],
}


def count_rows(n=300, d=20, seed=0):
    """Poisson counts whose row totals vary about 40-fold (so the library size matters)."""
    rng = np.random.default_rng(seed)
    depth = np.exp(rng.uniform(np.log(5), np.log(200), n))
    rho = rng.dirichlet(np.ones(d), size=n)
    return torch.from_numpy(rng.poisson(rho * depth[:, None]).astype(np.float32))


def count_model(kind, likelihood, x):
    if kind not in SMALL:
        pytest.fail(f"model kind {kind!r} has no small config in SMALL: add one so its scoring is tested")
    over = [f"model={kind}", f"likelihood={likelihood}", *SMALL[kind]]
    if likelihood == "mixed":
        over.append(MIXED_COUNTS)
    model = build_model(load_config(None, over), DataInfo(x.shape[1], None, 3, len(x)))
    model.likelihood.fit_data(x)
    return model.eval()


def libraries(model):
    """The stored median library sizes of the model's count likelihood (every group of ``mixed``)."""
    return [m.typical_library for m in model.likelihood.modules() if hasattr(m, "typical_library")]


@torch.no_grad()
def scores(model, x):
    """Under fixed seeds: log p(x | ...) of the model trace replayed on the guide, the importance
    weights, the ELBO and the reconstructions of the observed rows."""
    pyro.set_rng_seed(0)
    guide = poutine.trace(model.guide).get_trace(x)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
    out = {"model trace log p(x)": trace.nodes["x"]["fn"].log_prob(trace.nodes["x"]["value"])}
    pyro.set_rng_seed(1)
    out["log_weights"] = model.log_weights(x)
    pyro.set_rng_seed(2)
    out["elbo"] = model.elbo(x)
    out["reconstruct"] = model.reconstruct(x)
    return out


def test_every_built_in_model_kind_is_covered():
    built_in = {name for name in MODELS.names() if MODELS.get(name).__module__.startswith("pyro_vae.")}
    assert built_in == set(SMALL)


@pytest.mark.parametrize("likelihood", COUNTS)
@pytest.mark.parametrize("kind", MODELS.names())  # every registered kind (at collection: the built-in ones)
def test_observed_rows_are_scored_at_their_own_total_not_the_stored_median(kind, likelihood):
    torch.manual_seed(0)
    x = count_rows()
    model = count_model(kind, likelihood, x)
    x = model.inputs(Split(x, torch.arange(len(x)) % 3))  # what the model reads: a CVAE's covariates appended
    before = scores(model, x)
    assert all(torch.isfinite(v).all() for v in before.values())
    out = torch.randn(4, model.likelihood.output_size)
    mean_before = model.likelihood.mean(out)
    for lib in libraries(model):
        lib.mul_(1000.0)  # only the stored median changes
    assert not torch.allclose(model.likelihood.mean(out), mean_before)  # what decode and sample use
    after = scores(model, x)
    changed = [name for name, value in before.items() if not torch.allclose(after[name], value, rtol=1e-5, atol=1e-4)]
    assert not changed, f"{kind} {likelihood}: {', '.join(changed)} depend on the stored median library size"


# ---------------------------------------------------------------- mixed on sparse rows
MIXED = [
    "likelihood=mixed",
    "likelihood.groups=[{columns: [0,1,2,3,4,5], name: poisson}, {columns: [6,7,8], name: bernoulli}, "
    "{columns: [9,10,11], name: gaussian}]",
]
QUICK = ["trainer.progress_bar=false", "latent_dim=2", "encoder.hidden=[16]", "decoder.hidden=[16]", "train.epochs=2"]


def mixed_rows(n=300, seed=0):
    """Counts (columns 0-5), binary flags (6-8) and real values (9-11), about half of them zeros."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0.2, 3, 6), (n, 6))
    flags = rng.random((n, 3)) < 0.3
    real = rng.normal(0, 1, (n, 3)) * (rng.random((n, 3)) < 0.5)
    return np.hstack([counts, flags, real]).astype(np.float32)


def test_a_column_group_of_sparse_rows_is_those_columns_of_the_dense_rows():
    from pyro_vae.sparse import SparseRows

    m = sp.random(50, 12, density=0.3, format="lil", random_state=1, dtype=np.float32)
    m[4] = 0  # an empty row
    rows = SparseRows.from_scipy(m.tocsr())
    for c in ([3, 0, 7], [11], list(range(12))):
        group = rows.columns(torch.tensor(c))
        assert group.shape == (50, len(c)) and torch.equal(group.dense(), rows.dense()[:, c])
        assert torch.allclose(group.row_sums(), rows.dense()[:, c].sum(1))
        within = group.crow[1:-1].long()  # columns ascend within each row
        steps = group.col[1:].long() - group.col[:-1].long()
        assert bool((steps > 0).logical_or(torch.isin(torch.arange(1, group.nnz), within)).all())


def test_mixed_trains_on_sparse_rows_as_on_dense_rows():
    x = mixed_rows()
    r_sparse = pyro_vae.fit(sp.csr_matrix(x), overrides=MIXED + QUICK, save=False, plots=False)
    r_dense = pyro_vae.fit(x, overrides=MIXED + QUICK, save=False, plots=False)
    for a, b in zip(r_sparse.history, r_dense.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert r_sparse.metrics["test_loss"] == pytest.approx(r_dense.metrics["test_loss"], rel=1e-5)
    poisson = r_sparse.model.likelihood.parts[0]
    assert float(poisson.typical_library) == float(r_dense.model.likelihood.parts[0].typical_library)
    assert float(poisson.typical_library) == float(r_dense.data.train.x[:, :6].sum(1).median())


@pytest.mark.parametrize(
    "column, value, words",
    [
        (3, -2.0, r"poisson.*columns \[0, 1, 2, 3, 4, 5\].*row 7"),  # a negative count
        (7, 3.0, r"bernoulli.*columns \[6, 7, 8\].*row 7"),  # outside [0,1]
        (10, np.nan, r"NaN.*row 7"),  # refused when the rows are read
    ],
)
def test_sparse_values_a_group_rejects_are_a_one_line_data_error(column, value, words):
    x = mixed_rows()
    x[7, column] = value
    with pytest.raises(pyro_vae.DataError, match=words) as e:
        pyro_vae.fit(sp.csr_matrix(x), overrides=MIXED + QUICK, save=False, plots=False)
    assert "\n" not in str(e.value)


def test_implicit_zeros_are_checked_against_their_group():
    """Zeros that a sparse matrix does not store are values of their group: beta has no density at 0."""
    x = mixed_rows()
    x[:, 9:] = 0.5  # beta values, stored
    x[11, 10] = 0.0  # not stored
    groups = MIXED[1].replace("name: gaussian", "name: beta")
    with pytest.raises(pyro_vae.DataError, match=r"beta.*columns \[9, 10, 11\].*row 11") as e:
        pyro_vae.fit(sp.csr_matrix(x), overrides=[MIXED[0], groups] + QUICK, save=False, plots=False)
    assert "\n" not in str(e.value)


def test_cli_trains_mixed_on_a_sparse_npz_and_refuses_bad_values_in_one_line(tmp_path, capsys):
    x = mixed_rows()
    sp.save_npz(tmp_path / "x.npz", sp.csr_matrix(x))
    argv = [
        "train",
        "data=array",
        f"data.path={tmp_path / 'x.npz'}",
        *MIXED,
        *QUICK,
        "train.epochs=1",
        "trainer.logger=none",
    ]
    assert main(argv + ["--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    x[7, 3] = -2
    sp.save_npz(tmp_path / "bad.npz", sp.csr_matrix(x))
    argv[2] = f"data.path={tmp_path / 'bad.npz'}"
    assert main(argv + ["--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error:") and "row 7" in err[0]
