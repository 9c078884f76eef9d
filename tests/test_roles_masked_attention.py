"""The inference patch: role-masked self-attention against a dense masked reference, strength 0 and 1,
the key bias per group, the step / sigma range."""

import math

import pytest
import torch
from support.roles import randn, two_char_story

from dreamshot.attention import sdpa_attention
from dreamshot.roles import (group_key_bias,
                             role_bias_value,
                             role_masked_attention_mass, role_masked_self_attention, sigma_in_range, step_in_range)


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
    lay, rm = two_char_story(repeat=8)  # 2 refs + 1 shot of 2 latent frames = 16 tokens
    groups = rm.group_of_query()
    q, k, v = (randn(2, lay.num_tokens, 3 * 8, seed=seed + i) for i in range(3))
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
