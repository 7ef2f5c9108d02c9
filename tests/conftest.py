import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_vae  # noqa: E402,F401

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)

# small and fast: the digits, tiny MLPs, no progress bar. The engine's tests use it; the default
# network for images (resnet) is tested by test_networks.py, the quick-tour test and the README blocks.
QUICK = [
    "trainer.progress_bar=false",
    "latent_dim=4",
    "encoder.type=mlp",
    "decoder.type=mlp",
    "encoder.hidden=[64]",
    "decoder.hidden=[64]",
    "train.batch_size=64",
]


@pytest.fixture
def quick():
    return list(QUICK)


@pytest.fixture(autouse=True, scope="session")
def image_cache(tmp_path_factory):
    """Decoded image folders are cached in a folder of the test session, never the user's ~/.cache."""
    saved = os.environ.get("PYRO_VAE_CACHE")
    os.environ["PYRO_VAE_CACHE"] = str(tmp_path_factory.mktemp("pyro_vae_cache"))
    yield
    if saved is None:
        os.environ.pop("PYRO_VAE_CACHE", None)
    else:
        os.environ["PYRO_VAE_CACHE"] = saved
