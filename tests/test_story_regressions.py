"""Stories the property-based tests (tests/test_story_fuzz.py) found failing, shrunk, as ordinary
tests through the same node path (support/story_fuzz.py), plus the story of the report that started
issue 18. Each says what went wrong before its fix."""

from __future__ import annotations

import pytest
import torch

from support.story_fuzz import CharSpec, ShotSpec, StorySpec, problems, run_story, story_inputs

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


def test_a_chunk_of_kept_shots_is_not_held_to_the_frame_budget(N, story_models):
    """Found while checking the fuzzer's budget oracle: edit, six shots in chunks of three, shots 1-3
    (with Ann's two references) locked. Pass 1 is never sampled (all its shots are kept), yet the
    sampler refused the story because pass 1 would be 5 latent frames > max_latent_frames 4 — an error
    about a pass that does not run; pass 2 (3 frames, no references) fits."""
    spec = StorySpec(chars=(CharSpec("Ann", refs=2),),
                     shots=tuple(ShotSpec("a walk", ("Ann",) if j < 3 else ()) for j in range(6)),
                     mode="edit", keyframes=True, lock=(1, 2, 3), chunk_size=3, max_latent_frames=4)
    assert not problems(spec)
    run = run_story(N, story_models, spec)
    for j in range(3):
        assert torch.equal(run.images[j], run.inputs["keyframes"][j])
    # A pass that does run is still held to it.
    over = spec.replace(lock=(4, 5, 6), max_latent_frames=4)
    with pytest.raises(ValueError, match="DreamShot Sampler: input 'chunk_size': pass 1"):
        run_story(N, story_models, over)
