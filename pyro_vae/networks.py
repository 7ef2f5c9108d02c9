"""Encoder and decoder bodies: plain ``torch.nn`` modules, no Pyro inside.

Two registries: :data:`ACTIVATIONS` (``encoder.activation`` ...) and :data:`NETWORKS`
(``encoder.type`` / ``decoder.type``). A network type turns a :class:`NetConfig` into an encoder
body (``body``) and a decoder (``decoder``):

* ``mlp`` — fully connected layers (any data);
* ``resnet`` — images of any height, width and channel count: ``steps`` stride-2 convolutions,
  each followed by ``blocks`` residual blocks, then the ``hidden`` dense layers; the decoder
  mirrors it with transposed convolutions sized so the image comes back at its own size;
* ``conv`` — two stride-2 convolutions then the dense layers (sides divisible by 4);
* ``auto`` (the default) — ``resnet`` for image data, ``mlp`` for the rest.

:class:`GaussianEncoder` turns a body into q(z|x) = Normal(loc(x), scale(x)).
"""

import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import ConfigError
from .fastmath import Dropout, Softplus, cpu_has_native_bf16, softplus as fast_softplus
from .registry import Registry, option

ACTIVATIONS = Registry("activation", configurable=False)  # `encoder.activation: relu`: a name, no parameters
for _name, _cls in (
    ("softplus", Softplus),
    ("relu", nn.ReLU),
    ("elu", nn.ELU),
    ("gelu", nn.GELU),
    ("tanh", nn.Tanh),
    ("leaky_relu", nn.LeakyReLU),
    ("silu", nn.SiLU),
):
    ACTIVATIONS.register(_name)(_cls)  # softplus: same function as nn.Softplus, vectorised (fastmath.py)


def make_activation(name: str) -> nn.Module:
    """A new activation module by registry name."""
    return ACTIVATIONS.get(name)()


NETWORKS = Registry("network type", key="type")


@dataclass
class NetConfig:
    """``encoder:`` / ``decoder:``: which network type, its hidden sizes and activation."""

    type: str = option(
        "auto", "network type (`pyro-vae list`): auto = resnet for images (M1+M2's M1: mlp), mlp for tables"
    )
    hidden: List[int] = option(
        help="hidden layer sizes (conv types: dense layers after the convolutions)", factory=lambda: [400]
    )
    activation: str = option(
        "auto", "activation (softplus relu elu gelu silu tanh ...); auto = silu for resnet, softplus otherwise"
    )
    channels: int = option(32, "resnet: channels after the first downsampling step, doubled at each further step")
    blocks: int = option(1, "resnet: residual blocks after each downsampling step")
    steps: int = option(2, "resnet: stride-2 downsampling steps (each halves height and width, rounding up)")

    @staticmethod
    def check(net, key: str) -> None:
        if net.type != "auto":
            NETWORKS.get(net.type)
        if net.activation != "auto" and net.activation not in ACTIVATIONS:
            raise ConfigError(
                f"{key}.activation={net.activation!r} is not valid; choose one of: {', '.join(ACTIVATIONS.names())}"
            )
        if any(h < 1 for h in net.hidden):
            raise ConfigError(f"{key}.hidden sizes must be positive integers (got {list(net.hidden)})")
        for name, low in (("channels", 1), ("blocks", 0), ("steps", 1)):
            if net[name] < low:
                raise ConfigError(f"{key}.{name} must be at least {low} (got {net[name]})")


def activation_of(net_cfg, type: str) -> str:
    """``activation`` with ``auto`` resolved for the network ``type``: silu for resnet, softplus otherwise."""
    if net_cfg.activation != "auto":
        return net_cfg.activation
    return "silu" if type == "resnet" else "softplus"


def network_type(net_cfg, image_shape) -> str:
    """``type`` with ``auto`` resolved: ``resnet`` for image data, ``mlp`` otherwise."""
    if net_cfg.type != "auto":
        return net_cfg.type
    return "resnet" if image_shape is not None else "mlp"


