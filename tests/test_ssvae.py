import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO

from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.data import SemiSupervisedBatches, load_data, select_labels
from pyro_vae.errors import DataError
from pyro_vae.models.vae import DataInfo
from pyro_vae.train import build_model, fit

SMALL = ["model=ssvae", "latent_dim=3", "encoder.hidden=[16]", "decoder.hidden=[16]",
         "ssvae.classifier_hidden=[16]", "trainer.progress_bar=false"]


def tiny(num_data=None, extra=()):
    cfg = load_config(None, SMALL + list(extra))
    m = build_model(cfg, DataInfo(64, (1, 8, 8), 4, num_data))
    return m


def _hand_terms(m, x, y, eps):
    """log p(x, y, z) - log q(z | x, y) for given labels y and standard-normal noise eps."""
    loc, scale = m._q_z(x, y)
    z = loc + scale * eps
    q = dist.Normal(loc, scale).to_event(1)
    log_py = torch.log_softmax(m.class_logits, -1)[y]
    return m.likelihood(m._decode(z, y)).log_prob(x) + m.prior().log_prob(z) + log_py - q.log_prob(z)


@pytest.mark.parametrize("classifier", [[], ["ssvae.classifier_type=conv"], ["ssvae.decoder_label=every"]])
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


def test_fully_labelled_objective_is_supervised_elbo_plus_aux_term():
    torch.manual_seed(0)
    m = tiny(extra=["ssvae.aux_loss_multiplier=7"])
    x, y = torch.rand(6, 64), torch.tensor([0, 1, 2, 3, 0, 1])
    m.num_labelled, m.num_unlabelled, m.num_data = 60, 0, 60
    loss_fn = m.make_loss(load_config(None, SMALL).train)
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


@pytest.mark.parametrize("extra", [[], ["ssvae.classifier_type=conv"]])
def test_classifier_activation_defaults_to_the_encoders_and_can_be_set(extra):
    from pyro_vae.fastmath import Softplus

    def kinds(m):
        return {type(l) for l in m.classifier.modules()}

    default = tiny(extra=extra)
    assert Softplus in kinds(default) and torch.nn.ReLU not in kinds(default)
    relu = tiny(extra=extra + ["ssvae.classifier_activation=relu"])
    assert torch.nn.ReLU in kinds(relu) and Softplus not in kinds(relu)
    # only q(y|x) changes: q(z|x,y) and p(x|z,y) keep encoder/decoder.activation
    assert torch.nn.ReLU not in {type(l) for l in relu.encoder.modules()} | {type(l) for l in relu.decoder.modules()}


def test_conv_classifier_with_dropout_is_stochastic_only_in_training():
    m = tiny(extra=["ssvae.classifier_type=conv", "ssvae.classifier_dropout=0.5"])
    assert any(isinstance(l, torch.nn.Conv2d) for l in m.classifier.modules())
    x = torch.rand(9, 64)
    m.train()
    torch.manual_seed(0)
    a = m.classifier(x)
    assert not torch.allclose(a, m.classifier(x))  # dropout active while training
    m.eval()
    p = m.predict_proba(x)
    assert torch.equal(p, m.predict_proba(x)) and torch.allclose(p.sum(1), torch.ones(9))


@pytest.mark.parametrize("augment", [["ssvae.augment_shift=1"], ["ssvae.augment_flip=true"]])
def test_aux_term_sees_augmented_labelled_images_only_in_training(augment):
    torch.manual_seed(0)
    m = tiny(extra=augment)
    m.num_labelled, m.num_unlabelled, m.num_data = 8, 10, 18
    loss_fn = m.make_loss(load_config(None, SMALL).train)
    xl = torch.rand(8, 64) + 0.1
    seen = []
    handle = m.classifier.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    batch = {"xu": torch.rand(10, 64), "xl": xl, "yl": torch.tensor([0, 1, 2, 3] * 2)}
    for training in (True, False):
        m.train(training)
        seen.clear()
        assert torch.isfinite(loss_fn(batch))
        aux_input = seen[-1]  # the classifier's last call is the aux term's, on the labelled batch
        assert aux_input.shape == xl.shape
        assert torch.equal(aux_input, xl) != training
    handle.remove()


def test_shift_unlabelled_feeds_q_y_a_shifted_copy_in_training_only():
    torch.manual_seed(0)
    m = tiny(extra=["ssvae.augment_shift=1", "ssvae.shift_unlabelled=true"])
    m.num_labelled, m.num_unlabelled, m.num_data = 8, 10, 18
    loss_fn = m.make_loss(load_config(None, SMALL).train)
    xu = torch.rand(10, 64) + 0.1  # no zero pixels: a shift always changes the image
    seen = []
    handle = m.classifier.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    batch = {"xu": xu, "xl": torch.rand(8, 64), "yl": torch.tensor([0, 1, 2, 3] * 2)}
    for training in (True, False):
        m.train(training)
        seen.clear()
        assert torch.isfinite(loss_fn(batch))
        unlabelled_input = seen[0]  # the first classifier call is q(y|x) of the unlabelled term
        assert unlabelled_input.shape == xu.shape
        assert torch.equal(unlabelled_input, xu) != training
        # each shifted image is the original moved by at most one pixel: same pixels, some cut off
        if training:
            assert bool((unlabelled_input.sum(1) <= xu.sum(1) + 1e-4).all())
    handle.remove()


