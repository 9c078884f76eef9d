"""A packed story of any size without the VAE: random latents and text, one character mask per shot.

Memory tests need stories far larger than the cached 64x64 ones (tokens drive activation memory);
encoding such images with the full-size random VAE would take minutes on a CPU.
"""

from __future__ import annotations

import torch

from dreamshot.layout import StoryLayout
from dreamshot.train.cache import Sample


def synthetic_sample(width: int, height: int, num_refs: int = 2, num_shots: int = 3, text_length: int = 32,
                     seed: int = 0) -> Sample:
    """Reference-to-shot: ``num_refs`` references (one character each) then ``num_shots`` noised shots,
    shot j showing character j % num_refs in its left half."""
    g = torch.Generator().manual_seed(seed)
    layout = StoryLayout(num_refs=num_refs, num_shots=num_shots, width=width, height=height,
                         ref_characters=tuple(range(num_refs)))
    f = layout.num_latent_frames
    latent = torch.randn(1, 16, f, layout.latent_height, layout.latent_width, generator=g)
    noised = torch.tensor([not layout.frame_is_clean(i) for i in range(f)])
    context = torch.randn(1, num_shots * text_length, 4096, generator=g)
    gh, gw = layout.latent_height // 2, layout.latent_width // 2
    left = torch.zeros(gh, gw)
    left[:, : gw // 2] = 1.0
    regions = [{j % num_refs: left.clone()} for j in range(num_shots)] if num_refs else [{} for _ in range(num_shots)]
    frame_segments = [-1] * num_refs + list(range(num_shots))
    return Sample(mode="reference_to_shot", latent=latent, noised=noised, context=context, layout=layout,
                  frame_segments=frame_segments, num_segments=num_shots, segment_length=text_length,
                  ref_masks=[None] * num_refs, shot_regions=regions)
