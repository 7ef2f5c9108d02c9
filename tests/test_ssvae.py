import numpy as np
import pytest
import torch
import pyro.distributions as dist
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO

from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import Dataset, Split, select_labels
from pyro_vae.errors import DataError
from pyro_vae.models import DataInfo
from pyro_vae.train import build_model, fit
from pyro_vae.training import plan_for

# the math checks use a deterministic MLP q(y|x) with the encoder's activation, no augmentation
# and only M2's own terms
SMALL = [
    "model=ssvae",
    "train.elbo=trace",
    "latent_dim=3",
    "encoder.hidden=[16]",
    "decoder.hidden=[16]",
    "model.classifier_hidden=[16]",
    "model.classifier_type=mlp",
    "model.classifier_dropout=0",
    "model.classifier_activation=null",
    "model.augment_shift=0",
    "model.pseudo_label_weight=0",
    "trainer.progress_bar=false",
]


def tiny(num_data=None, extra=()):
    cfg = load_config(None, SMALL + list(extra))
    m = build_model(cfg, DataInfo(64, (1, 8, 8), 4, num_data))
    return m


def tiny_plan(labelled, unlabelled, extra=()):
    """A model and its training plan, set up for a training set of that many labelled and unlabelled rows."""
    cfg = load_config(None, SMALL + list(extra))
    m = build_model(cfg, DataInfo(64, (1, 8, 8), 4, None))
    plan = plan_for(m, cfg)
    y = torch.cat([torch.arange(labelled) % 4, torch.full((unlabelled,), -1)])
    split = Split(torch.zeros(len(y), 64), y)
    plan.setup(Dataset("t", split, split))
    return m, plan


def _hand_terms(m, x, y, eps):
    """log p(x, y, z) - log q(z | x, y) for given labels y and standard-normal noise eps."""
    loc, scale = m.q_z_given_y(x, y)
    z = loc + scale * eps
    q = dist.Normal(loc, scale).to_event(1)
    log_py = torch.log_softmax(m.class_logits, -1)[y]
    return m.likelihood(m.decoder(z, y), x).log_prob(x) + m.prior().log_prob(z) + log_py - q.log_prob(z)


@pytest.mark.parametrize("classifier", [[], ["model.classifier_type=conv"]])
def test_enumeration_equals_an_explicit_sum_over_classes(classifier):
    torch.manual_seed(0)
    m = tiny(extra=classifier)
    x = torch.rand(5, 64)
    torch.manual_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m.model, m.guide, x)
    torch.manual_seed(1)
    eps = torch.randn(4, 5, 3)
    logq_y = torch.log_softmax(m.classifier(x), -1)  # (B, C)
    by_hand = 0.0
    for c in range(4):  # -sum_b sum_c q(c|x_b) [log p(x,c,z_c) - log q(z_c|x,c) - log q(c|x)]
        y = torch.full((5,), c)
        by_hand = by_hand - (logq_y[:, c].exp() * (_hand_terms(m, x, y, eps[c]) - logq_y[:, c])).sum()
    assert float(loss.detach()) == pytest.approx(float(by_hand), rel=1e-5)


def test_the_models_own_elbo_is_pyros_enumerated_loss():
    """elbo() (validation, scores) draws z_c ~ q(z|x,c) in the guide's order, so with the same seed
    it equals -TraceEnum_ELBO's loss exactly."""
    torch.manual_seed(0)
    m = tiny(num_data=5)
    x = torch.rand(5, 64)
    torch.manual_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m.model, m.guide, x)
    torch.manual_seed(1)
    assert float(loss.detach()) == pytest.approx(-float(m.elbo(x).sum()), rel=1e-5)