class MLP(nn.Sequential):
    """Linear -> activation for each hidden size, then a final Linear to ``out_dim`` (if given)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: Optional[int] = None, activation="softplus"):
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), make_activation(activation)]
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.out_dim = d


def _conv_autocast():
    """CPU bf16 autocast reaches the convolutions only where oneDNN has native bf16 kernels; on
    other CPUs (bf16 emulated) they run in float32. GPU autocast is left alone."""
    return contextlib.nullcontext() if cpu_has_native_bf16() else torch.autocast("cpu", enabled=False)


class ConvBody(nn.Module):
    """Two stride-2 convolutions (32, 64 channels) then an MLP: (B, C*H*W) -> (B, hidden[-1])."""

    def __init__(self, image_shape: Tuple[int, int, int], hidden: Sequence[int], activation="softplus"):
        super().__init__()
        c, h, w = _check_image(image_shape)
        act = ACTIVATIONS.get(activation)
        self.image_shape = (c, h, w)
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            act(),
        )
        self.mlp = MLP(64 * (h // 4) * (w // 4), hidden, None, activation)
        self.out_dim = self.mlp.out_dim

    def forward(self, x):
        x = x.reshape((-1,) + self.image_shape)
        with _conv_autocast():
            return self.mlp(self.conv(x.float()).flatten(1))


class ConvDecoder(nn.Module):
    """MLP then two stride-2 transposed convolutions: (B, latent) -> (B, K*C*H*W) in K blocks."""

    def __init__(self, in_dim, image_shape, hidden: Sequence[int], blocks: int, activation="softplus"):
        super().__init__()
        c, h, w = _check_image(image_shape)
        act = ACTIVATIONS.get(activation)
        self.blocks, self.h4, self.w4 = blocks, h // 4, w // 4
        self.mlp = nn.Sequential(MLP(in_dim, hidden, 64 * self.h4 * self.w4, activation), act())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(32, blocks * c, 4, stride=2, padding=1),
        )

    def forward(self, z):
        lead = z.shape[:-1]
        with _conv_autocast():
            h = self.mlp(z.reshape(-1, z.shape[-1]).float()).reshape(-1, 64, self.h4, self.w4)
            out = self.deconv(h)  # (B, K*C, H, W): block k is channels [k*C, (k+1)*C)
        return out.reshape(lead + (-1,))


def _halvings(h: int, w: int, steps: int) -> List[Tuple[int, int]]:
    """Heights and widths after 0..steps stride-2 convolutions (kernel 3, padding 1: each rounds up)."""
    sizes = [(h, w)]
    for _ in range(steps):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))): two 3x3 convolutions that keep the channels and the size."""

    def __init__(self, channels: int, activation: str):
        super().__init__()
        self.layers = nn.Sequential(
            make_activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            make_activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.layers(x)


def _dense(in_dim: int, hidden: Sequence[int], activation: str) -> Tuple[nn.Module, int]:
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), make_activation(activation)]
        d = h
    return nn.Sequential(*layers), d


class ResNetBody(nn.Module):
    """(B, C*H*W) -> (B, out_dim): ``steps`` x [stride-2 conv, ``blocks`` residual blocks] with
    ``channels``, 2x``channels``, ... then the dense ``hidden`` layers. Any height and width."""

    def __init__(self, image_shape, channels: int, blocks: int, steps: int, hidden: Sequence[int], activation: str):
        super().__init__()
        c, h, w = _check_image(image_shape, any_size=True)
        self.image_shape = (c, h, w)
        layers, ch = [], c
        for i in range(steps):
            out = channels * 2**i
            layers += ([make_activation(activation)] if i else []) + [nn.Conv2d(ch, out, 3, stride=2, padding=1)]
            layers += [ResBlock(out, activation) for _ in range(blocks)]
            ch = out
        self.conv = nn.Sequential(*layers, make_activation(activation))
        hb, wb = _halvings(h, w, steps)[-1]
        self.mlp, self.out_dim = _dense(ch * hb * wb, hidden, activation)

    def forward(self, x):
        x = x.reshape((-1,) + self.image_shape)
        with _conv_autocast():
            return self.mlp(self.conv(x.float()).flatten(1))


