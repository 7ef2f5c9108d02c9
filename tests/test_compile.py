"""train.compile=jit: the ELBO recorded once per batch shape and replayed gives Pyro's loss and gradients
on the same draws, for each family of priors and likelihoods, a last batch of another size, a KL weight
that changes between steps, bf16 autocast and a resumed run."""

import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.nn import PyroParam

import pyro_vae
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.models import DataInfo
from pyro_vae.pyromodule import LocalPyroModule, TracedProgram, pyro_program
from pyro_vae.train import build_model
from pyro_vae.training import plan_for

from conftest import QUICK

SMALL = ["latent_dim=4", "encoder.type=mlp", "decoder.type=mlp", "encoder.hidden=[32]", "decoder.hidden=[32]"]


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    """200 rows of 24 Poisson counts with a row-level rate (a count likelihood's data)."""
    g = np.random.default_rng(0)
    x = g.poisson(g.gamma(2.0, 2.0, size=(200, 1)) * g.uniform(0.2, 2.0, size=(1, 24))).astype(np.float32)
    path = tmp_path_factory.mktemp("counts") / "counts.npz"
    np.savez(path, x=x)
    return path


def _plan(overrides, compile="jit"):
    cfg = load_config(None, [*SMALL, f"train.compile={compile}", *overrides])
    data = load_data(cfg)
    model = build_model(cfg, DataInfo(data.data_dim, data.image_shape, data.num_classes, len(data.train)))
    plan = plan_for(model, cfg)
    plan.setup(data)
    return plan, data


def _loss_and_grads(fn, x, params, seed):
    torch.manual_seed(seed)
    loss = fn(x)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def _assert_same(plan, x, seed, rtol=1e-5):
    """The compiled step (plan.loss) against Pyro's ELBO run eagerly (plan.loss_module), same draws."""
    params = [p for p in plan.model.parameters() if p.requires_grad]
    eager, eager_grads = _loss_and_grads(plan.loss_module, x, params, seed)
    compiled, compiled_grads = _loss_and_grads(plan.loss, x, params, seed)
    assert torch.isfinite(eager) and compiled.item() == pytest.approx(eager.item(), rel=rtol)
    for p, a, b in zip(params, eager_grads, compiled_grads):
        assert (a is None) == (b is None)
        if a is not None:
            scale = a.abs().max().clamp_min(1e-12)
            assert float((a - b).abs().max() / scale) < rtol, f"gradient of a {tuple(p.shape)} parameter"


FAMILIES = [
    [],  # the defaults: normal prior, bernoulli likelihood, meanfield (analytic KL)
    ["train.elbo=trace"],
    ["likelihood=gaussian"],
    ["prior=vamp"],
    ["prior=mog", "train.elbo=trace"],
    ["prior=flow"],
    ["prior=student_t", "likelihood=continuous_bernoulli"],
    ["train.elbo=iwae", "train.num_particles=3"],
    ["train.kl_weight=0.5"],
    ["model=hvae", "model.lower_dims=[3]", "model.hidden=16"],  # two stochastic layers, top-down inference
    ["model=cvae"],  # conditioned on the one-hot label
]


@pytest.mark.parametrize("overrides", FAMILIES, ids=lambda o: ",".join(o) or "defaults")
def test_compiled_loss_and_gradients_equal_pyros_elbo(overrides):
    plan, data = _plan(overrides)
    assert isinstance(plan.step_loss, TracedProgram)
    for seed in (1, 2):  # the first call records the graph; the second replays it
        _assert_same(plan, data.train.x[:32], seed)
    assert len(plan.step_loss.graphs) == 1


@pytest.mark.parametrize("likelihood", ["poisson", "negative_binomial", "zinb"])
def test_compiled_count_likelihoods_equal_pyros_elbo(counts, likelihood):
    plan, data = _plan(["data=array", f"data.path={counts}", f"likelihood={likelihood}"])
    for seed in (1, 2):
        _assert_same(plan, data.train.x[:32], seed)


def test_a_last_batch_of_another_size_gets_its_own_graph():
    plan, data = _plan([])
    for n, seed in [(32, 1), (32, 2), (7, 3), (7, 4), (32, 5)]:
        _assert_same(plan, data.train.x[:n], seed)
    assert len(plan.step_loss.graphs) == 2


@pytest.mark.parametrize("schedule", ["train.kl_warmup_epochs=4", "train.capacity_max=3"])
def test_warm_up_beta_and_capacity_change_between_steps_without_a_new_graph(schedule):
    """model.beta (KL warm-up) and the capacity C(t) are inputs of the graph: baked in as constants,
    the loss at the second value would be the first value's."""
    plan, data = _plan([schedule, "train.epochs=4"])
    x = data.train.x[:32]
    losses = []
    for epochs_done in (0.0, 0.5, 2.0, 4.0):
        plan.schedule(epochs_done)
        _assert_same(plan, x, 5)
        torch.manual_seed(5)
        losses.append(plan.loss(x).item())
    assert len(plan.step_loss.graphs) == 1
    assert len(set(losses)) == 4  # the same draws, four weights: four losses


