import math
import json

import pytest
import torch
import pyro
from pyro.infer import Trace_ELBO

import pyro_vae
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.fastmath import BernoulliLogits, softplus
from pyro_vae.models import DataInfo
from pyro_vae.train import build_model, fit


def _model(overrides=()):
    cfg = load_config(None, ["latent_dim=4", "encoder.hidden=[32]", "decoder.hidden=[32]", *overrides])
    data = load_data(cfg)
    return build_model(cfg, DataInfo(data.data_dim, data.image_shape, None, len(data.train))), data


def test_model_and_guide_sites_and_shapes():
    vae, data = _model()
    x = data.train.x[:5]
    guide_tr = pyro.poutine.trace(vae.guide).get_trace(x)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (5, 4)
    assert model_tr.nodes["x"]["is_observed"] and model_tr.nodes["x"]["value"].shape == (5, 64)
    # the plate is scaled to the full data size: a minibatch estimates the whole ELBO
    model_tr.compute_log_prob()
    assert model_tr.nodes["x"]["scale"] == pytest.approx(len(data.train) / 5)
    assert vae.sample(3).shape == (3, 64) and vae.reconstruct(x).shape == (5, 64)
    loc, scale = vae.encode(x)
    assert loc.shape == (5, 4) and bool((scale > 0).all())


def test_trains_with_a_plain_pyro_loop_and_leaves_pyro_settings_alone():
    """The library is Pyro first: the model/guide train with Pyro's ELBO as a torch module and a
    torch optimizer (Pyro's way for module-local parameters), in a process whose Pyro settings are
    the defaults; the parameters never reach Pyro's global store and the setting is left as it was."""
    assert pyro.settings.get("module_local_params") is False  # importing pyro_vae changed nothing
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    vae, data = _model()
    x = data.train.x
    vae.num_data = len(x)
    before = float(-vae.elbo(data.test.x, num_particles=5).mean())
    loss_fn = Trace_ELBO()(vae.model, vae.guide)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for epoch in range(8):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            loss_fn(x[i : i + 128]).backward()
            opt.step()
    after = float(-vae.elbo(data.test.x, num_particles=5).mean())
    assert after < before - 3, (before, after)
    assert len(pyro.get_param_store()) == 0
    assert pyro.settings.get("module_local_params") is False


def test_two_models_in_one_process_keep_their_own_parameters():
    """Same parameter names, two modules: each program reads its own weights, never the other's."""
    a, data = _model()
    b, _ = _model()
    x = data.train.x[:8]
    pyro.poutine.trace(a.guide).get_trace(x)  # a runs first; under a shared store b would read a's weights
    sites = pyro.poutine.trace(b.guide, param_only=True).get_trace(x).nodes.values()
    own = {id(p) for p in b.parameters()}
    assert sites and all(id(site["value"]) in own for site in sites)


def test_fit_on_digits_writes_a_complete_run_directory(tmp_path, quick):
    r = fit(None, out=tmp_path / "run", overrides=[*quick, "train.epochs=6"])
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.csv",
        "metrics.json",
        "model.pt",
        "samples.png",
        "reconstructions.png",
        "latent_map.png",
        "loss_curves.png",
    ):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    for key in ("test_loss", "train_loss", "epochs", "train_seconds", "seconds_per_epoch"):
        assert key in m
    assert m["epochs"] == 6 and m["test_loss"] == pytest.approx(r.metrics["test_loss"])
    losses = [row["train_loss"] for row in r.history]
    assert losses[-1] < losses[0] - 3  # it learns
    assert not list(run.glob(".*"))  # no temp files or lock left behind
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # the checkpoint is plain tensors: loads with weights_only=True and rebuilds the same model
    payload = torch.load(run / "model.pt", weights_only=True)
    assert "state_dict" in payload
    loaded = pyro_vae.load(run)
    x = r.data.test.x[:7]
    assert torch.allclose(loaded.encode(x)[0], r.model.encode(x)[0])


