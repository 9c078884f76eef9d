"""The nodes inside the real, pinned ComfyUI (loaded by its own custom-node loader), on tiny
random Wan2.1-format weights loaded through ComfyUI's loaders: the tiny DiT, the full-size random
Wan VAE and a tiny UMT5 text encoder (ComfyUI's stock CLIPLoader cannot build a tiny UMT5, so the
test loads it with comfy.sd.load_clip and a config override)."""

from __future__ import annotations


import pytest
import torch
from support.casts import mira_and_theo, random_image

pytestmark = pytest.mark.comfyui

W = H = 64
STEPS = 2


@pytest.fixture(scope="module")
def cast(N):
    return mira_and_theo(N, H, W)


def _shots(N, prompts, boxes=""):
    shots = None
    for j, p in enumerate(prompts):
        (shots,) = N.DreamShotShotScript(prompt=p, characters="Mira, Theo" if j == 0 else "Mira",
                                         character_boxes=boxes if j == 0 else "", shots=shots)
    return shots


PROMPTS = ["Mira and Theo at a bus stop", "Mira alone in the rain", "close-up of Mira"]


def _pack(N, vae, clip, shots, characters=None, mode="reference_to_shot", **kw):
    args = dict(vae=vae, clip=clip, shots=shots, width=W, height=H, mode=mode, negative_prompt="blurry",
                repeat=4, fit="pad_white", max_latent_frames=21, characters=characters)
    args.update(kw)
    return N.DreamShotShotSequencePack(**args)[0]


@pytest.fixture(scope="module")
def r2s(N, cast, tiny_vae, tiny_clip):
    return _pack(N, tiny_vae, tiny_clip, _shots(N, PROMPTS, boxes="Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1"), cast)


def _sample(N, model, seq, seed=5, cfg=2.0):
    return N.DreamShotSampler(model=model, sequence=seq, seed=seed, steps=STEPS, cfg=cfg, sampler_name="euler",
                              scheduler="simple")


def _full_latent(pack_module, model, seq, seed=5, cfg=2.0):
    sampling = pack_module("comfy_bridge.sampling")
    with torch.inference_mode():
        return sampling.sample_story(model, seq, seed, STEPS, cfg, "euler", "simple")


# -- registration ------------------------------------------------------------------------------
def test_nodes_registered_with_literal_ids_and_metadata(pack_nodes):
    expected = {"LoadDreamShotModel", "DreamShotCharacterReference", "DreamShotShotScript",
                "DreamShotShotSequencePack", "DreamShotSampler", "DreamShotRACLAttentionPatch",
                "DreamShotStoryboardSheet"}
    assert expected <= set(pack_nodes)
    for node_id, cls in pack_nodes.items():
        schema = cls.GET_SCHEMA()
        assert schema.node_id == node_id and schema.category.startswith("DreamShot/")
        assert schema.description and schema.display_name
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"