def test_recording_leaves_the_random_stream_as_an_eager_step_would():
    """The first compiled step draws what the eager step draws: a seeded run is the same run compiled or not."""
    plan, data = _plan([])
    x = data.train.x[:16]
    torch.manual_seed(0)
    eager = plan.loss_module(x).item()
    torch.manual_seed(0)
    assert plan.loss(x).item() == pytest.approx(eager, rel=1e-6)


@pytest.mark.parametrize("overrides", [[], ["prior=mog"], ["prior=vamp"]], ids=lambda o: ",".join(o) or "defaults")
def test_compiled_under_bf16_autocast_within_its_rounding(overrides):
    """Autocast's casts are recorded with the operations and replayed as recorded, forward and backward
    (a mixture prior's matrix products mix bf16 and float32)."""
    plan, data = _plan(overrides)
    x = data.train.x[:32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for seed in (1, 2):
            _assert_same(plan, x, seed, rtol=1e-2)
    assert len(plan.step_loss.graphs) == 1
    _assert_same(plan, x, 3)  # float32 again: a graph of its own
    assert len(plan.step_loss.graphs) == 2


def test_m2_has_no_compiled_step_jit_is_one_line_and_auto_runs_it_eagerly():
    over = ["model=ssvae", "data.labels=50"]
    with pytest.raises(pyro_vae.ConfigError, match="train.compile=jit: model=ssvae has no compiled training step"):
        _plan(over)
    plan, _ = _plan(over, compile="auto")
    assert plan.compiles is False


def test_m1m2_compiles_its_first_stage():
    plan, data = _plan(["model=m1m2", "data.labels=50"])
    assert isinstance(plan.m1_step, TracedProgram)
    x = data.train.x[:32]
    eager = plan.m1_loss
    for seed in (1, 2):
        torch.manual_seed(seed)
        a = eager(x).item()
        torch.manual_seed(seed)
        assert plan.m1_stage_loss((x, None)).item() == pytest.approx(a, rel=1e-5)


def test_bad_compile_value_is_one_line():
    with pytest.raises(pyro_vae.ConfigError, match="train.compile") as e:
        load_config(None, ["train.compile=fast"])
    assert "\n" not in str(e.value)


def test_a_compiled_run_repeats_the_eager_one_and_resumes(tmp_path):
    """Whole runs with KL warm-up: every epoch's loss the same compiled or not, and a compiled run
    resumed from its checkpoint goes on to the uninterrupted run's test loss."""
    common = [*QUICK, "train.kl_warmup_epochs=2", "seed=3"]

    runs = {}
    for mode in ("none", "jit"):
        runs[mode] = tmp_path / mode
        pyro_vae.fit(None, out=runs[mode], plots=False, overrides=[*common, "train.epochs=3", f"train.compile={mode}"])
    eager, compiled = _epoch_losses(runs["none"]), _epoch_losses(runs["jit"])
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=1e-4)
    part = tmp_path / "part"
    pyro_vae.fit(None, out=part, plots=False, overrides=[*common, "train.epochs=2", "train.compile=jit"])
    pyro_vae.fit(resume=part, plots=False, overrides=["train.epochs=3"])
    a = json.loads((runs["jit"] / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert b["epochs"] == 3 and b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-4)


def _epoch_losses(run):
    import csv

    with open(run / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")]


class _Scaled(LocalPyroModule):
    """A PyroModule with a constrained module-local parameter and an nn.Linear."""

    def __init__(self):
        super().__init__()
        self.scale = PyroParam(torch.tensor(0.7), constraint=constraints.positive)
        self.linear = torch.nn.Linear(3, 1)

    @pyro_program
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(self.linear(x).squeeze(-1), self.scale), obs=x.sum(-1))

    @pyro_program
    def guide(self, x):
        pass


def test_traced_program_reads_module_local_and_constrained_parameters():
    """Pyro's own pyro.ops.jit.trace looks the parameters up in the global store (KeyError for a
    module-local PyroModule); TracedProgram passes the tensors themselves, a constrained one as its
    unconstrained leaf, so the optimiser's in-place updates reach the graph."""
    torch.manual_seed(0)
    m = _Scaled()
    elbo = Trace_ELBO()
    fn = TracedProgram(lambda x: elbo.differentiable_loss(m.model, m.guide, x), modules=[m])
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    for _ in range(3):
        eager = elbo.differentiable_loss(m.model, m.guide, x)
        compiled = fn(x)
        assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
        opt.zero_grad()
        compiled.backward()
        assert m.scale_unconstrained.grad is not None and m.linear.weight.grad is not None
        opt.step()
    assert len(fn.graphs) == 1