class ResNetDecoder(nn.Module):
    """(..., latent) -> (..., K*C*H*W) in K blocks: the dense ``hidden`` layers, then the body's
    steps in reverse, each [``blocks`` residual blocks, stride-2 transposed conv] with its output
    padding chosen so every size (odd ones too) comes back exactly."""

    def __init__(self, in_dim, image_shape, blocks_out: int, channels, blocks, steps, hidden, activation):
        super().__init__()
        c, h, w = _check_image(image_shape, any_size=True)
        sizes = _halvings(h, w, steps)
        ch = channels * 2 ** (steps - 1)
        self.bottom = (ch,) + sizes[-1]
        mlp, d = _dense(in_dim, hidden, activation)
        self.mlp = nn.Sequential(*mlp, nn.Linear(d, ch * sizes[-1][0] * sizes[-1][1]))
        layers = []
        for i in range(steps, 0, -1):
            (hi, wi), (ho, wo) = sizes[i], sizes[i - 1]
            out = channels * 2 ** (i - 2) if i > 1 else blocks_out * c
            layers += [ResBlock(ch, activation) for _ in range(blocks)] + [make_activation(activation)]
            layers.append(
                nn.ConvTranspose2d(ch, out, 3, stride=2, padding=1, output_padding=(ho - 2 * hi + 1, wo - 2 * wi + 1))
            )
            ch = out
        self.conv = nn.Sequential(*layers)

    def forward(self, z):
        lead = z.shape[:-1]
        with _conv_autocast():
            h = self.mlp(z.reshape(-1, z.shape[-1]).float()).reshape((-1,) + self.bottom)
            out = self.conv(h)  # (B, K*C, H, W): block k is channels [k*C, (k+1)*C)
        return out.reshape(lead + (-1,))


def _check_image(image_shape, any_size: bool = False):
    if image_shape is None:
        raise ConfigError("a convolutional network needs image data; use encoder.type=mlp for tabular data")
    c, h, w = image_shape
    if not any_size and (h % 4 or w % 4):
        raise ConfigError(f"conv networks need image sides divisible by 4, got {h}x{w}; use type=resnet")
    return c, h, w