def test_guide_classifier_input_is_what_q_y_sees():
    """With x_classify, the enumerated loss weights each class by q(y | x_classify), by hand."""
    torch.manual_seed(0)
    m = tiny()
    x, x_cls = torch.rand(5, 64), torch.rand(5, 64)
    torch.manual_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m.model, m.guide, x, None, None, x_cls)
    torch.manual_seed(1)
    eps = torch.randn(4, 5, 3)
    logq_y = torch.log_softmax(m.classifier(x_cls), -1)
    assert not torch.allclose(logq_y, torch.log_softmax(m.classifier(x), -1))
    by_hand = 0.0
    for c in range(4):  # q(z|x,y) and p(x|z,y) still see x itself
        y = torch.full((5,), c)
        by_hand = by_hand - (logq_y[:, c].exp() * (_hand_terms(m, x, y, eps[c]) - logq_y[:, c])).sum()
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)


def test_consistency_term_is_kl_to_the_unshifted_prediction_held_fixed():
    from pyro_vae.data import random_shift
    from pyro_vae.models.ssvae import consistency

    torch.manual_seed(0)
    m = tiny(extra=["ssvae.augment_shift=1", "ssvae.consistency_weight=3"])
    x = torch.rand(6, 64) + 0.1
    torch.manual_seed(5)
    c = consistency(m, x)
    torch.manual_seed(5)
    p = torch.softmax(m.classifier(x), -1).detach()
    log_q = torch.log_softmax(m.classifier(random_shift(x, m.image_shape, 1)), -1)
    by_hand = (p * (p.log() - log_q)).sum(1).mean()
    assert float(c.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-4) and float(c.detach()) > 0
    c.backward()  # the shifted branch carries the gradient
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in m.classifier.parameters())
    # in the loss: weight * N_unlabelled * that mean, in training only
    m.num_labelled, m.num_unlabelled, m.num_data = 8, 100, 108
    loss_fn = m.make_loss(load_config(None, SMALL).train)
    batch = {"xu": x, "xl": torch.rand(8, 64), "yl": torch.tensor([0, 1, 2, 3] * 2)}
    m.eval()
    pyro.set_rng_seed(7)
    off = loss_fn(batch)
    m.consistency_weight = 0.0
    pyro.set_rng_seed(7)
    assert torch.allclose(off, loss_fn(batch))  # eval: the term is off


def test_virtual_adversarial_direction_changes_q_y_more_than_random_ones():
    from pyro_vae.models.ssvae import _unit, virtual_adversarial

    torch.manual_seed(0)
    m = tiny(extra=["ssvae.vat_weight=2", "ssvae.vat_eps=0.5"])
    with torch.no_grad():  # a classifier whose output moves visibly under perturbations of norm 0.5
        for p in m.classifier.parameters():
            p.mul_(4)
    x = torch.rand(6, 64)
    v = virtual_adversarial(m, x, 0.5)
    assert torch.isfinite(v) and float(v.detach()) > 0
    v.backward()  # the perturbed branch carries the gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.classifier.parameters())
    with torch.no_grad():
        target = torch.log_softmax(m.classifier(x), -1)

        def kl(r):
            return F.kl_div(torch.log_softmax(m.classifier(x + r), -1), target, log_target=True,
                            reduction="batchmean")

        random = torch.stack([kl(0.5 * _unit(torch.randn_like(x))) for _ in range(50)])
    v = float(v.detach())
    assert v > 3 * float(random.mean()) and v > float(random.max())


def test_vat_and_entropy_terms_are_added_in_training_only_with_their_scaling():
    torch.manual_seed(0)
    m = tiny()
    m.num_labelled, m.num_unlabelled, m.num_data = 8, 100, 108
    loss_fn = m.make_loss(load_config(None, SMALL).train)
    xu = torch.rand(10, 64)
    batch = {"xu": xu, "xl": torch.rand(8, 64), "yl": torch.tensor([0, 1, 2, 3] * 2)}

    def loss(training, vat=0.0, entropy=0.0):
        m.train(training)
        m.vat_weight, m.entropy_weight = vat, entropy
        pyro.set_rng_seed(7)  # the ELBO terms come first: same noise with and without the extras
        return float(loss_fn(batch).detach())

    plain = loss(True)
    q = torch.softmax(m.classifier(xu), -1).detach()
    entropy = float(-(q * q.log()).sum(1).mean())
    assert loss(True, entropy=3.0) - plain == pytest.approx(3.0 * 100 * entropy, rel=1e-4)
    assert loss(True, vat=5.0) > plain
    assert loss(False, vat=5.0, entropy=3.0) == loss(False)


