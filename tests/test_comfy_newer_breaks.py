"""The ComfyUI 0.38.1 breaks the compat shims did not handle (issue 23), each against a stand-in of the
newer code (tests/support/newer_comfy.py: the logic of the newer functions, with file and commit):

- Block Sparse Attention re-installs its attention override over DreamShot's at every step and passes
  ``heads`` positionally in its dense fallback (comfy_extras/nodes_sparse_attention.py @01dafad3);
- ModelPatcherDynamic casts object-patched parameters of non-leaf modules to their archived dtype
  (comfy/model_patcher.py @08d0e510 ``_load_list(for_dynamic=True)``);
- an attention override hides the checkpoint's ``preferred_attention`` (comfy/ldm/modules/attention.py
  @05080f60 wrap_attn; comfy/ldm/wan/model.py @0c9a69ae);
- per-shot cross-attention over folded text ran PyTorch SDPA with a mask, whatever the backend.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from support import newer_comfy

from dreamshot.attention import NO_TEXT, RepeatedKeys, dense_masked_cross_attention, pad_segments, \
    per_shot_cross_attention, sdpa_attention
from dreamshot.layout import StoryLayout
from dreamshot.text_fold import StoryKeyBias, fold_text, key_bias, padding_mask_bias, repeated_keys, split_zero_rows

W = H = 64            # 8x8 latent: 16 tokens per frame on the tiny DiT (2x2 patches)
FRAME_SEGMENTS = [NO_TEXT, 0, 1]


def _layout():
    return StoryLayout(num_refs=1, num_shots=2, width=W, height=H)


def _forward(m, x, context, **options):
    """One pass of the patched Wan DiT with extra transformer_options, its DIFFUSION_MODEL wrappers
    included (the sampler adds them to transformer_options; comfy/sampler_helpers.py)."""
    to = {**m.model_options["transformer_options"], "wrappers": m.wrappers, **options}
    with torch.no_grad():
        return m.model.apply_model(x, torch.tensor([0.5]), c_crossattn=context, transformer_options=to)


def _inputs(seed=0, context_rows=16):
    g = torch.Generator().manual_seed(seed)
    lay = _layout()
    x = torch.randn(1, 16, lay.num_latent_frames, lay.latent_height, lay.latent_width, generator=g)
    return x, torch.randn(1, context_rows, 4096, generator=g)


# == Block Sparse Attention ===========================================================================
def test_the_stand_in_reproduces_the_positional_heads_break():
    """Fidelity: an override written ``(func, q, k, v, *args, heads=None, ...)`` that passes heads= on
    (DreamShot's before this fix) gets heads twice from the node's dense fallback."""
    patch = newer_comfy.SparseAttnPatch(sigma_start=1.0, sigma_end=0.0, min_tokens=0)

    def naive(func, q, k, v, *args, heads=None, transformer_options=None, **kwargs):
        return func(q, k, v, *args, heads=heads, transformer_options=transformer_options, **kwargs)

    def plain(q, k, v, heads, **kwargs):
        return sdpa_attention(q, k, v, heads)

    sparse = newer_comfy.make_attention_override(patch, naive)
    q, kv = torch.randn(1, 16, 256), torch.randn(1, 8, 256)   # cross-attention shapes: declined, dense
    with pytest.raises(TypeError, match="multiple values for argument 'heads'"):
        sparse(plain, q, kv, kv, heads=2, transformer_options={})


def test_dreamshots_override_takes_heads_positionally_and_the_rest_by_position(comfy_headless):
    from dreamshot.comfy_bridge.wan_patches import _attention_override

    seen = []

    def func(q, k, v, heads, **kwargs):
        seen.append((heads, kwargs.get("mask"), kwargs.get("skip_reshape")))
        return q

    override = _attention_override(None)
    q = torch.randn(1, 4, 8)
    override(func, q, q, q, 2, None, None, False, transformer_options={})
    override(func, q, q, q, heads=2, transformer_options={})
    assert seen == [(2, None, False), (2, None, None)]


def _mini_story(N, story_models):
    """Two references (Mira, Theo), three shots; RACL on block 0 only, so block 1's self-attention is a
    call DreamShot passes on unchanged."""
    _, vae, clip = story_models
    (chars,) = N.DreamShotCharacterReference(image=torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1)),
                                             name="Mira", description="a woman in green")
    (chars,) = N.DreamShotCharacterReference(image=torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2)),
                                             name="Theo", characters=chars)
    shots = None
    for prompt, cast in (("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
                         ("Theo reads a letter", "Theo")):
        (shots,) = N.DreamShotShotScript(prompt=prompt, characters=cast, character_boxes="", shots=shots)
    return N.DreamShotShotSequencePack(vae=vae, clip=clip, shots=shots, width=32, height=32, mode="reference_to_shot",
                                       negative_prompt="blurry", repeat=4, fit="pad_white", max_latent_frames=21,
                                       characters=chars)[0]


def _block0_self_attention(pack_module, model, seq):
    """Every output of block 0's self-attention during a 2-step sample with reference CFG 2."""
    block = model.model.diffusion_model.blocks[0].self_attn
    captured = []
    handle = block.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
    try:
        with torch.inference_mode():
            pack_module("comfy_bridge.sampling").sample_story(model, seq, 5, 2, 2.0, "euler", "simple", ref_cfg=2.0)
    finally:
        handle.remove()
    return captured


@pytest.fixture
def sparse_story(N, pack_module, story_models, monkeypatch):
    """(story, model with RACL on block 0, the same through the Block Sparse stand-in, its patch)."""
    newer_comfy.install_newer_prepare_state(monkeypatch)
    model = story_models[0]
    (racl,) = N.DreamShotRACLAttentionPatch(model=model, strength=1.0, start_percent=0.0, end_percent=1.0,
                                            layers="0", auto_regions=True)
    sparse, patch = newer_comfy.apply_block_sparse_attention(racl, min_tokens=0)
    return _mini_story(N, story_models), racl, sparse, patch


def test_block_sparse_attention_runs_beneath_dreamshot_in_the_sampler(sparse_story, pack_module, caplog):
    """The real pinned sampler, the node's per-step re-install (ON_PREPARE_STATE with the newer
    model_options): every self-attention of the story still reaches DreamShot first. Block 0's
    role-masked self-attention (the first step's cond/uncond call and its reference-CFG pass) is exactly
    what it is without the node; the sparse kernel gets only calls DreamShot passed on (block 1's)."""
    role_patch = pack_module("comfy_bridge.role_patch")
    seq, racl, sparse, patch = sparse_story
    want = _block0_self_attention(pack_module, racl, seq)
    with caplog.at_level(logging.INFO, logger="DreamShot"):
        got = _block0_self_attention(pack_module, sparse, seq)
    assert len(got) == len(want) == 4        # 2 steps x (cond + uncond batch, reference-CFG pass)
    for a, b in zip(got[:2], want[:2]):      # first step: before any sparse call changed the latent
        assert torch.equal(a, b)
    n = seq.layout.num_tokens
    assert patch.kernel_calls and all(shape[1] == n for shape, _ in patch.kernel_calls)
    assert not any(role_patch.BLOCK_KEY in to for _, to in patch.kernel_calls)   # none from block 0
    assert "Model Sparse Attention" in caplog.text


def test_without_dreamshot_on_top_the_stand_in_skips_dreamshots_role_attention(sparse_story, pack_module, monkeypatch):
    """Fidelity: with DreamShot's per-call re-wrap switched off, the stand-in's sparse kernel takes block
    0's self-attention before DreamShot sees it (role mask and reference-CFG pass skipped): the break
    the test above would catch."""
    wan_patches = pack_module("comfy_bridge.wan_patches")
    monkeypatch.setattr(wan_patches, "_keep_outermost", lambda dm: lambda executor, *a, **kw: executor(*a, **kw))
    role_patch = pack_module("comfy_bridge.role_patch")
    seq, racl, sparse, patch = sparse_story
    want = _block0_self_attention(pack_module, racl, seq)
    got = _block0_self_attention(pack_module, sparse, seq)
    assert (got[0] - want[0]).abs().max() > 1e-3
    assert any(role_patch.BLOCK_KEY in to for _, to in patch.kernel_calls)


def test_an_override_swapped_in_during_the_model_call_stops_the_run(tiny_wan_model):
    """What the per-call re-wrap cannot reorder (an override replaced while the DiT runs, here by a
    block replacement) stops the run with an error that names the node in the way."""
    from dreamshot.comfy_bridge.wan_patches import patch_for_story
    from dreamshot.errors import DreamShotInputError

    seq = SimpleNamespace(layout=_layout(), plan=SimpleNamespace(frame_segments=list(FRAME_SEGMENTS)),
                          num_segments=2, segment_length=8)
    m = patch_for_story(tiny_wan_model, seq)
    x, context = _inputs()
    _forward(m, x, context)   # untouched: runs
    patch = newer_comfy.SparseAttnPatch(sigma_start=1.0, sigma_end=0.0, min_tokens=0)

    def swap(args, extra):
        newer_comfy.install_override(patch, args["transformer_options"])
        return extra["original_block"](args)

    m.set_model_patch_replace(swap, "dit", "double_block", 0)
    with pytest.raises(DreamShotInputError, match="Model Sparse Attention") as err:
        _forward(m, x, context)
    assert err.value.input_name == "model" and "without that node" in str(err.value)


# == ModelPatcherDynamic: float32 modulation diffs on an fp8 DiT ======================================
def _fp8_dit(tiny_models_dir):
    """The tiny DiT with fp8_e4m3fn weights, dtypes archived as newer BaseModel.__init__ does."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(tiny_models_dir / "dit.safetensors"),
                                          model_options={"dtype": torch.float8_e4m3fn})
    newer_comfy.archive_model_dtypes(model.model.diffusion_model)
    assert model.model.diffusion_model.blocks[0].modulation.dtype == torch.float8_e4m3fn
    return model


def _modulation_lora(model, path):
    import safetensors.torch

    base = model.model.state_dict()
    g = torch.Generator().manual_seed(7)
    sd = {"diffusion_model.blocks.0.diff_m": torch.randn(base["diffusion_model.blocks.0.modulation"].shape,
                                                         generator=g) * 0.01,
          "diffusion_model.head.modulation.diff": torch.randn(base["diffusion_model.head.modulation"].shape,
                                                              generator=g) * 0.01}
    safetensors.torch.save_file(sd, str(path))
    return sd


def test_the_dynamic_stand_in_casts_a_plain_float32_object_patch_to_fp8(tiny_models_dir):
    """Fidelity: the newer load casts an object-patched float32 parameter of a block (non-leaf module)
    to the archived fp8, in place: the patch itself is changed and stays so."""
    model = newer_comfy.dynamic_patcher(_fp8_dit(tiny_models_dir))
    value = torch.nn.Parameter(torch.randn(model.model.diffusion_model.blocks[0].modulation.shape),
                               requires_grad=False)
    m = model.clone()
    m.add_object_patch("diffusion_model.blocks.0.modulation", value)
    m.partially_load(torch.device("cpu"))
    try:
        assert m.model.diffusion_model.blocks[0].modulation is value and value.dtype == torch.float8_e4m3fn
    finally:
        m.unpatch_model()


def test_lora_modulation_diffs_stay_exact_float32_under_the_dynamic_patcher(tiny_models_dir, tmp_path):
    """DreamShot's LoRA slot on an fp8 DiT through the newer dynamic load, twice (a second run reloads):
    the modulation tables are the exact float32 base + strength * diff while patched, the model's own fp8
    parameters and archived dtypes come back on unpatch."""
    import comfy.utils

    from dreamshot.comfy_bridge.lora import apply_lora

    model = newer_comfy.dynamic_patcher(_fp8_dit(tiny_models_dir))
    dm = model.model.diffusion_model
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    originals = (dm.blocks[0].modulation, dm.head.modulation)
    sd = _modulation_lora(model, tmp_path / "mod.safetensors")
    m = apply_lora(model, str(tmp_path / "mod.safetensors"), 0.5)
    want = {"diffusion_model.blocks.0.modulation": base["diffusion_model.blocks.0.modulation"].float()
            + 0.5 * sd["diffusion_model.blocks.0.diff_m"],
            "diffusion_model.head.modulation": base["diffusion_model.head.modulation"].float()
            + 0.5 * sd["diffusion_model.head.modulation.diff"]}
    for _ in range(2):
        m.partially_load(torch.device("cpu"))
        try:
            for key, value in want.items():
                got = comfy.utils.get_attr(m.model, key)
                assert got.dtype == torch.float32 and torch.equal(got, value), key
        finally:
            m.unpatch_model()
        assert dm.blocks[0].modulation is originals[0] and dm.head.modulation is originals[1]
        assert dm.blocks[0].modulation_comfy_model_dtype == torch.float8_e4m3fn
        assert dm.head.modulation_comfy_model_dtype == torch.float8_e4m3fn
    assert torch.equal(dm.blocks[0].modulation.float(), base["diffusion_model.blocks.0.modulation"].float())


def test_parameter_patch_adds_nothing_where_no_dtype_is_archived(tiny_wan_model):
    """0.3.64 archives no dtypes: the parameter is the only object patch."""
    from dreamshot.comfy_bridge.compat import add_parameter_patch

    m = tiny_wan_model.clone()
    value = torch.nn.Parameter(torch.zeros(m.model.diffusion_model.blocks[0].modulation.shape, dtype=torch.float64))
    add_parameter_patch(m, "diffusion_model.blocks.0.modulation", value)
    assert list(m.object_patches) == ["diffusion_model.blocks.0.modulation"]


# == the checkpoint's preferred attention =============================================================
class _Recorder:
    """A ComfyAttention whose function records (q, k) lengths and runs ComfyUI's PyTorch attention."""

    def __init__(self, name, log):
        import comfy.ldm.modules.attention as attention

        self.name, self.log, self.attention = name, log, attention.attention_pytorch
        self.function = self

    def __call__(self, q, k, v, heads, **kwargs):
        self.log.append((self.name, q.shape[1], k.shape[1]))
        assert kwargs.get("_inside_attn_wrapper")   # as wrap_attn calls it: no second override lookup
        return self.attention(q, k, v, heads, **kwargs)


def _newer_layers(m, monkeypatch, log):
    """Newer Wan on the pinned DiT: a ComfyAttention on every self_attn / cross_attn
    (comfy/ldm/wan/model.py @0c9a69ae) and forward_orig's ``transformer_options["block_index"] = i``
    before each block (a block replacement writing it into the block's options, as forward_orig does)."""
    dm = m.model.diffusion_model
    for i, block in enumerate(dm.blocks):
        monkeypatch.setattr(block.self_attn, "comfy_attention", _Recorder(("self", i), log), raising=False)
        monkeypatch.setattr(block.cross_attn, "comfy_attention", _Recorder(("cross", i), log), raising=False)

        def indexed(args, extra, i=i):
            args["transformer_options"]["block_index"] = i
            return extra["original_block"](args)
        m.set_model_patch_replace(indexed, "dit", "double_block", i)


def test_calls_dreamshot_passes_on_run_the_checkpoints_preferred_attention(tiny_wan_model, monkeypatch):
    """With no override before DreamShot's, every call it passes on unchanged and every sub-attention it
    runs goes to the attention the checkpoint chose for that layer, as wrap_attn would have run without an
    override; the result equals ComfyUI's default (the recorder runs it)."""
    from dreamshot.comfy_bridge.wan_patches import patch_for_story

    log = []
    seq = SimpleNamespace(layout=_layout(), plan=SimpleNamespace(frame_segments=list(FRAME_SEGMENTS)),
                          num_segments=2, segment_length=8)
    plain = patch_for_story(tiny_wan_model, seq)
    newer = tiny_wan_model.clone()
    _newer_layers(newer, monkeypatch, log)
    m = patch_for_story(newer, seq)
    x, context = _inputs()
    out = _forward(m, x, context)
    n = _layout().num_tokens
    assert [c for c in log if c[0][0] == "self"] == [(("self", 0), n, n), (("self", 1), n, n)]
    cross = [c for c in log if c[0][0] == "cross"]
    assert {c[0][1] for c in cross} == {0, 1} and all(k == 8 for _, _, k in cross)   # per-frame prompts
    torch.testing.assert_close(out, _forward(plain, x, context), rtol=1e-5, atol=1e-5)

    log.clear()
    chosen = []
    newer_comfy.set_model_optimized_attention(newer.model_options, lambda q, k, v, heads, **kw:
                                              chosen.append(q.shape[1]) or sdpa_attention(q, k, v, heads))
    _forward(patch_for_story(newer, seq), x, context)
    assert log == [] and chosen   # an override before DreamShot's: wrap_attn would not use the preference


def test_preferred_attention_is_none_on_the_pinned_wan(tiny_wan_model):
    from dreamshot.comfy_bridge.compat import preferred_attention

    dm = tiny_wan_model.model.diffusion_model
    assert preferred_attention(dm, {"block_index": 0}, cross=False) is None
    assert preferred_attention(dm, {}, cross=True) is None and preferred_attention(None, {"block_index": 0}, True) is None


# == per-shot cross-attention over folded text, through the chosen backend, without a mask ===============
def _kv(dim, text_dim, seed=0):
    """Wan's text -> K/V path row by row (text embedding with biases, K with RMS norm): zero rows give
    one key and value."""
    torch.manual_seed(seed)
    e1, e2, k, v, nk = (torch.nn.Linear(text_dim, dim), torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim),
                        torch.nn.Linear(dim, dim), torch.nn.RMSNorm(dim))
    with torch.no_grad():
        for lin in (e1, e2, k, v):
            lin.bias.normal_()

    def kv(context, dtype):
        with torch.no_grad():
            mods = [mod.to(dtype) for mod in (e1, e2, k, v, nk)]
            e = mods[1](torch.nn.functional.gelu(mods[0](context.to(dtype)), approximate="tanh"))
            return mods[4](mods[2](e)), mods[3](e)
    return kv


