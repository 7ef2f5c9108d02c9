"""The house: layers import only downwards, no cycles, Lightning only in the engine, and a user
file can add a model kind and a data set as easily as a prior."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyro_vae.cli import main

PKG = Path(__file__).resolve().parents[1] / "pyro_vae"

# the README's architecture section: lower layers never import higher ones
LAYERS = [
    ("foundation", {"errors", "utils", "registry", "fastmath", "sparse", "streaming", "backed", "pyromodule"}),
    (
        "math",
        {
            "networks",
            "priors",
            "likelihoods",
            "models",
            "models.base",
            "models.vae",
            "models.ssvae",
            "models.m1m2",
            "models.cvae",
            "models.hvae",
        },
    ),
    ("data", {"data", "images"}),
    (
        "training",
        {
            "training",
            "training.base",
            "training.batches",
            "training.vae",
            "training.cvae",
            "training.hvae",
            "training.ssvae",
            "training.augment",
            "training.m1m2",
            "training.objectives",
            "evaluate",
            "plots",
        },
    ),
    ("engine", {"config", "rundir", "train", "tracking", "tune", "scores", "cli", "_listing", "__init__"}),
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(path: Path) -> str:
    """The package a module's relative imports start from ("" for pyro_vae itself)."""
    name = _module_name(path)
    if name == "__init__":
        return ""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _import_target(node: ast.ImportFrom, package: str):
    """The pyro_vae module (dotted, below the package) a ``from ... import`` reads; None outside pyro_vae."""
    if node.level:
        base = package.split(".") if package else []
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        return ".".join(base + ([node.module] if node.module else []))
    if node.module and node.module.startswith("pyro_vae"):
        return node.module[len("pyro_vae") :].lstrip(".")
    return None


def _imports(path: Path):
    """Every pyro_vae module that ``path`` imports, at module level or inside functions."""
    name, package = _module_name(path), _package_of(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, package)
            if target is None:
                continue
            for alias in node.names:  # `from . import config` imports the module config
                candidate = f"{target}.{alias.name}" if target else alias.name
                out.add(candidate if candidate in LAYER_OF else (target or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pyro_vae."):
                    out.add(alias.name[len("pyro_vae.") :])
    return {m for m in out if m != name}


def _graph():
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_every_module_has_a_layer():
    assert set(_graph()) <= set(LAYER_OF), set(_graph()) - set(LAYER_OF)


def test_no_module_imports_a_higher_layer():
    bad = [(m, t) for m, targets in _graph().items() for t in targets if LAYER_OF[t] > LAYER_OF[m]]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, t])}")
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_modules_and_privates(path: Path):
    """(aliases of pyro_vae modules that ``path`` imports, private names it imports from pyro_vae modules)."""
    package = _package_of(path)
    aliases, privates = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, package)
            if target is None:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}" if target else alias.name
                if candidate in LAYER_OF:  # a module: `from . import likelihoods as likelihoods_mod`
                    aliases.add(alias.asname or alias.name)
                elif _private(alias.name):
                    privates.append(f"from {target or 'pyro_vae'} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pyro_vae"):
                    aliases.add(alias.asname or alias.name)
    return aliases, privates


