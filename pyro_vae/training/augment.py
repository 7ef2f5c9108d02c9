"""Training-time image augmentation of the semi-supervised classifier (the aux and pseudo-label terms)."""

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, image_shape, max_shift: int, generator=None) -> torch.Tensor:
    """Each flattened image of ``x`` (B, C*H*W) moved by its own random whole-pixel offset
    (dy, dx) in [-max_shift, max_shift]; pixels moved in from outside are 0."""
    if not max_shift:
        return x
    c, h, w = image_shape
    b, s = x.shape[0], int(max_shift)
    padded = F.pad(x.reshape(b, c, h, w), (s, s, s, s))
    offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device) + offsets[:, :1])[:, None, :, None]  # (B, 1, H, 1)
    cols = (torch.arange(w, device=x.device) + offsets[:, 1:])[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols].reshape(b, -1)


def augment_images(x: torch.Tensor, image_shape, max_shift: int = 0, generator=None) -> torch.Tensor:
    """A random whole-pixel shift of up to ``max_shift`` pixels per image."""
    return random_shift(x, image_shape, max_shift, generator)


def strong_augment(x: torch.Tensor, image_shape, generator=None) -> torch.Tensor:
    """The pseudo-label term's strong augmentation of flattened images (B, C*H*W): a random shift of
    up to max(1, H // 8) pixels, a left-right mirror of half the images, and one square of side H // 2
    at a random place (it may reach past the border) set to 0 (cutout, DeVries & Taylor 2017)."""
    c, h, w = image_shape
    b = x.shape[0]
    x = random_shift(x, image_shape, max(1, h // 8), generator).reshape(b, c, h, w)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    s = h // 2
    top = torch.randint(-s // 2, h - s // 2, (b,), generator=generator).to(x.device)[:, None, None]
    left = torch.randint(-s // 2, w - s // 2, (b,), generator=generator).to(x.device)[:, None, None]
    r = torch.arange(h, device=x.device)[None, :, None]
    q = torch.arange(w, device=x.device)[None, None, :]
    hole = (r >= top) & (r < top + s) & (q >= left) & (q < left + s)  # (B, H, W)
    return (x * (~hole)[:, None].to(x.dtype)).reshape(b, -1)
