"""Model types by name (``model:`` in the config)."""
from ..registry import Registry

MODELS = Registry("model")

from .vae import VAE  # noqa: E402,F401  (registers "vae")

try:  # the semi-supervised model registers "ssvae" when present
    from .ssvae import SSVAE  # noqa: F401
except ImportError:  # pragma: no cover
    pass
