"""The reference images and the two-character cast that the in-process node tests share."""

from __future__ import annotations

import torch


def random_image(seed: int, h: int, w: int) -> torch.Tensor:
    """A [1, h, w, 3] IMAGE of uniform noise from its own CPU generator (the same pixels on any machine)."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def mira_and_theo(N, h: int, w: int, theo_seed: int = 2):
    """CHARACTERS: Mira (h x w, described) then Theo (48 x 80: another size than the shots, so the pack
    fits references of mixed sizes)."""
    (chars,) = N.DreamShotCharacterReference(image=random_image(1, h, w), name="Mira", description="a woman in green")
    (chars,) = N.DreamShotCharacterReference(image=random_image(theo_seed, 48, 80), name="Theo", characters=chars)
    return chars
