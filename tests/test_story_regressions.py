"""Stories the property-based tests (tests/test_story_fuzz.py) found failing, shrunk, as ordinary
tests through the same node path (support/story_fuzz.py), plus the story of the report that started
issue 18. Each says what went wrong before its fix."""

from __future__ import annotations

import pytest
import torch

from support.story_fuzz import CharSpec, ShotSpec, StorySpec, given_shots, problems, run_story, story_inputs

pytestmark = pytest.mark.comfyui


def test_issue18_report_three_characters_seven_shots_chunks_then_edit_keeping_two(N, story_models):
    """Three characters, seven shots, chunks of three with one context shot, then an edit that locks
    every shot but two (the report that started issue 18): works, and keeps the locked shots."""
    chars = (CharSpec("Ann"), CharSpec("Ben"), CharSpec("Cid"))
    cast = [("Ann",), ("Ben",), ("Cid",), ("Ann", "Ben"), ("Ben", "Cid"), ("Cid",), ("Ann", "Cid")]
    base = StorySpec(chars=chars, shots=tuple(ShotSpec("a walk", c) for c in cast), chunk_size=3,
                     context_shots=1, steps=1, cfg=3.0, ref_cfg=2.0)
    first = run_story(N, story_models, base)
    for redo in ((2, 5), (6, 7)):
        edit = base.replace(mode="edit", keyframes=True, lock=tuple(j for j in range(1, 8) if j not in redo))
        inputs = story_inputs(edit)
        inputs["keyframes"] = first.images
        out = run_story(N, story_models, edit, inputs).images
        for j in range(7):
            assert torch.equal(out[j], first.images[j]) == (j + 1 not in redo), f"shot {j + 1}"


def test_text_to_shot_without_cast_ignores_masks_of_names_in_the_script(N, story_models):
    """Found by the fuzzer: text_to_shot, no Character Reference, a shot naming 'Zed' with a character
    mask. The names are only words there, yet planning looked 'Zed' up in the (empty) cast: ValueError
    "'Zed' is not in list" instead of a storyboard."""
    spec = StorySpec(chars=(), shots=(ShotSpec("a walk", ("Zed",), masks=True),), mode="text_to_shot",
                     width=16, height=16)
    assert not problems(spec)
    assert run_story(N, story_models, spec).images.shape == (1, 16, 16, 3)
