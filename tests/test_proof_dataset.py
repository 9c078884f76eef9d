"""The shapes-story dataset (dreamshot.proof.dataset) and its scoring (dreamshot.proof.report).

No ComfyUI needed. The classifier is dreamshot.shapes' colour vote, a stand-in for a face
identity model on synthetic shape characters."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dreamshot.proof import dataset as ds
from dreamshot.proof.report import Tally, chance_accuracy, score_placement, score_story
from dreamshot.shapes import SHAPE_CAST, classify_region, draw_character

W, H = 96, 48


def test_manifest_is_read_by_the_trainer(tmp_path):
    from dreamshot.train.dataset import read_manifest
    from PIL import Image

    stories = ds.make_stories(5, 3, W, H, "s")
    root = ds.write_dataset(tmp_path / "data", stories, W, H)
    seqs = read_manifest(root)
    assert [s.id for s in seqs] == [s.id for s in stories]
    for seq, spec in zip(seqs, stories):
        assert len(seq.shots) == 3
        assert {c.name for c in seq.characters} == set(spec.cast)
        for c in seq.characters:   # the reference frame reads only the role name
            assert c.description == c.name and c.masks[0] is not None
        for j, shot in enumerate(seq.shots):
            assert shot.caption == spec.caption(j)
            assert list(shot.characters) == [p.role.lower() for p in spec.shots[j]]
            image = np.asarray(Image.open(root / shot.image))
            assert image.shape == (H, W, 3)
            for (cid, mask_path), p in zip(shot.masks, spec.shots[j]):
                mask = np.asarray(Image.open(root / mask_path)) > 127
                assert mask.sum() > 100 and cid == p.role.lower()
                # the mask covers exactly the pixels drawn in that character's colours
                ids = classify_region(image, mask)[0]
                assert ids == p.character
    assert len(json.loads(json.dumps(ds.stories_to_json(stories)))) == 5
    assert ds.stories_from_json(ds.stories_to_json(stories)) == stories


def test_text_alone_cannot_tell_who_is_who():
    stories = ds.make_stories(60, 0, W, H, "s")
    forbidden = {w.lower() for c in SHAPE_CAST for w in (c.id, c.name, c.kind, c.texture)}
    forbidden |= {"red", "green", "blue", "yellow", "purple", "cyan", "colour", "color", "disc", "square"}
    for spec in stories:
        words = set(re.findall(r"[a-z]+", " ".join(spec.caption(j) for j in range(3)).lower()))
        assert not words & forbidden, words & forbidden
        assert len({spec.caption(j) for j in range(3)}) == 3
    # each role name stands for several characters over the stories, and each character gets several roles
    roles_of = {ci: {r for s in stories for r, c in s.cast.items() if c == ci} for ci in range(len(SHAPE_CAST))}
    chars_of = {r: {c for s in stories for rr, c in s.cast.items() if rr == r} for r in ds.ROLES}
    assert all(len(v) >= 3 for v in roles_of.values()), roles_of
    assert all(len(v) >= 4 for v in chars_of.values()), chars_of


def test_classifier_is_exact_on_clean_renders():
    stories = ds.make_stories(40, 1, W, H, "s")
    tally = Tally()
    for spec in stories:
        score_story(tally, [ds.render_shot(spec, j, W, H)[0] for j in range(3)], spec)
    assert tally.total >= 120 and tally.counts["correct"] == tally.total
    for ci in range(len(SHAPE_CAST)):
        image, mask = ds.render_reference(ci, W, H)
        assert classify_region(image, mask)[0] == ci


def _scene(placements) -> np.ndarray:
    image = ds.shot_background(W, H)
    for ci, slot in placements:
        draw_character(image, SHAPE_CAST[ci], ds.slot_box(slot, W, H))
    return image


def test_scoring_tells_confusion_from_other_and_none():
    spec = ds.StorySpec("t", {"Mira": 0, "Theo": 1, "Alice": 2},
                        [[ds.Placement(0, "Mira", "left", ds.slot_box("left", W, H)),
                          ds.Placement(1, "Theo", "right", ds.slot_box("right", W, H))]])
    swapped = _scene([(1, "left"), (0, "right")])
    assert [score_placement(swapped, spec, 0, k) for k in (0, 1)] == ["confused", "confused"]
    other = _scene([(4, "left"), (2, "right")])                    # Plum is not in this story; Alice is
    assert [score_placement(other, spec, 0, k) for k in (0, 1)] == ["other", "confused"]
    assert score_placement(_scene([(0, "centre")]), spec, 0, 0) == "none"   # Mira, but not at left
    t = Tally()
    assert score_story(t, [_scene([(0, "left"), (1, "right")])], spec) == [["correct", "correct"]]
    assert t.rate("correct") == 1.0 and t.total == 2


def test_chance_is_a_uniform_guess_within_the_cast():
    stories = ds.make_stories(4, 0, W, H, "s")
    expected = np.mean([1 / len(s.cast) for s in stories for shot in s.shots for _ in shot])
    assert chance_accuracy(stories) == pytest.approx(expected) and 1 / 4 <= expected <= 1 / 3


def test_slot_boxes_stay_in_their_third_and_shots_follow_the_layout():
    for k, slot in enumerate(ds.SLOTS):
        x0, y0, x1, y1 = ds.slot_box(slot, W, H)
        assert k * W // 3 <= x0 < x1 <= (k + 1) * W // 3 and 0 < y0 < y1 < H
    for spec in ds.make_stories(30, 2, W, H, "s"):
        assert 3 <= len(spec.cast) <= 4
        assert {p.character for shot in spec.shots for p in shot} == set(spec.cast.values())   # all appear
        for shot in spec.shots:
            assert tuple(p.slot for p in shot) == ds.LAYOUT[len(shot)] and len(shot) <= ds.MAX_PER_SHOT
    with pytest.raises(ValueError):
        ds.slot_box("top", W, H)
