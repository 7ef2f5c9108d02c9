import pytest

from pyro_vae.config import load_config
from pyro_vae.errors import ConfigError


def test_defaults_are_a_complete_valid_config():
    cfg = load_config()
    assert cfg.model.name == "vae" and cfg.data.name == "digits"
    assert cfg.prior["name"] == "normal" and cfg.likelihood["name"] == "bernoulli"
    assert cfg.data.test_fraction == 0.2  # the data set's own keys are filled in


def test_naming_an_entry_is_shorthand_and_starts_its_section_afresh(tmp_path):
    cfg = load_config(None, ["model=ssvae", "model.aux_loss_multiplier=31", "data=array", "data.path=x.npy"])
    assert cfg.model.name == "ssvae" and cfg.model.aux_loss_multiplier == 31 and cfg.model.augment_shift is None
    p = tmp_path / "c.yaml"
    p.write_text("model: ssvae\ndata: {name: fashion-mnist, root: /data}\n")
    cfg = load_config(p, ["data=digits"])  # another data set: root belongs to the old one, not kept
    assert cfg.model.name == "ssvae" and cfg.data.name == "digits" and "root" not in cfg.data


def test_yaml_then_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("latent_dim: 7\ntrain: {epochs: 3}\nencoder: {hidden: [32]}\n")
    cfg = load_config(p, ["train.epochs=5", "encoder.hidden=[512,256]", "prior.name=normal"])
    assert cfg.latent_dim == 7 and cfg.train.epochs == 5
    assert list(cfg.encoder.hidden) == [512, 256]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.epochz=3"], "unknown config key"),
        (["nonsense=1"], "unknown config key"),
        (["train.epochs=many"], "train.epochs"),
        (["data.binarize=sometimes"], "none, static, dynamic"),
        (["model=gan"], "ssvae, vae"),
        (["data.root=/x"], "no parameter 'root'"),
        (["data.limit=0"], "at least 1"),
        (["data.limit=-3"], "at least 1"),
        (["data.test_fraction=1.5"], "(0, 1)"),
        (["evaluate.iwae_samples=-1"], ">= 0"),
        (["trainer.accelerator=tpux"], "auto, cpu"),
        (["trainer.precision=8-bit"], "32-true"),
        (["trainer.logger=comet"], "csv, tensorboard, mlflow, wandb, none"),
        (["encoder.type=rnn"], "valid network types: conv, mlp"),
        (["encoder.activation=sigmoid"], "softplus"),
        (["latent_dim=0"], "at least 1"),
        (["train.lr=-1"], "positive"),
        (["train.epochs"], "key=value"),
        (["prior.name=nope"], "valid priors"),
        (["likelihood.name=nope"], "valid likelihoods"),
        (["prior.wrong_param=3"], "no parameter 'wrong_param'"),
        (["train.early_stopping_patience=2"], "data.validation"),
        (["data.name=array"], "data.path"),
        (["model=ssvae", "model.classifier_type=rnn"], "conv, mlp"),
        (["model=ssvae", "model.classifier_dropout=1.5"], "[0, 1)"),
        (["model=ssvae", "model.classifier_activation=sigmoid"], "softplus"),
        (["model=ssvae", "model.augment_shift=-1"], "number of pixels"),
        (["model=ssvae", "model.augment_flip=true"], "no parameter 'augment_flip'"),
        (["model=ssvae", "model.pseudo_label_weight=-1"], ">= 0"),
        (["model=ssvae", "model.pseudo_label_threshold=1.5"], "[0, 1]"),
        (["model=m1m2", "model.z2_dim=0"], "at least 1"),
        (["model=m1m2", "model.m1_epochs=0"], "at least 1"),
        (["model=ssvae", "model.aux_loss_multiplier=many"], "aux_loss_multiplier"),
        (["model.aux_loss_multiplier=3"], "model 'vae' has no parameter"),
        (["model=ssvae", "ssvae.aux_loss_multiplier=3"], "unknown config key ssvae"),  # M2's keys are model.*
        (["train.lr_schedule=step"], "constant, cosine"),
    ],
)
def test_bad_config_is_one_line_error_naming_the_fix(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_an_ssvae_section_in_a_file_is_an_unknown_key_naming_the_file(tmp_path):
    p = tmp_path / "m2.yaml"
    p.write_text("model: ssvae\nssvae: {augment_shift: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "unknown config key ssvae" in str(e.value) and "m2.yaml" in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file_and_yaml_errors_name_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: 3\n lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d"):
        load_config(p)


def test_first_line_quotes_one_line_of_any_exception():
    from pyro_vae.utils import first_line

    assert first_line(ValueError("\n  bad value\n  detail on the next line")) == "bad value"
    assert first_line(RuntimeError("")) == "RuntimeError"  # no text: the type names it
    assert first_line(ValueError("x" * 500)) == "x" * 200 and first_line(ValueError("abc"), 2) == "ab"
    assert first_line(ValueError("y" * 500), None) == "y" * 500


def test_printed_config_has_every_key_with_a_comment_and_loads_back(tmp_path):
    from pyro_vae.config import commented_yaml

    text = commented_yaml(load_config(None, ["model=ssvae"]))
    keys = [line.split(":")[0].strip() for line in text.splitlines()]
    assert {"aux_loss_multiplier", "epochs", "accelerator", "test_fraction", "iwae_samples"} <= set(keys)
    assert all("#" in line for line in text.splitlines())
    p = tmp_path / "printed.yaml"
    p.write_text(text)
    assert load_config(p) == load_config(None, ["model=ssvae"])


def test_every_example_config_loads():
    from pathlib import Path

    for p in sorted(Path("examples/configs").glob("*.yaml")):
        load_config(p)  # raises on any stale key


def test_the_semi_supervised_example_configs_run_what_the_benchmark_rows_ran():
    """ssvae_fashion.yaml / m1m2_fashion.yaml (the README's commands for its table) are the model
    kind's defaults with the data keys benchmarks/ssvae.py sets, and hold no commented-out settings."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_ssvae", Path("benchmarks/ssvae.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for kind, path in (
        ("ssvae", "examples/configs/ssvae_fashion.yaml"),
        ("m1m2", "examples/configs/m1m2_fashion.yaml"),
    ):
        for line in Path(path).read_text().splitlines():
            comment = line.split("#", 1)[1] if "#" in line else ""
            assert not re.match(r"\s*[A-Za-z_.]+\s*[:=]\s*\S", comment), f"{path}: a commented-out setting: {line!r}"
        got = load_config(path, ["data.labels=100"])
        want = load_config(None, [f"model={kind}", *bench.DATA["fashion-mnist"], "data.labels=100"])
        got.name = want.name
        assert got == want, f"{path} differs from model={kind}'s defaults with the benchmark's data keys"


def test_a_run_saved_with_the_retired_data_normalize_key_still_loads(tmp_path, quick):
    """model.pt files written when data.normalize existed load and give the same codes."""
    import torch

    import pyro_vae
    from pyro_vae.utils import save_tensors

    r = pyro_vae.fit(None, out=tmp_path / "run", overrides=[*quick, "train.epochs=1"])
    path = tmp_path / "run" / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"] = payload["config"].replace("data:\n", "data:\n  normalize: true\n", 1)
    assert "normalize: true" in payload["config"]
    save_tensors(payload, tmp_path / "old.pt")
    old = pyro_vae.load(tmp_path / "old.pt")
    x = r.data.test.x[:5]
    assert torch.allclose(old.encode(x)[0], r.model.encode(x)[0])