# -- reference-to-shot end to end --------------------------------------------------------------
def test_r2s_gives_one_keyframe_per_shot_and_same_seed_same_images(N, tiny_wan_model, r2s):
    (model,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="None", strength=1.0)
    images, latent = _sample(N, model, r2s)
    assert images.shape == (3, H, W, 3) and torch.isfinite(images).all()
    assert latent["samples"].shape == (1, 16, 3, H // 8, W // 8)  # shot frames only
    again, _ = _sample(N, model, r2s)
    assert torch.equal(images, again)
    other, _ = _sample(N, model, r2s, seed=6)
    assert not torch.equal(images, other)


def test_reference_frames_come_back_bit_exact(pack_module, tiny_wan_model, r2s):
    out = _full_latent(pack_module, tiny_wan_model, r2s)
    k = r2s.layout.num_refs
    assert k == 2
    assert torch.equal(out[:, :, :k], r2s.latent[:, :, :k])
    assert not torch.equal(out[:, :, k:], r2s.latent[:, :, k:])


def test_model_sees_clean_frames_clean_at_timestep_zero(pack_module, tiny_wan_model, r2s):
    import comfy.patcher_extension as pe

    seen = []

    def spy(executor, x, timestep, *args, **kwargs):
        seen.append((x.detach().clone(), timestep.detach().clone()))
        return executor(x, timestep, *args, **kwargs)

    m = tiny_wan_model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-spy", spy)
    _full_latent(pack_module, m, r2s)
    k = r2s.layout.num_refs
    clean = tiny_wan_model.model.process_latent_in(r2s.latent[:, :, :k])
    assert len(seen) == STEPS
    for x, t in seen:
        assert t.shape == (x.shape[0], r2s.layout.num_latent_frames)   # per-frame timesteps
        assert torch.all(t[:, :k] == 0) and torch.all(t[:, k:] > 0)
        assert torch.equal(x[:, :, :k], clean.expand(x.shape[0], -1, -1, -1, -1).to(x))


def test_shot_prompt_reaches_only_its_own_shot_in_cross_attention(N, pack_module, tiny_wan_model, cast, tiny_vae,
                                                                  tiny_clip):
    seq_a = _pack(N, tiny_vae, tiny_clip, _shots(N, PROMPTS), cast)
    seq_b = _pack(N, tiny_vae, tiny_clip, _shots(N, [PROMPTS[0], "a dragon over the city", PROMPTS[2]]), cast)
    block = tiny_wan_model.model.diffusion_model.blocks[0].cross_attn
    captured = []
    handle = block.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
    try:
        _full_latent(pack_module, tiny_wan_model, seq_a, cfg=1.0)
        first_a = captured[0]
        captured.clear()
        _full_latent(pack_module, tiny_wan_model, seq_b, cfg=1.0)
        first_b = captured[0]
    finally:
        handle.remove()
    lay = seq_a.layout
    span = {j: slice(*lay.shot_token_span(j)) for j in range(3)}
    # Shots 1 and 3 unchanged up to float rounding: the folded text (dreamshot.text_fold) gives every
    # segment as many padding rows as the longest prompt needs, so another shot's prompt changes how
    # their zero padding is split into rows (same sum), not what they attend to. Rounding: attention
    # values off by about an ulp, summed by the output projection over its n inputs as random-sign
    # errors: sqrt(n) ulps of the output's scale (n = 256: 16 eps x max|out|; measured 2.2-5.9 under
    # AVX-512, AVX2 and no-SIMD kernels, 1-3 threads).
    for j in (0, 2):
        scale = float(first_a[:, span[j]].abs().max())
        tol = block.o.in_features ** 0.5 * torch.finfo(first_a.dtype).eps * scale
        torch.testing.assert_close(first_a[:, span[j]], first_b[:, span[j]], rtol=0, atol=tol)
    assert (first_a[:, span[1]] - first_b[:, span[1]]).abs().max() > 1e-3   # shot 2 follows its prompt


# -- modes --------------------------------------------------------------------------------------
def test_text_to_shot_uses_no_references(N, tiny_wan_model, cast, tiny_vae, tiny_clip):
    seq = _pack(N, tiny_vae, tiny_clip, _shots(N, PROMPTS), cast, mode="text_to_shot")
    assert seq.layout.num_refs == 0 and seq.layout.num_latent_frames == 3
    images, _ = _sample(N, tiny_wan_model, seq)
    assert images.shape == (3, H, W, 3)


def test_shot_to_shot_keeps_the_given_first_shot(N, tiny_wan_model, cast, tiny_vae, tiny_clip):
    first = random_image(9, H, W)
    (shots,) = N.DreamShotShotScript(prompt=PROMPTS[0], characters="Mira", image=first)
    (shots,) = N.DreamShotShotScript(prompt=PROMPTS[1], characters="Mira", shots=shots)
    seq = _pack(N, tiny_vae, tiny_clip, shots, cast, mode="shot_to_shot")
    images, _ = _sample(N, tiny_wan_model, seq)
    assert torch.equal(images[0], first[0])


def test_edit_regenerates_one_shot_and_keeps_the_others_exactly(N, pack_module, tiny_wan_model, r2s, cast,
                                                                tiny_vae, tiny_clip):
    before, _ = _sample(N, tiny_wan_model, r2s)
    shots = _shots(N, PROMPTS, boxes="Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1")
    edit = _pack(N, tiny_vae, tiny_clip, shots, cast, mode="edit", keyframes=before, lock_shots="1, 3")
    assert edit.layout.clean_shots == (True, False, True)
    after, _ = _sample(N, tiny_wan_model, edit, seed=11)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.equal(after[1], before[1])
    full = _full_latent(pack_module, tiny_wan_model, edit, seed=11)
    k = edit.layout.num_refs
    for j in (0, 2):
        assert torch.equal(full[:, :, k + j], edit.latent[:, :, k + j])


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_stops_sampling_and_the_next_run_works(N, tiny_wan_model, r2s):
    import comfy.model_management as mm
    import comfy.utils

    steps_seen = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        steps_seen.append(value)
        if value == 1:
            mm.interrupt_current_processing(True)  # what POST /interrupt does

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            N.DreamShotSampler(model=tiny_wan_model, sequence=r2s, seed=1, steps=4, cfg=1.0, sampler_name="euler",
                               scheduler="simple")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert steps_seen == [1]
    images, _ = _sample(N, tiny_wan_model, r2s)
    assert images.shape[0] == 3


# -- clear errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("override, needle", [
    (dict(width=500), "input 'width': 500 is not a positive multiple of 16"),
    (dict(repeat=0), "input 'repeat': T=0 must be at least 1"),
    (dict(repeat=3), "input 'repeat': T=3 is not a multiple of the Wan-VAE time compression"),
    (dict(fit="error"), "image is 80x48 but the storyboard is 64x64"),
    (dict(mode="shot_to_shot"), "needs at least one given shot image"),
])
def test_pack_errors_name_node_input_and_fix(N, cast, tiny_vae, tiny_clip, override, needle):
    from comfy_api.v0_0_2 import io  # noqa: F401  (real ComfyUI present)

    with pytest.raises(ValueError) as e:
        _pack(N, tiny_vae, tiny_clip, _shots(N, PROMPTS), cast, **override)
    text = str(e.value)
    assert text.startswith("Shot Sequence Pack: ") and needle in text and "Fix:" in text


