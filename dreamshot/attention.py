"""Per-shot cross-attention: each latent frame attends only to its own prompt.

All prompts are concatenated on the token axis into one context of ``num_segments`` equal
segments (each prompt padded with zero tokens to the common length, as UMT5 itself pads to 512).
A frame whose segment is ``NO_TEXT`` (a reference without caption) gets a zero cross-attention
output: it attends to no text.

The segmented implementation never builds an [all tokens x all text] mask: frames are folded
into the batch so one plain attention call computes every frame against its own prompt, with the
cost of plain cross-attention. ``dense_masked_cross_attention`` is the straightforward masked
reference it is tested against.

A folded story context (dreamshot.text_fold: each segment's zero padding folded into a few rows)
comes with an additive key bias, applied here per frame's own segment.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

NO_TEXT = -1

# (q [B, Lq, H*d], k [B, Lk, H*d], v [B, Lk, H*d], heads) -> [B, Lq, H*d]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

# An op that replaces one attention call by several computes them in slices of at most 1/ROW_SLICES of
# the query rows, written into one output buffer: beside it only one slice's queries and outputs exist,
# so its peak memory stays within about (1 + 2/ROW_SLICES) of the plain call's (whose output is the
# same size), at any token count.
ROW_SLICES = 16


def rows_per_slice(rows: int) -> int:
    return max(1, -(-rows // ROW_SLICES))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain multi-head attention on [B, L, H*d] tensors (PyTorch SDPA); ``key_bias`` [B, Lk] is
    added to every head's and query's logits (an additive mask broadcast, never expanded)."""
    b, lq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    # [B, 1, 1, Lk]: CUDA's efficient kernel and the CPU flash kernel read it broadcast (the former
    # pads a copy of this small tensor to a multiple of 8 keys); only the math fallback would
    # materialise [B, H, Lq, Lk] (python -m dreamshot.bench --gpu prints the kernel each op got).
    mask = None if key_bias is None else key_bias.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, inner)


def frame_runs(frame_segments: Sequence[int]) -> list[tuple[int, int, int]]:
    """Group consecutive frames with the same segment: [(first_frame, end_frame, segment)]."""
    runs: list[tuple[int, int, int]] = []
    for f, seg in enumerate(frame_segments):
        if runs and runs[-1][2] == seg and runs[-1][1] == f:
            runs[-1] = (runs[-1][0], f + 1, seg)
        else:
            runs.append((f, f + 1, seg))
    return runs


def _check(q, k, frame_segments, tokens_per_frame, num_segments):
    if q.shape[1] != len(frame_segments) * tokens_per_frame:
        raise ValueError(f"{q.shape[1]} query tokens, expected {len(frame_segments)} frames x {tokens_per_frame}")
    if k.shape[1] % num_segments:
        raise ValueError(f"context of {k.shape[1]} tokens does not split into {num_segments} equal segments")
    bad = [s for s in frame_segments if s != NO_TEXT and not 0 <= s < num_segments]
    if bad:
        raise ValueError(f"frame segments {bad} outside 0..{num_segments - 1}")


