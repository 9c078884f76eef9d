"""The RACL Attention Patch's auto regions inside the real ComfyUI: a shot's tokens are tied to the
characters the shot lists only, and the positive and negative prompt get the same regions."""

from __future__ import annotations

import pytest
import torch
from support.casts import mira_and_theo

pytestmark = pytest.mark.comfyui

W = H = 64
STEPS = 2


def _story(N, vae, clip, characters):
    """Shot 1 lists Mira and Theo, shots 2 and 3 only Mira; no boxes (auto regions everywhere)."""
    shots = None
    for prompt, cast in (("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
                         ("close-up of Mira", "Mira")):
        (shots,) = N.DreamShotShotScript(prompt=prompt, characters=cast, character_boxes="", shots=shots)
    return N.DreamShotShotSequencePack(vae=vae, clip=clip, shots=shots, width=W, height=H, mode="reference_to_shot",
                                       negative_prompt="blurry", repeat=4, fit="pad_white", max_latent_frames=21,
                                       characters=characters)[0]


def _block0_self_attention(pack_module, model, seq):
    block = model.model.diffusion_model.blocks[0].self_attn
    captured = []
    handle = block.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
    try:
        with torch.inference_mode():
            pack_module("comfy_bridge.sampling").sample_story(model, seq, 5, STEPS, 2.0, "euler", "simple")
    finally:
        handle.remove()
    return captured[0]


def test_auto_regions_never_tie_a_shot_to_a_character_it_does_not_list(N, pack_module, tiny_wan_model, tiny_vae,
                                                                        tiny_clip):
    seq_a = _story(N, tiny_vae, tiny_clip, mira_and_theo(N, H, W))
    seq_b = _story(N, tiny_vae, tiny_clip, mira_and_theo(N, H, W, theo_seed=77))   # only Theo's reference differs
    (patched,) = N.DreamShotRACLAttentionPatch(model=tiny_wan_model, strength=1.0, start_percent=0.0,
                                               end_percent=1.0, layers="0", auto_regions=True)
    lay = seq_a.layout
    mira_only = torch.arange(lay.shot_token_span(1)[0], lay.shot_token_span(2)[1])   # shots 2 and 3
    a, b = (_block0_self_attention(pack_module, patched, s) for s in (seq_a, seq_b))
    ua, ub = (_block0_self_attention(pack_module, tiny_wan_model, s) for s in (seq_a, seq_b))
    patched_diff = (a[:, mira_only] - b[:, mira_only]).abs().max()
    leak = (ua[:, mira_only] - ub[:, mira_only]).abs().max()
    # zero mass on Theo's reference, cond and uncond rows (up to float rounding: the rows that shot 1's
    # own regions add to Mira's group change how the rows are sliced); unpatched, Theo leaks in
    assert patched_diff < 1e-5
    assert leak > 1e-3


def _hook(pack_module, model, seq):
    role_patch = pack_module("comfy_bridge.role_patch")
    m = model.clone()
    role_patch.install(m, seq, role_patch.RoleAttentionConfig(layers=(0,)), "test_hook")
    return m.model_options["transformer_options"]["test_hook"]


def test_negative_prompt_rows_get_the_positive_prompts_regions(N, pack_module, tiny_wan_model, tiny_vae, tiny_clip):
    from dreamshot.attention import sdpa_attention

    role_patch = pack_module("comfy_bridge.role_patch")
    seq = _story(N, tiny_vae, tiny_clip, mira_and_theo(N, H, W))
    lay = seq.layout
    heads, n = 2, lay.num_tokens
    mira, theo = (torch.arange(*lay.ref_token_span(i)) for i in range(2))
    shot1 = torch.arange(*lay.shot_token_span(0))
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, n, 256, generator=g).expand(2, n, 256).contiguous()
    v = torch.randn(2, n, 256, generator=g)
    q = torch.randn(2, n, 256, generator=g) * 0.1
    q[0, shot1] += 3 * k[0, mira].mean(0)    # the positive rows read Mira's reference
    q[1, shot1] += 3 * k[1, theo].mean(0)    # the negative rows would pick Theo on their own
    sigma = float(tiny_wan_model.get_model_object("model_sampling").percent_to_sigma(0.5))

    def options(chunks):
        return {role_patch.BLOCK_KEY: 0, "sigmas": torch.tensor([sigma]), "cond_or_uncond": chunks}

    def func(q_, k_, v_, h, transformer_options=None, **kwargs):
        return sdpa_attention(q_, k_, v_, h)

    hook = _hook(pack_module, tiny_wan_model, seq)
    both = hook(func, q, k, v, heads=heads, transformer_options=options([0, 1]))
    v2 = v.clone()
    v2[:, theo] += 100.0
    both2 = hook(func, q, k, v2, heads=heads, transformer_options=options([0, 1]))
    assert torch.equal(both[:, shot1], both2[:, shot1])      # shot 1 tied to Mira in both rows
    # ComfyUI running uncond alone (little VRAM): the regions the positive call found are reused
    alone = hook(func, q[1:], k[1:], v[1:], heads=heads, transformer_options=options([1]))
    torch.testing.assert_close(alone, both[1:], rtol=0, atol=1e-6)   # (batch 1 vs 2: rounding only)
    # without a positive call before it, the negative rows choose for themselves (Theo here)
    fresh = _hook(pack_module, tiny_wan_model, seq)(func, q[1:], k[1:], v2[1:], heads=heads,
                                                     transformer_options=options([1]))
    assert (fresh[:, shot1] - both2[1:, shot1]).abs().max() > 1.0


def test_positive_rows_of_a_batch(pack_module):
    role_patch = pack_module("comfy_bridge.role_patch")
    rows = role_patch._positive_rows
    assert rows([0, 1], 4) == slice(0, 2) and rows([1, 0], 4) == slice(2, 4)
    assert rows([1], 2) is role_patch._NEGATIVE_ONLY
    assert rows(None, 2) is None and rows([0, 1, 0], 3) is None and rows([0, 1], 3) is None