def test_fully_labelled_objective_is_supervised_elbo_plus_aux_term():
    torch.manual_seed(0)
    m, plan = tiny_plan(60, 0, extra=["model.aux_loss_multiplier=7"])
    x, y = torch.rand(6, 64), torch.tensor([0, 1, 2, 3, 0, 1])
    loss_fn = plan.loss
    assert sorted(type(t).registry_name for t in plan.terms) == ["aux", "labelled_elbo"]
    torch.manual_seed(3)
    loss = loss_fn({"xu": x[:0], "xl": x, "yl": y})
    torch.manual_seed(3)
    eps = torch.randn(6, 3)
    elbo = _hand_terms(m, x, y, eps).sum() * (60 / 6)  # scaled to the 60 labelled examples
    aux = 7 * 60 * F.cross_entropy(m.classifier(x), y)
    assert float(loss) == pytest.approx(float(-elbo + aux), rel=1e-5)


def test_predict_proba_rows_sum_to_one_and_predict_is_its_argmax():
    m = tiny()
    x = torch.rand(9, 64)
    p = m.predict_proba(x)
    assert p.shape == (9, 4) and torch.allclose(p.sum(1), torch.ones(9))
    assert torch.equal(m.predict(x), p.argmax(1))


@pytest.mark.parametrize("extra", [[], ["model.classifier_type=conv"]])
def test_classifier_activation_null_is_the_encoders_and_can_be_set(extra):
    from pyro_vae.fastmath import Softplus

    def kinds(m):
        return {type(layer) for layer in m.classifier.modules()}

    default = tiny(extra=extra)
    assert Softplus in kinds(default) and torch.nn.ReLU not in kinds(default)
    relu = tiny(extra=extra + ["model.classifier_activation=relu"])
    assert torch.nn.ReLU in kinds(relu) and Softplus not in kinds(relu)
    # only q(y|x) changes: q(z|x,y) and p(x|z,y) keep encoder/decoder.activation
    assert torch.nn.ReLU not in {type(layer) for layer in relu.encoder.modules()} | {
        type(layer) for layer in relu.decoder.modules()
    }


def test_conv_classifier_with_dropout_is_stochastic_only_in_training():
    m = tiny(extra=["model.classifier_type=conv", "model.classifier_dropout=0.5"])
    assert any(isinstance(layer, torch.nn.Conv2d) for layer in m.classifier.modules())
    x = torch.rand(9, 64)
    m.train()
    torch.manual_seed(0)
    a = m.classifier(x)
    assert not torch.allclose(a, m.classifier(x))  # dropout active while training
    m.eval()
    p = m.predict_proba(x)
    assert torch.equal(p, m.predict_proba(x)) and torch.allclose(p.sum(1), torch.ones(9))


def test_aux_term_sees_shifted_labelled_images_only_in_training():
    torch.manual_seed(0)
    m, plan = tiny_plan(8, 10, extra=["model.augment_shift=1"])
    loss_fn = plan.loss
    xl = torch.rand(8, 64) + 0.1
    seen = []
    handle = m.classifier.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    batch = {"xu": torch.rand(10, 64), "xl": xl, "yl": torch.tensor([0, 1, 2, 3] * 2)}
    for training in (True, False):
        m.train(training)
        seen.clear()
        assert torch.isfinite(loss_fn(batch))
        aux_input = seen[0]  # the terms run in name order: the aux term's call comes first
        assert aux_input.shape == xl.shape
        assert torch.equal(aux_input, xl) != training
    handle.remove()


@pytest.mark.parametrize("option", ["model.augment_shift=2", "model.pseudo_label_weight=1"])
def test_augmentation_needs_images(option):
    from pyro_vae.errors import ConfigError

    from pyro_vae.training import plan_for

    cfg = load_config(None, SMALL + [option])
    model = build_model(cfg, DataInfo(64, None, 4, 100))
    with pytest.raises(ConfigError, match="needs image data"):
        plan_for(model, cfg)  # the objective's keys are checked by its plan, before training starts