class Log1pInput(nn.Module):
    """``module(log(1 + x))``: what networks reading counts see (counts span orders of
    magnitude; likelihoods with ``log_input = True`` ask for it)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.out_dim = getattr(module, "out_dim", None)

    def forward(self, x, *args, **kwargs):
        return self.module(torch.log1p(x.float().clamp_min(0)), *args, **kwargs)


def reads_input(module: nn.Module, likelihood) -> nn.Module:
    """``module`` as the first network to see the data: behind log(1 + x) when the likelihood asks."""
    return Log1pInput(module) if getattr(likelihood, "log_input", False) else module


class GaussianEncoder(nn.Module):
    """q(z|x) = Normal(loc(x), scale(x)) with scale = softplus(.) + 1e-5 (no exp overflow)."""

    def __init__(self, body: nn.Module, latent_dim: int, extra_in: int = 0):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.out_dim + extra_in, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x, extra: Optional[torch.Tensor] = None):
        h = self.body(x)
        if extra is not None:
            h = torch.cat([h, extra], -1)
        loc, raw = self.head(h).float().split(self.latent_dim, -1)  # float32 under bf16 autocast too
        return loc, fast_softplus(raw) + 1e-5


class NetworkType:
    """A network type: builds an encoder body and a decoder from a :class:`NetConfig`."""

    @staticmethod
    def body(net_cfg, in_dim: int, image_shape=None) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def decoder(net_cfg, latent_dim: int, output_size: int, data_dim: int, image_shape=None) -> nn.Module:
        raise NotImplementedError  # pragma: no cover - abstract


@NETWORKS.register("mlp")
class MLPNetwork(NetworkType):
    """Fully connected layers (any data)."""

    @staticmethod
    def body(net_cfg, in_dim, image_shape=None):
        return MLP(in_dim, list(net_cfg.hidden), None, activation_of(net_cfg, "mlp"))

    @staticmethod
    def decoder(net_cfg, latent_dim, output_size, data_dim, image_shape=None):
        return MLP(latent_dim, list(net_cfg.hidden), output_size, activation_of(net_cfg, "mlp"))


@NETWORKS.register("conv")
class ConvNetwork(NetworkType):
    """Two stride-2 (transposed) convolutions, then the hidden layers (images, sides % 4 == 0)."""

    @staticmethod
    def body(net_cfg, in_dim, image_shape=None):
        return ConvBody(image_shape, list(net_cfg.hidden), activation_of(net_cfg, "conv"))

    @staticmethod
    def decoder(net_cfg, latent_dim, output_size, data_dim, image_shape=None):
        if output_size % data_dim:
            raise ConfigError("conv decoder needs output_size to be a multiple of data_dim")
        return ConvDecoder(
            latent_dim, image_shape, list(net_cfg.hidden), output_size // data_dim, activation_of(net_cfg, "conv")
        )


@NETWORKS.register("resnet")
class ResNetNetwork(NetworkType):
    """Residual convolutions (images of any size and channel count)."""

    @staticmethod
    def body(net_cfg, in_dim, image_shape=None):
        return ResNetBody(
            image_shape,
            net_cfg.channels,
            net_cfg.blocks,
            net_cfg.steps,
            list(net_cfg.hidden),
            activation_of(net_cfg, "resnet"),
        )

    @staticmethod
    def decoder(net_cfg, latent_dim, output_size, data_dim, image_shape=None):
        if output_size % data_dim:
            raise ConfigError("resnet decoder needs output_size to be a multiple of data_dim")
        return ResNetDecoder(
            latent_dim,
            image_shape,
            output_size // data_dim,
            net_cfg.channels,
            net_cfg.blocks,
            net_cfg.steps,
            list(net_cfg.hidden),
            activation_of(net_cfg, "resnet"),
        )


def make_body(net_cfg, in_dim: int, image_shape=None) -> nn.Module:
    """Encoder body from ``encoder:`` config; exposes ``out_dim``."""
    return NETWORKS.get(network_type(net_cfg, image_shape)).body(net_cfg, in_dim, image_shape)


def make_decoder(net_cfg, latent_dim: int, output_size: int, data_dim: int, image_shape=None) -> nn.Module:
    """Decoder from ``decoder:`` config: latent -> ``output_size`` raw outputs for the likelihood."""
    return NETWORKS.get(network_type(net_cfg, image_shape)).decoder(
        net_cfg, latent_dim, output_size, data_dim, image_shape
    )


class ConvClassifier(nn.Sequential):
    """The conv q(y|x): ``ConvBody`` -> [dropout] -> linear head, an ``nn.Sequential`` (the same
    parameter names). The body has no randomness, so a training step that needs it twice on the same
    rows (the pseudo-label term's labelling pass, then q(y|x) in the guide) computes it once:
    :meth:`keep_features` keeps it for later calls on that very tensor until :meth:`release`."""

    def __init__(self, *layers):
        super().__init__(*layers)
        self._kept = None

    def keep_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output on ``x`` (with gradients), reused by calls on ``x`` until :meth:`release`."""
        h = self[0](x)
        self._kept = (x, h)
        return h

    def release(self) -> None:
        self._kept = None

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The layers after the body (dropout as the module's mode says, then the linear head)."""
        for layer in list(self)[1:]:
            h = layer(h)
        return h

    def forward(self, x):
        kept = self._kept
        return self.head(kept[1] if kept is not None and kept[0] is x else self[0](x))


def make_classifier(
    in_dim: int,
    num_classes: int,
    hidden: Sequence[int],
    type: str = "mlp",
    activation="softplus",
    dropout: float = 0.0,
    image_shape=None,
) -> nn.Module:
    """x -> class logits: the network type's body with a linear head; optional dropout after
    each hidden layer (only active in training mode)."""
    if type == "conv":
        body = ConvBody(image_shape, list(hidden), activation)
        layers = [body] + ([Dropout(dropout)] if dropout else []) + [nn.Linear(body.out_dim, num_classes)]
        return ConvClassifier(*layers)
    NETWORKS.get(type)
    if not dropout:
        return MLP(in_dim, list(hidden), num_classes, activation)
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), make_activation(activation), Dropout(dropout)]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, num_classes))
