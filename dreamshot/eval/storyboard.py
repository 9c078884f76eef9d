"""Measure one storyboard: identity (faces) and prompt alignment (CLIP) of its shots.

:func:`measure_story` is the one function both the CLI runner and the ComfyUI node call. It takes
a :class:`~dreamshot.faces.FaceAnalyzer` (insightface in use; ``dreamshot.shapes.ShapeAnalyzer``
on synthetic data) and an optional prompt scorer, so everything here runs without models.
The metric definitions are in dreamshot/eval/metrics.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from ..errors import DreamShotInputError
from ..faces import FaceAnalyzer, check_rgb, cosine_matrix
from .clip_score import PromptScorer
from .metrics import Appearance, IdentityMetrics, attribute_faces, identity_metrics

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class StoryToMeasure:
    """A story as the metrics need it: the cast with reference images and the shot script."""

    id: str
    names: tuple[str, ...]                              # the cast, in order
    references: tuple[tuple[np.ndarray, ...], ...]      # per cast member: RGB uint8 reference images
    prompts: tuple[str, ...]                            # per shot
    shot_characters: tuple[tuple[int, ...], ...]        # per shot: indices into names
    shot_boxes: tuple[dict[int, Box], ...] = ()         # per shot: cast index -> box (fractions or pixels)
    reference_labels: tuple[tuple[str, ...], ...] = ()  # per reference: how errors name it (a path)
    kinds: tuple[str, ...] = ()                         # per cast member: character / location / prop; () = all people

    @property
    def num_shots(self) -> int:
        return len(self.prompts)


def people_only(story: StoryToMeasure) -> StoryToMeasure:
    """The story with its scene references (kind location / prop) taken out of the cast: faces are
    looked for only in people's references and only people are expected in the shots."""
    if all(k == "character" for k in story.kinds):
        return story
    keep = [c for c, k in enumerate(story.kinds) if k == "character"]
    index = {c: i for i, c in enumerate(keep)}
    return replace(
        story, names=tuple(story.names[c] for c in keep), references=tuple(story.references[c] for c in keep),
        shot_characters=tuple(tuple(index[c] for c in cast if c in index) for cast in story.shot_characters),
        shot_boxes=tuple({index[c]: b for c, b in boxes.items() if c in index} for boxes in story.shot_boxes),
        reference_labels=tuple(story.reference_labels[c] for c in keep if c < len(story.reference_labels)),
        kinds=())


@dataclass(frozen=True)
class ShotResult:
    shot: int                              # 1-based
    present: bool                          # False: the shot image is missing
    expected: tuple[str, ...]
    found: tuple[str, ...]                 # expected characters a face was attributed to
    confused: tuple[str, ...]              # found, but the face is closer to another cast member
    similarity: tuple[float, ...]          # per expected character: cos to its reference, 0 if missed
    clip_score: float = math.nan


@dataclass
class StoryResult:
    story_id: str
    num_shots: int
    missing_shots: tuple[int, ...]                # 1-based shots without an image
    identity: IdentityMetrics | None              # None: no face model
    clip_score: float                             # mean over shots (missing shots 0); NaN: no CLIP model
    shots: list[ShotResult] = field(default_factory=list)


def _pixel_box(box: Box, width: int, height: int) -> Box:
    """Fractions of the shot when every coordinate is <= 1, else pixels (as the Shot Script's boxes)."""
    if max(box) <= 1.0:
        return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    return tuple(float(v) for v in box)


