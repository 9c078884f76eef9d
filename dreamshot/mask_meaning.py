"""Which way round a reference mask is.

DreamShot wants 1 = character. ComfyUI gives both: Load Image's MASK is 1 - alpha, so a cut-out PNG
(transparent background) gives 1 on the background, while a mask painted in the mask editor gives 1
on what was painted. ``auto`` tells them apart by the border: a character rarely covers most of the
image's outer edge, a cut-out's background nearly always does; an all-zero mask (Load Image's MASK of
an image without transparency) is read the Load Image way too, so the whole reference counts.
"""

from __future__ import annotations

import torch

MASK_MEANINGS = ("auto", "1 = character", "1 = background")
AUTO_BORDER_SHARE = 0.5


def border_share(mask: torch.Tensor) -> float:
    """Mean of ``mask`` ([..., H, W], 0..1) over its outermost rows and columns, all images together."""
    m = mask.float()
    h, w = m.shape[-2:]
    if h < 3 or w < 3:
        return float(m.mean())
    edge = torch.cat([m[..., 0, :].flatten(), m[..., -1, :].flatten(), m[..., 1:-1, 0].flatten(),
                      m[..., 1:-1, -1].flatten()])
    return float(edge.mean())


def character_mask(mask: torch.Tensor, meaning: str = "auto") -> tuple[torch.Tensor, bool]:
    """(mask with 1 = character, whether it was inverted) for a mask read as ``meaning``."""
    if meaning not in MASK_MEANINGS:
        raise ValueError(f"unknown mask meaning {meaning!r}; use one of {MASK_MEANINGS}")
    # auto: an all-zero mask is Load Image's MASK of an opaque image (nothing transparent), i.e. all character.
    invert = meaning == "1 = background" or (meaning == "auto" and (border_share(mask) > AUTO_BORDER_SHARE
                                                                    or not bool(mask.any())))
    return (1.0 - mask.float() if invert else mask), invert
