"""Character regions in token space: pixel masks and boxes onto the patch grid.

Latent frame f owns tokens [f*P, (f+1)*P) (see ``layout``); inside a frame tokens are row-major
on the (H/16, W/16) patch grid. Pixel masks are area-averaged onto that grid, so a token's weight
is the fraction of its 16x16 pixel patch inside the mask (soft edges allowed). A reference frame
without a mask counts whole as its character. A shot region applies to every latent frame of
its shot. Hard membership (inference, auto regions) is weight >= ``threshold`` (0.5); the loss
keeps the soft weights.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..layout import PIXEL_MULTIPLE

UNCONSTRAINED = -1  # group of a query no role applies to (reference tokens, shots without regions)
BACKGROUND = 0  # group of a shot token outside every character region
DEFAULT_THRESHOLD = 0.5

Box = Sequence[float]
RegionSpec = Union[torch.Tensor, Box]


def pixel_mask_to_tokens(mask: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Area-average a pixel mask onto the patch-token grid.

    Parameters
    ----------
    mask : Tensor
        [H, W] or [..., H, W], values in 0..1 (bool accepted).
    grid : (h_tok, w_tok), optional
        Token grid; default (H // 16, W // 16), Wan's VAE (8x) + patchify (2x).

    Returns
    -------
    Tensor
        [..., h_tok * w_tok] float32 weights, row-major (h then w) as Wan flattens a frame.
    """
    if mask.dim() < 2:
        raise ValueError(f"mask must be [..., H, W], got shape {tuple(mask.shape)}")
    mask = mask.float()
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError("mask values must lie in 0..1")
    *lead, height, width = mask.shape
    if grid is None:
        grid = (height // PIXEL_MULTIPLE, width // PIXEL_MULTIPLE)
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"token grid {grid} is empty for a {height}x{width} mask")
    # adaptive average pooling = exact area average when H, W are multiples of the grid
    pooled = F.adaptive_avg_pool2d(mask.reshape(-1, 1, height, width), grid)
    return pooled.reshape(*lead, grid[0] * grid[1]).clamp_(0.0, 1.0)


def box_to_mask(box: Box, width: int, height: int, normalized: bool | None = None) -> torch.Tensor:
    """A [height, width] mask of a box (x0, y0, x1, y1), each pixel weighted by its area covered.

    Parameters
    ----------
    box : (x0, y0, x1, y1)
        Pixel coordinates (x1, y1 exclusive edges), or fractions of the image size.
    width, height : int
        Mask size in pixels.
    normalized : bool, optional
        Force the interpretation; by default a box whose coordinates are all <= 1 is taken as
        normalised (a 1-pixel box is never what a user means).
    """
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if normalized is None:
        normalized = max(x0, y0, x1, y1) <= 1.0
    if normalized:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty: needs x1 > x0 and y1 > y0")

    def coverage(lo: float, hi: float, size: int) -> torch.Tensor:
        px = torch.arange(size, dtype=torch.float64)
        return (torch.minimum(px + 1, torch.tensor(hi)) - torch.maximum(px, torch.tensor(lo))).clamp(0, 1)

    return (coverage(y0, y1, height)[:, None] * coverage(x0, x1, width)[None, :]).float()
