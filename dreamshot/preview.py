"""What the sampling preview shows: the shots of the pass, tiled into one latent image.

ComfyUI's previewers show latent frame 0 of a video latent, which in a packed story is the first
reference (or the first context shot), never what is being generated. ``shot_grid`` tiles each
shot's last latent frame into one frame, [1, C, 1, H', W'], that any ComfyUI previewer (latent to
RGB, TAESD/TAEHV) turns into one picture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layout import StoryLayout

# Long side of the grid in latent pixels (x8 in pixels with a TAE previewer): 12 shots at 720p
# (160 x 90 latent each) tile 4 x 3 = 640 x 270, shown at 256 x 108; the server caps previews at
# 512 px anyway.
MAX_GRID_SIDE = 256


def grid_shape(num_shots: int) -> tuple[int, int]:
    """(rows, columns): as square as possible, columns first."""
    cols = max(1, math.ceil(math.sqrt(num_shots)))
    return math.ceil(num_shots / cols), cols


def shot_grid(latent: torch.Tensor, layout: StoryLayout, max_side: int = MAX_GRID_SIDE) -> torch.Tensor:
    """latent [B, C, F, h, w] of a packed story -> [1, C, 1, H', W']: shot j's last latent frame in
    cell j (row-major), empty cells zero, area-downscaled so the long side is at most ``max_side``."""
    frames = [layout.shot_frames(j)[-1] for j in range(layout.num_shots)]
    shots = latent[0, :, frames]                                     # [C, S, h, w]
    c, s, h, w = shots.shape
    rows, cols = grid_shape(s)
    pad = rows * cols - s
    if pad:
        shots = torch.cat([shots, shots.new_zeros(c, pad, h, w)], dim=1)
    grid = shots.reshape(c, rows, cols, h, w).permute(0, 1, 3, 2, 4).reshape(c, rows * h, cols * w)
    scale = max_side / max(grid.shape[1:])
    if scale < 1:
        size = (max(1, round(grid.shape[1] * scale)), max(1, round(grid.shape[2] * scale)))
        grid = F.interpolate(grid.unsqueeze(0).float(), size=size, mode="area")[0].to(grid.dtype)
    return grid.reshape(1, c, 1, *grid.shape[1:])
