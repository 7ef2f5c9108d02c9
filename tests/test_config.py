import pytest

from pyro_vae.config import load_config
from pyro_vae.errors import ConfigError


def test_defaults_are_a_complete_valid_config():
    cfg = load_config()
    assert cfg.model == "vae" and cfg.data.name == "digits"
    assert cfg.prior["name"] == "normal" and cfg.likelihood["name"] == "bernoulli"


def test_yaml_then_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("latent_dim: 7\ntrain: {epochs: 3}\nencoder: {hidden: [32]}\n")
    cfg = load_config(p, ["train.epochs=5", "encoder.hidden=[512,256]", "prior.name=normal"])
    assert cfg.latent_dim == 7 and cfg.train.epochs == 5
    assert list(cfg.encoder.hidden) == [512, 256]


@pytest.mark.parametrize("overrides, words", [
    (["train.epochz=3"], "unknown config key"),
    (["nonsense=1"], "unknown config key"),
    (["train.epochs=many"], "train.epochs"),
    (["data.binarize=sometimes"], "none, static, dynamic"),
    (["model=gan"], "vae, ssvae"),
    (["latent_dim=0"], "at least 1"),
    (["train.lr=-1"], "positive"),
    (["train.epochs"], "key=value"),
    (["prior.name=nope"], "valid priors"),
    (["likelihood.name=nope"], "valid likelihoods"),
    (["prior.wrong_param=3"], "no parameter 'wrong_param'"),
    (["train.early_stopping_patience=2"], "data.validation"),
    (["data.name=array"], "data.path"),
    (["ssvae.classifier_type=rnn"], "mlp, conv"),
    (["ssvae.classifier_dropout=1.5"], "[0, 1)"),
    (["ssvae.classifier_activation=sigmoid"], "softplus, relu"),
    (["ssvae.augment_shift=-1"], "number of pixels"),
    (["ssvae.shift_unlabelled=true"], "needs an augmentation"),
    (["ssvae.consistency_weight=1"], "needs an augmentation"),
    (["ssvae.consistency_weight=-1", "ssvae.augment_shift=1"], "must be >= 0"),
    (["train.lr_schedule=step"], "constant, cosine"),
    (["train.ema_decay=1"], "[0, 1)"),
    (["ssvae.vat_weight=1", "ssvae.vat_eps=0"], "vat_eps > 0"),
])
def test_bad_config_is_one_line_error_naming_the_fix(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_every_example_config_loads():
    from pathlib import Path

    for p in sorted(Path("examples/configs").glob("*.yaml")):
        load_config(p)  # raises on any stale key
