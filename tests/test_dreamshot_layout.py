"""Story layout: frames, token spans, shot video repeats and keyframe indices."""

import pytest

from dreamshot.errors import DreamShotInputError
from dreamshot.layout import StoryLayout


def test_paper_layout_one_latent_frame_per_shot():
    lay = StoryLayout(num_refs=2, num_shots=5, width=832, height=480)
    assert lay.frames_per_shot == 1
    assert lay.num_latent_frames == 7
    assert lay.tokens_per_frame == (480 // 16) * (832 // 16) == 1560
    assert [lay.frame_owner(f) for f in range(7)] == [("ref", 0), ("ref", 1)] + [("shot", j) for j in range(5)]
    # the official pipeline: num_frames = 1 + (S - 1) * 4, keyframes = frames[::4]
    assert lay.num_video_frames == 1 + 4 * 4
    assert [lay.keyframe_index(j) for j in range(5)] == list(range(0, 17, 4))
    assert lay.shot_token_span(0) == (2 * 1560, 3 * 1560)
    assert lay.ref_token_span(1) == (1560, 2 * 1560)


def test_longer_repeat_gives_whole_latent_frames_per_shot():
    lay = StoryLayout(num_refs=1, num_shots=3, width=64, height=64, repeat=8)
    assert lay.frames_per_shot == 2
    assert lay.num_latent_frames == 1 + 6
    # shot 0 fills the 1-frame first chunk plus one 4-frame chunk: 5 frames; then 8 each
    assert [lay.shot_repeats(j) for j in range(3)] == [5, 8, 8]
    assert (lay.num_video_frames - 1) % 4 == 0 and 1 + (lay.num_video_frames - 1) // 4 == 6
    assert list(lay.shot_frames(1)) == [3, 4]
    assert [lay.keyframe_index(j) for j in range(3)] == [4, 12, 20]


def test_denoise_mask_values_follow_clean_shots():
    lay = StoryLayout(num_refs=1, num_shots=3, width=64, height=64, clean_shots=(True, False, True))
    assert lay.denoise_mask_values() == [0.0, 0.0, 1.0, 0.0]
    assert lay.generated_shots == (1,)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(width=500), "multiple of 16"),
    (dict(height=8), "multiple of 16"),
    (dict(repeat=0), "at least 1"),
    (dict(repeat=3), "multiple of the Wan-VAE time compression"),
    (dict(num_shots=0), "no shots"),
])
def test_bad_layouts_name_the_input_and_the_fix(kwargs, needle):
    args = dict(num_refs=1, num_shots=2, width=64, height=64) | kwargs
    with pytest.raises(DreamShotInputError) as e:
        StoryLayout(**args)
    assert needle in str(e.value) and "Fix:" in str(e.value)


def test_frame_budget():
    lay = StoryLayout(num_refs=3, num_shots=20, width=64, height=64)
    lay.check_frame_budget(23)
    with pytest.raises(DreamShotInputError, match="23 latent frames, more than the limit of 21"):
        lay.check_frame_budget(21)
