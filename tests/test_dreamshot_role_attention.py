"""Role attention: token masks, ref<->shot attention, RACL and the role-masked self-attention."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dreamshot.attention import sdpa_attention
from dreamshot.errors import DreamShotInputError
from dreamshot.layout import StoryLayout
from dreamshot.role_attention import (RACLConfig, auto_regions, box_to_mask, build_role_map, full_logsumexp,
                                      group_key_bias, pixel_mask_to_tokens, racl_from_probs, racl_loss,
                                      ref_shot_attention, role_bias_value, role_masked_attention_mass,
                                      role_masked_self_attention, sigma_in_range, step_in_range)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _two_char_story(repeat=4, size=32):
    """2 refs (chars 0, 1) + 1 shot, 32x32 -> P = 4 tokens/frame; A on the left, B on the right."""
    lay = StoryLayout(num_refs=2, num_shots=1, width=size, height=size, repeat=repeat)
    rm = build_role_map(lay, shot_regions=[{0: (0.0, 0.0, 0.5, 1.0), 1: (0.5, 0.0, 1.0, 1.0)}])
    return lay, rm


# -- masks ------------------------------------------------------------------------------------
def test_half_image_mask_downsamples_to_half_the_tokens():
    mask = torch.zeros(64, 128)
    mask[:, :64] = 1.0  # left half
    tok = pixel_mask_to_tokens(mask)
    assert tok.shape == (4 * 8,)
    grid = tok.view(4, 8)  # row-major: h then w
    assert torch.equal(grid[:, :4], torch.ones(4, 4)) and torch.equal(grid[:, 4:], torch.zeros(4, 4))
    soft = torch.zeros(2, 32, 32)
    soft[1, :, :8] = 1.0  # edge in the middle of token column 0
    out = pixel_mask_to_tokens(soft)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[1], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.count_nonzero(out[0]) == 0
    with pytest.raises(ValueError):
        pixel_mask_to_tokens(mask * 2)


def test_box_to_mask_pixels_normalized_and_partial_coverage():
    px = box_to_mask((0, 0, 16, 32), width=32, height=32)
    assert torch.equal(px, box_to_mask((0.0, 0.0, 0.5, 1.0), width=32, height=32))
    assert px.sum() == 16 * 32
    part = box_to_mask((1.5, 0, 3, 1), width=4, height=2)
    torch.testing.assert_close(part, torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        box_to_mask((5, 5, 5, 9), 16, 16)


# -- role map ---------------------------------------------------------------------------------
def test_build_role_map_tokens_weights_and_groups():
    # 3 refs (char 0, char 1, char 0 again), 2 shots of 2 latent frames, 32x32 -> P = 4
    lay = StoryLayout(num_refs=3, num_shots=2, width=32, height=32, repeat=8, ref_characters=(0, 1, 0))
    ref_mask = torch.zeros(32, 32)
    ref_mask[:16] = 1.0  # top half of ref 1
    ref_mask[16:, :4] = 1.0  # a sliver: weight 0.25 in token 2
    right = torch.zeros(32, 32)
    right[:, 16:] = 1.0
    rm = build_role_map(lay, ref_masks=[None, ref_mask, None], shot_regions=[None, {1: right, 0: (0, 0, 16, 32)}])
    assert rm.num_characters == 2 and rm.num_tokens == (3 + 4) * 4
    assert rm.ref_tokens[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert torch.equal(rm.ref_weights[0], torch.ones(8))
    assert rm.ref_tokens[1].tolist() == [4, 5, 6]
    torch.testing.assert_close(rm.ref_weights[1], torch.tensor([1.0, 1.0, 0.25]))
    assert rm.ref_hard_tokens[1].tolist() == [4, 5]  # soft sliver kept for the loss only
    # shot 1 = latent frames 5, 6 -> tokens 20..27; the region repeats on both frames
    by_char = {r.character: r for r in rm.regions}
    assert by_char[0].tokens.tolist() == [20, 22, 24, 26] and by_char[1].tokens.tolist() == [21, 23, 25, 27]
    groups = rm.group_of_query()
    assert groups[:20].tolist() == [-1] * 20  # refs and the region-less shot 0
    assert groups[20:].tolist() == [1, 2] * 4
    assert rm.unregioned_shots() == [0]
    with pytest.raises(DreamShotInputError):
        build_role_map(lay, shot_regions=[{5: right}, None])


def test_overlapping_regions_go_to_the_higher_weight_and_background_is_zero():
    lay = StoryLayout(num_refs=2, num_shots=1, width=64, height=32)  # grid 2 x 4
    a = box_to_mask((0, 0, 40, 32), 64, 32)  # token column 2 covered 0.5 by A
    b = box_to_mask((36, 0, 48, 32), 64, 32)  # token column 2 covered 0.75 by B
    groups = build_role_map(lay, shot_regions=[{0: a, 1: b}]).group_of_query()
    assert groups[16:].view(2, 4).tolist() == [[1, 1, 2, 0], [1, 1, 2, 0]]


# -- ref <-> shot attention -------------------------------------------------------------------
def _dense_probs(q, k, heads, rows, cols):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)  # full N x N, reference only
    full = torch.softmax(logits, dim=-1)[:, :, rows][:, :, :, cols]
    restricted = torch.softmax(logits[:, :, rows][:, :, :, cols], dim=-1)
    return restricted, full


def test_ref_shot_attention_matches_dense_and_has_gradients():
    q = _randn(2, 40, 3 * 8, seed=1).requires_grad_()
    k = _randn(2, 40, 3 * 8, seed=2).requires_grad_()
    rows, cols = torch.tensor([30, 5, 17, 39, 22]), torch.arange(0, 12)
    restricted, full = _dense_probs(q, k, 3, rows, cols)
    got = ref_shot_attention(q, k, rows, cols, heads=3, budget_bytes=1000)  # blocks of 2 rows
    torch.testing.assert_close(got, restricted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3, 5))
    got_full = ref_shot_attention(q, k, rows, cols, heads=3, normalization="full", budget_bytes=1)
    torch.testing.assert_close(got_full, full, rtol=1e-5, atol=1e-5)
    w = _randn(*got.shape, seed=3)
    gq, gk = torch.autograd.grad((got * w).sum() + (got_full * w).sum(), (q, k))
    rq, rk = torch.autograd.grad((restricted * w).sum() + (full * w).sum(), (q, k))
    torch.testing.assert_close(gq, rq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-5)


# -- RACL -------------------------------------------------------------------------------------
def test_racl_formula_zero_for_ideal_positive_for_swapped():
    key_char = torch.tensor([0, 0, 1, 1])
    query_char = torch.tensor([0, 0, 1])
    ideal = torch.tensor([[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0, 0, 0.3, 0.7]]).expand(1, 2, 3, 4)
    swapped = torch.tensor([[0, 0, 0.5, 0.5], [0, 0, 1, 0], [1, 0, 0, 0]]).expand(1, 2, 3, 4)
    for kind in ("mass", "log"):
        assert racl_from_probs(ideal, key_char, query_char, kind=kind) == 0
        assert racl_from_probs(swapped, key_char, query_char, kind=kind) > 1
    assert racl_from_probs(swapped, key_char, query_char) == 2  # (1 - 0) + 1
    # soft weights: mass on a half-weight key counts half as own, half as nothing
    half = racl_from_probs(ideal, key_char, query_char, key_weights=torch.tensor([1.0, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(half, torch.tensor(0.0625))  # region 0: (0.25 + 0) / 2, region 1: 0; mean


def _role_qk(lay, rm, swap, scale=10.0, noise=0.0):
    """2 heads of 4: keys of char c's ref along e_c in every head; queries of region c along e_c
    (along e_{1-c} when swapped)."""
    n, heads, d = lay.num_tokens, 2, 4
    q = noise * _randn(1, n, heads * d, seed=4)
    k = noise * _randn(1, n, heads * d, seed=5)
    for h in range(heads):
        for c, toks in enumerate(rm.ref_tokens):
            k[0, toks, h * d + c] += scale
        for r in rm.regions:
            q[0, r.tokens, h * d + ((1 - r.character) if swap else r.character)] += scale
    return q, k


def test_racl_loss_matches_formula_on_dense_probs():
    lay = StoryLayout(num_refs=3, num_shots=2, width=32, height=64, ref_characters=(0, 1, 1))
    mask = torch.zeros(64, 32)
    mask[8:40, 4:30] = 1.0  # soft edges on the token grid
    rm = build_role_map(lay, ref_masks=[mask, None, mask.flip(0)],
                        shot_regions=[{0: (0, 0, 20, 64), 1: (12, 10, 32, 50)}, {1: mask}])
    q = _randn(2, lay.num_tokens, 4 * 4, seed=6).requires_grad_()
    k = _randn(2, lay.num_tokens, 4 * 4, seed=7)
    keys = torch.cat(rm.ref_tokens)
    key_char = torch.cat([torch.full((len(t),), c) for c, t in enumerate(rm.ref_tokens)])
    rows = torch.cat([r.tokens for r in rm.regions])
    qc = torch.cat([torch.full((len(r.tokens),), r.character) for r in rm.regions])
    qr = torch.cat([torch.full((len(r.tokens),), i) for i, r in enumerate(rm.regions)])
    key_w, query_w = torch.cat(rm.ref_weights), torch.cat([r.weights for r in rm.regions])
    for kind in ("mass", "log"):
        probs = ref_shot_attention(q, k, rows, keys, heads=4)
        expect = racl_from_probs(probs, key_char, qc, key_w, query_w, qr, kind=kind)
        got = racl_loss(q, k, 4, rm, kind=kind, budget_bytes=20_000)  # blocks, recomputed in backward
        torch.testing.assert_close(got, expect)
        torch.testing.assert_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(expect, q)[0])
    assert racl_loss(q, k, 4, rm, characters=[5]) == 0


def test_racl_loss_zero_ideal_positive_swapped_and_sgd_fixes_the_swap():
    lay, rm = _two_char_story()
    q, k = _role_qk(lay, rm, swap=False)
    assert racl_loss(q, k, 2, rm) < 1e-6
    q, k = _role_qk(lay, rm, swap=True)
    assert racl_loss(q, k, 2, rm) > 1.9
    # a mild swap, then plain SGD on the queries
    q, k = _role_qk(lay, rm, swap=True, scale=1.5, noise=0.3)
    q.requires_grad_()
    opt = torch.optim.SGD([q], lr=2.0)
    region_a = rm.regions[0].tokens

    def swapped_mass():
        return ref_shot_attention(q, k, region_a, rm.ref_tokens[1], 2, normalization="full").sum(-1).mean()

    losses, swapped = [], [swapped_mass().item()]
    for _ in range(30):
        opt.zero_grad()
        loss = racl_loss(q, k, 2, rm)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    swapped.append(swapped_mass().item())
    assert losses[-1] < 0.5 * losses[0]
    assert swapped[-1] < 0.5 * swapped[0]


def test_racl_config():
    cfg = RACLConfig(layers=[3, 7])
    assert cfg.lambda_racl == 0.1 and cfg.layers == (3, 7) and cfg.uses_layer(7) and not cfg.uses_layer(4)
    assert RACLConfig().uses_layer(29)
    torch.testing.assert_close(cfg.total([torch.tensor(1.0), torch.tensor(3.0)]), torch.tensor(0.2))
    assert cfg.total([]) == 0.0
    with pytest.raises(ValueError):
        RACLConfig(kind="ce")


# -- inference patch --------------------------------------------------------------------------
def _dense_role_masked(q, k, v, heads, groups, ref_char_tokens, strength):
    """Reference: explicit N x N additive mask."""
    b, n, inner = q.shape
    d = inner // heads
    key_char = torch.full((n,), -1)
    for c, t in enumerate(ref_char_tokens):
        key_char[t] = c
    g, kc = groups[:, None], key_char[None, :]
    forbidden = (kc >= 0) & ((g == 0) | ((g > 0) & (kc != g - 1)))
    bias = torch.zeros(n, n).masked_fill(forbidden, math.log(1 - strength) if strength < 1 else -math.inf)
    qh, kh, vh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
    probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    return (probs @ vh).transpose(1, 2).reshape(b, n, inner), probs


def _patched_story(seed=0):
    lay, rm = _two_char_story(repeat=8)  # 2 refs + 1 shot of 2 latent frames = 16 tokens
    groups = rm.group_of_query()
    q, k, v = (_randn(2, lay.num_tokens, 3 * 8, seed=seed + i) for i in range(3))
    return lay, rm, groups, q, k, v


def test_strength_one_gives_exactly_zero_mass_on_other_reference():
    lay, rm, groups, q, k, v = _patched_story()
    a_region = rm.regions[0].hard_tokens
    assert rm.regions[0].character == 0 and torch.all(groups[a_region] == 1)
    mass_b = role_masked_attention_mass(q, k, 3, groups, rm.ref_hard_tokens, 1.0, a_region, rm.ref_hard_tokens[1])
    assert torch.count_nonzero(mass_b) == 0
    mass_a = role_masked_attention_mass(q, k, 3, groups, rm.ref_hard_tokens, 1.0, a_region, rm.ref_hard_tokens[0])
    assert torch.all(mass_a > 0)
    # the helper agrees with the dense reference probabilities
    _, probs = _dense_role_masked(q, k, v, 3, groups, rm.ref_hard_tokens, 0.6)
    dense = probs[:, :, a_region][:, :, :, rm.ref_hard_tokens[0]].sum(-1)
    got = role_masked_attention_mass(q, k, 3, groups, rm.ref_hard_tokens, 0.6, a_region, rm.ref_hard_tokens[0])
    torch.testing.assert_close(got, dense)
    # the real patch: B's reference values cannot reach A's region
    out = role_masked_self_attention(q, k, v, 3, groups, rm.ref_hard_tokens, 1.0)
    v2 = v.clone()
    v2[:, rm.ref_hard_tokens[1]] += 100.0
    out2 = role_masked_self_attention(q, k, v2, 3, groups, rm.ref_hard_tokens, 1.0)
    assert torch.equal(out[:, a_region], out2[:, a_region])
    assert not torch.equal(out[:, rm.regions[1].hard_tokens], out2[:, rm.regions[1].hard_tokens])


def test_strength_zero_is_exactly_the_unpatched_attention():
    _, rm, groups, q, k, v = _patched_story(seed=3)
    assert torch.equal(role_masked_self_attention(q, k, v, 3, groups, rm.ref_hard_tokens, 0.0),
                       sdpa_attention(q, k, v, 3))
    calls = []

    def backend(q_, k_, v_, heads):
        calls.append(q_.shape[1])
        return sdpa_attention(q_, k_, v_, heads)

    assert torch.equal(role_masked_self_attention(q, k, v, 3, groups, rm.ref_hard_tokens, 0.0, attention=backend),
                       sdpa_attention(q, k, v, 3))
    assert calls == [q.shape[1]]
    assert role_bias_value(0.0) == 0.0 and role_bias_value(1.0) == -math.inf
    with pytest.raises(ValueError):
        role_masked_self_attention(q, k, v, 3, groups, rm.ref_hard_tokens, 1.5)


@pytest.mark.parametrize("strength", [0.7, 1.0])
def test_patched_output_equals_dense_masked_reference(strength):
    _, rm, groups, q, k, v = _patched_story(seed=6)
    groups = groups.clone()
    groups[16:18] = 0  # some shot background too
    got = role_masked_self_attention(q, k, v, 3, groups, rm.ref_hard_tokens, strength)
    ref, _ = _dense_role_masked(q, k, v, 3, groups, rm.ref_hard_tokens, strength)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_patch_and_auto_regions_never_allocate_n_by_n():
    n, p = 10000, 500  # 2 refs of 500 tokens, then 9000 shot tokens
    q, k, v = (_randn(1, n, 2 * 4, seed=10 + i) for i in range(3))
    refs = [torch.arange(0, p), torch.arange(p, 2 * p)]
    groups = torch.full((n,), -1)
    groups[2 * p:] = torch.arange(n - 2 * p) % 3  # background, A, B interleaved
    budget = 2 ** 24  # bytes: 4.2M float32, 1/24 of N x N
    with _LargestTensor() as masked:
        out = role_masked_self_attention(q, k, v, 2, groups, refs, 0.8)
    with _LargestTensor() as regions:
        auto = auto_regions(q, k, 2, [torch.arange(2 * p, n)], [(0, 1)], refs, min_mass=0.05, budget_bytes=budget)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert auto[0].shape == (n - 2 * p,)
    assert masked.largest < n * n // 25  # N x N would be 1e8
    assert regions.largest * 4 <= budget  # auto regions' logits stay within the byte budget given


def test_auto_regions_pick_the_most_attended_reference_of_the_shots_cast():
    lay, rm = _two_char_story()
    q, k = _role_qk(lay, rm, swap=False)
    shot = [torch.arange(8, 12)]
    (got,) = auto_regions(q, k, 2, shot, [(0, 1)], rm.ref_hard_tokens)
    assert got.tolist() == [1, 2, 1, 2]  # left half -> A (group 1), right half -> B (group 2)
    # a shot that lists only B: every token is B's, whichever reference it reads; nobody listed: -1
    assert auto_regions(q, k, 2, shot, [(1,)], rm.ref_hard_tokens)[0].tolist() == [2] * 4
    assert auto_regions(q, k, 2, shot, [()], rm.ref_hard_tokens)[0].tolist() == [-1] * 4
    q[0, 8] = 0.0  # attends nowhere in particular: uniform over 12 keys -> 4/12 on each reference
    assert auto_regions(q, k, 2, shot, [(0, 1)], rm.ref_hard_tokens, min_mass=0.5)[0].tolist() == [-1, 2, 1, 2]
    assert auto_regions(q, k, 2, shot, [(0, 1)], [torch.zeros(0, dtype=torch.long)] * 2)[0].tolist() == [-1] * 4


def test_auto_regions_choose_only_among_the_cast_and_from_the_chosen_batch_rows():
    # 3 characters; the shot's tokens read character 1's reference most, but the shot lists 0 and 2
    lay = StoryLayout(num_refs=3, num_shots=1, width=32, height=32)   # 4 tokens per frame
    rm = build_role_map(lay)
    n, d = lay.num_tokens, 4
    k = torch.zeros(2, n, d)
    for c in range(3):
        k[:, rm.ref_tokens[c], c] = 10.0
    q = torch.zeros(2, n, d)
    q[0, 12:16, 1] = 1.0
    q[0, 12:14, 0] = 0.5     # then character 0 (tokens 12, 13)
    q[0, 14:16, 2] = 0.5     # then character 2 (tokens 14, 15)
    q[1, 12:16, 2] = 1.0     # batch row 1 (the negative prompt, say) reads character 2 everywhere
    shot = [torch.arange(12, 16)]
    assert auto_regions(q, k, 1, shot, [(0, 1, 2)], rm.ref_hard_tokens, batch=slice(0, 1))[0].tolist() == [2] * 4
    assert auto_regions(q, k, 1, shot, [(0, 2)], rm.ref_hard_tokens, batch=slice(0, 1))[0].tolist() == [1, 1, 3, 3]
    assert auto_regions(q, k, 1, shot, [(0, 2)], rm.ref_hard_tokens, batch=slice(1, 2))[0].tolist() == [3] * 4


def test_group_key_bias_targets():
    refs = [torch.tensor([0, 1]), torch.tensor([2])]
    assert group_key_bias(-1, refs, 5, 1.0) is None and group_key_bias(1, refs, 5, 0.0) is None
    assert group_key_bias(1, refs, 5, 1.0).tolist() == [0, 0, -math.inf, 0, 0]
    assert group_key_bias(2, refs, 5, 1.0).tolist() == [-math.inf, -math.inf, 0, 0, 0]
    assert group_key_bias(0, refs, 5, 1.0).tolist() == [-math.inf] * 3 + [0, 0]


def test_step_ranges():
    assert step_in_range(0.0) and step_in_range(1.0)
    assert step_in_range(0.3, 0.2, 0.5) and not step_in_range(0.6, 0.2, 0.5)
    assert sigma_in_range(0.5, sigma_start=0.9, sigma_end=0.2) and not sigma_in_range(0.95, 0.9, 0.2)
    with pytest.raises(ValueError):
        step_in_range(0.5, 0.8, 0.2)


def test_full_logsumexp_matches_dense():
    q, k = _randn(1, 30, 8, seed=11), _randn(1, 30, 8, seed=12)
    rows = torch.tensor([3, 4, 29])
    bias = torch.zeros(30)
    bias[:5] = -2.0
    logits = (q.view(1, 30, 2, 4).transpose(1, 2) @ k.view(1, 30, 2, 4).transpose(1, 2).transpose(-1, -2)) / 2.0
    expect = torch.logsumexp(logits[:, :, rows] + bias, dim=-1)
    torch.testing.assert_close(full_logsumexp(q, k, rows, 2, key_bias=bias, budget_bytes=300), expect)
