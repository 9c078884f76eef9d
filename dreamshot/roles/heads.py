"""Shared pieces of the blockwise attention computations: head split, scale, block checkpointing."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def split_heads(x: torch.Tensor, idx: torch.Tensor | None, heads: int) -> torch.Tensor:
    """[B, N, H*d] (rows idx) -> [B, H, |idx|, d] float32 (scores in fp32 whatever the model dtype)."""
    if idx is not None:
        x = x.index_select(1, idx.to(x.device))
    b, n, inner = x.shape
    if inner % heads:
        raise ValueError(f"width {inner} does not split into {heads} heads")
    return x.reshape(b, n, heads, inner // heads).transpose(1, 2).float()


def attention_scale(scale: float | None, q: torch.Tensor, heads: int) -> float:
    return scale if scale is not None else (q.shape[-1] // heads) ** -0.5


def maybe_checkpoint(fn, *args):
    # Recompute each block in backward: saved memory stays O(rows), not O(rows x keys).
    if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, torch.Tensor)):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