def test_kl_warmup_scales_the_kl_from_zero(quick):
    r = fit(None, save=False, overrides=[*quick, "train.epochs=2", "train.kl_warmup_epochs=4"])
    betas = [row["beta"] for row in r.history]
    assert 0 < betas[0] < betas[1] < 1
    assert r.model.beta == 1.0  # evaluation uses the true ELBO


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_is_followed_and_logged(quick, schedule):
    r = fit(None, save=False, overrides=[*quick, "train.epochs=3", "train.lr=2e-3", f"train.lr_schedule={schedule}"])
    lrs = [row["lr"] for row in r.history]
    if schedule == "constant":
        assert lrs == [2e-3] * 3
    else:  # per step, from 2e-3 at the first step down to 0 after the last
        assert 2e-3 > lrs[0] > lrs[1] > lrs[2] and lrs[2] == pytest.approx(0, abs=1e-9)
        assert lrs[0] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 3)), rel=1e-6)


def test_meanfield_elbo_agrees_with_monte_carlo_elbo():
    from pyro.infer import TraceMeanField_ELBO

    pyro.set_rng_seed(1)
    vae, data = _model()
    x = data.train.x[:64]
    vae.num_data = None
    mc = torch.stack([Trace_ELBO().differentiable_loss(vae.model, vae.guide, x) for _ in range(400)]).mean()
    analytic = torch.stack(
        [TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x) for _ in range(50)]
    ).mean()
    assert float(mc) == pytest.approx(float(analytic), rel=2e-3)


@pytest.mark.parametrize("elbo, name", [("meanfield", "TraceMeanField_ELBO"), ("trace", "Trace_ELBO")])
def test_every_model_kind_trains_with_the_elbo_train_elbo_names(elbo, name):
    """The VAE's loss, M2's labelled term and M1+M2's first stage all follow train.elbo and
    train.num_particles."""
    from pyro_vae.training import plan_for
    from pyro_vae.training.ssvae import LabelledELBO

    small = ["latent_dim=3", "encoder.hidden=[8]", "decoder.hidden=[8]", f"train.elbo={elbo}", "train.num_particles=2"]
    kinds = {  # kind: (its keys, where its plan keeps the ELBO)
        "vae": ([], lambda plan: plan.loss_module.elbo),
        "ssvae": (["model.classifier_hidden=[8]"], lambda plan: LabelledELBO(plan).elbo),
        "m1m2": (
            ["model.z1_dim=3", "model.z2_dim=2", "model.m2_hidden=[8]", "model.classifier_hidden=[8]"],
            lambda plan: plan.m1_loss.elbo,
        ),
    }
    found = []
    for kind, (extra, elbo_of) in kinds.items():
        cfg = load_config(None, [f"model={kind}", *small, *extra])
        found.append(elbo_of(plan_for(build_model(cfg, DataInfo(64, (1, 8, 8), 4, None)), cfg)))
    assert all(isinstance(e, getattr(pyro.infer, name)) for e in found), [type(e).__mro__ for e in found]
    assert [e.num_particles for e in found] == [2] * 3


def test_conv_networks_train_on_8x8_digits(quick):
    r = fit(None, save=False, overrides=[*quick, "encoder.type=conv", "decoder.type=conv", "train.epochs=3"])
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


