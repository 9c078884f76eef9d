"""Story planning and packing, with a small causal stand-in for the Wan VAE (pure torch).

The stand-in has Wan-VAE's time chunking (1, 4, 4, ...) and 8x spatial compression, which is all
packing depends on; the real Wan VAE runs in the ComfyUI integration tests.
"""

import pytest
import torch
import torch.nn.functional as F

from dreamshot.attention import NO_TEXT
from dreamshot.errors import DreamShotInputError
from dreamshot.packing import keyframes_from_video, shot_video
from dreamshot.story import Character, Shot, encode_story, parse_character_names, plan_story


class ChunkVAE:
    """Mean over each Wan time chunk, 8x8 average pool, 3 -> 16 channels; decode inverts it."""

    def __init__(self):
        self.encoded_lengths = []

    def encode(self, pixels):
        self.encoded_lengths.append(pixels.shape[0])
        chunks = [pixels[:1]] + [pixels[i:i + 4] for i in range(1, pixels.shape[0], 4)]
        frames = torch.stack([c.mean(0) for c in chunks])                 # [f, H, W, 3]
        pooled = F.avg_pool2d(frames.movedim(-1, 1), 8)                   # [f, 3, h, w]
        lat = pooled.repeat(1, 6, 1, 1)[:, :16]                           # [f, 16, h, w]
        return lat.movedim(0, 1).unsqueeze(0)                             # [1, 16, f, h, w]

    def decode(self, latent):
        frames = latent[0, :3].movedim(1, 0)                              # [f, 3, h, w]
        up = F.interpolate(frames, scale_factor=8, mode="nearest").movedim(1, -1)
        video = torch.cat([up[:1]] + [up[i:i + 1].expand(4, -1, -1, -1) for i in range(1, up.shape[0])])
        return video.unsqueeze(0)


def _img(value, h=64, w=64):
    return torch.full((h, w, 3), float(value))


def _chars(*names, size=64):
    return [Character(name=n, images=_img(0.1 * (i + 1), size, size).unsqueeze(0), description=f"{n} desc" if i == 0 else "")
            for i, n in enumerate(names)]


def test_parse_character_names():
    assert parse_character_names(" Alice, Bob;Alice\nCarol ,") == ("Alice", "Bob", "Carol")


def test_plan_r2s_segments_and_layout():
    plan = plan_story(_chars("Alice", "Bob"), [Shot("a", ("Alice",)), Shot("b", ("Bob", "Alice")), Shot("c")],
                      64, 64, mode="reference_to_shot")
    assert plan.layout.num_refs == 2 and plan.layout.num_latent_frames == 5
    # shots read segments 0..2; Alice's caption is segment 3; Bob has none
    assert plan.prompts == ["a", "b", "c", "Alice desc"]
    assert plan.frame_segments == [3, NO_TEXT, 0, 1, 2]
    assert plan.shot_characters == [(0,), (1, 0), ()]


def test_text_to_shot_without_cast_accepts_names_as_script_words():
    plan = plan_story([], [Shot("a", ("Alice",))], 64, 64, mode="text_to_shot")
    assert plan.shot_characters == [()]
    with pytest.raises(DreamShotInputError, match="unknown character"):
        plan_story(_chars("Alice"), [Shot("a", ("Alicia",))], 64, 64, mode="text_to_shot")


def test_text_to_shot_uses_no_references():
    plan = plan_story(_chars("Alice"), [Shot("a", ("Alice",)), Shot("b")], 64, 64, mode="text_to_shot")
    assert plan.layout.num_refs == 0 and plan.frame_segments == [0, 1]


def test_errors_name_the_problem():
    with pytest.raises(DreamShotInputError, match="unknown character.*'Zed'.*known: Alice"):
        plan_story(_chars("Alice"), [Shot("a", ("Zed",))], 64, 64)
    with pytest.raises(DreamShotInputError, match="no shots"):
        plan_story(_chars("Alice"), [], 64, 64)
    with pytest.raises(DreamShotInputError, match="image is 32x32 but the storyboard is 64x64"):
        plan_story(_chars("Alice", size=32), [Shot("a")], 64, 64, fit="error")
    with pytest.raises(DreamShotInputError, match="two characters are named"):
        plan_story(_chars("Alice") + _chars("Alice"), [Shot("a")], 64, 64)
    with pytest.raises(DreamShotInputError, match="no keyframes"):
        plan_story([], [Shot("a"), Shot("b")], 64, 64, mode="edit", lock_shots=[0])


def test_mixed_reference_sizes_are_fitted():
    chars = [Character("A", _img(0.2, 32, 48).unsqueeze(0)), Character("B", _img(0.3, 80, 64).unsqueeze(0))]
    plan = plan_story(chars, [Shot("a")], 64, 64, fit="pad_white")
    assert all(tuple(r.shape) == (64, 64, 3) for r in plan.ref_images)
    assert plan.ref_images[0][0, 0].tolist() == [1.0, 1.0, 1.0]  # white padding (official behaviour)


def test_shot_video_and_keyframes_roundtrip():
    plan = plan_story([], [Shot("a"), Shot("b"), Shot("c")], 64, 64, mode="edit",
                      keyframes=torch.stack([_img(0.2), _img(0.4), _img(0.6)]), lock_shots=[0, 2])
    video = shot_video(plan.layout, plan.shot_images)
    assert video.shape[0] == 1 + 4 + 4
    assert video[0, 0, 0, 0] == 0.2 and video[1:5, 0, 0, 0].eq(0.5).all() and video[5:, 0, 0, 0].eq(0.6).all()
    keys = keyframes_from_video(plan.layout, video)
    assert keys[:, 0, 0, 0].tolist() == pytest.approx([0.2, 0.5, 0.6])


def test_encode_story_packs_refs_alone_then_shots_as_one_video():
    vae = ChunkVAE()
    plan = plan_story(_chars("Alice", "Bob"), [Shot("one"), Shot("two"), Shot("three"), Shot("four")], 64, 64)

    def encode_text(text):
        return torch.full((1, 3 + len(text), 8), float(len(text)))

    seq = encode_story(plan, vae, encode_text, negative_prompt="neg")
    assert vae.encoded_lengths == [13, 1, 1]           # shots as one video, each ref alone
    assert seq.latent.shape == (1, 16, 2 + 4, 8, 8)
    assert seq.latent[0, 0, 0].mean() == pytest.approx(0.1) and seq.latent[0, 0, 1].mean() == pytest.approx(0.2)
    assert seq.segment_length == 3 + len("Alice desc")
    assert seq.positive.shape == seq.negative.shape == (1, 5 * seq.segment_length, 8)
    # negative: the negative prompt per shot, the reference caption unchanged
    L = seq.segment_length
    assert seq.negative[0, 0, 0] == 3.0 and seq.negative[0, 4 * L, 0] == float(len("Alice desc"))
    assert seq.denoise_mask()[0, 0, :, 0, 0].tolist() == [0, 0, 1, 1, 1, 1]


def test_context_length_never_equals_token_count():
    """The attention hook tells self- from cross-attention by key length; packing keeps them apart."""
    plan = plan_story([], [Shot("a"), Shot("b")], 64, 64, mode="text_to_shot")  # 2 frames x 16 tokens
    seq = encode_story(plan, ChunkVAE(), lambda t: torch.zeros(1, 16, 4))
    assert seq.num_segments * seq.segment_length != plan.layout.num_tokens
