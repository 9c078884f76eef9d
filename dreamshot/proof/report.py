"""Scoring generated shots with the colour classifier, and the results table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..shapes import SHAPE_CAST, classify_region
from .dataset import StorySpec

OUTCOMES = ("correct", "confused", "other", "none")


@dataclass
class Tally:
    """Outcomes over every expected placement (one per character the script puts in a shot)."""

    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in OUTCOMES})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rate(self, outcome: str) -> float:
        return self.counts[outcome] / self.total if self.total else float("nan")


def score_placement(image: np.ndarray, spec: StorySpec, j: int, k: int) -> str:
    """correct: the expected character; confused: another character of this story's cast;
    other: a cast member not in this story; none: no character colour in the region."""
    p = spec.shots[j][k]
    found, _ = classify_region(image, p.box, SHAPE_CAST)
    if found is None:
        return "none"
    if found == p.character:
        return "correct"
    return "confused" if found in spec.cast.values() else "other"


def score_story(tally: Tally, images: list[np.ndarray], spec: StorySpec) -> list[list[str]]:
    outcomes = []
    for j, image in enumerate(images):
        row = [score_placement(image, spec, j, k) for k in range(len(spec.shots[j]))]
        for o in row:
            tally.counts[o] += 1
        outcomes.append(row)
    return outcomes


def chance_accuracy(stories: list[StorySpec]) -> float:
    """Accuracy of a guess that knows the story's cast but not who is who (uniform over the cast)."""
    per = [1.0 / len(s.cast) for s in stories for shot in s.shots for _ in shot]
    return float(np.mean(per)) if per else float("nan")


def markdown_table(rows: list[tuple[str, Tally]], chance: float) -> str:
    lines = ["| condition | placements | identity accuracy | confusion rate | other cast | none |",
             "|---|---|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t.total} | {t.rate('correct'):.1%} | {t.rate('confused'):.1%} | "
                     f"{t.rate('other'):.1%} | {t.rate('none'):.1%} |")
    lines.append(f"| (chance: uniform guess within each story's cast) | | {chance:.1%} | {1 - chance:.1%} | | |")
    return "\n".join(lines)
