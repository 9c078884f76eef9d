"""Auto regions: where a shot has no mask or box, each of its tokens belongs to the character of its
cast whose reference it attends to most (positive batch rows only)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..attention_stats import key_set_logsumexp, temp_budget
from .heads import attention_scale
from .regions import UNCONSTRAINED


def auto_regions(q: torch.Tensor, k: torch.Tensor, heads: int, shot_tokens: Sequence[torch.Tensor],
                 shot_casts: Sequence[Sequence[int]], ref_char_tokens: Sequence[torch.Tensor],
                 batch: slice | None = None, min_mass: float = 0.0, scale: float | None = None,
                 budget_bytes: int | None = None) -> list[torch.Tensor]:
    """Regions from the attention itself: per shot j, a group id (c+1) for each of ``shot_tokens[j]``.

    A token of shot j may draw identity only from one character of the shot's cast
    ``shot_casts[j]`` (the characters the shot lists; a character the shot does not list is never
    chosen):

    - no cast member has reference tokens: -1 (unconstrained), there is nothing to choose;
    - one has: every token of the shot is tied to it, computed from nothing (the shot must not read
      the other characters' references, whichever token it is);
    - several: the one whose reference tokens receive most of the token's attention, as a share of
      its attention on the cast's references, averaged over heads and over the batch rows ``batch``
      (None: all rows; the caller picks the positive prompt's rows, see comfy_bridge.role_patch).

    There is no background in this mode: without masks nothing says a token is background, and
    forbidding every reference could erase a character that is still forming. With ``min_mass`` > 0,
    a token whose chosen character's mass, as a fraction of its whole attention row (all N keys), is
    below it stays -1: it barely reads any reference, so there is nothing to redirect.

    Without gradients; logits in q's dtype, in blocks of rows x reference keys within
    ``budget_bytes`` (default ``attention_stats.temp_budget(q)``).
    """
    if len(shot_tokens) != len(shot_casts):
        raise ValueError(f"{len(shot_tokens)} shots of tokens for {len(shot_casts)} casts")
    dev = q.device
    out = [torch.full((len(t),), UNCONSTRAINED, dtype=torch.long, device=dev) for t in shot_tokens]
    with_refs = {c for c, t in enumerate(ref_char_tokens) if t.numel()}
    by_cast: dict[tuple[int, ...], list[int]] = {}
    for j, (tokens, cast) in enumerate(zip(shot_tokens, shot_casts)):
        candidates = tuple(sorted(set(cast) & with_refs))
        if not candidates or not len(tokens):
            continue
        if len(candidates) == 1 and min_mass <= 0:
            out[j].fill_(candidates[0] + 1)
            continue
        by_cast.setdefault(candidates, []).append(j)
    s = attention_scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    for candidates, shots in by_cast.items():
        rows = torch.cat([shot_tokens[j].cpu() for j in shots])
        key_sets = [ref_char_tokens[c] for c in candidates] + ([None] if min_mass > 0 else [])
        lse = key_set_logsumexp(q, k, heads, rows, key_sets, s, budget, batch)
        norm = lse[..., -1:] if min_mass > 0 else torch.logsumexp(lse, dim=-1, keepdim=True)
        mass = torch.exp(lse[..., :len(candidates)] - norm).mean(dim=(0, 1))  # [rows, candidates]
        best, pick = mass.max(dim=-1)
        g = torch.tensor(candidates, device=dev)[pick] + 1
        if min_mass > 0:
            g = torch.where(best >= min_mass, g, torch.full_like(g, UNCONSTRAINED))
        for j, part in zip(shots, g.split([len(shot_tokens[j]) for j in shots])):
            out[j] = part
    return out


# -- step range -------------------------------------------------------------------------------
