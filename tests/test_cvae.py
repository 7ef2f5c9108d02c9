"""The conditional VAE: covariates through training, saving, loading and every command; counterfactual
decoding; class-conditional samples; encode's join columns and the .h5ad copy."""

import csv
import json

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.data import Split
from pyro_vae.errors import DataError
from pyro_vae.sparse import SparseRows, append_columns
from pyro_vae.training.batches import IndexBatchSampler
from pyro_vae.training.cvae import ConditionedRowBatches

sp = pytest.importorskip("scipy.sparse")
ad = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

NET = ["trainer.progress_bar=false", "latent_dim=3", "encoder.hidden=[32]", "decoder.hidden=[32]"]
BATCH_GENES = slice(30, 40)  # the genes batch b2 scales up


def _batch_counts(n=600, seed=0):
    """Poisson counts of 3 cell types (10 marker genes each) in 2 batches: batch b2 has 6x the rate on
    genes 30-39 and twice the library size; a continuous covariate ``age`` that changes nothing."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, 3, n)
    batch = rng.integers(0, 2, n)
    rate = np.full((n, 40), 0.3)
    rate[:, :30] = np.where(np.eye(3)[cell].repeat(10, 1) > 0, 4.0, 0.3)
    rate[batch == 1, BATCH_GENES] *= 6.0
    rate *= np.where(batch == 1, 2.0, 1.0)[:, None]
    x = rng.poisson(rate).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(["B", "NK", "T"])[cell]),
            "sample": np.array(["b1", "b2"])[batch],
            "age": rng.normal(50, 10, n),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.csr_matrix(x), obs=obs)
    return a, cell, batch


KEYS = ["data.label_key=cell_type", "data.batch_key=sample", "data.covariate_keys=[age]", "likelihood=poisson"]


@pytest.fixture(scope="module")
def trained():
    a, _, _ = _batch_counts(2000)
    return a, pyro_vae.fit(a, overrides=["model=cvae", *KEYS, *NET, "train.epochs=25"], save=False)


def test_covariates_flow_through_training_saving_and_loading(trained, tmp_path):
    a, r = trained
    m = r.model
    assert [(t.key, t.kind) for t in m.terms] == [("sample", "categorical"), ("age", "continuous")]
    assert m.config.model.conditions == ["batch", "covariates"]  # null resolved against the data, saved
    assert m.terms[0].categories == ["b1", "b2"] and abs(m.terms[1].mean - 50) < 2 and 7 < m.terms[1].scale < 13
    # the rows carry their design: the one-hot batch and the standardised age after the 40 genes
    assert isinstance(r.data.test.x, SparseRows) and r.data.test.x.shape[1] == 40 + 2 + 1
    xt = r.data.test.x.dense()
    assert torch.equal(xt[:, 40:42].argmax(1), r.data.test.batch)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    path = m.save(tmp_path / "model.pt")
    info = torch.load(path, weights_only=True)["info"]["covariates"]
    assert info[0] == {"role": "batch", "key": "sample", "categories": ["b1", "b2"]}
    loaded = pyro_vae.load(path)
    assert torch.allclose(loaded.encode(xt)[0], m.encode(xt)[0], atol=1e-5)
    # the user's own rows: the data columns and covariates by name give the same codes
    rows = r.data.test
    own = {"sample": [["b1", "b2"][int(b)] for b in rows.batch], "age": rows.covariates[:, 0].numpy()}
    assert torch.allclose(loaded.encode(xt[:, :40], covariates=own)[0], m.encode(xt)[0], atol=1e-5)


def test_counterfactual_decoding_changes_the_batch_specific_part(trained):
    _, r = trained
    m, test = r.model, r.data.test
    x = test.x.dense()[test.batch == 0]  # b1 cells
    as_b1 = m.reconstruct(x)
    as_b2 = m.reconstruct(x, decode_as={"sample": "b2"})
    ratio = as_b2.mean(0) / as_b1.mean(0)
    # the library size is the row's own: the batch genes rise ~6x relative to the rest
    assert float(ratio[BATCH_GENES].mean()) / float(ratio[:30].mean()) > 3.0
    z = m.encode(x)[0]
    d1, d2 = m.decode(z, covariates={"sample": "b1", "age": 50}), m.decode(z, covariates={"sample": "b2", "age": 50})
    assert float((d2[:, BATCH_GENES].sum(1) / d2.sum(1)).mean()) > 2 * float(
        (d1[:, BATCH_GENES].sum(1) / d1.sum(1)).mean()
    )


def test_batch_mixes_in_the_cvae_code_more_than_in_the_vae_code(trained):
    from sklearn.neighbors import KNeighborsClassifier

    a, r = trained
    vae = pyro_vae.fit(a, overrides=[*KEYS, *NET, "train.epochs=25"], save=False)

    def batch_accuracy(model, data):  # how well a code predicts its batch: 0.5 = mixed
        zt, zs = model.encode(data.train.x.dense())[0], model.encode(data.test.x.dense())[0]
        knn = KNeighborsClassifier(15).fit(zt.numpy(), data.train.batch.numpy())
        return knn.score(zs.numpy(), data.test.batch.numpy())

    assert batch_accuracy(r.model, r.data) < batch_accuracy(vae.model, vae.data) - 0.15


def test_conditioned_batches_shard_rows_with_their_covariates():
    x = torch.arange(50.0).reshape(10, 5)
    c = torch.arange(10.0)[:, None] * 100
    sparse = append_columns(SparseRows.from_torch(x.to_sparse()), c)
    assert torch.equal(sparse.dense(), torch.cat([x, c], 1))  # zeros stay implicit, the covariates are stored
    for rows in (torch.cat([x, c], 1), sparse):
        batches = ConditionedRowBatches(rows, 5, dynamic_binarize=False)
        seen = []
        for rank in (0, 1):
            for item in IndexBatchSampler(10, 2, seed=1, rank=rank, world_size=2):
                b = batches[item]
                assert torch.equal(b[:, 5], b[:, 0] / 5 * 100)  # each row's covariate stays with it
                seen += item["rows"].tolist()
        assert sorted(seen) == list(range(10))


def test_class_conditional_digits_show_the_asked_class(quick, tmp_path):
    r = pyro_vae.fit(None, overrides=["model=cvae", "data=digits", *quick, "train.epochs=10"], out=tmp_path / "run")
    m, train = r.model, r.data.train
    assert m.config.model.conditions == ["label"] and (tmp_path / "run" / "conditional_samples.png").is_file()
    means = torch.stack([train.x[train.y == k, :64].mean(0) for k in range(10)])
    torch.manual_seed(0)
    for k in range(10):
        s = m.sample(20, covariates={"label": k})
        assert float((torch.cdist(s, means).argmin(1) == k).float().mean()) >= 0.8


def test_bad_covariates_are_one_line_errors(trained):
    _, r = trained
    m = r.model
    with pytest.raises(DataError, match="unknown sample 'b9'; this model knows 2: b1, b2"):
        m.sample(2, covariates={"sample": "b9"})
    with pytest.raises(DataError, match="no covariate 'batchx'; its covariates: sample, age"):
        m.sample(2, covariates={"batchx": "b1"})
    with pytest.raises(DataError, match="takes numbers"):
        m.sample(2, covariates={"age": "old"})
    with pytest.raises(DataError, match="covariates="):
        m.encode(torch.zeros(2, 40))
    with pytest.raises(DataError, match="data.batch_key=sample"):
        m.split_design(Split(torch.zeros(2, 40)))


@pytest.mark.parametrize(
    "keys, message",
    [
        ([], "model=cvae needs covariates: set data.batch_key"),
        (["model.conditions=[tissue]"], "model.conditions has 'tissue'; choose from: label, batch, covariates"),
        (["model.conditions=[batch]"], "model.conditions has batch but data.batch_key is not set"),
    ],
)
def test_bad_cvae_keys_are_one_line_errors(quick, keys, message):
    x = np.random.default_rng(0).poisson(2.0, (50, 6)).astype(np.float32)
    with pytest.raises(pyro_vae.ConfigError, match=message.replace("[", "\\[")):
        pyro_vae.fit(x, overrides=["model=cvae", "likelihood=poisson", *keys, *quick], save=False)


def test_cli_train_evaluate_sample_encode_score_resume(tmp_path, capsys):
    a, _, _ = _batch_counts(300)
    a.write_h5ad(tmp_path / "cells.h5ad")
    run = tmp_path / "run"
    data = ["data=anndata", f"data.path={tmp_path / 'cells.h5ad'}"]
    assert main(["train", "model=cvae", *data, *KEYS, *NET, "train.epochs=2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iwae-samples", "5"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_examples"] == 60 and metrics["test_log_likelihood"] > -metrics["test_loss"] - 5
    assert main(["sample", str(run), "-n", "4", "--condition", "sample=b2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 40)
    assert main(["score", str(run), "--out", str(tmp_path / "scores.csv")]) == 0

    # encode: the row index, codes, label, batch (named after data.batch_key) and covariate columns
    assert main(["encode", str(run), "--data", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "z.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "z.csv")))
    assert list(rows[0]) == ["row", "z0", "z1", "z2", "label", "sample", "age"]
    assert [r["row"] for r in rows[:3]] == ["0", "1", "2"] and rows[7]["sample"] == a.obs["sample"].iloc[7]
    assert abs(float(rows[7]["age"]) - a.obs["age"].iloc[7]) < 1e-3
    # the run's test split, as an AnnData copy with the codes in .obsm; the user's file is never replaced unasked
    out = tmp_path / "coded.h5ad"
    assert main(["encode", str(run), "--out", str(out)]) == 0
    coded = ad.read_h5ad(out)
    assert coded.obsm["X_pyro_vae"].shape == (60, 3) and set(coded.obs_names) < set(a.obs_names)
    capsys.readouterr()
    assert main(["encode", str(run), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["encode", str(run), "--out", str(out), "--overwrite"]) == 0
    # counterfactual: every cell decoded under batch b1
    assert main(["encode", str(run), "--decode-as", "sample=b1", "--out", str(tmp_path / "as_b1.npy")]) == 0
    assert np.load(tmp_path / "as_b1.npy").shape == (60, 40)
    # every model kind writes the join columns: a VAE run on the same file
    vae = tmp_path / "vae"
    assert main(["train", *data, *KEYS, *NET, "train.epochs=1", "--out", str(vae)]) == 0
    assert main(["encode", str(vae), "--out", str(tmp_path / "v.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "v.csv")))
    assert list(rows[0]) == ["row", "z0", "z1", "z2", "label", "sample", "age"] and len(rows) == 60
    i = int(rows[0]["row"])
    assert rows[0]["sample"] == a.obs["sample"].iloc[i] and rows[0]["label"] == str(
        "BNT".index(a.obs["cell_type"].iloc[i][0])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--condition", "sample=b9"], "unknown sample 'b9'; this model knows 2: b1, b2"),
        (["--condition", "sample"], "--condition takes KEY=VALUE"),
        (["--condition", "tissue=x"], "no covariate 'tissue'; its covariates: sample, age"),
    ],
)
def test_condition_errors_are_one_line(trained, tmp_path, capsys, args, message):
    _, r = trained
    r.model.save(tmp_path / "model.pt")
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "model.pt"), "--out", str(tmp_path / "s.npy"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_condition_needs_a_conditional_model(quick, tmp_path, capsys):
    r = pyro_vae.fit(None, overrides=[*quick, "train.epochs=1"], out=tmp_path / "run")
    capsys.readouterr()
    assert main(["sample", str(r.run_dir), "--condition", "label=3", "--out", str(tmp_path / "s.npy")]) == 2
    assert "model=cvae" in capsys.readouterr().err


def test_list_names_the_cvae(capsys):
    assert main(["list"]) == 0
    assert "cvae" in capsys.readouterr().out


def test_rows_streamed_from_disk_train_as_rows_in_memory(tmp_path):
    """The design rides beside rows read by index (AppendedRows): from disk with the exact shuffle the
    run is the in-memory one; in chunks it trains too."""
    _dose_data(tmp_path, n=300)
    np.save(tmp_path / "y.npy", np.arange(300) % 2)
    data = ["data=array", f"data.path={tmp_path / 'x.npy'}", f"data.covariates_path={tmp_path / 'cov.csv'}"]
    keys = ["model=cvae", *data, f"data.labels_path={tmp_path / 'y.npy'}", "likelihood=gaussian", *NET]
    keys += ["model.conditions=[label,covariates]", "data.validation=30", "train.epochs=2"]

    def fit(*extra):
        torch.set_num_threads(1)
        return pyro_vae.fit(None, overrides=[*keys, *extra], save=False)

    memory, disk = fit("data.storage=memory"), fit("data.storage=disk", "data.shuffle=exact")
    assert disk.data.train.x.on_disk and isinstance(memory.data.train.x, torch.Tensor)
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    assert memory.metrics["test_loss"] == pytest.approx(disk.metrics["test_loss"], rel=1e-6)
    assert torch.equal(disk.data.test.x.dense(), memory.data.test.x)  # each row's design after it
    chunks = fit("data.storage=disk", "data.chunk_rows=16", "data.shuffle_buffer=64")
    assert chunks.data.stream == {"chunk_rows": 16, "buffer_rows": 64} and np.isfinite(chunks.metrics["test_loss"])


def _dose_data(tmp_path, n=800, seed=0):
    """Rows x = z W + dose * v + noise (10 columns, 2-D z) in x.npy; the covariates in cov.csv (a ``dose``
    column with the known effect v per unit and a ``noise`` column with none)."""
    rng = np.random.default_rng(seed)
    w, v = rng.normal(0, 1, (2, 10)), np.linspace(-1, 1, 10)
    dose, noise = rng.normal(0, 1, n), rng.normal(0, 1, n)
    x = rng.normal(0, 1, (n, 2)) @ w + dose[:, None] * v + rng.normal(0, 0.1, (n, 10))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.savetxt(tmp_path / "cov.csv", np.stack([noise, dose], 1), delimiter=",", header="noise,dose", comments="")
    return v, dose


def test_covariates_from_an_array_file_recover_their_known_effect(tmp_path):
    v, dose = _dose_data(tmp_path)
    data = ["data=array", f"data.path={tmp_path / 'x.npy'}", f"data.covariates_path={tmp_path / 'cov.csv'}"]
    keys = [*data, "data.covariate_keys=[dose]", "likelihood=gaussian", *NET, "latent_dim=2"]
    r = pyro_vae.fit(None, overrides=["model=cvae", *keys, "train.epochs=40"], save=False)
    m = r.model
    assert m.config.model.conditions == ["covariates"] and m.covariate_names() == ["dose"]
    assert torch.allclose(r.data.train.covariates[:, 0], torch.from_numpy(dose).float()[r.data.train.rows])
    z = m.encode(r.data.test.x)[0]
    effect = (m.decode(z, covariates={"dose": 1.0}) - m.decode(z, covariates={"dose": -1.0})).mean(0) / 2
    assert float(torch.nn.functional.cosine_similarity(effect, torch.from_numpy(v).float(), 0)) > 0.95
    assert float(effect.norm() / np.linalg.norm(v)) == pytest.approx(1.0, abs=0.3)  # the effect of one unit of dose


def test_array_covariates_round_trip_through_the_cli(tmp_path, capsys):
    _, dose = _dose_data(tmp_path, n=200)
    np.save(tmp_path / "cov.npy", dose)  # a .npy column, named by data.covariate_keys
    run = tmp_path / "run"
    data = ["data=array", f"data.path={tmp_path / 'x.npy'}", f"data.covariates_path={tmp_path / 'cov.npy'}"]
    args = ["model=cvae", *data, "data.covariate_keys=[dose]", "likelihood=gaussian", *NET, "train.epochs=2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    assert pyro_vae.load(run).covariate_names() == ["dose"]
    assert main(["sample", str(run), "-n", "3", "--condition", "dose=2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 10)
    assert main(["encode", str(run), "--out", str(tmp_path / "z.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "z.csv")))
    assert list(rows[0]) == ["row", "z0", "z1", "z2", "dose"] and len(rows) == 40
    assert all(abs(float(r["dose"]) - dose[int(r["row"])]) < 1e-4 for r in rows)
    assert main(["evaluate", str(run)]) == 0 and main(["train", "--resume", str(run), "train.epochs=3"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.covariate_keys=[dose]"], "data.covariates_path=FILE"),
        (["data.covariates_path=COV", "data.covariate_keys=[age]"], "no column 'age' for data.covariate_keys"),
        (["data.covariates_path=SHORT"], "one row of covariates per data row"),
        (["data.covariates_path=NAN"], "column 'covariate_0' has 1 missing"),
    ],
)
def test_bad_array_covariates_are_one_line_errors(tmp_path, capsys, extra, message):
    _dose_data(tmp_path, n=50)
    np.save(tmp_path / "short.npy", np.zeros(49))
    np.save(tmp_path / "nan.npy", np.r_[np.zeros(49), np.nan])
    files = {"COV": tmp_path / "cov.csv", "SHORT": tmp_path / "short.npy", "NAN": tmp_path / "nan.npy"}
    extra = [e.split("=")[0] + "=" + str(files.get(e.split("=")[1], e.split("=")[1])) for e in extra]
    assert main(["train", "model=cvae", "data=array", f"data.path={tmp_path / 'x.npy'}", *extra, *NET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("pyro-vae: error:")