@pytest.mark.parametrize("socket, wrong, needle", [
    ("shots_2", "characters", "receives a character chain, not a shot chain"),
    ("shots_3", "image", "receives a Tensor of shape [1, 64, 64, 3], not a shot chain"),
    ("characters_2", "shots", "receives a shot chain, not a character chain"),
    ("characters", "image", "receives a Tensor of shape [1, 64, 64, 3], not a character chain"),
])
def test_pack_refuses_what_is_not_a_chain_on_a_chain_socket(N, cast, socket, wrong, needle):
    """The server checks types only on declared sockets; a numbered socket can receive anything (a
    frontend that moved the links): the node names the socket, what it got and the fix, before
    touching the VAE or the text encoder."""
    shots = _shots(N, PROMPTS[:1])
    value = {"characters": cast, "shots": shots, "image": random_image(3, H, W)}[wrong]
    args = {"characters": cast, socket: value}
    with pytest.raises(ValueError) as e:
        _pack(N, None, None, shots, **args)
    text = str(e.value)
    assert text.startswith(f"Shot Sequence Pack: input '{socket}': {needle}.") and "Fix: connect only" in text


def test_unknown_character_is_named(N, cast, tiny_vae, tiny_clip):
    (shots,) = N.DreamShotShotScript(prompt="x", characters="Mira, Bobb")
    with pytest.raises(ValueError, match=r"shot 1 names unknown character\(s\) 'Bobb' \(known: Mira, Theo\)"):
        _pack(N, tiny_vae, tiny_clip, shots, cast)


def test_model_that_is_not_wan_t2v_is_refused(N, tiny_wan_model):
    class NotWan:
        model = object()
    with pytest.raises(ValueError, match="Load DreamShot Model: input 'model': DreamShot needs a Wan text-to-video"):
        N.LoadDreamShotModel(model=NotWan(), lora_name="None", strength=1.0)


# -- LoRA ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, comfy_headless):
    import folder_paths

    d = tmp_path_factory.mktemp("dreamshot_loras")
    folder_paths.add_model_folder_path("dreamshot", str(d))
    return d


def _write_lora(path, in_features=256, key="diffusion_model.blocks.0.self_attn.q"):
    import safetensors.torch

    g = torch.Generator().manual_seed(0)
    safetensors.torch.save_file({f"{key}.lora_up.weight": torch.randn(256, 4, generator=g),
                                 f"{key}.lora_down.weight": torch.randn(4, in_features, generator=g),
                                 f"{key}.alpha": torch.tensor(4.0)}, str(path))


