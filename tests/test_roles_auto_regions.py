"""Auto regions (cast-restricted, positive rows) and the memory bound of the patch and auto regions."""

import torch
from support.roles import LargestTensor, randn, role_qk, two_char_story

from dreamshot.layout import StoryLayout
from dreamshot.roles import auto_regions, build_role_map, role_masked_self_attention


def test_patch_and_auto_regions_never_allocate_n_by_n():
    n, p = 10000, 500  # 2 refs of 500 tokens, then 9000 shot tokens
    q, k, v = (randn(1, n, 2 * 4, seed=10 + i) for i in range(3))
    refs = [torch.arange(0, p), torch.arange(p, 2 * p)]
    groups = torch.full((n,), -1)
    groups[2 * p:] = torch.arange(n - 2 * p) % 3  # background, A, B interleaved
    budget = 2 ** 24  # bytes: 4.2M float32, 1/24 of N x N
    with LargestTensor() as masked:
        out = role_masked_self_attention(q, k, v, 2, groups, refs, 0.8)
    with LargestTensor() as regions:
        auto = auto_regions(q, k, 2, [torch.arange(2 * p, n)], [(0, 1)], refs, min_mass=0.05, budget_bytes=budget)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert auto[0].shape == (n - 2 * p,)
    assert masked.largest < n * n // 25  # N x N would be 1e8
    assert regions.largest * 4 <= budget  # auto regions' logits stay within the byte budget given


def test_auto_regions_pick_the_most_attended_reference_of_the_shots_cast():
    lay, rm = two_char_story()
    q, k = role_qk(lay, rm, swap=False)
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
