"""References that are not people (a location or a prop) in role attention.

A scene reference is a role of its own in the role map (dreamshot.role_attention.build_role_map
numbers references by cast index whatever their kind): inside a character's region, its reference
is forbidden like another character's; a prop with a box (or mask) gets its region like a character;
auto regions may give a token to it. One thing differs: in a shot with regions, the tokens outside
every region (group 0, "background") would be barred from every reference, the location's too,
although the background of a shot set in a place IS that place. ``location_backgrounds`` hands
those tokens to the shot's location: they may read the location's reference and no other.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .role_attention import BACKGROUND

PERSON = "character"


def is_person(kind: str) -> bool:
    return kind == PERSON


def shot_location(cast: Sequence[int], kinds: Sequence[str], with_region: Sequence[int] = ()) -> int | None:
    """The cast index of the one location a shot lists without a region of its own, else None
    (none, or several: then nothing says which place the background is)."""
    places = [c for c in cast if kinds[c] == "location" and c not in with_region]
    return places[0] if len(places) == 1 else None


def location_backgrounds(groups: torch.Tensor, shot_spans: Sequence[tuple[int, int]],
                         shot_casts: Sequence[Sequence[int]], kinds: Sequence[str],
                         shot_regions: Sequence[dict] | None = None) -> torch.Tensor:
    """``groups`` [N] (role_attention group ids) with each shot's background tokens given to the
    shot's location (group c+1), where it lists exactly one location that has no region of its own.
    Shots without regions (all -1) are left alone. Returns a new tensor when anything changes."""
    out = groups
    for j, ((a, b), cast) in enumerate(zip(shot_spans, shot_casts)):
        regions = shot_regions[j] if shot_regions else {}
        place = shot_location(cast, kinds, tuple(regions or ()))
        if place is None:
            continue
        span = out[a:b]
        background = span == BACKGROUND
        if bool(background.any()):
            if out is groups:
                out = groups.clone()
            out[a:b] = torch.where(background, torch.full_like(span, place + 1), span)
    return out
