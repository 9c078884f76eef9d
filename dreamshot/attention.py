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
comes with an additive key bias ln(z/n) on its n zero rows. Those rows are all one key and value (the
projections of a zero text row), so the bias says "this key, z times": ``RepeatedKeys``. With it the
per-frame attention runs unmasked through the given backend (which need not take a mask: flash, sage),
and the extra copies are added exactly afterwards from the weight one copy got (``_add_copies``). A
bias that hides rows (-inf) cannot be written that way; it is applied as an additive mask through
PyTorch SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .attention_stats import temp_budget

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


@dataclass(frozen=True)
class RepeatedKeys:
    """A context whose segments stand for more copies of one of their keys than they hold.

    In batch row b, segment s holds the key/value at its row ``index[b, s]`` one or more times and
    stands for ``extra[b, s]`` (>= 0) copies more (a folded story text: its zero rows, all the same key
    and value, stand for z of them). Softmax attention over the segment with those copies present is
    computed from the unmasked attention over the rows it holds (``_add_copies``).
    """

    extra: torch.Tensor   # [B, S] float32, >= 0
    index: torch.Tensor   # [B, S] int64: a row of the segment holding the repeated key (any where extra == 0)


def _copy_weight(q: torch.Tensor, k: torch.Tensor, heads: int, index: torch.Tensor) -> torch.Tensor:
    """[N, P, H] float32: the softmax weight that key ``index[n]`` gets in plain attention of frame n's
    queries ``q[n]`` ([b, f, P, H*d] frames, N = b * f, a view is fine) over ``k[n]`` ([N, L, H*d]).

    Logits are formed in float32 in row blocks whose temporaries fit ``attention_stats.temp_budget(q)``
    (the bytes of q, as large as the attention's own output): called before that output exists, it
    adds nothing to the op's peak.
    """
    b, f, p, inner = q.shape
    n, keys = k.shape[0], k.shape[1]
    d = inner // heads
    kh = (k.float() * d ** -0.5).view(n, keys, heads, d).permute(0, 2, 3, 1)   # [N, H, d, L], a copy
    pick = index.to(k.device).view(n, 1, 1, 1).expand(n, heads, 1, 1)
    per_row = n * (inner * 8 + heads * keys * 12)   # float rows (and a matmul copy); logits, logsumexp's temporary
    rows = max(1, (temp_budget(q) - kh.numel() * 4) // per_row)
    out = torch.empty(n, p, heads, dtype=torch.float32, device=q.device)
    for a in range(0, p, rows):
        e = min(p, a + rows)
        qh = q[:, :, a:e].float().reshape(n, e - a, heads, d).transpose(1, 2)   # [N, H, r, d]
        logits = qh @ kh                                                          # [N, H, r, L]
        del qh
        weight = logits.gather(-1, pick.expand(n, heads, e - a, 1)).squeeze(-1)
        weight.sub_(torch.logsumexp(logits, -1)).exp_()
        del logits
        out[:, a:e] = weight.transpose(1, 2)
    return out


def _add_copies(out: torch.Tensor, v0: torch.Tensor, heads: int, extra: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
    """Turn plain attention ``out`` [N, P, H*d] into attention with ``extra[n]`` more copies of the key
    whose value is ``v0[n]`` [N, H*d] and whose weight in ``out`` was ``weight`` [N, P, H] (float32,
    overwritten), in place.

    With T the softmax denominator of ``out`` and w = weight: out = (A + w T v0) / T for the others' sum
    A, and adding c copies gives (A + (1 + c) w T v0) / (T + c w T) = (out + c w v0) / (1 + c w).
    c >= 0 keeps the denominator >= 1 (no cancellation). The coefficients ([N, P, H], computed in
    float32) are rounded to ``out``'s dtype before they touch it: an in-place op mixing dtypes would
    make a float32 temporary of ``out``'s size (on the CPU, measured: 4x its bytes).
    """
    n, p, inner = out.shape
    o = out.view(n, p, heads, inner // heads)
    v0 = v0.view(n, 1, heads, inner // heads)
    c = extra.view(n, 1, 1, 1).to(weight)
    step = rows_per_slice(p)   # the coefficients of a slice of rows at a time: small temporaries
    for a in range(0, p, step):
        cw = weight[:, a:a + step].unsqueeze(-1).mul_(c)    # c w
        keep = cw.add(1)                                  # 1 + c w
        cw.div_(keep)                                     # c w / (1 + c w)
        keep.reciprocal_()                                # 1 / (1 + c w)
        o[:, a:a + step].mul_(keep.to(out.dtype)).addcmul_(cw.to(out.dtype), v0)
    return out


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
                             key_bias: torch.Tensor | None = None,
                             repeated: RepeatedKeys | None = None) -> torch.Tensor:
    """Cross-attention where the tokens of frame f see only text segment ``frame_segments[f]``.

    Args:
        q: [B, F*P, H*d] image-token queries (frame-major, P tokens per frame).
        k, v: [B, num_segments*L, H*d] keys/values of the concatenated prompts.
        heads: attention heads.
        frame_segments: per latent frame, its segment index or NO_TEXT.
        tokens_per_frame: P.
        num_segments: how many equal segments the context holds.
        attention: the backend for each (unmasked) sub-attention, e.g. ComfyUI's optimized one.
        repeated: a folded story text as repeated keys (``RepeatedKeys``, [B, num_segments] each): the
            attention still runs unmasked through ``attention``; each frame's result then gets its
            segment's extra copies added exactly (``_add_copies``, from one float32 logits pass over
            the frame's L keys, which costs what the backend's own QK^T does).
        key_bias: optional [B, num_segments*L] (or [num_segments*L]) additive logit bias per key, for a
            bias that is not repeated keys (one that hides rows with -inf: text_fold.padding_mask_bias).
            Each frame's attention then runs through PyTorch SDPA with its segment of the bias as an
            additive mask instead of ``attention``: ComfyUI's backends cannot all take a mask (flash
            refuses one and falls back to SDPA with a warning on every call; sage attention has no
            additive mask; xformers materialises it per query).

    Frames are folded into the batch: [B, F*P] queries become [B*F, P] against each frame's own
    [L] text, one attention call with the FLOPs of plain cross-attention. When every frame has
    text the result is returned as is (no extra buffer); otherwise the text frames are computed
    in ROW_SLICES slices of token rows into a zero output, bounding the extra memory.
    """
    _check(q, k, frame_segments, tokens_per_frame, num_segments)
    if key_bias is not None and repeated is not None:
        raise ValueError("give a folded text either as repeated keys or as a key bias, not both")
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
    if repeated is not None and (repeated.extra.shape != (b, num_segments) or repeated.index.shape != (b, num_segments)):
        raise ValueError(f"repeated keys of shapes {tuple(repeated.extra.shape)} / {tuple(repeated.index.shape)} "
                         f"for batch {b} and {num_segments} segments")

    def keys(first: int, end: int):
        segs = list(frame_segments[first:end])
        n = end - first
        consecutive = segs == list(range(segs[0], segs[0] + n))
        index = None if consecutive else torch.tensor(segs, device=k.device)

        def pick(t):  # consecutive segments: a view, no gather
            return t[:, segs[0]:segs[0] + n] if consecutive else t.index_select(1, index.to(t.device))
        ks, vs = pick(kf).reshape(b * n, seg_len, inner), pick(vf).reshape(b * n, seg_len, inner)
        copies = None
        if repeated is not None:   # (extra, row, weight of one copy) per frame of each batch row
            extra = pick(repeated.extra.to(q.device)).reshape(b * n)
            row = pick(repeated.index.to(q.device)).reshape(b * n)
            copies = (extra, row, _copy_weight(qf[:, first:end], ks, heads, row))
        return ks, vs, None if bf is None else pick(bf).reshape(b * n, seg_len), copies

    def attend(qs, ks, vs, bs, copies, rows=slice(None)):
        if bs is not None:
            return sdpa_attention(qs, ks, vs, heads, bs)
        out = attention(qs, ks, vs, heads)
        if copies is None:
            return out
        extra, row, weight = copies
        v0 = vs[torch.arange(vs.shape[0], device=vs.device), row]
        return _add_copies(out, v0, heads, extra, weight[:, rows])

    if NO_TEXT not in frame_segments:
        ks, vs, bs, copies = keys(0, n_frames)
        return attend(qf.reshape(b * n_frames, p, inner), ks, vs, bs, copies).view(b, n_frames * p, inner)
    # Frames without text keep a zero output. The text frames are computed in slices of token rows
    # (every frame at once, so each call keeps the whole batch of frames): only a slice's queries and
    # outputs exist beside ``out``. Their keys (and the copies' weights) are prepared before ``out`` exists.
    runs = [(first, end, keys(first, end))
            for first, end, has_text in frame_runs([seg != NO_TEXT for seg in frame_segments]) if has_text]
    out = torch.zeros_like(q)
    out_f = out.view(b, n_frames, p, inner)
    rows = rows_per_slice(p)
    for first, end, (ks, vs, bs, copies) in runs:
        n = end - first
        for r in range(0, p, rows):
            r_end = min(p, r + rows)
            qc = qf[:, first:end, r:r_end].reshape(b * n, r_end - r, inner)
            out_f[:, first:end, r:r_end] = attend(qc, ks, vs, bs, copies, slice(r, r_end)).view(b, n, r_end - r, inner)
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
