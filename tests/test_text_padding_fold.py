"""Folding the text's zero padding (dreamshot.text_fold): a folded story context with its key bias
gives the same per-shot cross-attention, and the same sampling in ComfyUI, as the prompts padded
with zero rows (UMT5's 512 and pad_segments' own)."""

from __future__ import annotations

import math

import pytest
import torch
from support.casts import mira_and_theo

from dreamshot.attention import NO_TEXT, dense_masked_cross_attention, pad_segments, per_shot_cross_attention
from dreamshot.story import fold_chunk_text, fold_story_text
from dreamshot.text_fold import (StoryKeyBias, context_segments, fold_text, key_bias, padding_mask_bias,
                                 split_zero_rows, unfold_context)

C, HEADS, D = 32, 2, 8


def _prompt(g, real: int, length: int, hole: int | None = None) -> torch.Tensor:
    """[1, length, C]: ``real`` random rows, then exact zeros (one zero row inside at ``hole``)."""
    x = torch.zeros(1, length, C)
    x[:, :real] = torch.randn(1, real, C, generator=g)
    if hole is not None:
        x[:, hole] = 0
    return x


class TextToKV(torch.nn.Module):
    """What Wan does to the context before cross-attention, row by row: text embedding (Linear,
    GELU, Linear, with biases: a zero row does not stay zero), K with a per-token RMS norm, V."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        inner = HEADS * D
        self.embed = torch.nn.Sequential(torch.nn.Linear(C, inner), torch.nn.GELU(approximate="tanh"),
                                         torch.nn.Linear(inner, inner))
        self.k, self.v = torch.nn.Linear(inner, inner), torch.nn.Linear(inner, inner)
        self.norm_k = torch.nn.RMSNorm(inner)
        with torch.no_grad():
            for lin in (self.embed[0], self.embed[2], self.k, self.v):
                lin.bias.normal_()

    def forward(self, context):
        e = self.embed(context)
        return self.norm_k(self.k(e)), self.v(e)


def _story_parts(with_full: bool):
    """Prompt encodings of a story, unfolded length 40; ``with_full`` adds a prompt of 40 real rows
    (no zero row)."""
    g = torch.Generator().manual_seed(0)
    L = 40
    p0, p1 = _prompt(g, 5, L), _prompt(g, 12, L, hole=3)
    p3 = _prompt(g, 10, 25)                  # shorter: pad_segments pads it to 40
    n0 = _prompt(g, 7, L)
    if not with_full:
        return [p0, p1, p3], [n0, n0, p3], L
    full = _prompt(g, L, L)
    return [p0, p1, full, p3], [n0, n0, n0, p3], L


@pytest.mark.parametrize("case", ["umt5", "collision", "longer"])
def test_folded_biased_attention_equals_dense_masked_on_the_unfolded_segments(case):
    """umt5: every prompt padded; collision: n * 40 = the image tokens, so the unfolded segments had
    one zero row more (41) and so do the folded ones; longer: folded longer than a prompt without
    zero rows (fold_text's min_length), whose padding rows then get -inf."""
    positive, negative, L = _story_parts(with_full=case != "umt5")
    S = len(positive)
    if case == "longer":
        text = fold_text([split_zero_rows(p, L) for p in positive], [split_zero_rows(p, L) for p in negative],
                         min_length=L + 3)
        assert text.segment_length == L + 3 and text.positive_zero_rows == (35, 29, 0, 30)
    else:
        text = fold_story_text(positive, negative, S * L if case == "collision" else 10 ** 6)
    if case == "collision":
        assert text.segment_length == 41 and text.positive_zero_rows == (36, 30, 1, 31)
        L += 1
    elif case == "umt5":   # the longest real part: 12 rows with one zero row inside (11 real) + 1 zero row
        assert text.segment_length == 12 and text.positive_zero_rows == (35, 29, 30)
        assert text.negative_zero_rows == (33, 33, 30)
    assert text.positive.shape == text.negative.shape == (1, S * text.segment_length, C)
    unfolded_pos, unfolded_neg = pad_segments(positive, L), pad_segments(negative, L)

    mod = TextToKV()
    frame_segments = [S - 1, NO_TEXT, 0, 0, 2, 1, S - 1, 1]   # captioned ref, blind ref, shots (not in order)
    P = 6
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, len(frame_segments) * P, HEADS * D, generator=g)
    with torch.no_grad():
        k_f, v_f = mod(torch.cat([text.positive, text.negative]))        # batch: cond, uncond
        k_u, v_u = mod(torch.cat([unfolded_pos, unfolded_neg]))
        bias = StoryKeyBias(key_bias(text.positive, text.positive_zero_rows),
                            key_bias(text.negative, text.negative_zero_rows))
        b = bias.for_batch([0, 1], 2, q.device, q.dtype)
        folded = per_shot_cross_attention(q, k_f, v_f, HEADS, frame_segments, P, S, key_bias=b)
        want = dense_masked_cross_attention(q, k_u, v_u, HEADS, frame_segments, P, S)
        plain_unfolded = per_shot_cross_attention(q, k_u, v_u, HEADS, frame_segments, P, S)
        unbiased = per_shot_cross_attention(q, k_f, v_f, HEADS, frame_segments, P, S)
        all_text = [0, 1, 2, S - 1, S - 1, 0]
        q2 = q[:, :len(all_text) * P]
        folded_all = per_shot_cross_attention(q2, k_f, v_f, HEADS, all_text, P, S, key_bias=b)
        want_all = dense_masked_cross_attention(q2, k_u, v_u, HEADS, all_text, P, S)
    torch.testing.assert_close(folded, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_unfolded, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded_all, want_all, rtol=1e-5, atol=1e-5)   # the path without NO_TEXT frames
    assert torch.count_nonzero(folded[:, P:2 * P]) == 0                     # the blind reference reads no text
    if case != "collision":   # there the folded length is the unfolded one: every bias is 0
        assert (unbiased - want).abs().max() > 1e-3   # the bias is what makes it exact


