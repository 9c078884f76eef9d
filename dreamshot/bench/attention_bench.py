"""Per-shot cross-attention and role-masked self-attention against plain attention, at Wan2.1
1.3B token counts (832x480: 1560 tokens per latent frame, 12 heads of 128)."""

from __future__ import annotations

import torch

from ..attention import per_shot_cross_attention, sdpa_attention
from ..layout import StoryLayout
from ..roles import role_masked_self_attention
from .measure import measure


def _story_groups(lay: StoryLayout, num_chars: int):
    """Every shot split into num_chars vertical bands, one character each; refs unconstrained."""
    groups = torch.full((lay.num_tokens,), -1, dtype=torch.long)
    cols = lay.latent_width // 2
    rows = lay.latent_height // 2
    band = torch.arange(cols) * num_chars // cols + 1
    per_frame = band.repeat(rows)
    for j in range(lay.num_shots):
        a, b = lay.shot_token_span(j)
        groups[a:b] = per_frame.repeat(lay.frames_per_shot)
    ref_tokens = [torch.arange(*lay.ref_token_span(i)) for i in range(lay.num_refs)]
    return groups, ref_tokens


def bench_attention(shots: int, refs: int, device: torch.device, dtype: torch.dtype, heads: int = 12,
                    head_dim: int = 128, width: int = 832, height: int = 480, text_len: int = 512,
                    repeats: int = 3) -> dict:
    lay = StoryLayout(num_refs=refs, num_shots=shots, width=width, height=height)
    n, inner = lay.num_tokens, heads * head_dim
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    q, k, v = rand(1, n, inner), rand(1, n, inner), rand(1, n, inner)
    ctx_k, ctx_v = rand(1, (shots + 0) * text_len, inner), rand(1, shots * text_len, inner)
    segments = [-1] * refs + list(range(shots))
    groups, ref_tokens = _story_groups(lay, max(refs, 1))
    groups, ref_tokens = groups.to(device), [t.to(device) for t in ref_tokens]
    with torch.inference_mode():
        plain_x = measure(lambda: sdpa_attention(q, ctx_k[:, :text_len], ctx_v[:, :text_len], heads), device, repeats)
        shot_x = measure(lambda: per_shot_cross_attention(q, ctx_k, ctx_v, heads, segments, lay.tokens_per_frame,
                                                          shots), device, repeats)
        plain_s = measure(lambda: sdpa_attention(q, k, v, heads), device, repeats)
        role_s = measure(lambda: role_masked_self_attention(q, k, v, heads, groups, ref_tokens, 1.0), device, repeats)
    return {"shots": shots, "refs": refs, "tokens": n,
            "cross_time": shot_x.seconds / plain_x.seconds, "cross_mem": shot_x.peak_bytes / plain_x.peak_bytes,
            "self_time": role_s.seconds / plain_s.seconds, "self_mem": role_s.peak_bytes / plain_s.peak_bytes,
            "plain_self_s": plain_s.seconds}