def per_shot_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                             frame_segments: Sequence[int], tokens_per_frame: int, num_segments: int,
                             attention: AttentionFn = sdpa_attention,
                             key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-attention where the tokens of frame f see only text segment ``frame_segments[f]``.

    Args:
        q: [B, F*P, H*d] image-token queries (frame-major, P tokens per frame).
        k, v: [B, num_segments*L, H*d] keys/values of the concatenated prompts.
        heads: attention heads.
        frame_segments: per latent frame, its segment index or NO_TEXT.
        tokens_per_frame: P.
        num_segments: how many equal segments the context holds.
        attention: the backend for each (unmasked) sub-attention, e.g. ComfyUI's optimized one.
        key_bias: optional [B, num_segments*L] (or [num_segments*L]) additive logit bias per key,
            the folded text's (dreamshot.text_fold.key_bias). When given, each frame's attention runs
            through PyTorch SDPA with the frame's segment of it as an additive mask instead of
            ``attention``: ComfyUI's backends cannot all take a mask reliably (flash refuses one and
            falls back to SDPA with a warning on every call; sage attention has no additive mask;
            xformers materialises it per query), and with folded text this cross-attention is small.

    Frames are folded into the batch: [B, F*P] queries become [B*F, P] against each frame's own
    [L] text, one attention call with the FLOPs of plain cross-attention. When every frame has
    text the result is returned as is (no extra buffer); otherwise the text frames are computed
    in ROW_SLICES slices of token rows into a zero output, bounding the extra memory.
    """
    _check(q, k, frame_segments, tokens_per_frame, num_segments)
    b, _, inner = q.shape
    n_frames, p = len(frame_segments), tokens_per_frame
    seg_len = k.shape[1] // num_segments
    kf, vf = (t.view(b, num_segments, seg_len, inner) for t in (k, v))
    qf = q.view(b, n_frames, p, inner)
    bf = None
    if key_bias is not None:
        if key_bias.shape[-1] != k.shape[1] or key_bias.ndim not in (1, 2):
            raise ValueError(f"key bias of shape {tuple(key_bias.shape)} for {k.shape[1]} keys")
        bf = key_bias.to(q.device).expand(b, k.shape[1]).view(b, num_segments, seg_len)

    def keys(first: int, end: int):
        segs = list(frame_segments[first:end])
        n = end - first
        consecutive = segs == list(range(segs[0], segs[0] + n))
        index = None if consecutive else torch.tensor(segs, device=k.device)

        def pick(t):  # consecutive segments: a view, no gather
            return t[:, segs[0]:segs[0] + n] if consecutive else t.index_select(1, index.to(t.device))
        ks, vs = pick(kf).reshape(b * n, seg_len, inner), pick(vf).reshape(b * n, seg_len, inner)
        return ks, vs, None if bf is None else pick(bf).reshape(b * n, seg_len)

    def attend(qs, ks, vs, bs):
        return attention(qs, ks, vs, heads) if bs is None else sdpa_attention(qs, ks, vs, heads, bs)

    if NO_TEXT not in frame_segments:
        ks, vs, bs = keys(0, n_frames)
        return attend(qf.reshape(b * n_frames, p, inner), ks, vs, bs).view(b, n_frames * p, inner)
    # Frames without text keep a zero output. The text frames are computed in slices of token rows
    # (every frame at once, so each call keeps the whole batch of frames): only a slice's queries and
    # outputs exist beside ``out``.
    out = torch.zeros_like(q)
    out_f = out.view(b, n_frames, p, inner)
    rows = rows_per_slice(p)
    for first, end, has_text in frame_runs([seg != NO_TEXT for seg in frame_segments]):
        if not has_text:
            continue
        n = end - first
        ks, vs, bs = keys(first, end)
        for r in range(0, p, rows):
            r_end = min(p, r + rows)
            qc = qf[:, first:end, r:r_end].reshape(b * n, r_end - r, inner)
            out_f[:, first:end, r:r_end] = attend(qc, ks, vs, bs).view(b, n, r_end - r, inner)
    return out


def dense_masked_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                                 frame_segments: Sequence[int], tokens_per_frame: int,
                                 num_segments: int) -> torch.Tensor:
    """Reference implementation with an explicit [tokens x text] boolean mask (quadratic memory)."""
    _check(q, k, frame_segments, tokens_per_frame, num_segments)
    seg_len = k.shape[1] // num_segments
    token_seg = torch.tensor(frame_segments, device=q.device).repeat_interleave(tokens_per_frame)
    key_seg = torch.arange(k.shape[1], device=q.device) // seg_len
    allowed = token_seg[:, None] == key_seg[None, :]  # [Lq, Lk]
    b, lq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.view(b, -1, heads, d).transpose(1, 2).float() for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / d ** 0.5
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no allowed key -> 0
    out = (probs @ vh).transpose(1, 2).reshape(b, lq, inner)
    return out.to(q.dtype)


def pad_segments(contexts: Sequence[torch.Tensor], seg_len: int) -> torch.Tensor:
    """Concatenate [1, L_i, C] prompt encodings into [1, n*seg_len, C] of equal segments.

    Shorter prompts are padded with zero tokens (UMT5 itself pads to 512 with zeros). Callers
    keep n*seg_len different from the image-token count: the attention hook tells self- from
    cross-attention by key length.
    """
    if any(c.shape[1] > seg_len for c in contexts):
        raise ValueError("a prompt is longer than the segment length")
    return torch.cat([F.pad(c, (0, 0, 0, seg_len - c.shape[1])) for c in contexts], dim=1)