def test_lora_from_models_dreamshot_changes_the_model(N, pack_module, lora_dir, tiny_wan_model, r2s):
    _write_lora(lora_dir / "good.safetensors")
    (patched,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="good.safetensors", strength=1.0)
    assert patched is not tiny_wan_model and not tiny_wan_model.patches  # input untouched
    assert any("blocks.0.self_attn.q" in k for k in patched.patches)
    base = _full_latent(pack_module, tiny_wan_model, r2s)
    with_lora = _full_latent(pack_module, patched, r2s)
    assert not torch.equal(base, with_lora)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(in_features=384), r"does not match this base model's shapes: .*blocks\.0\.self_attn\.q\.weight"),
    (dict(key="diffusion_model.blocks.7.self_attn.q"), r"match no weight of this Wan model: .*blocks\.7"),
])
def test_lora_that_does_not_fit_is_refused(N, lora_dir, tiny_wan_model, kwargs, needle):
    _write_lora(lora_dir / "bad.safetensors", **kwargs)
    with pytest.raises(ValueError, match="Load DreamShot Model: input 'lora_name': bad.safetensors.*" + needle):
        N.LoadDreamShotModel(model=tiny_wan_model, lora_name="bad.safetensors", strength=1.0)


# -- role attention (RACL Attention Patch) -----------------------------------------------------
def _self_attn_out(pack_module, model, seq):
    block = model.model.diffusion_model.blocks[0].self_attn
    captured = []
    handle = block.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
    try:
        _full_latent(pack_module, model, seq, cfg=1.0)
    finally:
        handle.remove()
    return captured[0]


def test_racl_patch_blocks_the_other_characters_reference_inside_a_region(N, pack_module, tiny_wan_model, cast,
                                                                          tiny_vae, tiny_clip):
    shots = _shots(N, PROMPTS, boxes="Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1")
    (theo2,) = N.DreamShotCharacterReference(image=random_image(77, 48, 80), name="Theo", characters=cast[:1])
    seq_a = _pack(N, tiny_vae, tiny_clip, shots, cast)
    seq_b = _pack(N, tiny_vae, tiny_clip, shots, theo2)         # only Theo's reference differs
    (patched,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0,
                                               end_percent=1.0, layers="0", auto_regions=False)
    lay = seq_a.layout
    start = lay.shot_token_span(0)[0]
    cols = lay.latent_width // 2
    mira_region = torch.tensor([start + r * cols + c for r in range(lay.latent_height // 2) for c in range(cols // 2)])
    a, b = _self_attn_out(pack_module, patched, seq_a), _self_attn_out(pack_module, patched, seq_b)
    assert torch.equal(a[:, mira_region], b[:, mira_region])     # zero mass on Theo's reference
    ua, ub = _self_attn_out(pack_module, tiny_wan_model, seq_a), _self_attn_out(pack_module, tiny_wan_model, seq_b)
    assert not torch.equal(ua[:, mira_region], ub[:, mira_region])  # unpatched: Theo leaks in


def test_racl_strength_zero_is_exactly_no_patch_and_input_is_untouched(N, pack_module, tiny_wan_model, r2s):
    options_before = repr(tiny_wan_model.model_options)
    plain = _full_latent(pack_module, tiny_wan_model, r2s)
    (zero,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=0.0, start_percent=0.0, end_percent=1.0,
                                            layers="all", auto_regions=True)
    (full,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0, end_percent=1.0,
                                            layers="all", auto_regions=True)
    assert repr(tiny_wan_model.model_options) == options_before
    assert torch.equal(_full_latent(pack_module, zero, r2s), plain)
    assert not torch.equal(_full_latent(pack_module, full, r2s), plain)
    assert torch.equal(_full_latent(pack_module, tiny_wan_model, r2s), plain)


def test_racl_patch_bad_layers_are_named(N, tiny_wan_model):
    with pytest.raises(ValueError, match="RACL Attention Patch: input 'layers': the model has blocks 0..1"):
        N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0, end_percent=1.0,
                                      layers="0-5", auto_regions=True)