def test_strong_augmentation_shifts_mirrors_half_and_cuts_out_a_square():
    from pyro_vae.training.augment import strong_augment

    g = torch.Generator().manual_seed(0)
    ones = torch.ones(400, 784)
    out = strong_augment(ones, (1, 28, 28), generator=g)
    assert out.shape == ones.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    zeros = (out == 0).sum(1)
    # a 14x14 hole reaches at least 7x7 pixels into the image; the rest of the zeros come from
    # shifts of up to 3 pixels (at most 3 rows and 3 columns)
    assert int(zeros.min()) >= 49 and int(zeros.max()) <= 196 + 3 * 28 * 2
    left = torch.zeros(400, 1, 28, 28)
    left[..., :14] = 1.0  # the left half lit: a mirrored copy has most of its light on the right
    out = strong_augment(left.reshape(400, -1), (1, 28, 28), generator=g).reshape(400, 28, 28)
    mirrored = (out[..., 14:].sum((1, 2)) > out[..., :14].sum((1, 2))).float().mean()
    assert 0.4 < float(mirrored) < 0.6
    values = torch.rand(5, 784)  # every pixel kept is one of the image's own
    out = strong_augment(values, (1, 28, 28), generator=g)
    assert all(set(o[o != 0].tolist()) <= set(v.tolist()) for o, v in zip(out, values))


def test_pseudo_label_term_teaches_confident_labels_to_strongly_augmented_copies():
    from pyro_vae.training.augment import strong_augment
    from pyro_vae.training.ssvae import PseudoLabel

    extra = ["model.classifier_dropout=0.5", "model.pseudo_label_weight=2"]
    m, plan = tiny_plan(8, 30, extra=extra + ["model.pseudo_label_threshold=0"])
    term = next(t for t in plan.terms if isinstance(t, PseudoLabel))
    batch = {"xu": torch.rand(30, 64), "xl": torch.rand(8, 64), "yl": torch.arange(8) % 4}
    m.train()
    torch.manual_seed(1)
    got = term(batch)
    assert m.classifier.training  # the labelling pass (no dropout) leaves q(y|x) in training mode
    torch.manual_seed(1)
    with torch.no_grad():
        m.classifier.eval()
        target = m.classifier(batch["xu"]).argmax(-1)
        m.classifier.train()
    ce = F.cross_entropy(m.classifier(strong_augment(batch["xu"], (1, 8, 8))), target)
    assert torch.allclose(got, 2 * plan.cfg.model.aux_loss_multiplier * m.num_data * ce, rtol=1e-5)
    got.backward()  # it trains q(y|x) only
    assert m.classifier[0].weight.grad is not None and m.decoder.first.weight.grad is None
    m.eval()
    assert float(term(batch)) == 0.0  # training only
    m.train()
    _, strict = tiny_plan(8, 30, extra=extra + ["model.pseudo_label_threshold=1"])
    strict_term = next(t for t in strict.terms if isinstance(t, PseudoLabel))
    assert float(strict_term(batch)) == 0.0  # no label that confident: nothing taught


def test_a_conv_q_y_computes_its_body_once_for_pseudo_labels_and_the_guide_with_the_same_loss():
    from pyro_vae.networks import ConvClassifier

    extra = [
        "model.classifier_type=conv",
        "model.classifier_dropout=0.5",
        "model.pseudo_label_weight=1",
        "model.pseudo_label_threshold=0",
    ]
    m, plan = tiny_plan(8, 30, extra=extra)
    assert isinstance(m.classifier, ConvClassifier)
    batch = {"xu": torch.rand(30, 64), "xl": torch.rand(8, 64), "yl": torch.arange(8) % 4}
    body, calls = m.classifier[0], []
    handle = body.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m.train()

    def step():
        torch.manual_seed(3)
        m.zero_grad()
        loss = plan.loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.classifier.parameters()]

    loss, grads = step()
    assert sorted(calls) == [8, 30, 30]  # aux (labelled), the kept unlabelled pass, the augmented copies
    assert m.classifier._kept is None  # released at the end of the step
    calls.clear()
    keep = ConvClassifier.keep_features
    try:  # the same step with the body computed every time
        ConvClassifier.keep_features = lambda self, x: self[0](x)
        loss_again, grads_again = step()
    finally:
        ConvClassifier.keep_features = keep
    handle.remove()
    assert sorted(calls) == [8, 30, 30, 30]
    assert torch.equal(loss, loss_again) and all(torch.equal(a, b) for a, b in zip(grads, grads_again))