def test_key_bias_values_and_round_trip():
    positive, negative, L = _story_parts(with_full=False)
    text = fold_story_text(positive, negative, 10 ** 6)
    bias = key_bias(text.positive, text.positive_zero_rows).view(3, 12)
    # segment 0: 5 real rows then 7 zero rows standing for 35; segment 1: 11 real rows (the zero row
    # inside was moved out), 1 row for 29; segment 2: 10 real rows, 2 rows for 15 + 15 of padding
    assert torch.equal(bias[0, :5], torch.zeros(5)) and bias[0, 5:].tolist() == pytest.approx([math.log(5)] * 7)
    assert torch.equal(bias[1, :11], torch.zeros(11)) and bias[1, 11].item() == pytest.approx(math.log(29))
    assert torch.equal(bias[2, :10], torch.zeros(10)) and bias[2, 10:].tolist() == pytest.approx([math.log(15)] * 2)
    # the unfolded collision row counts: 41 rows for 4 segments of 40 against 160 image tokens
    positive, negative, L = _story_parts(with_full=True)
    text = fold_story_text(positive, negative, 4 * L)
    bias = key_bias(text.positive, text.positive_zero_rows).view(4, 41)
    assert torch.equal(bias[2, :40], torch.zeros(40)) and bias[2, 40].item() == 0.0
    # unfolding gives back exactly the padded prompts (the zero rows are trailing there)
    trailing = [positive[0], positive[2], positive[3]]
    folded = fold_story_text(trailing, trailing, 10 ** 6)
    assert folded.segment_length == 40
    assert torch.equal(unfold_context(folded.positive, folded.positive_zero_rows), pad_segments(trailing, L))
    with pytest.raises(ValueError, match="holds none"):
        key_bias(torch.ones(1, 4, C), (1, 0))
    t = fold_text([split_zero_rows(torch.ones(1, 3, C))], [split_zero_rows(torch.ones(1, 5, C))])
    assert t.segment_length == 5 and key_bias(t.positive, (0,)).tolist() == [0, 0, 0, -math.inf, -math.inf]


