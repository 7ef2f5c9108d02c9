"""The data-first Python API: pyro_vae.fit(x, y) on arrays, and the run it writes."""

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main

QUICK = ["trainer.progress_bar=false", "latent_dim=3", "encoder.hidden=[32]", "decoder.hidden=[32]", "train.epochs=3"]


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)).astype("float32") + 3 * np.eye(6, dtype="float32")[y]
    return x, y


def test_fit_on_a_numpy_array_then_load_the_run(tmp_path):
    x, _ = _blobs()
    r = pyro_vae.fit(x, overrides=["likelihood=gaussian", *QUICK], out=tmp_path / "run")
    assert r.config.data.name == "memory" and r.metrics["num_train"] == 240  # 20% held out
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    model = pyro_vae.load(tmp_path / "run")
    rows = torch.as_tensor(x[:5])
    assert torch.allclose(model.encode(rows)[0], r.model.encode(rows)[0])


def test_fit_on_tensors_with_partial_labels_trains_m2():
    x, y = _blobs(400)
    y = y.astype(float)
    y[40:] = np.nan  # unknown labels
    r = pyro_vae.fit(
        torch.as_tensor(x),
        torch.as_tensor(y),
        save=False,
        overrides=["model=ssvae", "likelihood=gaussian", "model.classifier_hidden=[16]", *QUICK],
    )
    assert isinstance(r.model, pyro_vae.Classifier) and r.metrics["test_accuracy"] > 0.5
    assert int((r.data.train.y >= 0).sum()) < 40


def test_fit_on_a_pandas_frame():
    pd = pytest.importorskip("pandas")
    x, _ = _blobs()
    r = pyro_vae.fit(pd.DataFrame(x), overrides=["likelihood=gaussian", *QUICK], save=False)
    assert r.data.data_dim == 6


def test_bad_arrays_and_a_run_without_its_arrays_are_one_line_errors(tmp_path, capsys):
    x, _ = _blobs()
    x[7, 2] = np.nan
    with pytest.raises(pyro_vae.DataError, match="row 7"):
        pyro_vae.fit(x, overrides=["likelihood=gaussian", *QUICK], save=False)
    with pytest.raises(pyro_vae.DataError, match="numbers"):
        pyro_vae.fit(np.array([["a", "b"]] * 5), save=False)
    with pytest.raises(pyro_vae.ConfigError, match="drop data.name"):
        pyro_vae.fit(_blobs()[0], overrides=["data=digits"], save=False)
    x, _ = _blobs()
    pyro_vae.fit(x, overrides=["likelihood=gaussian", *QUICK], out=tmp_path / "run")
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "give the data again" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", x)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "x.npy")]) == 0


def test_save_and_load_round_trip_gives_identical_codes(tmp_path):
    x, _ = _blobs()
    r = pyro_vae.fit(x, overrides=["likelihood=gaussian", *QUICK], save=False)
    path = r.model.save(tmp_path / "mine.pt")
    assert path == tmp_path / "mine.pt"
    back = pyro_vae.load(path)
    rows = torch.as_tensor(x[:20])
    r.model.eval()
    for a, b in zip(back.encode(rows), r.model.encode(rows)):
        assert torch.equal(a, b)
    with pytest.raises(pyro_vae.PyroVAEError, match="exists"):  # nothing saved is replaced unasked
        pyro_vae.save(back, path)
    before = path.stat().st_mtime_ns
    (tmp_path / "run").mkdir()
    assert back.save(tmp_path / "run") == tmp_path / "run" / "model.pt"  # a folder: its model.pt
    assert torch.equal(pyro_vae.load(tmp_path / "run").encode(rows)[0], back.encode(rows)[0])
    back.save(path, overwrite=True)
    assert path.stat().st_mtime_ns >= before and not list(tmp_path.glob(".*tmp*"))


def test_every_public_name_is_listed_and_documented():
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        assert (obj.__doc__ or "").strip(), name
    for name in ("SSVAE", "FitResult", "save", "load", "fit", "evaluate", "Split"):
        assert name in pyro_vae.__all__


def test_the_type_stub_names_the_public_api_and_where_each_name_lives():
    """Editors and type checkers read pyro_vae/__init__.pyi; at run time the names load lazily.
    Each name the stub imports is __all__'s and resolves to the same object at run time."""
    import ast
    import importlib
    from pathlib import Path

    package = Path(pyro_vae.__file__).parent
    stub = ast.parse((package / "__init__.pyi").read_text())
    names = {}
    for node in stub.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from the package (not typing)
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = (None, node.name)
    assert set(names) == set(pyro_vae.__all__)
    for name, (module, attr) in names.items():
        if module is None and name not in ("fit", "save"):  # `from . import data as data`
            assert getattr(pyro_vae, name) is importlib.import_module(f"pyro_vae.{attr}"), name
        elif module is not None:
            assert getattr(pyro_vae, name) is getattr(importlib.import_module(f"pyro_vae.{module}"), attr), name
    assert (package / "py.typed").is_file()


def test_examples_use_only_the_public_api():
    import ast
    from pathlib import Path

    public = set(pyro_vae.__all__)
    for path in (Path(__file__).resolve().parents[1] / "examples").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_vae"):
                mod = node.module.split(".")
                assert len(mod) <= 2 and (len(mod) == 1 or mod[1] in public), (path.name, node.module)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pyro_vae":
                assert node.attr in public, (path.name, node.attr)