def reference_embeddings(story: StoryToMeasure, analyzer: FaceAnalyzer, input_name: str = "characters") -> np.ndarray:
    """(C, D): per person of the cast (people_only), the normalised mean of the largest face's embedding
    in each reference."""
    story = people_only(story)
    out = []
    for c, (name, images) in enumerate(zip(story.names, story.references)):
        if not images:
            raise DreamShotInputError(input_name, f"story {story.id!r}: character {name!r} has no reference image.",
                                      "give every character at least one reference image showing its face.")
        embs = []
        for k, image in enumerate(images):
            faces = analyzer.detect(check_rgb(image, input_name))
            if not faces:
                labels = story.reference_labels[c] if c < len(story.reference_labels) else ()
                label = labels[k] if k < len(labels) else f"reference {k + 1}"
                raise DreamShotInputError(
                    input_name, f"story {story.id!r}: no face found in {label} of {name!r} ({analyzer.name}).",
                    "use a reference image where the character's face is clearly visible.")
            largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            embs.append(largest.embedding)
        mean = np.mean(np.stack(embs), axis=0)
        out.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def measure_story(story: StoryToMeasure, shots: Sequence[np.ndarray | None], analyzer: FaceAnalyzer | None,
                  scorer: PromptScorer | None = None, *, on_shot: Callable[[int], None] | None = None,
                  input_name: str = "characters", references: np.ndarray | None = None) -> StoryResult:
    """Metrics of one storyboard. ``shots[j]`` is shot j's RGB uint8 image, or None when it is missing:
    a missing shot counts every expected character as a miss and scores CLIP 0. ``on_shot(j)`` is called
    before each shot (progress, cancel). ``references``: the cast's embeddings when already computed
    (:func:`reference_embeddings`), e.g. for several runs of one story."""
    story = people_only(story)
    if len(shots) != story.num_shots:
        raise DreamShotInputError("keyframes", f"story {story.id!r}: {len(shots)} image(s) for "
                                  f"{story.num_shots} shot(s).", "give exactly one image per shot, in story order.")
    missing = tuple(j + 1 for j, img in enumerate(shots) if img is None)
    refs = None
    if analyzer is not None:
        refs = references if references is not None else reference_embeddings(story, analyzer, input_name)
    appearances: list[Appearance] = []
    shot_results: list[ShotResult] = []
    for j, image in enumerate(shots):
        if on_shot is not None:
            on_shot(j)
        expected = story.shot_characters[j]
        faces = analyzer.detect(check_rgb(image, "keyframes")) if (analyzer is not None and image is not None) else []
        if refs is None:
            picks: list[int | None] = [None] * len(expected)
        else:
            boxes = story.shot_boxes[j] if j < len(story.shot_boxes) else {}
            regions = None
            if boxes and image is not None and all(c in boxes for c in expected):   # position needs all boxes
                h, w = image.shape[:2]
                regions = {c: _pixel_box(boxes[c], w, h) for c in expected}
            emb = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, refs.shape[1]), np.float32)
            picks = attribute_faces(emb, [f.box for f in faces], expected, refs, regions)
        found, confused, sims = [], [], []
        for c, pick in zip(expected, picks):
            face = None if pick is None else faces[pick]
            appearances.append(Appearance(j, c, None if face is None else face.embedding))
            if face is None:
                sims.append(0.0)
                continue
            s = cosine_matrix(face.embedding[None], refs)[0]
            sims.append(float(s[c]))
            found.append(story.names[c])
            if len(s) > 1 and float(np.delete(s, c).max()) > float(s[c]):
                confused.append(story.names[c])
        shot_results.append(ShotResult(j + 1, image is not None, tuple(story.names[c] for c in expected),
                                       tuple(found), tuple(confused), tuple(sims)))
    identity = identity_metrics(appearances, refs) if refs is not None else None
    clip_mean = math.nan
    if scorer is not None:
        present = [j for j, img in enumerate(shots) if img is not None]
        scores = np.zeros(len(shots))
        if present:
            scores[present] = scorer.score([shots[j] for j in present], [story.prompts[j] for j in present])
        shot_results = [ShotResult(r.shot, r.present, r.expected, r.found, r.confused, r.similarity,
                                   float(scores[r.shot - 1])) for r in shot_results]
        clip_mean = float(scores.mean()) if len(scores) else math.nan
    return StoryResult(story.id, story.num_shots, missing, identity, clip_mean, shot_results)