def _no_mask_backend(calls):
    def backend(q, k, v, heads, **kwargs):
        assert kwargs.get("mask") is None
        calls.append((q.shape[0], q.shape[1], k.shape[1]))
        return sdpa_attention(q, k, v, heads)
    return backend


def _folded_story(g, text_dim=64):
    def prompt(real):   # UMT5: real rows, then zero rows up to 512
        x = torch.zeros(1, 512, text_dim)
        x[:, :real] = torch.randn(1, real, text_dim, generator=g)
        return x

    positive, negative = [prompt(r) for r in (20, 35, 60)], [prompt(8)] * 3
    text = fold_text([split_zero_rows(p) for p in positive], [split_zero_rows(p) for p in negative])
    bias = StoryKeyBias(key_bias(text.positive, text.positive_zero_rows),
                        key_bias(text.negative, text.negative_zero_rows), 3)
    return positive, negative, text, bias


@pytest.mark.parametrize("frames", [[0, 1, 2, 2], [NO_TEXT, 2, 0, 1]], ids=["every frame", "a frame without text"])
def test_folded_text_runs_unmasked_through_the_backend_and_equals_the_masked_and_unfolded(frames):
    heads, d = 4, 128
    g = torch.Generator().manual_seed(0)
    positive, negative, text, bias = _folded_story(g)
    kv = _kv(heads * d, 64)
    k_f, v_f = kv(torch.cat([text.positive, text.negative]), torch.float32)
    k_u, v_u = kv(torch.cat([pad_segments(positive, 512), pad_segments(negative, 512)]), torch.float32)
    p = 64
    q = torch.randn(2, len(frames) * p, heads * d, generator=g) * 2
    calls = []
    repeated = bias.repeated_for_batch([0, 1], 2, "cpu")
    with torch.no_grad():
        free = per_shot_cross_attention(q, k_f, v_f, heads, frames, p, 3, attention=_no_mask_backend(calls),
                                        repeated=repeated)
        masked = per_shot_cross_attention(q, k_f, v_f, heads, frames, p, 3,
                                          key_bias=bias.for_batch([0, 1], 2, "cpu", torch.float32))
        unfolded = per_shot_cross_attention(q, k_u, v_u, heads, frames, p, 3)
    assert calls and all(k == text.segment_length for _, _, k in calls)
    torch.testing.assert_close(free, masked, rtol=0, atol=2e-5)
    torch.testing.assert_close(free, unfolded, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_unmasked_folded_text_is_as_close_to_exact_as_the_unfolded_in_half_precision(dtype):
    """Half precision, head size 128, UMT5's 512-row prompts: the unmasked folded attention is no further
    from the float64 attention of the unfolded context than the unfolded attention in ``dtype`` itself
    (measured max error, bf16: 2.0e-2 vs 2.4e-2; fp16: 2.6e-3 vs 2.8e-3)."""
    heads, d = 4, 128
    g = torch.Generator().manual_seed(0)
    positive, negative, text, bias = _folded_story(g)
    kv = _kv(heads * d, 64)
    k_f, v_f = kv(torch.cat([text.positive, text.negative]), dtype)
    k_u, v_u = kv(torch.cat([pad_segments(positive, 512), pad_segments(negative, 512)]), dtype)
    frames, p = [0, 1, 2, 2], 64
    q = (torch.randn(2, len(frames) * p, heads * d, generator=g) * 2).to(dtype)
    with torch.no_grad():
        free = per_shot_cross_attention(q, k_f, v_f, heads, frames, p, 3, repeated=bias.repeated_for_batch([0, 1], 2, "cpu"))
        unfolded = per_shot_cross_attention(q, k_u, v_u, heads, frames, p, 3)
        exact = dense_masked_cross_attention(q.double(), k_u.double(), v_u.double(), heads, frames, p, 3)
    assert free.dtype == dtype
    assert (free.double() - exact).abs().max() <= (unfolded.double() - exact).abs().max()


def test_repeated_keys_of_a_fold_and_of_biases_that_hide_rows():
    context = torch.zeros(1, 2 * 4, 3)
    context[0, :2] = 1.0       # segment 0: 2 words, 2 zero rows standing for 10
    context[0, 4:8] = 1.0      # segment 1: 4 words, no zero row (z = 0)
    extra, index = repeated_keys(key_bias(context, [10, 0]), 2)
    assert extra.tolist() == pytest.approx([8.0, 0.0]) and index.tolist() == [2, 0]
    assert repeated_keys(padding_mask_bias(context, 2), 2) is None               # -inf: not repeated keys
    filler = torch.zeros(1, 8, 3)
    filler[0, :3] = filler[0, 4:7] = 1.0   # segment 1 had no zero row but holds one: -inf filler
    assert repeated_keys(key_bias(filler, [5, 0]), 2) is None
    bias = StoryKeyBias(key_bias(context, [10, 0]), key_bias(context, [6, 0]), 2)
    rep = bias.repeated_for_batch([1, 0], 4, "cpu")   # negative chunk first, 2 rows each
    assert rep.extra[:, 0].tolist() == pytest.approx([4.0, 4.0, 8.0, 8.0]) and rep.index[:, 0].tolist() == [2] * 4
    assert StoryKeyBias(padding_mask_bias(context, 2), padding_mask_bias(context, 2), 2).repeated_for_batch(
        [0], 1, "cpu") is None


def test_a_folded_story_reaches_a_maskless_backend_in_the_dit(tiny_wan_model):
    """The pinned DiT with the story patch and a chosen backend that takes no mask: a folded story's
    per-shot cross-attention reaches it unmasked, and the result equals the masked path and the
    unfolded story."""
    from dreamshot.comfy_bridge.wan_patches import STORY_KEY, patch_for_story

    g = torch.Generator().manual_seed(3)

    def prompt(real, rows=40):
        x = torch.zeros(1, rows, 4096)
        x[:, :real] = torch.randn(1, real, 4096, generator=g)
        return x

    positive, negative = [prompt(5), prompt(7)], [prompt(3), prompt(3)]
    text = fold_text([split_zero_rows(p) for p in positive], [split_zero_rows(p) for p in negative])
    assert text.segment_length == 8
    folded = SimpleNamespace(layout=_layout(), plan=SimpleNamespace(frame_segments=list(FRAME_SEGMENTS)),
                             num_segments=2, segment_length=8, positive=text.positive, negative=text.negative,
                             positive_zero_rows=text.positive_zero_rows, negative_zero_rows=text.negative_zero_rows)
    unfolded = SimpleNamespace(layout=_layout(), plan=SimpleNamespace(frame_segments=list(FRAME_SEGMENTS)),
                               num_segments=2, segment_length=40)
    calls = []
    chosen = tiny_wan_model.clone()
    newer_comfy.set_model_optimized_attention(chosen.model_options, _no_mask_backend(calls))
    m = patch_for_story(chosen, folded)
    x, _ = _inputs()
    out = _forward(m, x, text.positive, cond_or_uncond=[0])
    assert any(k == 8 for _, _, k in calls)   # per-frame prompts, unmasked, in the chosen backend
    masked = patch_for_story(tiny_wan_model, folded)
    story = masked.model_options["transformer_options"][STORY_KEY]
    story["key_bias"] = StoryKeyBias(story["key_bias"].positive, story["key_bias"].negative)   # no repeats: mask
    torch.testing.assert_close(out, _forward(masked, x, text.positive, cond_or_uncond=[0]), rtol=1e-4, atol=1e-4)
    plain = _forward(patch_for_story(tiny_wan_model, unfolded), x, pad_segments(positive, 40), cond_or_uncond=[0])
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


def test_repeated_keys_check_their_shapes():
    q, k = torch.randn(1, 32, 8), torch.randn(1, 8, 8)
    bad = RepeatedKeys(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="repeated keys"):
        per_shot_cross_attention(q, k, k, 2, [0, 1], 16, 2, repeated=bad)
    with pytest.raises(ValueError, match="not both"):
        per_shot_cross_attention(q, k, k, 2, [0, 1], 16, 2, key_bias=torch.zeros(8),
                                 repeated=RepeatedKeys(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long)))
    assert math.isfinite(float(per_shot_cross_attention(q, k, k, 2, [0, 1], 16, 2).sum()))


def test_a_model_call_without_any_override_gets_dreamshots(comfy_headless):
    """Should a node remove the override during sampling, the model call still runs DreamShot's."""
    from dreamshot.comfy_bridge.wan_patches import OVERRIDE_KEY, _keep_outermost

    wrapper = _keep_outermost(None)
    seen = wrapper(lambda *args: args[5].get(OVERRIDE_KEY), "x", "t", "context", None, None, {})
    assert seen.dreamshot_previous is None
