"""Image networks: any height, width and channel count, the default for images, MLPs for tables."""

import pytest
import torch

from pyro_vae.config import load_config
from pyro_vae.errors import ConfigError
from pyro_vae.models import DataInfo
from pyro_vae.networks import ResNetBody, ResNetDecoder, network_type
from pyro_vae.train import build_model, fit


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 17, 23), (1, 8, 8), (3, 32, 32), (1, 1, 1), (3, 5, 2)])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_resnet_gives_each_image_back_at_its_size(shape, steps):
    c, h, w = shape
    body = ResNetBody(shape, 8, 1, steps, [16], "silu")
    dec = ResNetDecoder(4, shape, 2, 8, 1, steps, [16], "silu")
    x = torch.rand(5, c * h * w)
    assert body(x).shape == (5, 16)
    out = dec(torch.randn(3, 5, 4))  # leading sample dimensions pass through
    assert out.shape == (3, 5, 2 * c * h * w)
    # block k of the output is a whole image: channel planes [k*C, (k+1)*C) of the last convolution
    planes = dec.conv(dec.mlp(torch.randn(1, 4)).reshape((1,) + dec.bottom))
    assert planes.shape == (1, 2 * c, h, w)


def test_the_default_network_is_resnet_for_images_and_an_mlp_for_tables():
    cfg = load_config(None, [])
    assert cfg.encoder.type == "auto" and network_type(cfg.encoder, (1, 8, 8)) == "resnet"
    assert network_type(cfg.encoder, None) == "mlp"
    images = build_model(cfg, DataInfo(64, (1, 8, 8), None, 100))
    table = build_model(cfg, DataInfo(64, None, None, 100))
    assert any(isinstance(m, torch.nn.Conv2d) for m in images.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in table.modules())
    with pytest.raises(ConfigError, match="needs image data"):
        build_model(load_config(None, ["encoder.type=resnet"]), DataInfo(64, None, None, 100))


def test_m1m2_keeps_an_mlp_m1_on_images_unless_asked():
    info = DataInfo(64, (1, 8, 8), 4, 100)
    default = build_model(load_config(None, ["model=m1m2"]), info)
    asked = build_model(load_config(None, ["model=m1m2", "encoder.type=resnet", "decoder.type=resnet"]), info)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in default.m1.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in asked.m1.modules())


@pytest.mark.parametrize("bad", ["encoder.steps=0", "decoder.channels=0", "encoder.blocks=-1"])
def test_bad_network_keys_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        load_config(None, [bad])


def test_the_default_trains_on_colour_images_of_an_odd_size(tmp_path):
    """A folder of 3-channel 13x11 images through the defaults: a resnet, the loss falls and the
    reconstructions have the images' shape."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for k, colour in enumerate(("red", "blue")):
        (tmp_path / colour).mkdir()
        for i in range(60):
            a = (torch.rand(11, 13, 3, generator=g) * 80).to(torch.uint8)
            a[:, : 6 + k, k * 2] = 255
            Image.fromarray(a.numpy(), "RGB").save(tmp_path / colour / f"{i}.png")
    overrides = [f"data.root={tmp_path}", "data.channels=3", "train.epochs=3", "trainer.progress_bar=false"]
    r = fit(None, save=False, overrides=["data=image_folder", *overrides])
    assert r.data.image_shape == (3, 11, 13)
    assert any(isinstance(m, torch.nn.Conv2d) for m in r.model.modules())
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.model.reconstruct(r.data.test.x.dense(slice(0, 4))).shape == (4, 3 * 11 * 13)  # uint8 rows, read as float
