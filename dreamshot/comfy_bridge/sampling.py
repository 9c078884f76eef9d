"""Sampling a packed story with ComfyUI's own samplers (comfy.sample.sample, as KSampler does)."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview
import torch

from ..packing import decode_keyframes
from .wan_patches import patch_for_story


def sample_story(model, sequence, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                 denoise: float = 1.0) -> torch.Tensor:
    """Denoise the generated frames of ``sequence``; returns the full packed latent [1, C, F, h, w].

    Clean frames (references, kept shots) are copied back from the input afterwards: the sampler
    keeps them to ~1e-6, DreamShot promises them bit-exact.
    """
    m = patch_for_story(model, sequence)
    latent = sequence.latent
    latent_image = comfy.sample.fix_empty_latent_channels(m, latent)
    noise = comfy.sample.prepare_noise(latent_image, seed)
    mask = sequence.denoise_mask()
    positive = [[sequence.positive, {}]]
    negative = [[sequence.negative, {}]]
    # ComfyUI's progress bar (+ previews). The server's progress hook checks Cancel on every
    # update; checking here too makes Cancel work wherever the story is sampled.
    progress = latent_preview.prepare_callback(m, steps)

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress(step, x0, x, total_steps)
    out = comfy.sample.sample(
        m, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
        denoise=denoise, noise_mask=mask, callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = out.to(latent.device, latent.dtype)
    keep = torch.tensor([not g for g in sequence.layout.denoise_mask_values()], device=out.device)
    keep = keep.nonzero().flatten()
    out[:, :, keep] = latent[:, :, keep]
    return out


def keyframes_from_latent(sequence, latent: torch.Tensor) -> torch.Tensor:
    """Decode one keyframe per shot [S, H, W, 3]; kept shots come back as the given pixels."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    images = decode_keyframes(sequence.vae, sequence.layout, latent).float().cpu()
    for j, image in enumerate(sequence.plan.shot_images):
        if image is not None and sequence.layout.clean_shots[j]:
            images[j] = image.to(images)
    return images
