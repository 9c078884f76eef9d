"""The role map of one story: each character's reference tokens and its regions in every shot,
shared by the RACL loss (soft weights) and the inference patch (hard tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..errors import DreamShotInputError
from ..layout import StoryLayout
from .regions import BACKGROUND, DEFAULT_THRESHOLD, UNCONSTRAINED, RegionSpec, box_to_mask, pixel_mask_to_tokens


def _hard(tokens: torch.Tensor, weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """Tokens with weight >= threshold; a mask smaller than one token keeps its best token(s)."""
    keep = weights >= threshold
    if not bool(keep.any()) and weights.numel():
        keep = weights == weights.max()
    return tokens[keep]


@dataclass
class ShotRegion:
    """One character's region in one shot, on all latent frames of the shot.

    ``tokens``/``weights``: global token indices with weight > 0 and their soft weights (loss);
    ``hard_tokens``: those with weight >= the role map's threshold (inference).
    """

    shot: int
    character: int
    tokens: torch.Tensor
    weights: torch.Tensor
    hard_tokens: torch.Tensor


@dataclass
class RoleMap:
    """Token-level roles of one story: reference-character tokens and shot regions.

    Attributes
    ----------
    num_tokens : int
        N, tokens of the whole packed sequence.
    ref_tokens, ref_weights : list[Tensor]
        Per character c: global indices of its reference tokens with weight > 0 (all its
        reference frames) and their soft weights. A reference without mask counts whole (1).
    ref_hard_tokens : list[Tensor]
        Per character: reference tokens with weight >= threshold (the keys the patch biases).
    regions : list[ShotRegion]
        Per (shot, character) region given by a mask or box.
    shot_spans : list[(start, end)]
        Token span of each shot (all its latent frames).
    threshold : float
        Hard-membership threshold used for ``*_hard_tokens``.
    """

    num_tokens: int
    ref_tokens: list[torch.Tensor]
    ref_weights: list[torch.Tensor]
    ref_hard_tokens: list[torch.Tensor]
    regions: list[ShotRegion]
    shot_spans: list[tuple[int, int]]
    threshold: float = DEFAULT_THRESHOLD

    @property
    def num_characters(self) -> int:
        return len(self.ref_tokens)

    def shots_with_regions(self) -> list[int]:
        return sorted({r.shot for r in self.regions})

    def unregioned_shots(self) -> list[int]:
        """Shots with no region given (candidates for ``auto_regions``; tokens: ``shot_spans``)."""
        given = set(self.shots_with_regions())
        return [j for j in range(len(self.shot_spans)) if j not in given]

    def group_of_query(self) -> torch.Tensor:
        """[N] group ids for ``role_masked_self_attention``.

        -1 for reference tokens and for shots without any region (no information: leave them
        to ``auto_regions`` or unconstrained); in a shot with regions, 0 outside all of them and
        c+1 inside character c's region. Where hard regions overlap, the higher weight wins
        (ties: lower character index).
        """
        groups = torch.full((self.num_tokens,), UNCONSTRAINED, dtype=torch.long)
        for j in self.shots_with_regions():
            a, b = self.shot_spans[j]
            groups[a:b] = BACKGROUND
        best = torch.zeros(self.num_tokens)
        for region in sorted(self.regions, key=lambda r: (r.shot, r.character)):
            weight = torch.zeros(self.num_tokens)
            weight[region.tokens] = region.weights.to(weight.device)
            hard = torch.zeros(self.num_tokens, dtype=torch.bool)
            hard[region.hard_tokens] = True
            wins = hard & (weight > best)
            groups[wins] = region.character + 1
            best = torch.where(wins, weight, best)
        return groups

    def to(self, device: torch.device | str) -> "RoleMap":
        def mv(t):
            return t.to(device)
        regions = [ShotRegion(r.shot, r.character, mv(r.tokens), mv(r.weights), mv(r.hard_tokens))
                   for r in self.regions]
        return RoleMap(self.num_tokens, [mv(t) for t in self.ref_tokens], [mv(w) for w in self.ref_weights],
                       [mv(t) for t in self.ref_hard_tokens], regions, list(self.shot_spans), self.threshold)


def _as_mask(spec: RegionSpec, layout: StoryLayout, what: str) -> torch.Tensor:
    if not isinstance(spec, torch.Tensor):
        return box_to_mask(spec, layout.width, layout.height)
    mask = spec
    if mask.dim() == 3 and mask.shape[0] == 1:  # ComfyUI MASK batch of one
        mask = mask[0]
    if mask.dim() != 2:
        raise DreamShotInputError(what, f"expected one [H, W] mask, got shape {tuple(spec.shape)}.",
                                  "give a single mask (batch of 1).")
    return mask


def build_role_map(layout: StoryLayout,
                   ref_masks: Sequence[torch.Tensor | None] | None = None,
                   shot_regions: Sequence[Mapping[int, RegionSpec] | None] | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> RoleMap:
    """Downsample reference masks and shot regions to token space.

    Parameters
    ----------
    layout : StoryLayout
        ``layout.ref_characters`` maps reference frame -> character index.
    ref_masks : list of Tensor or None, optional
        Per reference frame, a [H, W] (or [1, H, W]) mask of its character in 0..1; None = the
        whole reference frame is the character.
    shot_regions : list of {character: mask or box} or None, optional
        Per shot, each character's region as a [H, W] mask or an (x0, y0, x1, y1) box (pixels or
        normalised, see ``box_to_mask``). Applies to every latent frame of the shot.
    threshold : float
        Hard-membership threshold (weight >= threshold) for inference; the loss keeps soft weights.

    Masks of another size are area-resized onto the layout's token grid ((height/16, width/16) on Wan2.1).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    grid = layout.token_grid
    p = layout.tokens_per_frame
    ref_masks = list(ref_masks) if ref_masks else [None] * layout.num_refs
    if len(ref_masks) != layout.num_refs:
        raise ValueError(f"{len(ref_masks)} reference masks for {layout.num_refs} reference frames")
    shot_regions = list(shot_regions) if shot_regions else [None] * layout.num_shots
    if len(shot_regions) != layout.num_shots:
        raise ValueError(f"{len(shot_regions)} region dicts for {layout.num_shots} shots")

    num_chars = max(layout.ref_characters, default=-1) + 1
    toks: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    wts: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    hard: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    for ref, char in enumerate(layout.ref_characters):
        start = layout.ref_token_span(ref)[0]
        if ref_masks[ref] is None:
            w = torch.ones(p)
        else:
            w = pixel_mask_to_tokens(_as_mask(ref_masks[ref], layout, "mask"), grid)
            if not bool((w > 0).any()):
                raise DreamShotInputError("mask", f"the mask of reference {ref} is empty.",
                                          "paint the character in the mask, or leave the mask unconnected.")
        local = torch.nonzero(w > 0).squeeze(1)
        toks[char].append(start + local)
        wts[char].append(w[local])
        hard[char].append(_hard(start + local, w[local], threshold))

    regions: list[ShotRegion] = []
    for shot, spec in enumerate(shot_regions):
        for char in sorted(spec or {}):
            if not 0 <= char < num_chars or not toks[char]:
                raise DreamShotInputError(
                    "regions", f"shot {shot} has a region for character {char}, which has no reference frame.",
                    "give that character a reference image, or remove its region.")
            w = pixel_mask_to_tokens(_as_mask(spec[char], layout, "regions"), grid)
            local = torch.nonzero(w > 0).squeeze(1)
            if not local.numel():
                continue  # an empty region says nothing
            frames = torch.tensor([layout.frame_token_span(f)[0] for f in layout.shot_frames(shot)])
            tokens = (frames[:, None] + local[None, :]).reshape(-1)
            weights = w[local].repeat(len(frames))
            regions.append(ShotRegion(shot, char, tokens, weights, _hard(tokens, weights, threshold)))

    def cat(parts: list[torch.Tensor], dtype) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return RoleMap(
        num_tokens=layout.num_tokens,
        ref_tokens=[cat(t, torch.long) for t in toks],
        ref_weights=[cat(w, torch.float32) for w in wts],
        ref_hard_tokens=[cat(h, torch.long) for h in hard],
        regions=regions,
        shot_spans=[layout.shot_token_span(j) for j in range(layout.num_shots)],
        threshold=threshold,
    )
