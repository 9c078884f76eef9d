"""Issue 14 inside the real, pinned ComfyUI on the tiny models: per-shot seeds (re-rolling one shot
leaves the others' initial noise exactly as it was, in one pass and in chunks), variants, the shot
preview, per-shot negative prompts, scene references in role attention, edit mode with chunks and
the Character Reference / Shot Script inputs. The pure pieces are in
test_dreamshot_storyboard_features.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.casts import random_image

pytestmark = pytest.mark.comfyui

W = H = 64
STEPS = 2
MIRA_THEO_TOP = "Mira: 0, 0, 0.5, 0.5; Theo: 0.5, 0, 1, 0.5"   # the bottom half is background
SHOTS = [("Mira and Theo on the harbour wall", "Mira, Theo, Harbour", MIRA_THEO_TOP, "boats"),
         ("Mira alone in the rain", "Mira", "", ""),
         ("Theo reads a letter by the water", "Theo, Harbour", "", ""),
         ("the empty harbour at dawn", "Harbour", "", "")]


@pytest.fixture(scope="module")
def cast(N):
    (chars,) = N.DreamShotCharacterReference(image=random_image(1, H, W), name="Mira", description="a woman in green")
    (chars,) = N.DreamShotCharacterReference(image=random_image(2, H, W), name="Theo", characters=chars)
    (chars,) = N.DreamShotCharacterReference(image=random_image(3, H, W), name="Harbour", kind="location",
                                             description="a small stone harbour", characters=chars)
    return chars


def _shots(N, spec=SHOTS):
    shots = None
    for prompt, who, boxes, negative in spec:
        (shots,) = N.DreamShotShotScript(prompt=prompt, characters=who, character_boxes=boxes,
                                         negative_prompt=negative, shots=shots)
    return shots


def _pack(N, vae, clip, shots, cast, mode="reference_to_shot", **kw):
    return N.DreamShotShotSequencePack(vae=vae, clip=clip, shots=shots, width=W, height=H, mode=mode,
                                       negative_prompt="blurry", repeat=4, fit="pad_white", max_latent_frames=21,
                                       characters=cast, **kw)[0]


@pytest.fixture(scope="module")
def story(N, cast, tiny_vae, tiny_clip):
    return _pack(N, tiny_vae, tiny_clip, _shots(N), cast)


@pytest.fixture(scope="module")
def sampling(pack_module):
    return pack_module("comfy_bridge.sampling")


def _spied(model):
    """A clone whose diffusion-model calls record (x, timestep)."""
    import comfy.patcher_extension as pe

    calls = []

    def spy(executor, x, timestep, *args, **kwargs):
        calls.append(x.detach().clone())
        return executor(x, timestep, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-spy", spy)
    return m, calls


def _with_seed(seq, shot, seed):
    shots = list(seq.plan.shots)
    shots[shot] = dataclasses.replace(shots[shot], seed=seed)
    return dataclasses.replace(seq, plan=dataclasses.replace(seq.plan, shots=tuple(shots)))


# -- the nodes' new inputs ---------------------------------------------------------------------------
def test_shot_script_seed_and_negative_and_character_kind_and_mask(N):
    (shots,) = N.DreamShotShotScript(prompt="a", characters="Mira", negative_prompt="  hats  ")
    (shots,) = N.DreamShotShotScript(prompt="b", characters="Mira", shot_seed=1234, shots=shots)
    assert [(s.seed, s.negative_prompt) for s in shots] == [(None, "hats"), (1234, "")]
    cut_out = torch.ones(1, H, W)
    cut_out[:, 16:, 20:44] = 0                     # Load Image's MASK of a PNG whose background is transparent
    (chars,) = N.DreamShotCharacterReference(image=random_image(1, H, W), name="Mira", mask=cut_out)
    (chars,) = N.DreamShotCharacterReference(image=random_image(2, H, W), name="Theo", mask=cut_out, mask_meaning="1 = character",
                                             characters=chars)
    (chars,) = N.DreamShotCharacterReference(image=random_image(3, H, W), name="Quay", kind="prop", characters=chars)
    assert torch.equal(chars[0].masks, 1 - cut_out) and torch.equal(chars[1].masks, cut_out)
    assert [c.kind for c in chars] == ["character", "character", "prop"]
    with pytest.raises(ValueError, match=r"Shot Script: input 'character_boxes': the box 'Ayla: -0.5, 0, 2.5, 1' "
                                         r"starts outside the frame"):
        N.DreamShotShotScript(prompt="x", characters="Ayla", character_boxes="Ayla: -0.5, 0, 2.5, 1")


def test_box_outside_the_frame_is_refused_by_the_pack(N, cast, tiny_vae, tiny_clip):
    (shots,) = N.DreamShotShotScript(prompt="x", characters="Mira", character_boxes="Mira: 0, 0, 96, 64")
    with pytest.raises(ValueError, match=r"Shot Sequence Pack: input 'character_boxes': shot 1: the box of 'Mira' "
                                         r"\(0, 0, 96, 64\) reaches outside the 64x64 frame.*refused, not clipped"):
        _pack(N, tiny_vae, tiny_clip, shots, cast)


def test_each_shot_reads_its_own_negative_prompt(pack_module, story):
    text_fold = pack_module("text_fold")
    segs = text_fold.context_segments(story.negative, story.num_segments, story.negative_zero_rows)
    assert not torch.equal(segs[0].rows, segs[1].rows)        # "boats" vs the pack's "blurry"
    assert torch.equal(segs[1].rows, segs[2].rows) and torch.equal(segs[2].rows, segs[3].rows)


# -- seeds -------------------------------------------------------------------------------------------
def test_rerolling_one_shot_keeps_every_other_shots_noise(sampling, tiny_wan_model, story):
    """The first model call sees the initial noise on the generated frames (flow sampling starts at
    sigma 1): re-seeding shot 2 changes exactly its frame, in one pass and in chunks."""
    m, calls = _spied(tiny_wan_model)
    k = story.layout.num_refs
    with torch.inference_mode():
        out_a = sampling.sample_story(m, story, 5, STEPS, 1.0, "euler", "simple")
        first_a = calls[0]
        calls.clear()
        out_b = sampling.sample_story(m, _with_seed(story, 1, 1234), 5, STEPS, 1.0, "euler", "simple")
        first_b = calls[0]
    assert torch.equal(first_a[:, :, :k], first_b[:, :, :k])                  # references: clean, untouched
    for j in range(4):
        same = torch.equal(first_a[:, :, k + j], first_b[:, :, k + j])
        assert same == (j != 1), f"shot {j + 1}"
    assert not torch.equal(out_a[:, :, k + 1], out_b[:, :, k + 1])
    assert torch.equal(first_a[0, :, k:], sampling.initial_noise(story, 5, story.latent)[0, :, k:])

    # In chunks of 2 with 1 context shot, every shot starts from the noise it has in the single pass.
    calls.clear()
    chunks = []
    with torch.inference_mode():
        sampling.sample_long_story(m, story, 5, STEPS, 1.0, "euler", "simple", ref_cfg=1.0, chunk_size=2,
                                   context_shots=1, on_chunk=chunks.append)
    assert len(chunks) == 2 and len(calls) == 2 * STEPS
    for (context, targets), chunk, x in zip([([], [0, 1]), ([1], [2, 3])], chunks, calls[::STEPS]):
        for i, j in enumerate(targets):
            f = chunk.layout.shot_frames(len(context) + i)[0]
            assert torch.equal(x[:, :, f], first_a[:, :, k + j]), f"shot {j + 1} in its chunk"


def test_variants_are_the_runs_of_seed_plus_v_with_one_bar_and_a_shot_preview(N, tiny_wan_model, story,
                                                                            monkeypatch):
    import comfy.utils
    import latent_preview

    bars, previews = [], []
    real_bar = comfy.utils.ProgressBar

    class Bar(real_bar):
        def __init__(self, total, node_id=None):
            super().__init__(total, node_id)
            bars.append(self)

    class Recorder:
        def decode_latent_to_preview_image(self, preview_format, x0):
            previews.append(x0.detach().clone())
            return None

    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    monkeypatch.setattr(latent_preview, "get_previewer", lambda device, latent_format: Recorder())
    args = dict(model=tiny_wan_model, sequence=story, steps=STEPS, cfg=2.0, sampler_name="euler", scheduler="simple",
                ref_cfg=1.0)
    images, latent = N.DreamShotSampler(seed=5, variants=2, **args)
    assert images.shape == (8, H, W, 3) and latent["samples"].shape == (2, 16, 4, H // 8, W // 8)
    assert len(bars) == 1 and bars[0].total == 2 * STEPS and bars[0].current == 2 * STEPS
    # The preview is the 4 shots tiled 2 x 2 (8 x 8 latent each), not a reference frame; the last one
    # is the final shots of variant 2.
    assert len(previews) == 2 * STEPS and all(p.shape == (1, 16, 1, 16, 16) for p in previews)
    grid = tiny_wan_model.model.latent_format.process_out(previews[-1])
    want = latent["samples"][1:].reshape(16, 2, 2, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, 16, 1, 16, 16)
    torch.testing.assert_close(grid, want, rtol=1e-4, atol=1e-4)
    second, _ = N.DreamShotSampler(seed=6, **args)
    assert torch.equal(images[4:], second) and not torch.equal(images[:4], second)


# -- edit mode with chunks ------------------------------------------------------------------------------
def test_edit_with_chunks_skips_locked_chunks_and_encodes_the_earlier_storyboard_whole(N, pack_module, sampling,
                                                                                       tiny_wan_model, tiny_vae,
                                                                                       tiny_clip, cast):
    packing = pack_module("packing")
    before = torch.rand(4, H, W, 3, generator=torch.Generator().manual_seed(9))
    edit = _pack(N, tiny_vae, tiny_clip, _shots(N), cast, mode="edit", keyframes=before, lock_shots="1, 2, 4")
    lay, k = edit.layout, edit.layout.num_refs
    # Shot 4 is kept after regenerated shot 3: its latent is the one of the whole earlier storyboard.
    whole = packing.pack_latent(tiny_vae, lay, edit.plan.ref_images, list(before))
    grey = packing.pack_latent(tiny_vae, lay, edit.plan.ref_images, edit.plan.shot_images)
    assert torch.equal(edit.latent[:, :, k + 3], whole[:, :, k + 3])
    assert not torch.equal(grey[:, :, k + 3], whole[:, :, k + 3])
    chunks = []
    with torch.inference_mode():
        images, latent = sampling.sample_long_story(tiny_wan_model, edit, 3, STEPS, 2.0, "euler", "simple",
                                                    chunk_size=2, context_shots=1, on_chunk=chunks.append)
    # Shots 1-2 are all kept: that pass is skipped (it used to fail: "all 2 shots are given") and shot 2
    # is the context of the pass that regenerates shot 3 next to kept shot 4.
    [chunk] = chunks
    assert chunk.layout.clean_shots == (True, False, True)
    assert [c.name for c in chunk.plan.characters] == ["Theo", "Harbour"]
    for j in (0, 1, 3):
        assert torch.equal(images[j], before[j])
    assert not torch.equal(images[2], before[2])
    assert latent.shape == (1, 16, 4, H // 8, W // 8)
    assert torch.equal(latent[:, :, :2], edit.latent[:, :, k:k + 2])
    # In the pass too, regenerated shot 3 is encoded as its earlier keyframe, not grey, ahead of kept shot 4.
    assert all(torch.equal(a, b) for a, b in zip(chunk.plan.images_to_encode(), before[1:]))


# -- scene references ------------------------------------------------------------------------------------
def test_location_is_a_role_of_its_own_in_role_attention(N, pack_module, tiny_wan_model, story):
    """With the RACL patch at strength 1, the background of a shot with boxes reads its location's
    reference and no character's: changing the harbour's reference changes those tokens, changing
    Theo's does not."""
    (patched,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0,
                                               end_percent=1.0, layers="0", auto_regions=False)
    sampling = pack_module("comfy_bridge.sampling")
    block = tiny_wan_model.model.diffusion_model.blocks[0].self_attn
    names = [c.name for c in story.plan.characters]
    assert [c.kind for c in story.plan.characters] == ["character", "character", "location"]

    def with_ref_changed(name):
        latent = story.latent.clone()
        latent[:, :, names.index(name)] += 0.5
        return dataclasses.replace(story, latent=latent)

    def first_self_attention(seq):
        captured = []
        handle = block.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
        try:
            with torch.inference_mode():
                sampling.sample_story(patched, seq, 5, 1, 1.0, "euler", "simple")
        finally:
            handle.remove()
        return captured[0]

    lay = story.layout
    start = lay.shot_token_span(0)[0]
    cols = lay.latent_width // 2
    background = torch.tensor([start + r * cols + c for r in range(cols // 2, cols) for c in range(cols)])
    base = first_self_attention(story)
    theo = first_self_attention(with_ref_changed("Theo"))
    harbour = first_self_attention(with_ref_changed("Harbour"))
    assert torch.equal(base[:, background], theo[:, background])
    assert (base[:, background] - harbour[:, background]).abs().max() > 1e-4


def test_metrics_take_the_scene_reference_out_of_the_cast(pack_nodes, story):
    import importlib

    metrics = importlib.import_module(pack_nodes["DreamShotStoryMetrics"].__module__)
    eval_story = importlib.import_module(pack_nodes["DreamShotStoryMetrics"].__module__.replace(
        ".nodes.metrics", ".dreamshot.eval.storyboard"))
    measured = eval_story.people_only(metrics.story_from_sequence(story))
    assert measured.names == ("Mira", "Theo")
    assert measured.shot_characters == ((0, 1), (0,), (1,), ())
