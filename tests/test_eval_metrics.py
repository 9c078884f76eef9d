"""Storyboard metrics (dreamshot.eval): the definitions on hand-made embeddings, then whole
storyboards measured with ``dreamshot.shapes.ShapeAnalyzer`` as a STAND-IN for insightface:
synthetic shape characters "detected" by colour, with a fixed-seed identity vector each, behind
the same FaceAnalyzer interface. No real face model runs here (none installs offline)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from dreamshot.errors import DreamShotInputError
from dreamshot.eval.metrics import (Appearance, attribute_faces, clip_score, cross_shot_consistency,
                                    identity_metrics)
from dreamshot.eval.report import shot_table
from dreamshot.eval.storyboard import StoryToMeasure, measure_story
from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, render_scene

RUBY, MOSS, COBALT = SHAPE_CAST[:3]
W, H = 160, 96


def unit(*v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------ definitions on embeddings

E = np.eye(3, dtype=np.float32)   # three orthogonal references


def test_identity_metrics_follow_the_formulas():
    a = unit(1, 1, 0)        # between character 0 and 1: cos 0.7071 to both (a tie is not confusion)
    b = unit(1, 3, 0)        # closer to character 1 than to 0: confused when it stands for 0
    apps = [Appearance(0, 0, E[0]), Appearance(0, 1, E[1]), Appearance(1, 0, a), Appearance(1, 1, None),
            Appearance(2, 0, b)]
    m = identity_metrics(apps, E)
    assert (m.appearances, m.found, m.misses, m.confused) == (5, 4, 1, 1)
    s_b = float(b[0])
    assert m.identity_similarity == pytest.approx((1 + 1 + math.sqrt(0.5) + 0 + s_b) / 5)
    assert m.identity_similarity_detected == pytest.approx((1 + 1 + math.sqrt(0.5) + s_b) / 4)
    assert m.miss_rate == pytest.approx(1 / 5) and m.confusion_rate == pytest.approx(1 / 5)
    assert m.correct_rate == pytest.approx(3 / 5)
    # Consistency: character 0 in shots 0, 1, 2 -> pairs (E0,a), (E0,b), (a,b); character 1 in shots
    # 0 and 1 with shot 1 missed -> one pair worth 0.
    c0 = np.mean([a[0], b[0], float(a @ b)])
    assert m.consistency == pytest.approx((c0 + 0.0) / 2, abs=1e-6)


def test_consistency_is_nan_without_a_character_in_two_shots_and_one_when_identical():
    assert math.isnan(cross_shot_consistency([Appearance(0, 0, E[0]), Appearance(1, 1, E[1])]))
    assert cross_shot_consistency([Appearance(j, 2, E[2]) for j in range(4)]) == pytest.approx(1.0)
    assert cross_shot_consistency([Appearance(0, 2, E[2]), Appearance(1, 2, None)]) == 0.0


def test_no_appearances_gives_nan_not_a_number_made_up():
    m = identity_metrics([], E)
    assert m.appearances == 0 and math.isnan(m.identity_similarity) and math.isnan(m.confusion_rate)


def test_attribution_by_identity_pairs_one_to_one_and_leaves_bystanders_out():
    faces = np.stack([E[2], E[1], unit(1, 0.2, 0)])   # a bystander (2), then characters 1 and 0
    boxes = [(0, 0, 10, 10)] * 3
    assert attribute_faces(faces, boxes, [0, 1], E) == [2, 1]
    # Fewer faces than expected characters: the face goes to the character it resembles; the other is missed.
    assert attribute_faces(faces[1:2], boxes[:1], [0, 1], E) == [None, 0]
    assert attribute_faces(np.zeros((0, 3)), [], [0, 1], E) == [None, None]


def test_attribution_by_region_uses_position_not_identity():
    faces = np.stack([E[1], E[0]])                   # character 1's face on the left, 0's on the right
    boxes = [(10, 10, 40, 40), (110, 10, 140, 40)]
    regions = {0: (0, 0, 80, 96), 1: (80, 0, 160, 96)}
    assert attribute_faces(faces, boxes, [0, 1], E, regions) == [0, 1]   # left face stands for 0: swapped
    # A face mostly outside every region belongs to nobody.
    apart = {0: (0, 0, 60, 96), 1: (100, 0, 160, 96)}
    assert attribute_faces(faces[:1], [(64, 10, 96, 40)], [0, 1], E, apart) == [None, None]
    assert attribute_faces(faces[:1], [(40, 10, 72, 40)], [0, 1], E, apart) == [0, None]  # 20/32 inside


def test_clip_score_is_100_times_the_clipped_cosine():
    img = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])
    txt = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert clip_score(img, txt) == pytest.approx([100.0, 100 * math.sqrt(0.5), 0.0, 0.0])


# ------------------------------------------------------------------ storyboards of shape characters

def scene(placements, seed):
    return render_scene(W, H, placements, background_seed=seed)[0]


def reference(who, seed):
    return render_scene(96, 96, [(who, (16, 16, 80, 80))], background_seed=seed)[0]


LEFT, RIGHT = (8, 16, 64, 80), (96, 16, 152, 80)


def two_character_story(boxes: bool = False) -> StoryToMeasure:
    """Ruby alone, Moss alone, both (Ruby left, Moss right), Ruby again."""
    shot_boxes = ({}, {}, {0: (0, 0, 0.5, 1), 1: (0.5, 0, 1, 1)} if boxes else {}, {})
    return StoryToMeasure("shapes", ("Ruby", "Moss"), ((reference(RUBY, 1), reference(RUBY, 2)), (reference(MOSS, 3),)),
                          ("ruby waits", "moss arrives", "ruby and moss meet", "ruby leaves"),
                          ((0,), (1,), (0, 1), (0,)), shot_boxes)


def shots(*placements):
    return [scene(p, 10 + j) for j, p in enumerate(placements)]


GOOD = [[(RUBY, LEFT)], [(MOSS, RIGHT)], [(RUBY, LEFT), (MOSS, RIGHT)], [(RUBY, RIGHT)]]


def test_perfect_storyboard_scores_high_similarity_and_no_confusion():
    r = measure_story(two_character_story(), shots(*GOOD), ShapeAnalyzer())
    m = r.identity
    assert (m.appearances, m.found, m.misses, m.confused) == (5, 5, 0, 0)
    assert m.identity_similarity > 0.95 and m.consistency > 0.95
    assert m.confusion_rate == 0.0 and m.miss_rate == 0.0
    assert r.missing_shots == () and math.isnan(r.clip_score)


def test_swapped_characters_are_all_confused():
    swapped = [[(MOSS, LEFT)], [(RUBY, RIGHT)], [(MOSS, LEFT), (RUBY, RIGHT)], [(MOSS, RIGHT)]]
    with_boxes = measure_story(two_character_story(boxes=True), shots(*swapped), ShapeAnalyzer()).identity
    assert with_boxes.confusion_rate == 1.0 and with_boxes.miss_rate == 0.0
    # Without boxes the two-character shot pairs by identity (its two faces are the right ones), so only
    # the three single-character shots are confused.
    no_boxes = measure_story(two_character_story(), shots(*swapped), ShapeAnalyzer()).identity
    assert no_boxes.confused == 3 and no_boxes.confusion_rate == pytest.approx(3 / 5)
    good = measure_story(two_character_story(), shots(*GOOD), ShapeAnalyzer()).identity
    assert with_boxes.identity_similarity < good.identity_similarity - 0.3


def test_a_missing_character_is_a_miss_not_skipped():
    story = two_character_story()
    missing = [[(RUBY, LEFT)], [], [(RUBY, LEFT)], [(RUBY, RIGHT)]]   # Moss never shows up
    r = measure_story(story, shots(*missing), ShapeAnalyzer())
    m = r.identity
    assert (m.appearances, m.found, m.misses, m.confused) == (5, 3, 2, 0)
    assert m.miss_rate == pytest.approx(2 / 5) and m.confusion_rate == 0.0
    assert m.identity_similarity_detected > 0.95
    assert m.identity_similarity == pytest.approx(m.identity_similarity_detected * 3 / 5)
    # Moss's two expected appearances are both missed: its consistency pair counts 0.
    assert m.consistency < 0.6
    assert [s.found for s in r.shots] == [("Ruby",), (), ("Ruby",), ("Ruby",)]
    table = shot_table(r)
    assert "Moss: missed" in table and re.search(r"^\|\s+2 \| Moss .*\| Moss: missed", table, re.M)


def test_a_missing_shot_image_counts_its_characters_as_misses():
    images = shots(*GOOD)
    images[2] = None
    r = measure_story(two_character_story(), images, ShapeAnalyzer())
    assert r.missing_shots == (3,)
    assert r.identity.misses == 2 and r.identity.appearances == 5


class FixedScorer:
    """A prompt scorer with known scores (the real one is tested in test_eval_clip.py)."""

    name = "fixed"

    def score(self, images, prompts):
        return np.array([float(len(p)) for p in prompts])


def test_clip_scores_per_shot_and_zero_for_missing_shots():
    story = two_character_story()
    images = shots(*GOOD)
    images[1] = None
    r = measure_story(story, images, None, FixedScorer())
    assert r.identity is None
    per_shot = [s.clip_score for s in r.shots]
    assert per_shot == [len(story.prompts[0]), 0.0, len(story.prompts[2]), len(story.prompts[3])]
    assert r.clip_score == pytest.approx(sum(per_shot) / 4)


def test_reference_without_a_face_is_a_clear_error():
    story = StoryToMeasure("s", ("Ruby",), ((scene([], 3),),), ("p",), ((0,),),
                           reference_labels=(("reference 'refs/ruby.png'",),))
    with pytest.raises(DreamShotInputError, match="no face found in reference 'refs/ruby.png' of 'Ruby'"):
        measure_story(story, [scene([(RUBY, LEFT)], 4)], ShapeAnalyzer())


def test_wrong_number_of_images_is_refused():
    with pytest.raises(DreamShotInputError, match="3 image\\(s\\) for 4 shot"):
        measure_story(two_character_story(), shots(*GOOD)[:3], ShapeAnalyzer())


def test_boxes_for_only_some_characters_fall_back_to_identity_pairing():
    story = two_character_story()
    partial = StoryToMeasure(story.id, story.names, story.references, story.prompts, story.shot_characters,
                             ({}, {}, {0: (0, 0, 0.5, 1)}, {}))
    swapped_both = shots(*GOOD[:2], [(MOSS, LEFT), (RUBY, RIGHT)], GOOD[3])
    m = measure_story(partial, swapped_both, ShapeAnalyzer()).identity
    assert (m.found, m.confused) == (5, 0)       # paired by identity: the swap of places is not seen
    full = measure_story(two_character_story(boxes=True), swapped_both, ShapeAnalyzer()).identity
    assert full.confused == 2
