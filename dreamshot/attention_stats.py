"""Attention statistics of chosen query rows over chosen key sets, in blocks that fit a byte budget.

RACL (training) and auto regions (inference) ask, for some query tokens, how much of their
attention falls on each character's reference tokens. Written plainly that is a [B, H, rows, keys]
logit tensor: at Wan2.1-14B 1280x720 (40 heads, 21,600 shot tokens against 10,800 reference
tokens, batch 2) 37 GB in fp32. Here rows and keys are cut into blocks whose temporaries fit
``budget_bytes``; only per-row results ([B, H, rows] or [B, H, rows, characters]) exist whole.

The default budget is the bytes of q (at least 16 MiB). Plain attention's output is as large as q,
so the temporaries of an op stay proportional to what the attention call beside it allocates, and
linear in tokens; and they are freed before that attention call runs (auto regions, the RACL loss),
so they never add to its peak. Fewer, larger blocks matter on a GPU, where each block is a handful
of kernel launches.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

# Temporaries of a budgeted op may take this fraction of the bytes of q (= plain attention's output),
# and at least MIN_TEMP_BUDGET (tiny test models would otherwise run thousands of tiny blocks).
TEMP_BUDGET_FRACTION = 1.0
MIN_TEMP_BUDGET = 16 * 2 ** 20
# Keys per block at most: a row block then spans few key blocks (few launches) while the key block's
# own copy stays a small part of the budget.
KEY_BLOCK = 4096


def temp_budget(q: torch.Tensor, fraction: float = TEMP_BUDGET_FRACTION) -> int:
    """Default byte budget of an op's temporaries: ``fraction`` of the bytes of ``q``, at least
    MIN_TEMP_BUDGET."""
    return max(MIN_TEMP_BUDGET, int(q.numel() * q.element_size() * fraction))


def block_shape(budget: int, rows: int, keys: int, per_key: int, per_row: int, per_cell: int) -> tuple[int, int]:
    """(rows, keys) of a block with ``keys * per_key + rows * (per_row + keys * per_cell) <= budget``
    where possible (never below 1 x 1), the most rows x keys per block (fewest blocks) among key
    counts of ``keys`` or a power of two up to KEY_BLOCK."""
    candidates = {min(keys, KEY_BLOCK)} | {2 ** i for i in range(KEY_BLOCK.bit_length()) if 2 ** i < keys}
    best = (0, 1, 1)
    for kc in sorted(candidates):
        rc = min(rows, (budget - kc * per_key) // (per_row + kc * per_cell))
        if rc >= 1:
            best = max(best, (rc * kc, int(rc), int(kc)))
    return best[1], best[2]


def index_blocks(idx: torch.Tensor, size: int, device) -> Iterator[tuple[int, int, slice | torch.Tensor]]:
    """(start, end, selector) per block of ``size`` entries of ``idx``: a slice when the block is a
    contiguous run of tokens (a view, no copy), else the block's indices on ``device``."""
    cpu = idx.cpu()
    for a in range(0, len(cpu), size):
        part = cpu[a:a + size]
        first = int(part[0])
        if torch.equal(part, torch.arange(first, first + len(part))):
            yield a, a + len(part), slice(first, first + len(part))
        else:
            yield a, a + len(part), part.to(device)


def select_tokens(x: torch.Tensor, sel: slice | torch.Tensor) -> torch.Tensor:
    """Tokens ``sel`` of [B, N, C] ``x`` (dim 1): a view for a slice, a gathered copy for indices."""
    return x[:, sel] if isinstance(sel, slice) else x.index_select(1, sel)