def test_a_conv_q_y_runs_the_pseudo_label_copies_of_confident_rows_only_with_the_same_loss():
    from pyro_vae.training.augment import strong_augment
    from pyro_vae.training.ssvae import PseudoLabel

    extra = ["model.classifier_type=conv", "model.classifier_dropout=0.5", "model.pseudo_label_weight=1"]
    m, plan = tiny_plan(8, 30, extra=extra)
    xu = torch.rand(30, 64)
    with torch.no_grad():
        m.classifier.eval()
        conf = torch.softmax(m.classifier(xu), -1).max(-1).values
        m.classifier.train()
    t = plan.cfg.model.pseudo_label_threshold = float(conf.median())  # about half the rows are confident
    term = next(x for x in plan.terms if isinstance(x, PseudoLabel))
    body, calls = m.classifier[0], []
    handle = body.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m.train()
    torch.manual_seed(5)
    got = term({"xu": xu, "xl": xu[:0], "yl": torch.zeros(0, dtype=torch.long)})
    got.backward()
    grads = [p.grad.clone() for p in m.classifier.parameters()]
    m.classifier.release()
    handle.remove()
    keep = conf >= t
    assert calls == [30, int(keep.sum())] and 0 < int(keep.sum()) < 30  # the labelling pass, the confident copies
    m.zero_grad()
    torch.manual_seed(5)  # every row's copy through the whole network: the same draws, the same value
    with torch.no_grad():
        m.classifier.eval()
        target = m.classifier(xu).argmax(-1)
        m.classifier.train()
    ce = F.cross_entropy(m.classifier(strong_augment(xu, (1, 8, 8))), target, reduction="none")
    want = plan.cfg.model.aux_loss_multiplier * m.num_data * (keep.float() * ce).mean()
    want.backward()
    assert torch.allclose(got, want, rtol=1e-5)
    assert all(torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6) for a, p in zip(grads, m.classifier.parameters()))


def test_label_summed_out_importance_weights_shape_and_elbo_bound():
    from pyro_vae.evaluate import iwae_log_likelihood

    torch.manual_seed(0)
    m = tiny()
    x = torch.rand(7, 64)
    assert m.log_weights(x).shape == (7, 4)
    ll = iwae_log_likelihood(m, x, 200)
    elbo = torch.stack([m.elbo(x) for _ in range(20)]).mean(0)
    assert bool((ll > elbo - 0.5).all())


def test_class_balanced_label_selection():
    y = torch.arange(100) % 4
    g = torch.Generator().manual_seed(0)
    kept = select_labels(y, 10, None, g)  # not a multiple of the 4 classes
    counts = torch.bincount(kept[kept >= 0], minlength=4)
    assert int((kept >= 0).sum()) == 10 and counts.min() >= 2 and counts.max() <= 3
    assert bool((kept[kept >= 0] == y[kept >= 0]).all())
    again = select_labels(y, 10, None, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)


@pytest.mark.parametrize(
    "y, n, c, words",
    [
        (torch.arange(20) % 4, 3, None, "fewer than the 4 classes"),
        (torch.full((20,), -1), 5, None, "needs labels"),
        (torch.tensor([0, 1, 5, -1]), None, 3, "0..2"),
    ],
)
def test_bad_labels_are_one_line_errors(y, n, c, words):
    with pytest.raises(DataError, match=words):
        select_labels(y, n, c, torch.Generator())