def test_padding_mask_bias_hides_the_padding_from_cross_attention():
    """data.mask_text_padding: each shot attends to its prompt's words only, however many zero rows
    pad it (folded or not), and unmasked the padding changes the result (the proof's tiny DiT used
    that: docs/proof.md)."""
    positive, negative, L = _story_parts(with_full=False)
    S = len(positive)
    unfolded = pad_segments(positive, L)
    folded = fold_story_text(positive, negative, 10 ** 6)
    mod = TextToKV()
    frame_segments = [2, NO_TEXT, 0, 1, 2]
    P = 5
    q = torch.randn(1, len(frame_segments) * P, HEADS * D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = []
        for ctx in (unfolded, folded.positive):
            k, v = mod(ctx)
            bias = padding_mask_bias(ctx, S)
            assert torch.isinf(bias).sum() == (ctx[0] == 0).all(-1).sum() > 0
            outs.append(per_shot_cross_attention(q, k, v, HEADS, frame_segments, P, S, key_bias=bias))
        k, v = mod(unfolded)
        plain = per_shot_cross_attention(q, k, v, HEADS, frame_segments, P, S)
        # the reference: each frame's queries against its own prompt's non-zero rows alone
        want = torch.zeros_like(q)
        for f, seg in enumerate(frame_segments):
            if seg == NO_TEXT:
                continue
            rows = split_zero_rows(positive[seg]).rows
            kw, vw = mod(rows)
            qf = q[:, f * P:(f + 1) * P]
            want[:, f * P:(f + 1) * P] = per_shot_cross_attention(qf, kw, vw, HEADS, [0], P, 1)
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert (plain - want).abs().max() > 1e-3
    # a segment of zero rows only keeps its keys (no row of -inf everywhere, no NaN)
    ctx = torch.cat([torch.zeros(1, 4, C), torch.ones(1, 4, C)], dim=1)
    assert padding_mask_bias(ctx, 2).tolist() == [0.0] * 4 + [0.0] * 4
    ctx[:, 6:] = 0
    assert padding_mask_bias(ctx, 2).tolist() == [0.0] * 6 + [-math.inf] * 2


def test_key_bias_rows_follow_cond_or_uncond():
    pos, neg = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])
    kb = StoryKeyBias(pos, neg)
    out = kb.for_batch([1, 0], 4, "cpu", torch.float32)
    assert out.tolist() == [[0, 2], [0, 2], [0, 1], [0, 1]]
    assert kb.for_batch([0], 1, "cpu", torch.float32).tolist() == [[0, 1]]   # the reference-CFG pass
    with pytest.raises(RuntimeError, match="cond_or_uncond"):
        kb.for_batch(None, 2, "cpu", torch.float32)
    assert StoryKeyBias(pos, pos).for_batch(None, 2, "cpu", torch.float32).tolist() == [[0, 1], [0, 1]]


def test_context_length_avoids_the_image_token_count():
    """Folded or not, n * segment length never equals the image tokens (self/cross told apart by
    key length), and the unfolded +1 row is counted as the unfolded code had it."""
    g = torch.Generator().manual_seed(3)
    parts = [_prompt(g, 4, 16), _prompt(g, 7, 16)]
    # unfolded: 2 x 16 = 32 = num_tokens -> 17 rows each; folded: 2 x 8 = 16 -> fine
    text = fold_story_text(parts, parts, 32)
    assert text.segment_length == 8 and text.positive_zero_rows == (13, 10)
    text = fold_story_text(parts, parts, 16)   # folded 2 x 8 = 16: one more row
    assert text.segment_length == 9 and text.positive_zero_rows == (12, 9)
    # A chunk of that story: the story's unfolded length 16 collides with a 32-token pass
    segs = context_segments(text.positive, 2, text.positive_zero_rows)
    chunk = fold_chunk_text(segs, segs, text.segment_length, 32)
    assert chunk.segment_length == 9 and chunk.positive_zero_rows == (13, 10)
    chunk = fold_chunk_text(segs, segs, text.segment_length, 18)
    assert chunk.segment_length == 10 and chunk.positive_zero_rows == (12, 9)


# -- in ComfyUI --------------------------------------------------------------------------------------
W = H = 64
STEPS = 2


