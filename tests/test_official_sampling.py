"""Two-scale guidance (text cfg + reference cfg) and long stories in chunks, in DreamShot Sampler:
pure pieces first, then the node inside the real ComfyUI on the tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.casts import mira_and_theo

from dreamshot.attention import sdpa_attention
from dreamshot.guidance import reference_guidance, self_attention_without_refs, two_scale_guidance

W = H = 64
STEPS = 2


# -- pure ------------------------------------------------------------------------------------------
def test_two_scale_formula():
    g = torch.Generator().manual_seed(0)
    cond, nr, unc = (torch.randn(3, 4, generator=g) for _ in range(3))
    assert reference_guidance(cond, nr, 1.0) is cond
    torch.testing.assert_close(reference_guidance(cond, nr, 2.0), nr + 2 * (cond - nr))
    torch.testing.assert_close(two_scale_guidance(cond, nr, unc, 3.0, 2.0), unc + 3 * (nr + 2 * (cond - nr) - unc))
    torch.testing.assert_close(two_scale_guidance(cond, nr, None, 1.0, 1.5), nr + 1.5 * (cond - nr))
    assert two_scale_guidance(cond, nr, unc, 1.0, 1.0) is cond


def test_shots_blind_to_refs_in_self_attention():
    g = torch.Generator().manual_seed(1)
    heads, r, n = 2, 5, 12
    q, k, v = (torch.randn(1, n, 8, generator=g) for _ in range(3))
    out = self_attention_without_refs(q, k, v, heads, r, sdpa_attention)
    torch.testing.assert_close(out[:, r:], sdpa_attention(q[:, r:], k[:, r:], v[:, r:], heads))
    k2, v2 = k.clone(), v.clone()
    k2[:, :r] += 3
    v2[:, :r] -= 2
    torch.testing.assert_close(self_attention_without_refs(q, k2, v2, heads, r, sdpa_attention)[:, r:], out[:, r:])
    assert torch.equal(self_attention_without_refs(q, k, v, heads, 0, sdpa_attention), sdpa_attention(q, k, v, heads))



# -- in ComfyUI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling(pack_module):
    return pack_module("comfy_bridge.sampling")


@pytest.fixture(scope="module")
def cast(N):
    return mira_and_theo(N, H, W)


def _story(N, vae, clip, cast, shots_spec, mode="reference_to_shot", max_latent_frames=21):
    shots = None
    for prompt, who in shots_spec:
        (shots,) = N.DreamShotShotScript(prompt=prompt, characters=who, shots=shots)
    return N.DreamShotShotSequencePack(vae=vae, clip=clip, shots=shots, width=W, height=H, mode=mode,
                                       negative_prompt="blurry", repeat=4, fit="pad_white",
                                       max_latent_frames=max_latent_frames, characters=cast)[0]


THREE = [("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
         ("close-up of Mira", "Mira")]
FIVE = [("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
        ("Theo reads a letter", "Theo"), ("Theo runs to the station", "Theo"), ("an empty street at dawn", "")]


@pytest.fixture(scope="module")
def r2s(N, cast, tiny_vae, tiny_clip):
    return _story(N, tiny_vae, tiny_clip, cast, THREE)


def _counted(model):
    import comfy.patcher_extension as pe

    calls = []

    def spy(executor, x, timestep, *args, **kwargs):
        calls.append((tuple(x.shape), timestep.detach().clone()))
        return executor(x, timestep, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-count", spy)
    return m, calls


def _run(N, model, seq, cfg=2.0, **kw):
    return N.DreamShotSampler(model=model, sequence=seq, seed=5, steps=STEPS, cfg=cfg, sampler_name="euler",
                              scheduler="simple", **kw)


@pytest.mark.comfyui
def test_ref_cfg_1_is_the_plain_sampler_bit_exact_with_no_extra_pass(N, sampling, tiny_wan_model, r2s):
    m, calls = _counted(tiny_wan_model)
    images, latent = _run(N, m, r2s, ref_cfg=1.0)
    assert len(calls) == STEPS   # cond + uncond batched: one model call per step
    with torch.inference_mode():
        ref = sampling.sample_story(tiny_wan_model, r2s, 5, STEPS, 2.0, "euler", "simple")
        want = sampling.keyframes_from_latent(r2s, ref)
    assert torch.equal(images, want)
    assert torch.equal(latent["samples"], ref[:, :, r2s.layout.num_refs:])


@pytest.mark.comfyui
@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_ref_cfg_adds_exactly_one_pass_per_step_and_changes_the_output(N, tiny_wan_model, r2s, cfg):
    m, calls = _counted(tiny_wan_model)
    base, _ = _run(N, m, r2s, cfg=cfg, ref_cfg=1.0)
    assert len(calls) == STEPS
    calls.clear()
    guided, _ = _run(N, m, r2s, cfg=cfg, ref_cfg=2.0)
    assert len(calls) == 2 * STEPS
    assert torch.isfinite(guided).all() and not torch.equal(base, guided)


@pytest.mark.comfyui
def test_no_refs_pass_really_hides_the_references(N, sampling, tiny_wan_model, r2s):
    """ref_cfg=0 keeps only the pass where shots are blind to the references: changing the reference
    latent then cannot change the shots."""
    seq2 = dataclasses.replace(r2s, latent=r2s.latent.clone())
    seq2.latent[:, :, :r2s.layout.num_refs] += 0.5
    with torch.inference_mode():
        a = sampling.sample_story(tiny_wan_model, r2s, 5, STEPS, 1.0, "euler", "simple", ref_cfg=0.0)
        b = sampling.sample_story(tiny_wan_model, seq2, 5, STEPS, 1.0, "euler", "simple", ref_cfg=0.0)
        c = sampling.sample_story(tiny_wan_model, seq2, 5, STEPS, 1.0, "euler", "simple", ref_cfg=1.0)
        d = sampling.sample_story(tiny_wan_model, r2s, 5, STEPS, 1.0, "euler", "simple", ref_cfg=1.0)
    k = r2s.layout.num_refs
    torch.testing.assert_close(a[:, :, k:], b[:, :, k:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(c[:, :, k:], d[:, :, k:], rtol=1e-5, atol=1e-5)


@pytest.mark.comfyui
def test_ref_cfg_ignored_without_references(N, tiny_wan_model, cast, tiny_vae, tiny_clip):
    t2s = _story(N, tiny_vae, tiny_clip, None, [(p, "") for p, _ in THREE], mode="text_to_shot")
    m, calls = _counted(tiny_wan_model)
    a, _ = _run(N, m, t2s, ref_cfg=1.0)
    b, _ = _run(N, m, t2s, ref_cfg=3.0)
    assert len(calls) == 2 * STEPS and torch.equal(a, b)


# -- long stories ------------------------------------------------------------------------------------
def test_plan_chunks_pure(sampling):
    assert sampling.plan_chunks(5, 0, 1) == [([], [0, 1, 2, 3, 4])]
    assert sampling.plan_chunks(5, 6, 1) == [([], [0, 1, 2, 3, 4])]
    assert sampling.plan_chunks(5, 2, 1) == [([], [0, 1]), ([1], [2, 3]), ([3], [4])]
    assert sampling.plan_chunks(7, 3, 0) == [([], [0, 1, 2]), ([], [3, 4, 5]), ([], [6])]
    assert sampling.plan_chunks(5, 2, 3) == [([], [0, 1]), ([0, 1], [2, 3]), ([1, 2, 3], [4])]


@pytest.mark.comfyui
def test_long_story_in_chunks(N, sampling, tiny_wan_model, cast, tiny_vae, tiny_clip, monkeypatch):
    import comfy.utils

    seq = _story(N, tiny_vae, tiny_clip, cast, FIVE)
    chunks = []
    bars = []
    real_bar = comfy.utils.ProgressBar

    class Bar(real_bar):
        def __init__(self, total, node_id=None):
            super().__init__(total, node_id)
            bars.append(self)

    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    m, calls = _counted(tiny_wan_model)
    with torch.inference_mode():
        images, latent = sampling.sample_long_story(m, seq, 5, STEPS, 2.0, "euler", "simple", chunk_size=2,
                                                    context_shots=1, on_chunk=chunks.append)
    assert images.shape == (5, H, W, 3) and torch.isfinite(images).all()
    assert latent.shape == (1, 16, 5, H // 8, W // 8)
    # 3 sampling runs (shots 1-2, 3-4 with shot 2 as context, 5 with shot 4 as context), one bar.
    assert len(chunks) == 3 and len(calls) == 3 * STEPS
    assert len(bars) == 1 and bars[0].total == 3 * STEPS and bars[0].current == 3 * STEPS
    # References: only the chunk's own characters (chunk 3 has nobody: no reference frame).
    assert [c.layout.num_refs for c in chunks] == [2, 1, 0]
    assert [c.plan.characters[0].name for c in chunks[1:2]] == ["Theo"]
    assert [c.layout.num_shots for c in chunks] == [2, 3, 2]
    assert [c.layout.clean_shots for c in chunks] == [(False, False), (True, False, False), (True, False)]
    # Clean context: the previous chunk's keyframe, seen at t=0 and returned bit-exact.
    assert torch.equal(chunks[1].plan.shot_images[0], images[1])
    assert torch.equal(chunks[2].plan.shot_images[0], images[3])
    for (shape, t), chunk in zip(calls[::STEPS], chunks):
        lay = chunk.layout
        assert shape[2] == lay.num_latent_frames
        clean = torch.tensor(lay.denoise_mask_values()) == 0
        assert torch.all(t[:, clean] == 0) and torch.all(t[:, ~clean] > 0)
    # Prompts: each chunk reads its own shots' segments of the packed story.
    L = seq.segment_length
    assert torch.equal(chunks[1].positive[:, :L], seq.positive[:, L:2 * L])       # context = shot 2
    assert torch.equal(chunks[2].positive[:, L:2 * L], seq.positive[:, 4 * L:5 * L])


@pytest.mark.comfyui
def test_sampler_node_chunk_inputs(N, tiny_wan_model, r2s):
    m, calls = _counted(tiny_wan_model)
    chunked, lat = _run(N, m, r2s, chunk_size=2, context_shots=1, ref_cfg=1.5)
    assert chunked.shape == (3, H, W, 3) and lat["samples"].shape == (1, 16, 3, H // 8, W // 8)
    assert len(calls) == 2 * 2 * STEPS   # two chunks, each with the reference pass


@pytest.mark.comfyui
def test_max_latent_frames_is_checked_per_pass(N, sampling, tiny_wan_model, cast, tiny_vae, tiny_clip):
    """A long story packs fine; the sampler refuses a pass over the limit before sampling anything,
    and the same story in chunks (each pass under the limit) runs."""
    seq = _story(N, tiny_vae, tiny_clip, cast, FIVE, max_latent_frames=4)   # 2 refs + 5 shots = 7 frames
    m, calls = _counted(tiny_wan_model)
    with pytest.raises(ValueError) as e:
        N.DreamShotSampler(model=m, sequence=seq, seed=1, steps=STEPS, cfg=1.0, sampler_name="euler",
                           scheduler="simple")
    text = str(e.value)
    assert text.startswith("DreamShot Sampler: input 'chunk_size': the whole story is one pass of 7 latent frames")
    assert "set chunk_size" in text and calls == []
    with pytest.raises(ValueError, match=r"pass 1 \(shots 1-2, 0 context shot\(s\)\) is 4 latent frames.*"
                                         r"more than the pack's max_latent_frames 3"):
        sampling.sample_long_story(m, _story(N, tiny_vae, tiny_clip, cast, FIVE, max_latent_frames=3), 1, STEPS,
                                   1.0, "euler", "simple", chunk_size=2, context_shots=1)
    assert calls == []
    with torch.inference_mode():   # passes of 2 refs + 2 shots, 1 ref + 3 shots, 0 refs + 2 shots: all <= 4
        images, _ = N.DreamShotSampler(model=m, sequence=seq, seed=1, steps=STEPS, cfg=1.0, sampler_name="euler",
                                       scheduler="simple", ref_cfg=1.0, chunk_size=2, context_shots=1)
    assert images.shape[0] == 5 and len(calls) == 3 * STEPS