def test_array_without_labels_cannot_train_ssvae(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 4)))
    assert main(["train", *SMALL, "data.name=array", f"data.path={tmp_path / 'x.npy'}"]) == 2
    assert "needs label" in capsys.readouterr().err


def test_batches_cycle_the_small_labelled_set():
    y = torch.full((50,), -1)
    y[:3] = torch.tensor([0, 1, 2])
    m, plan = tiny_plan(3, 47)
    data = Dataset("t", Split(torch.rand(50, 2), y), Split(torch.rand(5, 2)))
    plan.cfg.train.batch_size = 10
    loader = plan.train_dataloader(data, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    assert all(bt["xl"].shape == (3, 2) and bt["xu"].shape[0] <= 10 for bt in batches)  # capped at the 3 labels
    assert sum(bt["xu"].shape[0] for bt in batches) == 47


@pytest.mark.parametrize(
    "kind, rows, expected", [("ssvae", 1_438, 64), ("ssvae", 10_000, 128), ("m1m2", 10_000, 64), ("vae", 10_000, 64)]
)
def test_an_unset_batch_size_is_chosen_from_the_model_kind_and_data_size_and_saved(kind, rows, expected):
    """M2 on 10,000 rows or more: 128 (as accurate as 64 on Fashion-MNIST, faster per epoch); on the
    digits 128 leaves too few steps. M1+M2 keeps 64 in both stages. An explicit size always wins."""
    extra = ["model.m1_epochs=1"] if kind == "m1m2" else []
    for size, want in ((None, expected), (32, 32)):
        cfg = load_config(None, [f"model={kind}", *extra] + ([f"train.batch_size={size}"] if size else []))
        assert cfg.train.batch_size == size  # null until the data are known
        y = torch.full((rows,), -1)
        y[:40] = torch.arange(40) % 4
        split = Split(torch.rand(rows, 64), y)
        plan = plan_for(build_model(cfg, DataInfo(64, (1, 8, 8), 4, None)), cfg)
        plan.setup(Dataset("t", split, split))
        assert cfg.train.batch_size == want  # written into the config the run saves
        if kind == "m1m2":
            assert plan.m2_plan.cfg.train.batch_size == want


def _supervised_only(data, seed, hidden):
    """The classifier network of the SSVAE trained on the labelled examples alone."""
    torch.manual_seed(seed)
    from pyro_vae.networks import MLP

    mask = data.train.y >= 0
    x, y = data.train.x[mask], data.train.y[mask]
    net = MLP(64, [hidden], 10, "softplus")
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    best = 0.0
    for step in range(600):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:  # the best test accuracy seen: an optimistic baseline
            with torch.no_grad():
                best = max(best, float((net(data.test.x).argmax(1) == data.test.y).float().mean()))
    return best


def test_the_defaults_pick_a_conv_q_y_with_shifts_and_pseudo_labels_for_images_and_an_mlp_for_tables():
    from pyro_vae.models.ssvae import classifier_type
    from pyro_vae.training.ssvae import PseudoLabel, augment_shift, pseudo_label_weight

    cfg = load_config(None, ["model=ssvae"])
    assert classifier_type(cfg.model, (1, 8, 8)) == "conv" and augment_shift(cfg.model, (1, 8, 8)) == 1
    assert classifier_type(cfg.model, (1, 7, 7)) == "mlp" and classifier_type(cfg.model, None) == "mlp"
    assert augment_shift(cfg.model, None) == 0
    assert pseudo_label_weight(cfg.model, (1, 8, 8)) == 1 and pseudo_label_weight(cfg.model, None) == 0
    images = build_model(cfg, DataInfo(64, (1, 8, 8), 4, None))
    table = build_model(cfg, DataInfo(64, None, 4, None))
    assert any(isinstance(m, torch.nn.Conv2d) for m in images.classifier.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in table.classifier.modules())
    # the pseudo-label term is part of the default objective for images only
    terms = {}
    for name, model in (("images", images), ("table", table)):
        plan = plan_for(model, cfg)
        y = torch.cat([torch.arange(8) % 4, torch.full((30,), -1)])
        split = Split(torch.zeros(len(y), 64), y)
        plan.setup(Dataset("t", split, split))
        terms[name] = any(isinstance(t, PseudoLabel) for t in plan.terms)
    assert terms == {"images": True, "table": False}


def test_m2_defaults_on_50_digit_labels():
    """`model=ssvae data.labels=50` with no other key (20 epochs, 200 labelled validation images;
    pseudo-labels on). Seeds 0-5 give 0.85-0.91 (mean 0.88, in bf16 and float32 alike), so one
    seed is held to the bottom of that spread."""
    r = fit(
        None,
        save=False,
        overrides=[
            "model=ssvae",
            "data.labels=50",
            "data.validation=200",
            "train.epochs=20",
            "trainer.progress_bar=false",
        ],
    )
    assert r.metrics["test_accuracy"] >= 0.84, r.metrics["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ssvae_beats_the_same_classifier_trained_on_50_labels_alone(seed):
    overrides = [
        "model=ssvae",
        "model.classifier_type=mlp",
        "model.classifier_dropout=0",
        "model.classifier_activation=null",
        "model.augment_shift=0",
        "model.pseudo_label_weight=0",
        "model.aux_scaling=labelled",
        "model.aux_loss_multiplier=46",
        "data.labels=50",
        "latent_dim=8",
        "encoder.hidden=[128]",
        "decoder.hidden=[128]",
        "model.classifier_hidden=[128]",
        "train.epochs=20",
        "train.lr=3e-3",
        "train.batch_size=64",
        "trainer.progress_bar=false",
        f"seed={seed}",
    ]
    r = fit(None, save=False, overrides=overrides)
    baseline = _supervised_only(r.data, seed, 128)
    assert r.metrics["test_accuracy"] > baseline + 0.02, (r.metrics["test_accuracy"], baseline)


def test_classify_cli_writes_predictions(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "data.labels=40", "data.validation=100", "train.epochs=2", "--out", str(out)]) == 0
    for name in ("confusion_matrix.png", "conditional_generation.png", "style_transfer.png"):
        assert (out / name).is_file()
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert "test_accuracy" in m and "best_val_accuracy" in m
    assert main(["classify", str(out), "--out", str(tmp_path / "p.csv")]) == 0
    rows = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert rows.shape == (359, 2 + 10 + 1)
    assert np.allclose(rows[:, 2:12].sum(1), 1, atol=1e-4) and (rows[:, 1] == rows[:, 2:12].argmax(1)).all()
    assert "accuracy" in capsys.readouterr().out


def test_checkpoints_are_selected_on_accuracy_only_where_the_validation_split_has_labels():
    m, plan = tiny_plan(8, 10)
    assert plan.selection_for(Split(torch.zeros(3, 64), torch.tensor([0, 1, -1]))) == ("accuracy", "max")
    assert plan.selection_for(Split(torch.zeros(3, 64), torch.full((3,), -1))) == ("loss", "min")
    assert plan.selection_for(Split(torch.zeros(3, 64))) == ("loss", "min")


def test_evaluation_does_not_depend_on_the_evaluation_batch_size():
    # M2's ELBO sums the label out, so an evaluation batch of B rows computes C*B rows; the plan
    # cuts its batches by the class count, down to one row, and the metrics add up the same
    m, plan = tiny_plan(8, 10)
    m.eval()
    split = Split(torch.rand(23, 64), torch.arange(23) % 4)
    full = plan.evaluate(split, batch_size=2000)
    for b in (7, 1):
        small = plan.evaluate(split, batch_size=b)
        assert small["accuracy"] == full["accuracy"]
        assert small["loss"] == pytest.approx(full["loss"], rel=0.05)
    assert [len(x) for x, _ in plan.eval_dataloader(split, 8)] == [2] * 11 + [1]
