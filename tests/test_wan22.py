"""DreamShot on Wan2.2 inside the real, pinned ComfyUI: the TI2V-5B layout (a tiny 48-channel DiT that
ComfyUI detects as WAN22, with the full-size random Wan2.2 VAE: it cannot shrink) and the T2V-A14B
two-expert switch (two tiny Wan2.1-layout DiTs, as ComfyUI loads the A14B experts), all loaded through
ComfyUI's own loaders (tests/conftest.py).

The Wan2.2 VAE is 705M parameters: every 5B story here is 64x32 pixels (a 4x2 latent, 2x1 tokens per
frame) with two shots, packed once per mode.
"""

from __future__ import annotations

import pytest
import torch
from support.casts import mira_and_theo, random_image

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

W, H = 64, 32          # Wan2.2-TI2V-5B: multiples of 32 (16x VAE, then the 2x2 patchify)
STEPS = 2
BOXES = "Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1"


@pytest.fixture(scope="module")
def cast(N):
    return mira_and_theo(N, H, W)


def _shots(N, first_image=None, boxes=BOXES):
    (shots,) = N.DreamShotShotScript(prompt="Mira and Theo at a bus stop", characters="Mira, Theo",
                                     character_boxes=boxes, **({"image": first_image} if first_image is not None else {}))
    (shots,) = N.DreamShotShotScript(prompt="Mira alone in the rain", characters="Mira", shots=shots)
    return shots


def _pack(N, vae, clip, shots, characters=None, mode="reference_to_shot", w=W, h=H, **kw):
    args = dict(vae=vae, clip=clip, shots=shots, width=w, height=h, mode=mode, negative_prompt="blurry", repeat=4,
                fit="pad_white", max_latent_frames=21, characters=characters)
    return N.DreamShotShotSequencePack(**{**args, **kw})[0]


def _spy(model, seen, tag=None):
    """A clone of ``model`` recording (tag, x, t, transformer_options) of every DiT call."""
    import comfy.patcher_extension as pe

    def spy(executor, x, timestep, *args, **kwargs):
        to = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
        seen.append((tag, x.detach().clone(), timestep.detach().clone(), dict(to)))
        return executor(x, timestep, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, f"dreamshot-test-spy-{tag}", spy)
    return m


# -- geometry from ComfyUI's objects ----------------------------------------------------------------
def test_geometry_is_read_from_the_vae_and_the_model(pack_module, tiny_wan22_vae, tiny_vae, tiny_wan22_model,
                                                     tiny_wan_model):
    import comfy.model_base

    geometry = pack_module("comfy_bridge.geometry")
    layout = pack_module("layout")
    g22, g21 = geometry.vae_geometry(tiny_wan22_vae), geometry.vae_geometry(tiny_vae)
    assert (g22.latent_channels, g22.spatial, g22.temporal, g22.name) == (48, 16, 4, "Wan2.2")
    assert g21 == layout.WAN21
    assert type(tiny_wan22_model.model) is comfy.model_base.WAN22
    assert geometry.model_geometry(tiny_wan22_model) == (48, (1, 2, 2))
    assert geometry.model_geometry(tiny_wan_model) == (16, (1, 2, 2))
    # Wan2.2-TI2V-5B at 1280x704: 80x44 latent cells, 40x22 = 880 tokens per frame (Wan2.1 at 1280x720: 3600)
    lay = layout.StoryLayout(num_refs=2, num_shots=6, width=1280, height=704, geometry=g22)
    assert (lay.latent_width, lay.latent_height, lay.tokens_per_frame) == (80, 44, 880)
    assert layout.StoryLayout(num_refs=2, num_shots=6, width=1280, height=720).tokens_per_frame == 3600
    with pytest.raises(ValueError, match=r"720 is not a positive multiple of 32 .*Wan2.2's VAE downsamples by 16.*"
                                         r"Fix: use 704 or 736"):
        layout.StoryLayout(num_refs=0, num_shots=1, width=1280, height=720, geometry=g22)


