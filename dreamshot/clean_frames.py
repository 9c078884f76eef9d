"""Clean frames seen clean: per-frame timesteps from the denoise mask.

ComfyUI's stock inpainting keeps masked-out frames in the output, but the Wan2.1 model still
sees them re-noised at the current sigma with the same timestep as everything else. DreamShot's
references and given shots must reach the DiT exactly clean at t = 0, as Wan2.2-TI2V's first
frame does natively: the timestep of each latent frame is scaled by the frame's mean mask.
"""

from __future__ import annotations

import torch


def per_frame_timestep(timestep: torch.Tensor, denoise_mask: torch.Tensor) -> torch.Tensor:
    """[B] timesteps and a [B, 1, F, h, w] mask (1 = generate) -> [B, F] per-frame timesteps."""
    if denoise_mask.ndim != 5:
        raise ValueError(f"denoise_mask must be [B, C, F, h, w], got {tuple(denoise_mask.shape)}")
    frame_mask = denoise_mask.mean(dim=(1, 3, 4))  # [B or 1, F]
    t = timestep.reshape(timestep.shape[0], 1)
    return (frame_mask.to(t) * t).reshape(timestep.shape[0], -1)
