"""Training-time image augmentation (the semi-supervised classifier's aux term)."""
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