def _heads_first(x: torch.Tensor, heads: int, dtype: torch.dtype, keys_last: bool = False) -> torch.Tensor:
    """[B, n, H*d] -> a new contiguous [B, H, n, d] (or [B, H, d, n]) tensor of ``dtype``: the layout
    a batched matmul reads without another copy."""
    b, n, inner = x.shape
    view = x.view(b, n, heads, inner // heads)
    view = view.permute(0, 2, 3, 1) if keys_last else view.transpose(1, 2)
    out = torch.empty(view.shape, dtype=dtype, device=x.device)
    out.copy_(view)
    return out


def _logsumexp_(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim as float32, overwriting ``x`` (no temporary of its size)."""
    m = x.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))  # all -inf -> -inf
    x.sub_(m).exp_()
    return x.sum(-1).float().log_().add_(m.squeeze(-1).float())  # (sum(dtype=) would copy x to float32 on CPU)


@torch.no_grad()
def key_set_logsumexp(q: torch.Tensor, k: torch.Tensor, heads: int, query_idx: torch.Tensor,
                      key_sets: Sequence[torch.Tensor | None], scale: float, budget_bytes: int,
                      batch: slice | None = None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """log sum_{j in set} exp(q_i . k_j * scale + bias_j), per batch row, head, query and key set.

    Parameters
    ----------
    q, k : Tensor
        [B, N, H*d] of one self-attention layer.
    query_idx : LongTensor
        The query tokens (rows).
    key_sets : list of LongTensor or None
        Key tokens of each set; None = all N keys.
    batch : slice, optional
        Only these batch rows (e.g. the positive prompt's half of a CFG batch).
    key_bias : Tensor, optional
        [N] additive logit bias per key.

    Returns
    -------
    Tensor
        [B', H, |query_idx|, len(key_sets)] float32. Logits are formed block by block in q's dtype
        (the precision the model's own attention uses), reductions accumulate in float32. No
        gradients: auto regions and debugging helpers only.
    """
    qb, kb = (q, k) if batch is None else (q[batch], k[batch])
    b, n, inner = qb.shape
    dev, isz = q.device, q.element_size()
    out = torch.full((b, heads, len(query_idx), len(key_sets)), -math.inf, dtype=torch.float32, device=dev)
    if not len(query_idx):
        return out
    per_key = 2 * b * inner * isz                  # gathered key block + its [B, H, d, keys] copy
    per_row = 2 * b * inner * isz + 12 * b * heads  # gathered rows + their matmul copy; float32 row results
    per_cell = b * heads * isz                      # the logits block (reduced in place)
    for s, keys in enumerate(key_sets):
        keys = torch.arange(n) if keys is None else keys
        if not len(keys):
            continue
        rc, kc = block_shape(budget_bytes, len(query_idx), len(keys), per_key, per_row, per_cell)
        for _, _, ksel in index_blocks(keys, kc, dev):
            kh = _heads_first(select_tokens(kb, ksel), heads, q.dtype, keys_last=True).mul_(scale)
            bias = None if key_bias is None else key_bias.to(dev)[ksel].to(q.dtype)
            for a, e, rsel in index_blocks(query_idx, rc, dev):
                # The rows as a contiguous [B, H, rows, d] copy (per_row counts it): a head-strided view
                # would be copied inside the CPU matmul kernel anyway, unseen by shape accounting and
                # absent on CUDA (cuBLAS reads the strides), so every device allocates the same.
                qh = _heads_first(select_tokens(qb, rsel), heads, q.dtype)
                logits = qh @ kh
                del qh
                if bias is not None:
                    logits.add_(bias)
                part = _logsumexp_(logits)
                del logits
                torch.logaddexp(out[:, :, a:e, s], part, out=out[:, :, a:e, s])
    return out


def _mass_block_shape(q, heads, rows, keys, chars, budget):
    b, _, inner = q.shape
    isz = q.element_size()
    per_key = b * inner * (isz + 4)                       # gathered keys, their float32 [B, H, keys, d]
    per_row = b * inner * (isz + 8) + 12 * b * heads * (chars + 2)  # rows, float32 rows, dq block; row stats
    per_cell = 8 * b * heads                              # two float32 [rows, keys] blocks (backward)
    return block_shape(budget, rows, keys, per_key, per_row, per_cell)


class _CharacterMass(torch.autograd.Function):
    """mass[b, h, i, c] = sum_j softmax_j(q_i . k_j * scale) cmat[j, c], softmax over the key set.

    Forward: online softmax over key blocks (float32). Backward: exact, blocks recomputed:
    with P the probabilities, g = dL/dmass and delta_i = sum_c g_ic mass_ic,
    dL/dlogit_ij = P_ij (sum_c g_ic cmat_jc - delta_i). Saved: q and k themselves (no copy), the
    [B, H, rows, C] masses and the [B, H, rows] log-normalisers.
    """

    @staticmethod
    def forward(ctx, q, k, query_idx, key_idx, cmat, heads, scale, budget):
        b, _, inner = q.shape
        dev, chars = q.device, cmat.shape[1]
        rc, kc = _mass_block_shape(q, heads, len(query_idx), len(key_idx), chars, budget)
        mass = torch.empty(b, heads, len(query_idx), chars, dtype=torch.float32, device=dev)
        lse = torch.empty(b, heads, len(query_idx), dtype=torch.float32, device=dev)
        key_blocks = list(index_blocks(key_idx, kc, dev))
        for a, e, rsel in index_blocks(query_idx, rc, dev):
            qh = _heads_first(select_tokens(q, rsel), heads, torch.float32).mul_(scale)
            m = torch.full((b, heads, e - a), -math.inf, dtype=torch.float32, device=dev)
            den = torch.zeros_like(m)
            acc = torch.zeros(b, heads, e - a, chars, dtype=torch.float32, device=dev)
            for ka, ke, ksel in key_blocks:
                kh = _heads_first(select_tokens(k, ksel), heads, torch.float32)
                p = qh @ kh.transpose(-1, -2)
                del kh
                m_new = torch.maximum(m, p.amax(-1))
                corr = torch.exp(m - m_new)
                p.sub_(m_new[..., None]).exp_()
                den.mul_(corr).add_(p.sum(-1))
                acc.mul_(corr[..., None]).add_(p @ cmat[ka:ke])
                m = m_new
                del p
            mass[:, :, a:e] = acc / den[..., None]
            lse[:, :, a:e] = m + den.log()
        ctx.save_for_backward(q, k, cmat, mass, lse)
        ctx.idx = (query_idx, key_idx)
        ctx.params = (heads, scale, rc, kc)
        return mass

    @staticmethod
    def backward(ctx, grad):
        q, k, cmat, mass, lse = ctx.saved_tensors
        query_idx, key_idx = ctx.idx
        heads, scale, rc, kc = ctx.params
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        b, _, inner = q.shape
        dev = q.device
        grad = grad.float()
        delta = (grad * mass).sum(-1)
        dq = torch.zeros_like(q) if need_q else None
        dk_acc = torch.zeros(b, heads, len(key_idx), inner // heads, dtype=torch.float32, device=dev) \
            if need_k else None
        key_blocks = list(index_blocks(key_idx, kc, dev))
        for a, e, rsel in index_blocks(query_idx, rc, dev):
            qh = _heads_first(select_tokens(q, rsel), heads, torch.float32)
            dq_block = torch.zeros_like(qh) if need_q else None
            g, dr, lr = grad[:, :, a:e], delta[:, :, a:e, None], lse[:, :, a:e, None]
            for ka, ke, ksel in key_blocks:
                kh = _heads_first(select_tokens(k, ksel), heads, torch.float32)
                p = (qh @ kh.transpose(-1, -2)).mul_(scale).sub_(lr).exp_()
                dlogit = (g @ cmat[ka:ke].T).sub_(dr).mul_(p)
                del p
                if need_q:
                    dq_block.add_(dlogit @ kh)
                if need_k:
                    dk_acc[:, :, ka:ke].add_(dlogit.transpose(-1, -2) @ qh)
                del kh, dlogit
            if need_q:
                block = dq_block.mul_(scale).transpose(1, 2).reshape(b, e - a, inner).to(q.dtype)
                if isinstance(rsel, slice):
                    dq[:, rsel] += block
                else:   # index_add_: a token in two regions gets both contributions
                    dq.index_add_(1, rsel, block)
        dk = None
        if need_k:
            dk = torch.zeros_like(k)
            for ka, ke, ksel in key_blocks:
                block = dk_acc[:, :, ka:ke].mul_(scale).transpose(1, 2).reshape(b, ke - ka, inner).to(k.dtype)
                if isinstance(ksel, slice):
                    dk[:, ksel] += block
                else:
                    dk.index_add_(1, ksel, block)
        return dq, dk, None, None, None, None, None, None


def character_mass(q: torch.Tensor, k: torch.Tensor, heads: int, query_idx: torch.Tensor, key_idx: torch.Tensor,
                   cmat: torch.Tensor, scale: float, budget_bytes: int) -> torch.Tensor:
    """[B, H, |query_idx|, C] per-character attention mass of the query rows, attention normalised
    over ``key_idx`` only: sum_j softmax_j(q_i . k_j * scale) cmat[j, c], with ``cmat`` [|key_idx|, C]
    (a key's soft weight in its character's column). Differentiable in q and k with an exact blockwise
    backward: memory is the budget plus full-size dq and dk, a float32 accumulator for the keys' part
    of dk, and the small per-row results."""
    return _CharacterMass.apply(q, k, query_idx, key_idx, cmat.to(q.device, torch.float32), heads, scale,
                                budget_bytes)
