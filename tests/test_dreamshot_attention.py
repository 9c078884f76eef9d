"""Per-shot cross-attention: segmented implementation against the dense masked reference."""

import torch

from dreamshot.attention import (NO_TEXT, dense_masked_cross_attention, frame_runs, pad_segments,
                                 per_shot_cross_attention, sdpa_attention)


def _qkv(frames, tokens, segments, seg_len, heads=2, d=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, frames * tokens, heads * d, generator=g)
    k = torch.randn(batch, segments * seg_len, heads * d, generator=g)
    v = torch.randn(batch, segments * seg_len, heads * d, generator=g)
    return q, k, v


def test_frame_runs_groups_consecutive_frames():
    assert frame_runs([3, NO_TEXT, 0, 0, 1, 0]) == [(0, 1, 3), (1, 2, NO_TEXT), (2, 4, 0), (4, 5, 1), (5, 6, 0)]


def test_segmented_equals_dense_masked_reference():
    frames_segments = [4, NO_TEXT, 0, 1, 1, 2, 3]  # ref with caption, ref without, shots (one 2 frames)
    q, k, v = _qkv(frames=7, tokens=6, segments=5, seg_len=9)
    fast = per_shot_cross_attention(q, k, v, 2, frames_segments, 6, 5)
    dense = dense_masked_cross_attention(q, k, v, 2, frames_segments, 6, 5)
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(fast[:, 6:12]) == 0  # the caption-less reference reads no text


def test_changing_one_prompt_changes_only_its_frames():
    segs = [NO_TEXT, 0, 1, 2]
    q, k, v = _qkv(frames=4, tokens=5, segments=3, seg_len=7)
    base = per_shot_cross_attention(q, k, v, 2, segs, 5, 3)
    k2, v2 = k.clone(), v.clone()
    k2[:, 7:14] += 1.0  # segment 1 = shot 2's prompt
    v2[:, 7:14] -= 2.0
    out = per_shot_cross_attention(q, k2, v2, 2, segs, 5, 3)
    changed = (out - base).abs().amax(dim=(0, 2)).view(4, 5).amax(dim=1)
    assert changed[2] > 0
    assert changed[0] == 0 and changed[1] == 0 and changed[3] == 0


def test_identical_prompts_equal_plain_attention():
    """With the same prompt in every segment, per-shot attention is stock cross-attention."""
    q, k1, v1 = _qkv(frames=3, tokens=4, segments=1, seg_len=6)
    k, v = k1.repeat(1, 3, 1), v1.repeat(1, 3, 1)
    out = per_shot_cross_attention(q, k, v, 2, [0, 1, 2], 4, 3)
    torch.testing.assert_close(out, sdpa_attention(q, k1, v1, 2), rtol=1e-5, atol=1e-6)


def test_backend_is_called_once_with_frames_folded_into_the_batch():
    calls = []

    def backend(q, k, v, heads):
        calls.append((q.shape[0], q.shape[1], k.shape[1]))
        return sdpa_attention(q, k, v, heads)

    q, k, v = _qkv(frames=12, tokens=100, segments=12, seg_len=512, batch=2)
    out = per_shot_cross_attention(q, k, v, 2, list(range(12)), 100, 12, attention=backend)
    # One call: 2 x 12 frames of 100 tokens, each against only its own 512 text tokens.
    assert calls == [(24, 100, 512)]
    torch.testing.assert_close(out, dense_masked_cross_attention(q, k, v, 2, list(range(12)), 100, 12),
                               rtol=1e-4, atol=1e-5)
    # Frames without text (uncaptioned references) are left out of the calls, in bounded chunks.
    calls.clear()
    segs = [NO_TEXT, NO_TEXT] + [5, 5, 0, 1, 2, 3, 4, 6, 7, 8]
    out = per_shot_cross_attention(q, k, v, 2, segs, 100, 12, attention=backend)
    # (runs: frames 2-3 share segment 5, then segments 0-4, then 6-8; each in 16 row slices of 7 tokens)
    assert all(c[1] <= 7 for c in calls) and sum(c[0] * c[1] for c in calls) == 2 * 10 * 100
    assert out[:, :200].abs().sum() == 0
    torch.testing.assert_close(out, dense_masked_cross_attention(q, k, v, 2, segs, 100, 12), rtol=1e-4, atol=1e-5)


def test_pad_segments():
    a, b = torch.ones(1, 3, 4), torch.ones(1, 5, 4)
    out = pad_segments([a, b], 6)
    assert out.shape == (1, 12, 4)
    assert out[0, 3:6].abs().sum() == 0 and out[0, 6:11].sum() == 20 and out[0, 11].abs().sum() == 0