@pytest.fixture(scope="module")
def story(N, tiny_vae, tiny_clip):
    chars = mira_and_theo(N, H, W)
    shots = None
    for prompt, who in [("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
                        ("Theo reads a letter", "Theo")]:
        (shots,) = N.DreamShotShotScript(prompt=prompt, characters=who, shots=shots)
    return N.DreamShotShotSequencePack(vae=tiny_vae, clip=tiny_clip, shots=shots, width=W, height=H,
                                       mode="reference_to_shot", negative_prompt="blurry", repeat=4,
                                       fit="pad_white", max_latent_frames=21, characters=chars)[0]


def _spied(model):
    import comfy.patcher_extension as pe

    batches = []

    def spy(executor, x, timestep, *args, **kwargs):
        batches.append((x.shape[0], list(args[-1].get("cond_or_uncond", [])) if args and isinstance(args[-1], dict)
                        else list(kwargs.get("transformer_options", {}).get("cond_or_uncond", []))))
        return executor(x, timestep, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-fold", spy)
    return m, batches


@pytest.mark.comfyui
def test_sampling_folded_equals_unfolded(pack_module, tiny_wan_model, story):
    from dataclasses import replace

    sampling = pack_module("comfy_bridge.sampling")
    unfold_story = pack_module("story").unfold_story
    n = story.num_segments
    # The tiny UMT5 pads every prompt to 512 rows of exact zeros, like the real one: folded away.
    assert story.positive_zero_rows is not None and story.positive.shape[1] < n * 512
    assert story.positive.shape == story.negative.shape
    unfolded = unfold_story(story)
    assert unfolded.segment_length == 512 and unfolded.positive.shape == (1, n * 512, 4096)

    model, batches = _spied(tiny_wan_model)
    cross_attn_width = tiny_wan_model.model.diffusion_model.blocks[0].cross_attn.o.in_features
    with torch.inference_mode():
        for kw in (dict(cfg=2.0), dict(cfg=2.0, ref_cfg=2.0)):   # ref_cfg: the extra positive-only pass
            batches.clear()
            a = sampling.sample_story(model, story, 5, STEPS, kw["cfg"], "euler", "simple", ref_cfg=kw.get("ref_cfg", 1.0))
            seen = list(batches)
            b = sampling.sample_story(model, unfolded, 5, STEPS, kw["cfg"], "euler", "simple",
                                      ref_cfg=kw.get("ref_cfg", 1.0))
            # Float rounding only: the cross-attention outputs differ by about sqrt(n) ulps of their
            # scale (n = 256, the output projection's width; test_nodes_inprocess's shot test), and
            # each guidance step 2 cond - uncond grows independent errors by sqrt(2^2 + 1^2) = sqrt(5):
            # once for cfg 2, twice with ref_cfg 2. Bound: 36 / 80 eps x max|b| (eps = 2^-23); measured
            # 3.4-3.9 / 7.1-9.9 under AVX-512, AVX2 and no-SIMD kernels, 1-3 threads. Without the key
            # bias the runs differ by 10 (below): the bound still tells folding right from wrong.
            growth = cross_attn_width ** 0.5 * 5 ** (0.5 * (1 + ("ref_cfg" in kw)))
            tol = growth * torch.finfo(b.dtype).eps * float(b.abs().max())
            torch.testing.assert_close(a, b, rtol=0, atol=tol)
            # cond and uncond batched in one model call; ComfyUI puts the uncond chunk first here,
            # so the hook must read cond_or_uncond to give each chunk its bias
            assert (2, [1, 0]) in seen or (2, [0, 1]) in seen
            if "ref_cfg" in kw:
                assert (1, [0]) in seen                   # the reference-CFG pass: positive alone
        # Without its key bias the folded context is not the same text: the test is not vacuous.
        no_bias = replace(story, positive_zero_rows=None, negative_zero_rows=None)
        c = sampling.sample_story(tiny_wan_model, no_bias, 5, STEPS, 2.0, "euler", "simple")
    assert not torch.allclose(a[:, :, story.layout.num_refs:], c[:, :, story.layout.num_refs:], rtol=1e-4, atol=1e-4)


@pytest.mark.comfyui
def test_long_story_in_chunks_folded_equals_unfolded(pack_module, tiny_wan_model, story):
    sampling = pack_module("comfy_bridge.sampling")
    unfolded = pack_module("story").unfold_story(story)
    chunks_f, chunks_u = [], []
    with torch.inference_mode():
        img_f, lat_f = sampling.sample_long_story(tiny_wan_model, story, 5, STEPS, 2.0, "euler", "simple",
                                                  chunk_size=2, context_shots=1, on_chunk=chunks_f.append)
        img_u, lat_u = sampling.sample_long_story(tiny_wan_model, unfolded, 5, STEPS, 2.0, "euler", "simple",
                                                  chunk_size=2, context_shots=1, on_chunk=chunks_u.append)
    assert len(chunks_f) == 2
    for f, u in zip(chunks_f, chunks_u):
        assert f.positive_zero_rows is not None and u.positive_zero_rows is None
        assert f.positive.shape[1] < u.positive.shape[1] and u.segment_length == 512
    # Float rounding only, bounded as in the test above: the latents within sqrt(width) x sqrt(5) eps of
    # their scale (cfg 2; measured 2.8-3.7 under AVX-512, AVX2 and no-SIMD kernels, 1-3 threads). The
    # keyframes went through the VAE's decoder (and chunk 2's context through its encoder), which adds
    # about sqrt(fan-in) of its widest convolution per rounding (measured 17-58 eps x max|image|).
    width = tiny_wan_model.model.diffusion_model.blocks[0].cross_attn.o.in_features
    convs = [m for m in story.vae.first_stage_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    fan_in = max(m.weight[0].numel() for m in convs)
    growth = width ** 0.5 * 5 ** 0.5
    eps = torch.finfo(lat_u.dtype).eps
    torch.testing.assert_close(lat_f, lat_u, rtol=0, atol=growth * eps * float(lat_u.abs().max()))
    torch.testing.assert_close(img_f, img_u, rtol=0, atol=growth * fan_in ** 0.5 * eps * float(img_u.abs().max()))
