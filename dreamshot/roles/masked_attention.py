"""The inference patch: role-masked self-attention.

Each query token gets a group id: -1 unconstrained (reference tokens, shots without region
info), 0 shot background (outside every region), c+1 inside character c's region. A group-0
query gets the additive logit bias log(1 - strength) on every character's reference tokens, a
group c+1 query on the reference tokens of the other characters. strength 1 gives -inf: exactly
zero attention mass; strength 0 returns the unpatched attention. The bias is one [N] vector per
group broadcast to [1, 1, 1, N] in PyTorch SDPA, so the mask costs O(N) memory, never N x N.

"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..attention import AttentionFn, rows_per_slice, sdpa_attention
from ..attention_stats import index_blocks, key_set_logsumexp, select_tokens, temp_budget
from .heads import attention_scale
from .regions import BACKGROUND


def check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in 0..1, got {strength}")


def role_bias_value(strength: float) -> float:
    """Additive logit bias on forbidden keys: log(1 - strength) (-inf at 1, 0 at 0)."""
    check_strength(strength)
    return float("-inf") if strength >= 1.0 else math.log1p(-strength)


def group_key_bias(group: int, ref_char_tokens: Sequence[torch.Tensor], num_keys: int, strength: float,
                   dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor | None:
    """[N] additive key bias for queries of one group, or None when it changes nothing.

    group 0 (shot background): every character's reference tokens are biased; group c+1:
    the other characters' reference tokens; group -1: none.
    """
    if group < 0 or strength == 0:
        return None
    forbidden = [t for c, t in enumerate(ref_char_tokens) if group == BACKGROUND or c != group - 1]
    forbidden = [t for t in forbidden if t.numel()]
    if not forbidden:
        return None
    bias = torch.zeros(num_keys, dtype=dtype, device=device)
    bias[torch.cat(forbidden).to(bias.device)] = role_bias_value(strength)
    return bias


def _check_groups(group_of_query: torch.Tensor, n: int, num_chars: int) -> None:
    if group_of_query.shape != (n,):
        raise ValueError(f"group_of_query must be [{n}], got {tuple(group_of_query.shape)}")
    if group_of_query.numel() and (int(group_of_query.min()) < -1 or int(group_of_query.max()) > num_chars):
        raise ValueError(f"group ids must be in -1..{num_chars}")


def role_masked_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                               group_of_query: torch.Tensor, ref_char_tokens: Sequence[torch.Tensor],
                               strength: float, attention: AttentionFn | None = None) -> torch.Tensor:
    """Exact self-attention where shot tokens draw identity only from their own character.

    Parameters
    ----------
    q, k, v : Tensor
        [B, N, H*d] of one self-attention layer.
    group_of_query : LongTensor
        [N] group ids: -1 unconstrained, 0 shot background, c+1 character c's region.
    ref_char_tokens : list of LongTensor
        Per character, its hard reference tokens (``RoleMap.ref_hard_tokens``).
    strength : float
        0..1; forbidden keys get logit bias log(1 - strength). 0 returns ``attention(q, k, v,
        heads)`` itself (bit-identical to no patch); 1 gives exactly zero mass.
    attention : AttentionFn, optional
        Backend for unconstrained queries and strength 0 (default ``sdpa_attention``);
        constrained groups always use PyTorch SDPA with a [1, 1, 1, N] per-key bias (O(N)).

    Returns
    -------
    Tensor
        [B, N, H*d].
    """
    attention = attention or sdpa_attention
    check_strength(strength)
    b, n, inner = q.shape
    _check_groups(group_of_query, n, len(ref_char_tokens))
    groups = group_of_query.to(q.device)
    if strength == 0 or not bool((groups >= 0).any()):
        return attention(q, k, v, heads)
    d = inner // heads
    kh, vh = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (k, v))
    out = torch.empty_like(q)
    # Each group's queries in slices of at most N/ROW_SLICES rows (views where they are a run of
    # tokens, else gathered): beside ``out`` only one slice's queries and outputs exist.
    for g in torch.unique(groups).tolist():
        bias = group_key_bias(g, ref_char_tokens, n, strength, dtype=q.dtype, device=q.device)
        rows = torch.nonzero(groups == g).squeeze(1)
        for _, _, sel in index_blocks(rows, rows_per_slice(n), q.device):
            qg = select_tokens(q, sel)
            if bias is None:
                og = attention(qg, k, v, heads)
            else:
                qh = qg.reshape(b, -1, heads, d).transpose(1, 2)
                og = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias.view(1, 1, 1, n))
                og = og.transpose(1, 2).reshape(b, -1, inner)
            if isinstance(sel, slice):
                out[:, sel] = og
            else:
                out.index_copy_(1, sel, og.to(out.dtype))
            del qg, og   # before the next slice allocates its own
    return out


def role_masked_attention_mass(q: torch.Tensor, k: torch.Tensor, heads: int, group_of_query: torch.Tensor,
                               ref_char_tokens: Sequence[torch.Tensor], strength: float,
                               query_idx: torch.Tensor, key_idx: torch.Tensor,
                               scale: float | None = None, budget_bytes: int | None = None) -> torch.Tensor:
    """Debug/test helper: attention mass [B, H, |query_idx|] that the PATCHED attention puts on
    ``key_idx``, using the same per-group key bias as ``role_masked_self_attention``."""
    check_strength(strength)
    n = q.shape[1]
    _check_groups(group_of_query, n, len(ref_char_tokens))
    dev = q.device
    query_idx = query_idx.to(dev)
    qgroups = group_of_query.to(dev)[query_idx]
    out = q.new_zeros(q.shape[0], heads, len(query_idx), dtype=torch.float32)
    s = attention_scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    with torch.no_grad():
        for g in torch.unique(qgroups).tolist():
            rows = torch.nonzero(qgroups == g).squeeze(1)
            bias = group_key_bias(g, ref_char_tokens, n, strength, device=dev)
            lse = key_set_logsumexp(q, k, heads, query_idx[rows], [key_idx, None], s, budget, key_bias=bias)
            out[:, :, rows] = torch.exp(lse[..., 0] - lse[..., 1])
    return out