def _defined_privates(tree) -> set:
    """Private names a module defines: functions, classes, module variables and ``self._x`` attributes."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
            out.add(node.id if isinstance(node, ast.Name) else node.attr)
    return {n for n in out if _private(n)}


def test_no_module_uses_another_modules_private_names():
    """No ``from pyro_vae.X import _name``, no ``X._name`` on an imported pyro_vae module, and no
    ``obj._name`` (obj other than self / cls) for a private name that only other pyro_vae modules
    define: what a module shares with the others has a public name."""
    trees = {p: ast.parse(p.read_text()) for p in PKG.rglob("*.py")}
    defined = {p: _defined_privates(t) for p, t in trees.items()}
    bad = []
    for path, tree in trees.items():
        aliases, privates = _imported_modules_and_privates(path)
        bad += [f"{_module_name(path)}: {p}" for p in privates]
        elsewhere = set().union(*(d for p, d in defined.items() if p != path)) - defined[path]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = ast.unparse(node.value)
            if owner in aliases or (owner not in ("self", "cls") and node.attr in elsewhere):
                bad.append(f"{_module_name(path)}:{node.lineno}: {owner}.{node.attr}")
    assert not bad, bad


def test_the_private_name_check_finds_each_kind_of_use(tmp_path, monkeypatch):
    """The check above on a small package: an imported private function, a private function of an
    imported module and a private method of another module's object are each found."""
    pkg = tmp_path / "pyro_vae"
    (pkg / "models").mkdir(parents=True)
    (pkg / "utils.py").write_text("def _helper():\n    pass\n")
    (pkg / "models" / "vae.py").write_text(
        "class VAE:\n    def _q(self):\n        return self._own()\n    def _own(self):\n        pass\n"
    )
    (pkg / "models" / "base.py").write_text("from ..utils import _helper\n")
    (pkg / "models" / "ssvae.py").write_text("from .. import utils\nutils._helper()\n")
    (pkg / "models" / "m1m2.py").write_text("def f(m1):\n    return m1._q()\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    with pytest.raises(AssertionError) as e:
        test_no_module_uses_another_modules_private_names()
    found = str(e.value)
    assert "from utils import _helper" in found and "utils._helper" in found and "m1._q" in found
    assert "self._own" not in found


def test_only_the_engine_imports_lightning():
    """train (the Trainer), tracking (its loggers) and tune (the pruning callback)."""
    users = [
        p.name
        for p in PKG.rglob("*.py")
        if "lightning" in p.read_text() and "import lightning" in p.read_text() or "from lightning" in p.read_text()
    ]
    assert sorted(users) == ["tracking.py", "train.py", "tune.py"], users


def test_importing_the_package_changes_no_pyro_or_torch_setting():
    """Every module imported, every registry filled: Pyro's settings and torch's defaults are as before."""
    mods = sorted({_module_name(p) for p in PKG.rglob("*.py")} - {"__init__"})
    code = (
        "import importlib, pyro, torch\n"
        "before = (pyro.settings.get(), torch.get_default_dtype(), torch.get_num_threads())\n"
        f"for m in {mods!r}:\n    importlib.import_module('pyro_vae.' + m)\n"
        "import pyro_vae; [getattr(pyro_vae, n) for n in pyro_vae.__all__]\n"
        "after = (pyro.settings.get(), torch.get_default_dtype(), torch.get_num_threads())\n"
        "assert after == before, (before, after)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["config", "model=ssvae"]])
def test_commands_that_do_not_train_do_not_import_lightning(argv):
    code = (
        f"import sys; from pyro_vae.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"assert 'lightning' not in sys.modules, 'lightning imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]


def test_list_answers_without_importing_torch_and_its_text_is_current(capsys):
    code = (
        "import sys; from pyro_vae.cli import main\nassert main(['list']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "anomaly scores:" in r.stdout, r.stderr[-500:]
    from pyro_vae._listing import TEXT
    from pyro_vae.cli import render_listing

    assert TEXT == render_listing(), "a built-in registry changed: run `make listing`"


def test_list_shows_no_parameter_that_no_config_key_sets():
    """Activations are named by a string key (encoder.activation=relu) and built without arguments;
    loss terms get only the plan from the library: `pyro-vae list` shows them without parameters."""
    from pyro_vae._listing import TEXT

    sections, title = {}, None
    for line in TEXT.splitlines():
        if not line.startswith(" "):
            title = line.rstrip(":")
        else:
            sections.setdefault(title, []).append(line.strip())
    for title in ("activations", "semi-supervised loss terms"):
        assert sections[title] and all(entry.split(":")[0].endswith("()") for entry in sections[title]), title
    assert any(entry.startswith("mog(components=10") for entry in sections["priors"])  # settable ones stay


PLUGIN = '''
"""A user's own model kind and data set, in their own file."""
from dataclasses import dataclass

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.nn.module import pyro_method

from pyro_vae.data import DATASETS, DataConfig, DataSource, Loaded, Split
from pyro_vae.models import MODELS, VAE
from pyro_vae.registry import option


@dataclass
class RingsConfig(DataConfig):
    n: int = option(400, "how many points")


@DATASETS.register("rings", config=RingsConfig)
class Rings(DataSource):
    """Two noisy rings in 8 dimensions, values in [0, 1]."""

    def load(self, cfg, generator):
        t = torch.rand(cfg.n, generator=generator) * 6.283
        y = (torch.arange(cfg.n) % 2)
        r = 0.2 + 0.2 * y
        x = torch.stack([0.5 + r * t.cos(), 0.5 + r * t.sin()], 1).repeat(1, 4)
        x = (x + 0.02 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        k = int(cfg.n * 0.75)
        return Loaded(Split(x[:k], y[:k]), Split(x[k:], y[k:]))


@dataclass
class BetaConfig:
    kl_weight: float = option(4.0, "weight of the KL term (beta of Higgins et al. 2017)")


@MODELS.register("beta_vae", config=BetaConfig)
class BetaVAE(VAE):
    """beta-VAE: the KL term weighted by kl_weight."""

    @classmethod
    def from_config(cls, cfg, info):
        model = super().from_config(cfg, info)
        model.kl_weight = float(cfg.model.kl_weight)
        return model

    @pyro_method
    def model(self, x):
        with self._plate(x):
            with poutine.scale(scale=self.beta * self.kl_weight):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z), x), obs=x)

    @pyro_method
    def guide(self, x):
        with self._plate(x):
            loc, scale = self.encoder(x)
            with poutine.scale(scale=self.beta * self.kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    p = tmp_path_factory.mktemp("plugin") / "my_models.py"
    p.write_text(textwrap.dedent(PLUGIN))
    return p


def test_a_plugin_adds_a_model_kind_and_a_data_set_trained_from_the_cli(plugin, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        f"plugins=[{plugin}]",
        "model=beta_vae",
        "model.kl_weight=2.5",
        "data=rings",
        "data.n=300",
        "latent_dim=2",
        "encoder.hidden=[16]",
        "decoder.hidden=[16]",
        "train.epochs=3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_train"] == 225 and m["epochs"] == 3
    import pyro_vae

    model = pyro_vae.load(out, plugins=[str(plugin)])
    assert type(model).__name__ == "BetaVAE" and model.kl_weight == 2.5
    capsys.readouterr()
    assert main(["list", "--plugin", str(plugin)]) == 0
    listed = capsys.readouterr().out
    assert "beta_vae(kl_weight=4.0)" in listed and "rings(" in listed and "n=400" in listed


def test_bad_plugin_parameters_are_one_line_errors(plugin, capsys):
    assert main(["train", f"plugins=[{plugin}]", "model=beta_vae", "model.kl_weight=lots"]) == 2
    assert "kl_weight" in capsys.readouterr().err
    assert main(["train", f"plugins=[{plugin}]", "data=rings", "data.root=/x"]) == 2
    assert "no parameter 'root'" in capsys.readouterr().err


def test_a_plugin_that_fails_to_import_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\nx = dist.Normal(0, 1)\n")
    assert main(["train", f"plugins=[{bad}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.py, line 3" in err and "NameError" in err and "\n" not in err


def test_kl_warmup_works_for_the_semi_supervised_model_too():
    """beta scales the z sites of both model kinds (it used to do nothing for ssvae)."""
    import pyro
    import torch

    from pyro_vae.config import load_config
    from pyro_vae.models import DataInfo
    from pyro_vae.train import build_model

    cfg = load_config(
        None, ["model=ssvae", "latent_dim=3", "encoder.hidden=[8]", "decoder.hidden=[8]", "model.classifier_hidden=[8]"]
    )
    m = build_model(cfg, DataInfo(64, (1, 8, 8), 4, None))
    x, y = torch.rand(5, 64), torch.tensor([0, 1, 2, 3, 0])
    for beta in (1.0, 0.25):
        m.beta = beta
        tr = pyro.poutine.trace(m.guide).get_trace(x, y)
        mt = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=tr)).get_trace(x, y)
        mt.compute_log_prob()
        tr.compute_log_prob()
        assert mt.nodes["z"]["scale"] == pytest.approx(beta) and tr.nodes["z"]["scale"] == pytest.approx(beta)
        assert mt.nodes["x"]["scale"] == 1.0
