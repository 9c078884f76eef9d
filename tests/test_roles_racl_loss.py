"""RACL: the formula on dense probabilities, the blockwise loss and its gradients, the config."""
import math

import pytest
import torch
from support.roles import randn, role_qk, two_char_story

from dreamshot.layout import StoryLayout
from dreamshot.roles import (RACLConfig, build_role_map, full_logsumexp, racl_from_probs, racl_loss, ref_shot_attention)


def _dense_probs(q, k, heads, rows, cols):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)  # full N x N, reference only
    full = torch.softmax(logits, dim=-1)[:, :, rows][:, :, :, cols]
    restricted = torch.softmax(logits[:, :, rows][:, :, :, cols], dim=-1)
    return restricted, full


def test_ref_shot_attention_matches_dense_and_has_gradients():
    q = randn(2, 40, 3 * 8, seed=1).requires_grad_()
    k = randn(2, 40, 3 * 8, seed=2).requires_grad_()
    rows, cols = torch.tensor([30, 5, 17, 39, 22]), torch.arange(0, 12)
    restricted, full = _dense_probs(q, k, 3, rows, cols)
    got = ref_shot_attention(q, k, rows, cols, heads=3, budget_bytes=1000)  # blocks of 2 rows
    torch.testing.assert_close(got, restricted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3, 5))
    got_full = ref_shot_attention(q, k, rows, cols, heads=3, normalization="full", budget_bytes=1)
    torch.testing.assert_close(got_full, full, rtol=1e-5, atol=1e-5)
    w = randn(*got.shape, seed=3)
    gq, gk = torch.autograd.grad((got * w).sum() + (got_full * w).sum(), (q, k))
    rq, rk = torch.autograd.grad((restricted * w).sum() + (full * w).sum(), (q, k))
    torch.testing.assert_close(gq, rq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-5)


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


def test_racl_loss_matches_formula_on_dense_probs():
    lay = StoryLayout(num_refs=3, num_shots=2, width=32, height=64, ref_characters=(0, 1, 1))
    mask = torch.zeros(64, 32)
    mask[8:40, 4:30] = 1.0  # soft edges on the token grid
    rm = build_role_map(lay, ref_masks=[mask, None, mask.flip(0)],
                        shot_regions=[{0: (0, 0, 20, 64), 1: (12, 10, 32, 50)}, {1: mask}])
    q = randn(2, lay.num_tokens, 4 * 4, seed=6).requires_grad_()
    k = randn(2, lay.num_tokens, 4 * 4, seed=7)
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
    lay, rm = two_char_story()
    q, k = role_qk(lay, rm, swap=False)
    assert racl_loss(q, k, 2, rm) < 1e-6
    q, k = role_qk(lay, rm, swap=True)
    assert racl_loss(q, k, 2, rm) > 1.9
    # a mild swap, then plain SGD on the queries
    q, k = role_qk(lay, rm, swap=True, scale=1.5, noise=0.3)
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


def test_full_logsumexp_matches_dense():
    q, k = randn(1, 30, 8, seed=11), randn(1, 30, 8, seed=12)
    rows = torch.tensor([3, 4, 29])
    bias = torch.zeros(30)
    bias[:5] = -2.0
    logits = (q.view(1, 30, 2, 4).transpose(1, 2) @ k.view(1, 30, 2, 4).transpose(1, 2).transpose(-1, -2)) / 2.0
    expect = torch.logsumexp(logits[:, :, rows] + bias, dim=-1)
    torch.testing.assert_close(full_logsumexp(q, k, rows, 2, key_bias=bias, budget_bytes=300), expect)