def test_entropy_weight_one_cancels_the_entropy_of_the_unlabelled_elbo():
    """-ELBO_u + N_u mean H(q) = -sum_b sum_c q(c|x_b) [log p(x,c,z_c) - log q(z_c|x,c)] * scale."""
    torch.manual_seed(0)
    m = tiny(extra=["ssvae.entropy_weight=1"])
    m.num_labelled, m.num_unlabelled, m.num_data = 4, 5, 9
    loss_fn = m.make_loss(load_config(None, SMALL).train)
    x, xl, yl = torch.rand(5, 64), torch.rand(4, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    total = loss_fn({"xu": x, "xl": xl, "yl": yl})
    torch.manual_seed(1)
    eps = torch.randn(4, 5, 3)
    labelled = _hand_terms(m, xl, yl, torch.randn(4, 3)).sum()  # scale 4/4
    q = torch.softmax(m.classifier(x), -1)
    unlabelled = sum((q[:, c] * _hand_terms(m, x, torch.full((5,), c), eps[c])).sum() for c in range(4))
    aux = m.aux_loss_multiplier * 4 * F.cross_entropy(m.classifier(xl), yl)
    assert float(total) == pytest.approx(float(-unlabelled - labelled + aux), rel=1e-5)


@pytest.mark.parametrize("bad", ["ssvae.vat_weight=-1", "ssvae.entropy_weight=-0.5",
                                 "ssvae.vat_eps=-1", "ssvae.vat_eps=0"])
def test_bad_regulariser_settings_are_config_errors(bad):
    from pyro_vae.errors import ConfigError

    extra = [bad] if "weight" in bad else [bad, "ssvae.vat_weight=1"]
    with pytest.raises(ConfigError, match="ssvae.vat|ssvae.entropy"):
        load_config(None, SMALL + extra)


def test_decoder_label_every_layer_adds_a_per_class_bias_to_later_layers():
    torch.manual_seed(0)
    m = tiny(extra=["ssvae.decoder_label=every", "decoder.hidden=[16, 12]"])
    later = m.decoder.labels_later
    assert [e.weight.shape for e in later] == [(4, 12), (4, 64)]  # the second hidden layer and the output
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    plain = m.decoder(z, y)  # zero-initialised: the same function as the first-layer-only network
    with torch.no_grad():
        later[1].weight[2] += 1.5
    out = m.decoder(z, y)
    assert torch.allclose(out[y != 2], plain[y != 2]) and torch.allclose(out[y == 2], plain[y == 2] + 1.5)
    # enumeration over classes (y of shape (C, 1)) broadcasts against a batch of z
    ys = torch.arange(4).reshape(4, 1)
    assert m.decoder(z, ys).shape == (4, 5, 64)
    assert torch.allclose(m.decoder(z, ys)[2], m.decoder(z, torch.full((5,), 2)), atol=1e-6)


@pytest.mark.parametrize("augment", ["ssvae.augment_shift=2", "ssvae.augment_flip=true"])
def test_augmentation_needs_images(augment):
    from pyro_vae.errors import ConfigError

    cfg = load_config(None, SMALL + [augment])
    with pytest.raises(ConfigError, match="need image data"):
        build_model(cfg, DataInfo(64, None, 4, 100))


def test_label_summed_out_importance_weights_shape_and_elbo_bound():
    from pyro_vae.evaluate import iwae_log_likelihood

    torch.manual_seed(0)
    m = tiny()
    x = torch.rand(7, 64)
    assert m.log_weights_per_class(x).shape == (7, 4)
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


@pytest.mark.parametrize("y, n, c, words", [
    (torch.arange(20) % 4, 3, None, "fewer than the 4 classes"),
    (torch.full((20,), -1), 5, None, "needs labels"),
    (torch.tensor([0, 1, 5, -1]), None, 3, "0..2"),
])
def test_bad_labels_are_one_line_errors(y, n, c, words):
    with pytest.raises(DataError, match=words):
        select_labels(y, n, c, torch.Generator())


def test_array_without_labels_cannot_train_ssvae(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 4)))
    assert main(["train", *SMALL, "data.name=array", f"data.path={tmp_path / 'x.npy'}"]) == 2
    assert "needs labels" in capsys.readouterr().err


def test_batches_cycle_the_small_labelled_set():
    y = torch.full((50,), -1)
    y[:3] = torch.tensor([0, 1, 2])
    b = SemiSupervisedBatches(torch.rand(50, 2), y, batch_size=10, labelled_batch_size=5)
    batches = list(b)
    assert len(batches) == len(b) == 5
    assert all(bt["xl"].shape == (5, 2) and bt["xu"].shape[0] <= 10 for bt in batches)
    assert sum(bt["xu"].shape[0] for bt in batches) == 47


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


@pytest.mark.parametrize("seed", [0, 1])
def test_ssvae_beats_the_same_classifier_trained_on_50_labels_alone(seed):
    overrides = ["model=ssvae", "data.labels=50", "latent_dim=8", "encoder.hidden=[128]", "decoder.hidden=[128]",
                 "ssvae.classifier_hidden=[128]", "train.epochs=20", "train.lr=3e-3", "train.batch_size=64",
                 "trainer.progress_bar=false", f"seed={seed}"]
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