def test_the_benchs_5b_geometry_is_comfyuis(pack_module, tiny_wan22_vae, tiny_wan22_model):
    """The memory table's Wan2.2-TI2V-5B rows (dreamshot.bench, shape accounting) use ComfyUI's geometry."""
    geometry = pack_module("comfy_bridge.geometry")
    bench = pack_module("bench.ops_bench")
    assert bench.MODEL_SIZES["5B"].geometry == geometry.vae_geometry(tiny_wan22_vae)
    assert geometry.model_geometry(tiny_wan22_model) == (bench.WAN22_5B_GEOMETRY.latent_channels,
                                                         bench.WAN22_5B_GEOMETRY.patch)


def test_wan22_native_per_frame_timestep_is_dreamshots(pack_module, tiny_wan22_model):
    """WAN22 sees clean frames at t = 0 by itself: its process_timestep is exactly DreamShot's
    per-frame timestep (which patches WAN21 to do the same), so the sampler keeps the native one."""
    clean_frames = pack_module("clean_frames")
    wan_patches = pack_module("comfy_bridge.wan_patches")
    base = tiny_wan22_model.model
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([812.5, 401.0])
    masks = [torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 4),
             (torch.rand(2, 48, 5, 2, 4, generator=g) > 0.3).float(),
             torch.rand(1, 1, 5, 2, 4, generator=g)]
    for mask in masks:
        assert torch.equal(base.process_timestep(t, x=None, denoise_mask=mask),
                           clean_frames.per_frame_timestep(t, mask))
    assert wan_patches.native_clean_frames(tiny_wan22_model)


# -- Wan2.2-TI2V-5B: every mode through the nodes ---------------------------------------------------
@pytest.fixture(scope="module")
def r2s(N, cast, tiny_wan22_vae, tiny_clip):
    return _pack(N, tiny_wan22_vae, tiny_clip, _shots(N), cast)


@pytest.fixture(scope="module")
def loras_dir(tmp_path_factory, comfy_headless, tiny_wan22_model):
    """models/loras with a small LoRA on the tiny 5B DiT's attention (ComfyUI-native keys)."""
    import folder_paths
    import safetensors.torch

    d = tmp_path_factory.mktemp("wan22_loras")
    folder_paths.add_model_folder_path("loras", str(d))
    sd = tiny_wan22_model.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for layer in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o"):
        out_f, in_f = sd[f"{layer}.weight"].shape
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.3
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, in_f, generator=g) / in_f ** 0.5
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(4.0)
    safetensors.torch.save_file(tensors, str(d / "wan22_shot.safetensors"))
    return d


@pytest.fixture(scope="module")
def model22(N, tiny_wan22_model):
    (model,) = N.LoadDreamShotModel(model=tiny_wan22_model, lora_name="None", strength=1.0)
    return model


@pytest.fixture(scope="module")
def patched22(N, model22, loras_dir):
    """The 5B model with the RACL patch and a Shot LoRA on shot 2, as the nodes make it."""
    (m,) = N.DreamShotRACLAttentionPatch(model=model22, strength=1.0, start_percent=0.0, end_percent=1.0,
                                         layers="all", auto_regions=True)
    (m,) = N.DreamShotShotLoRA(model=m, lora_name="wan22_shot.safetensors", strength=1.0, shots="2")
    return m


@pytest.fixture(scope="module")
def r2s_keyframes(N, patched22, r2s):
    images, latent = N.DreamShotSampler(model=patched22, sequence=r2s, seed=5, steps=STEPS, cfg=2.0,
                                        sampler_name="euler", scheduler="simple", ref_cfg=2.0)
    return images, latent["samples"]


