"""Identity metrics of a storyboard, pure numpy on face embeddings.

The unit of counting is an **appearance**: one character that the shot script says is in one shot
(story with shots j = 1..S, expected cast E_j per shot, N = sum_j |E_j| appearances). Each
appearance gets at most one detected face (see :func:`attribute_faces`); an appearance without
a face is a **miss**, never skipped. With r_c the character's reference embedding, f the face
attributed to appearance (j, c) and cos the cosine similarity:

- identity similarity   ID = (1/N) * sum_(j,c) s_jc,  s_jc = cos(f, r_c) if found, 0 if a miss
- detected similarity   IDd = mean of cos(f, r_c) over found appearances only (informative)
- miss rate             MR = misses / N
- confusion rate        CR = confused / N, where a found appearance is confused when its face is
                        closer to another cast member's reference than to its own:
                        max_(c' != c) cos(f, r_c') > cos(f, r_c)  (c' over the story's whole cast)
- correct rate          1 - MR - CR  (every appearance is exactly one of correct, confused, miss)
- cross-shot consistency  CS = mean over characters with |J_c| >= 2 expected shots of
                        (1/|P_c|) * sum_((j,k) in P_c) t_jk, P_c = all pairs of c's expected shots,
                        t_jk = cos(f_jc, f_kc) if both faces are found, 0 if either is a miss.
                        NaN when no character is expected in two shots.

Rates use the appearance count N as the denominator, so a storyboard cannot look better by
dropping a character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from ..faces import assign, cosine_matrix

# Attribution by identity keeps every face that can be paired: a wrong character standing where
# the script expects another must count as *confused*, not vanish as a miss.
NO_THRESHOLD = -1.0


@dataclass(frozen=True)
class Appearance:
    """One expected (shot, character) and the face attributed to it (None = a miss)."""

    shot: int                      # 0-based shot index
    character: int                 # index into the story's cast
    embedding: np.ndarray | None   # (D,) L2-normalised, or None


@dataclass(frozen=True)
class IdentityMetrics:
    appearances: int
    found: int
    misses: int
    confused: int
    identity_similarity: float            # misses count 0
    identity_similarity_detected: float   # found appearances only (NaN if none)
    miss_rate: float
    confusion_rate: float
    consistency: float                    # NaN when no character is expected in two shots

    @property
    def correct_rate(self) -> float:
        return 1.0 - self.miss_rate - self.confusion_rate if self.appearances else math.nan


def _box_overlap(face_box, region_box) -> float:
    """Share of the face box that lies inside the region box (0..1)."""
    fx0, fy0, fx1, fy1 = face_box
    rx0, ry0, rx1, ry1 = region_box
    w = max(0.0, min(fx1, rx1) - max(fx0, rx0))
    h = max(0.0, min(fy1, ry1) - max(fy0, ry0))
    area = max((fx1 - fx0) * (fy1 - fy0), 1e-9)
    return w * h / area


def attribute_faces(face_embeddings: np.ndarray, face_boxes: Sequence, expected: Sequence[int],
                    references: np.ndarray, regions: dict[int, tuple[float, float, float, float]] | None = None,
                    min_overlap: float = 0.5) -> list[int | None]:
    """For each expected character of one shot, the index of its face (or None = a miss).

    With ``regions`` (pixel boxes for every expected character, from the script's layout) a face
    belongs to the character whose region holds at least ``min_overlap`` of its box: position
    decides, so two characters with swapped places are confused. Without them the faces are
    paired one-to-one with the expected characters by identity (Hungarian, no threshold): each
    expected character takes the face that resembles it most, extra faces (bystanders) are left
    out, and a character with no face left is a miss.
    """
    expected = list(expected)
    n_faces = 0 if face_embeddings is None else len(face_embeddings)
    if not expected:
        return []
    if n_faces == 0:
        return [None] * len(expected)
    if regions:
        overlap = np.array([[_box_overlap(box, regions[c]) for box in face_boxes] for c in expected])
        return assign(overlap, min_overlap)
    sim = cosine_matrix(np.asarray(references)[expected], face_embeddings)
    return assign(sim, NO_THRESHOLD)


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def identity_metrics(appearances: Sequence[Appearance], references: np.ndarray) -> IdentityMetrics:
    """The metrics of the module docstring over one story's appearances.

    ``references``: (C, D) one embedding per cast member, rows in cast order.
    """
    references = np.asarray(references, dtype=np.float32)
    scores, detected, confused = [], [], 0
    for a in appearances:
        if a.embedding is None:
            scores.append(0.0)
            continue
        sims = cosine_matrix(a.embedding[None], references)[0]
        own = float(sims[a.character])
        others = np.delete(sims, a.character)
        confused += int(others.size > 0 and float(others.max()) > own)
        scores.append(own)
        detected.append(own)
    n = len(appearances)
    misses = n - len(detected)
    return IdentityMetrics(
        appearances=n, found=len(detected), misses=misses, confused=confused,
        identity_similarity=_mean(scores), identity_similarity_detected=_mean(detected),
        miss_rate=misses / n if n else math.nan, confusion_rate=confused / n if n else math.nan,
        consistency=cross_shot_consistency(appearances))


def cross_shot_consistency(appearances: Sequence[Appearance]) -> float:
    """CS of the module docstring: pairwise face similarity of each character across its shots."""
    by_character: dict[int, list[np.ndarray | None]] = {}
    for a in appearances:
        by_character.setdefault(a.character, []).append(a.embedding)
    per_character = []
    for faces in by_character.values():
        if len(faces) < 2:
            continue
        pairs = [0.0 if f is None or g is None else float(cosine_matrix(f[None], g[None])[0, 0])
                 for f, g in combinations(faces, 2)]
        per_character.append(float(np.mean(pairs)))
    return _mean(per_character)


def clip_score(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """CLIP score per pair (row i of each): 100 * max(cos(image_i, text_i), 0), as in torchmetrics."""
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return 100.0 * np.maximum(cos, 0.0)
