"""The generation modes. One set of weights; a mode only decides which latent frames are clean.

- reference_to_shot (R2S): reference frames clean, every shot generated.
- text_to_shot (T2S): no references, every shot generated.
- shot_to_shot (S2S): the first shots are given (clean), the later ones generated; references
  are used when there are any.
- edit: any subset of shots is given and kept exactly; the others are regenerated
  ("regenerate shot 3 of 6, keep the rest").
"""

from __future__ import annotations

from enum import Enum

from .errors import DreamShotInputError


class Mode(str, Enum):
    REFERENCE_TO_SHOT = "reference_to_shot"
    TEXT_TO_SHOT = "text_to_shot"
    SHOT_TO_SHOT = "shot_to_shot"
    EDIT = "edit"

    @classmethod
    def parse(cls, value: "str | Mode") -> "Mode":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise DreamShotInputError("mode", f"unknown mode {value!r}.", f"use one of: {names}.") from None

    @property
    def uses_references(self) -> bool:
        return self is not Mode.TEXT_TO_SHOT


def resolve_clean_shots(mode: "Mode | str", num_refs: int, given_shots: list[bool]) -> tuple[bool, ...]:
    """Which shots are kept clean, checked against the mode.

    Args:
        mode: the generation mode.
        num_refs: reference frames that will be used (0 in text_to_shot).
        given_shots: per shot, True when the user supplied an image for it.

    Returns:
        Per shot, True when it is kept clean (not generated).
    """
    mode = Mode.parse(mode)
    given = list(given_shots)
    n_given = sum(given)
    if mode is Mode.REFERENCE_TO_SHOT:
        if num_refs == 0:
            raise DreamShotInputError(
                "characters", "reference_to_shot needs at least one character reference.",
                "connect a Character Reference, or use mode text_to_shot.")
        if n_given:
            raise DreamShotInputError(
                "shots", f"reference_to_shot generates every shot, but {n_given} shot(s) carry an image.",
                "remove the shot images, or use mode shot_to_shot (given shots first) or edit (any shots kept).")
        return tuple(False for _ in given)
    if mode is Mode.TEXT_TO_SHOT:
        if n_given:
            raise DreamShotInputError(
                "shots", f"text_to_shot generates every shot, but {n_given} shot(s) carry an image.",
                "remove the shot images, or use mode shot_to_shot or edit.")
        return tuple(False for _ in given)
    if n_given == 0:
        raise DreamShotInputError(
            "shots", f"{mode.value} needs at least one given shot image, but none was given.",
            "give an image to the shots to keep (Shot Script 'image', or keyframes + lock_shots).")
    if n_given == len(given):
        raise DreamShotInputError(
            "shots", f"all {len(given)} shots are given, so there is nothing to generate.",
            "leave at least one shot without an image (or unlock it).")
    if mode is Mode.SHOT_TO_SHOT:
        first_generated = given.index(False)
        if any(given[first_generated:]):
            raise DreamShotInputError(
                "shots", "shot_to_shot keeps the EARLIER shots and generates the later ones, but a given "
                f"shot follows generated shot {first_generated + 1}.",
                "give images only to the first shots, or use mode edit to keep any subset.")
    return tuple(given)


def parse_shot_list(text: str, num_shots: int, input_name: str = "lock_shots") -> list[int]:
    """Parse a 1-based shot list such as "1, 3-5" into sorted 0-based indices."""
    picked: set[int] = set()
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
            else:
                lo = hi = int(part)
        except ValueError:
            raise DreamShotInputError(input_name, f"{part!r} is not a shot number or range.",
                                      'write shot numbers like "1, 3-5".') from None
        if lo > hi:
            lo, hi = hi, lo
        if lo < 1 or hi > num_shots:
            raise DreamShotInputError(input_name, f"{part!r} is outside shots 1..{num_shots}.",
                                      f"use shot numbers between 1 and {num_shots}.")
        picked.update(range(lo - 1, hi))
    return sorted(picked)