def test_5b_reference_to_shot_with_racl_shot_lora_and_reference_cfg(r2s, r2s_keyframes):
    images, latent = r2s_keyframes
    assert r2s.layout.geometry.name == "Wan2.2" and r2s.latent.shape == (1, 48, 4, H // 16, W // 16)
    assert r2s.layout.tokens_per_frame == 2
    assert images.shape == (2, H, W, 3) and torch.isfinite(images).all()
    assert latent.shape == (1, 48, 2, H // 16, W // 16)


def test_5b_storyboard_metrics_measure_the_storyboard(pack_nodes, r2s, r2s_keyframes):
    """Storyboard Metrics reads the 5B story like any other (stand-in face analyzer, dreamshot.shapes)."""
    import importlib

    from dreamshot.shapes import ShapeAnalyzer

    metrics = importlib.import_module(pack_nodes["DreamShotStoryMetrics"].__module__)
    table, result = metrics.measure_keyframes(r2s_keyframes[0], r2s, ShapeAnalyzer(), None)
    assert result.identity.appearances == 3 and table.count("\n|") >= 3   # Mira + Theo, then Mira


def test_5b_model_sees_references_clean_at_t0_through_wans_own_path(pack_module, model22, r2s):
    """No clean-frame object patch on WAN22: the native path gives the DiT the references exactly clean
    at t = 0 (per-frame timesteps), and they come back bit-exact."""
    wan_patches = pack_module("comfy_bridge.wan_patches")
    sampling = pack_module("comfy_bridge.sampling")
    assert "process_timestep" not in wan_patches.patch_for_story(model22, r2s).object_patches
    seen = []
    with torch.inference_mode():
        out = sampling.sample_story(_spy(model22, seen), r2s, 5, STEPS, 2.0, "euler", "simple")
    k = r2s.layout.num_refs
    clean = model22.model.process_latent_in(r2s.latent[:, :, :k])
    assert len(seen) == STEPS
    for _, x, t, _ in seen:
        assert t.shape == (x.shape[0], r2s.layout.num_latent_frames)
        assert torch.all(t[:, :k] == 0) and torch.all(t[:, k:] > 0)
        assert torch.equal(x[:, :, :k], clean.expand(x.shape[0], -1, -1, -1, -1).to(x))
    assert torch.equal(out[:, :, :k], r2s.latent[:, :, :k]) and not torch.equal(out[:, :, k:], r2s.latent[:, :, k:])


def test_5b_patches_change_the_generated_shots_only(pack_module, model22, patched22, r2s):
    """RACL, the Shot LoRA and reference CFG each act on the 5B model (the generated frames change),
    and the references stay exact under all of them."""
    sampling = pack_module("comfy_bridge.sampling")
    k = r2s.layout.num_refs
    with torch.inference_mode():
        plain = sampling.sample_story(model22, r2s, 5, STEPS, 2.0, "euler", "simple")
        ref_cfg = sampling.sample_story(model22, r2s, 5, STEPS, 2.0, "euler", "simple", ref_cfg=2.0)
        patched = sampling.sample_story(patched22, r2s, 5, STEPS, 2.0, "euler", "simple")
    for out in (ref_cfg, patched):
        assert torch.equal(out[:, :, :k], r2s.latent[:, :, :k])
        assert not torch.equal(out[:, :, k:], plain[:, :, k:])


def test_5b_edit_keeps_the_locked_shot_exactly(N, model22, cast, tiny_wan22_vae, tiny_clip, r2s_keyframes):
    before, _ = r2s_keyframes
    edit = _pack(N, tiny_wan22_vae, tiny_clip, _shots(N), cast, mode="edit", keyframes=before, lock_shots="1")
    assert edit.layout.clean_shots == (True, False)
    images, latent = N.DreamShotSampler(model=model22, sequence=edit, seed=9, steps=STEPS, cfg=2.0,
                                        sampler_name="euler", scheduler="simple", ref_cfg=2.0)
    assert torch.equal(images[0], before[0])
    assert not torch.equal(images[1], before[1])
    shot0 = edit.layout.shot_frames(0)[0]
    assert torch.equal(latent["samples"][:, :, 0], edit.latent[:, :, shot0])


def test_5b_shot_to_shot_keeps_the_given_first_shot(N, model22, cast, tiny_wan22_vae, tiny_clip):
    first = random_image(7, H, W)[0]
    s2s = _pack(N, tiny_wan22_vae, tiny_clip, _shots(N, first_image=first[None]), cast, mode="shot_to_shot")
    images, _ = N.DreamShotSampler(model=model22, sequence=s2s, seed=3, steps=STEPS, cfg=1.0,
                                   sampler_name="euler", scheduler="simple", ref_cfg=1.0)
    assert images.shape == (2, H, W, 3)
    assert torch.equal(images[0], first)


def test_5b_text_to_shot_in_chunks_keeps_the_wan22_geometry(pack_module, model22, tiny_wan22_vae, tiny_clip, N):
    """Chunks re-plan each pass: the pass must keep the VAE's geometry (48 channels, 16x)."""
    t2s = _pack(N, tiny_wan22_vae, tiny_clip, _shots(N, boxes=""), mode="text_to_shot")
    sampling = pack_module("comfy_bridge.sampling")
    passes = []
    with torch.inference_mode():
        images, latent = sampling.sample_long_story(model22, t2s, 4, STEPS, 1.0, "euler", "simple", chunk_size=1,
                                                    context_shots=1, on_chunk=passes.append)
    assert [p.layout.num_shots for p in passes] == [1, 2]
    assert all(p.layout.geometry == t2s.layout.geometry and p.latent.shape[1] == 48 for p in passes)
    assert passes[1].layout.clean_shots == (True, False)   # the first keyframe as the context shot
    assert images.shape == (2, H, W, 3) and latent.shape == (1, 48, 2, H // 16, W // 16)


def test_a_story_packed_for_another_backbone_is_refused(N, model22, cast, tiny_vae, tiny_clip):
    wan21_pack = _pack(N, tiny_vae, tiny_clip, _shots(N, boxes=""), cast, w=64, h=64)
    with pytest.raises(ValueError, match=r"DreamShot Sampler: input 'model': the story was packed with Wan2\.1's VAE "
                                         r"\(16 latent channels\) but this model samples 48-channel latents.*wan2\.2_vae"):
        N.DreamShotSampler(model=model22, sequence=wan21_pack, seed=1, steps=1, cfg=1.0, sampler_name="euler",
                           scheduler="simple", ref_cfg=1.0)


def test_5b_pack_refuses_a_size_that_is_not_a_multiple_of_32(N, cast, tiny_wan22_vae, tiny_clip):
    with pytest.raises(ValueError, match=r"Shot Sequence Pack: input 'height': 48 is not a positive multiple of 32"):
        _pack(N, tiny_wan22_vae, tiny_clip, _shots(N, boxes=""), cast, h=48)


# -- Wan2.2-T2V-A14B: two experts ----------------------------------------------------------------
@pytest.fixture(scope="module")
def a14b_story(N, cast, tiny_vae, tiny_clip):
    return _pack(N, tiny_vae, tiny_clip, _shots(N), cast, w=64, h=64)


def _expert_steps(seen, sigmas):
    """[(expert tag, step index)] per DiT call, the step found from the generated frames' timestep."""
    out = []
    for tag, _, t, _ in seen:
        sigma = float(t.max()) / 1000.0
        step = min(range(len(sigmas) - 1), key=lambda i: abs(float(sigmas[i]) - sigma))
        assert abs(float(sigmas[step]) - sigma) < 1e-4
        out.append((tag, step))
    return out


@pytest.mark.parametrize("switch_step", [0, 3])
def test_two_experts_switch_at_the_right_step_with_one_progress_bar(N, pack_module, tiny_wan_model,
                                                                    tiny_low_noise_model, a14b_story, switch_step):
    """High-noise steps on the first model, the rest on the second: at the first step whose sigma is
    below 0.875 (Wan2.2 T2V's boundary), or at switch_step; one progress count over all steps."""
    import comfy.samplers
    import comfy.utils

    sampling = pack_module("comfy_bridge.sampling")
    steps = 8
    sigmas = comfy.samplers.KSampler(tiny_wan_model, steps=steps, device="cpu", sampler="euler",
                                     scheduler="simple").sigmas
    expected = switch_step or next(i for i in range(steps) if float(sigmas[i]) < 0.875)
    assert 0 < expected < steps
    seen, progress = [], []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append((value, total)))
    try:
        with torch.inference_mode():
            images, _ = sampling.sample_long_story(
                _spy(tiny_wan_model, seen, "high"), a14b_story, 5, steps, 1.0, "euler", "simple",
                experts=sampling.Experts(_spy(tiny_low_noise_model, seen, "low"), switch_step=switch_step))
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert _expert_steps(seen, sigmas) == [("high", i) for i in range(expected)] + \
        [("low", i) for i in range(expected, steps)]
    assert [v for v, _ in progress] == list(range(1, steps + 1)) and {t for _, t in progress} == {steps}
    assert images.shape == (2, 64, 64, 3)


def _comfy_two_ksampler_advanced(pack_module, high, low, seq, steps, switch, cfg, low_cfgs, restore_clean=False):
    """ComfyUI's Wan2.2 template on the DreamShot-patched experts: KSamplerAdvanced 0 -> switch at ``cfg``
    returning its leftover noise, then switch -> end adding none, the same seed; one result per low-noise
    cfg in ``low_cfgs``. ``restore_clean``: put the clean frames back in between, as DreamShot does."""
    import comfy.sample

    sampling = pack_module("comfy_bridge.sampling")
    wan_patches = pack_module("comfy_bridge.wan_patches")
    hi, lo = (wan_patches.patch_for_story(m, seq) for m in (high, low))
    noise = sampling.initial_noise(seq, 5, seq.latent)
    conds = ([[seq.positive, {}]], [[seq.negative, {}]])
    mask = seq.denoise_mask()
    mid = comfy.sample.sample(hi, noise, steps, cfg, "euler", "simple", *conds, seq.latent, noise_mask=mask,
                              start_step=0, last_step=switch, force_full_denoise=False, seed=5)
    if restore_clean:
        mid[:, :, : seq.layout.num_refs] = seq.latent[:, :, : seq.layout.num_refs]
    return [comfy.sample.sample(lo, torch.zeros_like(noise), steps, c, "euler", "simple", *conds, mid, noise_mask=mask,
                                start_step=switch, last_step=10000, force_full_denoise=True, seed=5) for c in low_cfgs]


def test_two_experts_equal_comfyuis_two_ksampler_advanced(pack_module, tiny_wan_model, tiny_low_noise_model,
                                                          a14b_story):
    """The two-expert pass is ComfyUI's Wan2.2 template (KSamplerAdvanced 0 -> s with leftover noise, then
    s -> end adding no noise, the same seed) on the DreamShot-patched experts; DreamShot also puts the
    clean frames back exactly between the two, which moves the result by rounding only."""
    sampling = pack_module("comfy_bridge.sampling")
    steps, switch, seq = 6, 2, a14b_story
    with torch.inference_mode():
        ours = sampling.sample_story(tiny_wan_model, seq, 5, steps, 1.0, "euler", "simple",
                                     experts=sampling.Experts(tiny_low_noise_model, switch_step=switch))
        [ref] = _comfy_two_ksampler_advanced(pack_module, tiny_wan_model, tiny_low_noise_model, seq, steps, switch,
                                             1.0, [1.0])
        single = sampling.sample_story(tiny_wan_model, seq, 5, steps, 1.0, "euler", "simple")
    k = seq.layout.num_refs
    assert torch.allclose(ours[:, :, k:], ref[:, :, k:], atol=1e-4, rtol=0)
    assert not torch.allclose(ours[:, :, k:], single[:, :, k:], atol=1e-2)   # the second expert did sample
    assert torch.equal(ours[:, :, :k], seq.latent[:, :, :k])


def test_the_low_noise_expert_samples_at_its_own_cfg(pack_module, tiny_wan_model, tiny_low_noise_model, a14b_story):
    """cfg_low_noise (the official A14B guides its experts with 4 and 3): ComfyUI's two KSamplerAdvanced
    with a cfg each, on the DreamShot-patched experts; 0 keeps the sampler's cfg for both."""
    sampling = pack_module("comfy_bridge.sampling")
    steps, switch, seq = 4, 2, a14b_story
    with torch.inference_mode():
        def ours(cfg_low):
            return sampling.sample_story(tiny_wan_model, seq, 5, steps, 2.0, "euler", "simple",
                                         experts=sampling.Experts(tiny_low_noise_model, switch_step=switch, cfg=cfg_low))

        own, same = ours(3.0), ours(0.0)
        ref_own, ref_same = _comfy_two_ksampler_advanced(pack_module, tiny_wan_model, tiny_low_noise_model, seq, steps,
                                                         switch, 2.0, [3.0, 2.0], restore_clean=True)
    k = seq.layout.num_refs
    # the same ComfyUI calls on the same tensors (measured: bit-equal); the bound allows a reordered sum
    tol = 64 * torch.finfo(own.dtype).eps * float(ref_own[:, :, k:].abs().max())
    torch.testing.assert_close(own[:, :, k:], ref_own[:, :, k:], rtol=0, atol=tol)
    torch.testing.assert_close(same[:, :, k:], ref_same[:, :, k:], rtol=0, atol=tol)
    assert not torch.allclose(own[:, :, k:], same[:, :, k:], atol=1e-3)   # the scale did change the low-noise steps


def test_story_patches_apply_to_both_experts(N, pack_module, tiny_wan_model, tiny_low_noise_model, a14b_story,
                                             tmp_path_factory, comfy_headless):
    """RACL and a Shot LoRA put on the first expert by the nodes, and reference CFG, run in the second
    expert's calls too: its role-attention hook, the LoRA's scoped layer and the no-references pass."""
    import folder_paths
    import safetensors.torch

    d = tmp_path_factory.mktemp("a14b_loras")
    folder_paths.add_model_folder_path("loras", str(d))
    w = tiny_wan_model.model.diffusion_model.blocks[0].self_attn.q.weight
    g = torch.Generator().manual_seed(4)
    safetensors.torch.save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(w.shape[0], 2, generator=g),
                                 "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(2, w.shape[1], generator=g),
                                 "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)},
                                str(d / "a14b_shot.safetensors"))
    (high,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0, end_percent=1.0,
                                            layers="all", auto_regions=True)
    (high,) = N.DreamShotShotLoRA(model=high, lora_name="a14b_shot.safetensors", strength=1.0, shots="2")
    wan_patches = pack_module("comfy_bridge.wan_patches")
    sampling = pack_module("comfy_bridge.sampling")
    seen, lora_runs = [], []
    low = _spy(tiny_low_noise_model, seen, "low")
    q = tiny_low_noise_model.model.diffusion_model.blocks[0].self_attn.q
    hook = q.register_forward_hook(lambda mod, inp, out: lora_runs.append(
        getattr(mod.forward, "dreamshot_shot_lora", None) is not None))
    try:
        with torch.inference_mode():
            sampling.sample_story(_spy(high, seen, "high"), a14b_story, 5, 4, 2.0, "euler", "simple", ref_cfg=2.0,
                                  experts=sampling.Experts(low, switch_step=2))
    finally:
        hook.remove()
    for tag in ("high", "low"):
        calls = [to for t, _, _, to in seen if t == tag]
        assert calls and all(wan_patches.STORY_KEY in to for to in calls)
        assert all(wan_patches.SELF_ATTENTION_HOOKS_KEY in to for to in calls)     # the RACL hook
        assert any(to.get(wan_patches.NO_REFS_KEY) for to in calls)                # reference CFG's pass
    assert lora_runs and all(lora_runs)                                           # the Shot LoRA's layer
    assert wan_patches.share_story_patches(high, tiny_low_noise_model) is not tiny_low_noise_model
    config_key = pack_module("comfy_bridge.role_patch").CONFIG_KEY
    assert config_key not in tiny_low_noise_model.model_options.get("transformer_options", {})   # input untouched


def test_two_expert_sampler_node_runs_the_story(N, tiny_wan_model, tiny_low_noise_model, a14b_story):
    (high,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="None", strength=1.0)
    (low,) = N.LoadDreamShotModel(model=tiny_low_noise_model, lora_name="None", strength=1.0)
    images, latent = N.DreamShotSampler(model=high, sequence=a14b_story, seed=2, steps=4, cfg=2.0,
                                        sampler_name="euler", scheduler="simple", ref_cfg=2.0, chunk_size=1,
                                        context_shots=1, model_low_noise=low)
    alone, _ = N.DreamShotSampler(model=high, sequence=a14b_story, seed=2, steps=4, cfg=2.0, sampler_name="euler",
                                  scheduler="simple", ref_cfg=2.0, chunk_size=1, context_shots=1)
    assert images.shape == (2, 64, 64, 3) and latent["samples"].shape == (1, 16, 2, 8, 8)
    assert not torch.equal(images, alone)


def test_a_low_noise_model_of_another_backbone_is_refused_by_its_input(N, tiny_wan_model, tiny_wan22_model,
                                                                      a14b_story):
    with pytest.raises(ValueError, match=r"DreamShot Sampler: input 'model_low_noise': the story was packed with "
                                         r"Wan2\.1's VAE \(16 latent channels\) but this model samples 48-channel"):
        N.DreamShotSampler(model=tiny_wan_model, sequence=a14b_story, seed=1, steps=2, cfg=1.0, sampler_name="euler",
                           scheduler="simple", ref_cfg=1.0, model_low_noise=tiny_wan22_model)