@pytest.mark.parametrize("native", [False, True])
def test_conv_networks_follow_cpu_bf16_autocast_only_on_native_bf16_cpus(native, monkeypatch):
    import pyro_vae.networks as networks
    from pyro_vae.networks import ConvBody, ConvDecoder

    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: native)
    body, dec = ConvBody((1, 8, 8), [16]), ConvDecoder(3, (1, 8, 8), [16], 1)
    x, z = torch.rand(5, 64), torch.randn(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, out = body(x), dec(z)
    if not native:  # emulated bf16 is slow: the convolutions stay float32, exactly
        assert h.dtype == torch.float32 and out.dtype == torch.float32
        assert torch.allclose(h, body(x), atol=1e-6) and torch.allclose(out, dec(z), atol=1e-6)
    else:  # native bf16 kernels: bf16 products, within bf16's precision of float32
        assert h.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
        assert torch.allclose(h.float(), body(x), atol=0.05, rtol=0.05)
        assert torch.allclose(out.float(), dec(z), atol=0.05, rtol=0.05)


def test_fast_softplus_and_bernoulli_match_torch():
    x = torch.linspace(-40, 40, 2001, dtype=torch.float64).float().requires_grad_(True)
    before = x.detach().clone()
    y = softplus(x)
    assert torch.allclose(y, torch.nn.functional.softplus(x), atol=1e-6)
    assert torch.equal(x.detach(), before)  # computed in place on its own temporaries, never on x
    xb = x.detach().bfloat16()
    assert torch.allclose(softplus(xb).float(), torch.nn.functional.softplus(xb.float()), atol=0.2, rtol=0.01)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.sigmoid(x.detach()), atol=1e-6)
    logits, v = torch.randn(50, 9) * 5, torch.rand(50, 9)
    ref = -torch.nn.functional.binary_cross_entropy_with_logits(logits, v, reduction="none")
    assert torch.allclose(BernoulliLogits(logits=logits, validate_args=False).log_prob(v), ref, atol=1e-5)


def test_dropout_keeps_each_unit_with_probability_1_minus_p_and_scales_it():
    from pyro_vae.fastmath import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01  # 200,000 units: sd 0.001
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.7))
    y.sum().backward()  # the gradient flows through the kept units only, with the same scale
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(1 / 0.7))
    assert torch.equal(drop.eval()(x), x)  # evaluation: the identity


def test_nan_loss_stops_with_an_actionable_error(quick):
    with pytest.raises(FloatingPointError, match="train.lr"):
        fit(None, save=False, overrides=[*quick, "train.epochs=1", "train.lr=1e12"])


def test_early_stopping_and_checkpoint_selection_are_lightnings_own_callbacks(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from pyro_vae.train import EpochMetrics, _trainer

    cfg = load_config(None, ["data.validation=100", "train.early_stopping_patience=2"])
    trainer = _trainer(cfg, tmp_path, EpochMetrics(cfg.train.epochs), ("loss", "min"), has_val=True)
    stop = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    ckpt = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert stop and stop[0].monitor == "val_loss" and stop[0].patience == 2
    # the best epoch by the validation metric, and `last` after every epoch whatever it scored
    assert [(c.monitor, c.filename) for c in ckpt] == [("val_loss", "best"), (None, "last")]


def test_fit_with_validation_keeps_and_reports_the_best_epoch(tmp_path, quick):
    from pyro_vae.training import plan_for

    mlp = ["encoder.type=mlp", "decoder.type=mlp"]  # the selection, not the network: MLP epochs differ more clearly
    r = fit(
        None, out=tmp_path / "run", overrides=[*quick, *mlp, "train.epochs=4", "data.validation=200", "train.lr=3e-2"]
    )
    val = [row["val_loss"] for row in r.history]
    best = min(range(len(val)), key=val.__getitem__)
    assert r.metrics["best_epoch"] == best + 1 and r.metrics["best_val_loss"] == pytest.approx(val[best])
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    # the model returned (and saved) is the selected one, not the last epoch's
    torch.manual_seed(0)
    again = plan_for(r.model, r.config).evaluate(r.data.val)["loss"]
    assert again == pytest.approx(val[best], abs=0.3)


def test_the_quick_tour_default_does_not_collapse_on_the_digits():
    """`pyro-vae train data.name=digits train.epochs=20` with no other key: the collapsed
    mean-image plateau is ~26.9 nats; the defaults reach <= 25.5 (README quick tour)."""
    r = fit(None, save=False, overrides=["data.name=digits", "train.epochs=20", "trainer.progress_bar=false"])
    assert r.metrics["test_loss"] <= 25.5, r.metrics["test_loss"]
    assert r.metrics["active_units"] >= 2  # codes carry information: not the prior everywhere
