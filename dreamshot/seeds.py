"""Per-shot seeds and the story's initial noise.

Each shot's initial noise comes from its own seed: the shot's ``seed`` when it has one, else one
derived from the sampler's seed and the shot's number. So re-rolling one shot (a new seed on its
Shot Script) leaves the other shots' initial noise exactly as it was, and a shot keeps its noise
whichever chunk of a long story it is generated in. Reference frames get no noise: they are clean
(the sampler never denoises them).

Variants: variant v of a run with seed s is exactly the run with seed s + v (mod 2^64); shots with
their own seed keep it in every variant.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .layout import StoryLayout

SEED_MOD = 1 << 64
MAX_SEED = SEED_MOD - 1
_MASK = MAX_SEED


def _splitmix64(x: int) -> int:
    """One SplitMix64 step (Steele et al. 2014): a bijective, well-mixed map of 64-bit integers, so
    nearby sampler seeds and shot numbers give unrelated shot seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derived_shot_seed(seed: int, shot: int) -> int:
    """The seed of shot ``shot`` (0-based) of a run with sampler seed ``seed``, when it has none."""
    return _splitmix64((_splitmix64(int(seed) % SEED_MOD) + int(shot)) & _MASK)


def variant_seed(seed: int, variant: int) -> int:
    """The sampler seed of variant ``variant`` (0-based) of a run: seed + variant, wrapping at 2^64."""
    return (int(seed) + int(variant)) % SEED_MOD


def shot_seeds(own: Sequence[int | None], seed: int) -> list[int]:
    """Per shot: its own seed, or the one derived from the sampler seed and its number."""
    return [derived_shot_seed(seed, j) if s is None else int(s) % SEED_MOD for j, s in enumerate(own)]


def story_noise(layout: StoryLayout, seeds: Sequence[int], channels: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The initial noise [1, C, F, h, w] (CPU): zeros on reference frames, shot j's latent frames
    drawn from a generator seeded with ``seeds[j]`` (as ComfyUI's prepare_noise draws a latent)."""
    if len(seeds) != layout.num_shots:
        raise ValueError(f"{len(seeds)} seeds for {layout.num_shots} shots")
    h, w, n = layout.latent_height, layout.latent_width, layout.frames_per_shot
    parts = [torch.zeros(1, channels, layout.num_refs, h, w)]
    for s in seeds:
        generator = torch.Generator(device="cpu").manual_seed(int(s))
        parts.append(torch.randn(1, channels, n, h, w, generator=generator))
    return torch.cat(parts, dim=2).to(dtype)
