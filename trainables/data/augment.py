"""Random crop and horizontal flip of a whole epoch of images at once, on their device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def flip_crop(images: Tensor, *, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Flip each image horizontally with probability 1/2, then crop it at a random offset.

    `images: [n, c, h, w]` → new `[n, c, h, w]` tensor on the same device. The crop is taken
    from the image zero-padded by `padding` on every side, i.e. a shift of up to `padding`
    pixels each way (the CIFAR recipe of He et al. 2016). Draws, in this order, the flips
    and the row and column offsets from `generator`, whose device must be the images'.
    Cost: a handful of whole-tensor operations and 2·(2·padding + 1) masked copies, no
    per-example Python.
    """
    if images.ndim != 4:
        raise ValueError(f"flip_crop needs images [n, c, h, w]; got shape {tuple(images.shape)}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer; got {padding!r}")
    n, _, height, width = images.shape
    device = images.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    cols = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)

    flipped = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    padded = F.pad(flipped, (padding, padding, padding, padding))
    del flipped
    # Crop rows, then columns: each offset value is one masked copy over the images that
    # drew it, so 2·(2p + 1) copies instead of (2p + 1)² or a gather with a full index tensor.
    by_rows = padded.new_empty(n, images.shape[1], height, width + 2 * padding)
    for offset in range(2 * padding + 1):
        chosen = rows == offset
        by_rows[chosen] = padded[chosen, :, offset:offset + height, :]
    del padded
    out = images.new_empty(images.shape)
    for offset in range(2 * padding + 1):
        chosen = cols == offset
        out[chosen] = by_rows[chosen, :, :, offset:offset + width]
    return out
