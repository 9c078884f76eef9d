"""Characters of a shot sequence: identity clusters, a reference per character, reference-to-shot pairing.

1. :func:`cluster_faces` groups the faces of a sequence's shots into identities. Shots are taken
   in order and each shot's faces are matched one-to-one (Hungarian, :func:`dreamshot.faces.assign`)
   to the identities so far, so two faces of one shot never merge into one character.
2. :func:`choose_references` picks, per identity, the face most similar to it among shots
   *outside* the sequence (the paper takes references from elsewhere in the video, so training
   does not learn to copy a shot), again one-to-one; identities without one fall back to their own
   largest face inside the sequence.
3. :func:`pair_with_references` is the paper's ArcFace pairing: each shot's faces are matched to
   the reference embeddings by cosine similarity, one-to-one, below a threshold nobody.

Characters whose faces are not visible in a shot can be added by a pairing hook (e.g. a VLM):
see :class:`ShotPairer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..faces import assign, cosine_matrix


@dataclass
class Identity:
    """One character of a sequence: which faces (shot position, face index) belong to it."""

    members: list[tuple[int, int]] = field(default_factory=list)
    total: np.ndarray | None = None

    @property
    def centroid(self) -> np.ndarray:
        return (self.total / max(float(np.linalg.norm(self.total)), 1e-12)).astype(np.float32)

    def add(self, shot: int, face: int, embedding: np.ndarray) -> None:
        self.members.append((shot, face))
        self.total = embedding.astype(np.float64) if self.total is None else self.total + embedding

    @property
    def shots(self) -> set[int]:
        return {s for s, _ in self.members}


def cluster_faces(embeddings_per_shot: list[np.ndarray], min_similarity: float) -> list[Identity]:
    """Identities across shots; ``embeddings_per_shot[i]`` is an (F_i, D) array of shot i's faces."""
    identities: list[Identity] = []
    for shot, embs in enumerate(embeddings_per_shot):
        if len(embs) == 0:
            continue
        matched: list[int | None] = [None] * len(embs)
        if identities:
            matched = assign(cosine_matrix(embs, np.stack([i.centroid for i in identities])), min_similarity)
        for f, ident in enumerate(matched):
            if ident is None:
                identities.append(Identity())
                ident = len(identities) - 1
            identities[ident].add(shot, f, embs[f])
    return identities


def choose_references(centroids: np.ndarray, pool: np.ndarray, min_similarity: float) -> list[int | None]:
    """Per identity centroid, the index of its reference face in ``pool`` (N, D), one-to-one, or None."""
    if len(centroids) == 0 or len(pool) == 0:
        return [None] * len(centroids)
    return assign(cosine_matrix(centroids, pool), min_similarity)


def pair_with_references(faces: np.ndarray, references: np.ndarray,
                         min_similarity: float) -> tuple[list[int | None], np.ndarray]:
    """Per face of one shot, the reference it shows (or None), and the similarity matrix."""
    sim = cosine_matrix(faces, references)
    return assign(sim, min_similarity), sim


class ShotPairer(Protocol):
    """Hook for characters a face detector cannot see (backs, masks, far shots), e.g. a VLM.

    Called once per shot with the fitted shot image, the sequence's reference images by character
    id and the ids already paired by face; returns the further characters present, each with a
    box (x0, y0, x1, y1 in shot pixels) or None when it cannot say where. Only ids among the
    references are used.
    """

    def __call__(self, shot: np.ndarray, references: dict[str, np.ndarray],
                 present: list[str]) -> dict[str, tuple[float, float, float, float] | None]:
        ...
