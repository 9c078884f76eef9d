"""RACL (Role-Attention Consistency Loss), the training side of role attention.

For one self-attention layer with per-head queries/keys, let R = union over characters c of the
reference-character tokens r_c (all their reference frames), with soft weights w_j. For a shot
token i in the region s_c of character c, attention is normalised over R only, which asks
"which reference does this shot token read from":

    A_ij = softmax_{j in R}( q_i . k_j / sqrt(d) )
    own_i   = sum_{j in r_c}          A_ij w_j
    other_i = sum_{j in r_c', c' != c} A_ij w_j
    l_i = (1 - own_i) + other_i                          kind="mass"
    l_i = -log((own_i + eps) / (1 + eps)) + other_i      kind="log"

    L_region = sum_{i in s_c} u_i * mean_{batch, heads}(l_i) / sum_{i in s_c} u_i   (u_i: region weight)
    RACL     = mean over regions (all shots, all characters) of L_region

Since own_i + other_i <= 1, l_i >= 0, and l_i = 0 iff all of token i's reference attention sits
on full-weight tokens of its own character's reference. Training adds
``lambda_racl * mean over the chosen layers of RACL`` to the diffusion loss (``RACLConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..attention_stats import character_mass, key_set_logsumexp, temp_budget
from .heads import attention_scale, maybe_checkpoint, needs_grad, split_heads
from .role_map import RoleMap

RACL_KINDS = ("mass", "log")


def full_logsumexp(q: torch.Tensor, k: torch.Tensor, query_idx: torch.Tensor, heads: int,
                   scale: float | None = None, budget_bytes: int | None = None,
                   key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Log of the softmax denominator over ALL N keys for some queries, [B, H, |query_idx|] float32.

    Blocks of rows x keys within ``budget_bytes`` (default ``attention_stats.temp_budget(q)``).
    ``key_bias`` [N] is added to every query's logits (the patch's per-key bias). Differentiable (a
    debugging and test path: each row block is recomputed in backward over all N keys, and its
    gradient is a full-size tensor; training uses ``racl_loss``, whose backward is blockwise).
    """
    s = attention_scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    if not needs_grad(q, k):
        return key_set_logsumexp(q, k, heads, query_idx, [None], s, budget, key_bias=key_bias)[..., 0]
    b, n, _ = q.shape
    rows = max(1, budget // (3 * 4 * b * heads * n))
    bias = None if key_bias is None else key_bias.float().to(q.device)

    def part(q_, k_, rows_):
        logits = split_heads(q_, rows_, heads) @ split_heads(k_, None, heads).transpose(-1, -2) * s
        return torch.logsumexp(logits if bias is None else logits + bias, dim=-1)

    query_idx = query_idx.to(q.device)
    return torch.cat([maybe_checkpoint(part, q, k, query_idx[a:a + rows])
                      for a in range(0, len(query_idx), rows)], dim=2)


def ref_shot_attention(q: torch.Tensor, k: torch.Tensor, query_idx: torch.Tensor, key_idx: torch.Tensor,
                       heads: int, scale: float | None = None, normalization: str = "keys",
                       budget_bytes: int | None = None) -> torch.Tensor:
    """Attention probabilities of a query-token set over a key-token set, [B, H, |Q|, |K|].

    A debugging and test helper: its output is |Q| x |K| per head (RACL itself never forms it, see
    ``racl_loss``). Only the gathered rows/columns are formed (never N x N), rows in blocks within
    ``budget_bytes``; differentiable.

    Parameters
    ----------
    q, k : Tensor
        [B, N, H*d] queries and keys of one self-attention layer (after norm/RoPE).
    query_idx, key_idx : LongTensor
        Global token indices of the queries (e.g. a shot region) and keys (e.g. reference tokens).
    normalization : {"keys", "full"}
        "keys": softmax over ``key_idx`` only (rows sum to 1; what RACL uses: "which reference
        does this token look at"). "full": the true attention probabilities, normalised over all
        N keys via ``full_logsumexp`` (rows sum to the mass the set receives).
    """
    if normalization not in ("keys", "full"):
        raise ValueError("normalization must be 'keys' or 'full'")
    budget = budget_bytes or temp_budget(q)
    kh = split_heads(k, key_idx, heads)
    s = attention_scale(scale, q, heads)
    lse = full_logsumexp(q, k, query_idx, heads, scale, budget) if normalization == "full" else None
    b = q.shape[0]
    rows = max(1, budget // (3 * 4 * b * heads * max(1, kh.shape[2])))
    query_idx = query_idx.to(q.device)
    out = []
    for a in range(0, len(query_idx), rows):
        logits = split_heads(q, query_idx[a:a + rows], heads) @ kh.transpose(-1, -2) * s
        out.append(torch.softmax(logits, dim=-1) if lse is None else torch.exp(logits - lse[:, :, a:a + rows, None]))
    if not out:
        return kh.new_zeros(b, heads, 0, kh.shape[2])
    return torch.cat(out, dim=2)


# -- RACL -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RACLConfig:
    """Training options of the role-aware loss.

    ``lambda_racl``: weight of RACL in the total loss; ``layers``: self-attention block indices
    where it is computed (None = all); ``kind``: "mass" (1 - own + other) or "log"
    (-log own + other); ``eps``: for the log.
    """

    lambda_racl: float = 0.1
    layers: tuple[int, ...] | None = None
    kind: str = "mass"
    eps: float = 1e-6

    def __post_init__(self):
        if self.kind not in RACL_KINDS:
            raise ValueError(f"kind must be one of {RACL_KINDS}")
        if self.lambda_racl < 0:
            raise ValueError("lambda_racl must be >= 0")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def uses_layer(self, index: int) -> bool:
        return self.layers is None or index in self.layers

    def total(self, layer_losses: Sequence[torch.Tensor]) -> torch.Tensor | float:
        """lambda * mean of the per-layer RACL values (0.0 when no layer contributed)."""
        if not layer_losses:
            return 0.0
        return self.lambda_racl * torch.stack(list(layer_losses)).mean()


def racl_from_char_mass(char_mass: torch.Tensor, query_char: torch.Tensor,
                        query_weights: torch.Tensor | None = None, query_region: torch.Tensor | None = None,
                        kind: str = "mass", eps: float = 1e-6) -> torch.Tensor:
    """RACL from per-character weighted masses ``char_mass`` [B, H, Q, C] (sum_j in r_c A_ij w_j).

    ``query_char`` [Q]: each query's character; ``query_weights`` [Q]: region soft weights
    (default 1); ``query_region`` [Q]: region id of each query (default: one region per character).
    """
    if kind not in RACL_KINDS:
        raise ValueError(f"kind must be one of {RACL_KINDS}")
    dev = char_mass.device
    query_char = query_char.to(dev)
    own = char_mass.gather(-1, query_char.view(1, 1, -1, 1).expand(*char_mass.shape[:3], 1)).squeeze(-1)
    other = char_mass.sum(-1) - own
    if kind == "mass":
        per_token = (1.0 - own) + other
    else:  # normalised so that own = 1 gives exactly 0
        per_token = -torch.log((own + eps) / (1.0 + eps)) + other
    per_token = per_token.mean(dim=(0, 1))  # [Q]
    w = torch.ones_like(per_token) if query_weights is None else query_weights.to(dev, per_token.dtype)
    region = query_char if query_region is None else query_region.to(dev)
    _, region = torch.unique(region, return_inverse=True)
    n = int(region.max()) + 1 if region.numel() else 0
    num = per_token.new_zeros(n).index_add(0, region, w * per_token)
    den = per_token.new_zeros(n).index_add(0, region, w)
    valid = den > 0
    if not bool(valid.any()):
        return per_token.sum() * 0.0
    return (num[valid] / den[valid]).mean()


def _char_matrix(key_char: torch.Tensor, key_weights: torch.Tensor | None, num_chars: int,
                 device, dtype=torch.float32) -> torch.Tensor:
    """[|K|, C] with w_j at (j, char_j): probs @ it gives per-character weighted masses."""
    w = torch.ones(len(key_char), device=device, dtype=dtype) if key_weights is None \
        else key_weights.to(device, dtype)
    m = torch.zeros(len(key_char), num_chars, device=device, dtype=dtype)
    m[torch.arange(len(key_char), device=device), key_char.to(device)] = w
    return m


def racl_from_probs(probs: torch.Tensor, key_char: torch.Tensor, query_char: torch.Tensor,
                    key_weights: torch.Tensor | None = None, query_weights: torch.Tensor | None = None,
                    query_region: torch.Tensor | None = None, kind: str = "mass",
                    eps: float = 1e-6) -> torch.Tensor:
    """RACL (module docstring) from attention probabilities ``probs`` [B, H, Q, K].

    ``probs`` rows are normalised over all reference-character keys; ``key_char`` [K] is the
    character of each key, ``key_weights`` [K] its soft reference-mask weight (default 1).
    """
    num_chars = int(max(int(key_char.max()) if key_char.numel() else -1,
                        int(query_char.max()) if query_char.numel() else -1)) + 1
    mass = probs.float() @ _char_matrix(key_char, key_weights, num_chars, probs.device)
    return racl_from_char_mass(mass, query_char, query_weights, query_region, kind, eps)


def racl_loss(q: torch.Tensor, k: torch.Tensor, heads: int, role_map: RoleMap,
              characters: Sequence[int] | None = None, kind: str = "mass", eps: float = 1e-6,
              scale: float | None = None, budget_bytes: int | None = None) -> torch.Tensor:
    """RACL of one self-attention layer (module docstring), not yet multiplied by lambda.

    Every region (shot j, character c) of ``role_map`` pairs shot tokens s_c with the
    reference tokens r_c of the same character; ``characters`` restricts to some characters.
    The per-character masses come from ``attention_stats.character_mass``: rows x keys in blocks
    within ``budget_bytes`` (default ``temp_budget(q)``), float32, with an exact blockwise backward,
    so neither the [regions x references] probabilities nor their graph ever exist whole.
    """
    regions = [r for r in role_map.regions
               if (characters is None or r.character in characters) and r.tokens.numel()]
    if not regions or role_map.num_characters < 1:
        return q.new_zeros((), dtype=torch.float32)
    key_idx = torch.cat(role_map.ref_tokens)
    key_char = torch.cat([torch.full((len(t),), c, dtype=torch.long) for c, t in enumerate(role_map.ref_tokens)])
    key_w = torch.cat(role_map.ref_weights)
    query_idx = torch.cat([r.tokens for r in regions])
    query_char = torch.cat([torch.full((len(r.tokens),), r.character, dtype=torch.long) for r in regions])
    query_region = torch.cat([torch.full((len(r.tokens),), i, dtype=torch.long) for i, r in enumerate(regions)])
    query_w = torch.cat([r.weights for r in regions])
    cmat = _char_matrix(key_char, key_w, role_map.num_characters, q.device)
    mass = character_mass(q, k, heads, query_idx, key_idx, cmat, attention_scale(scale, q, heads),
                          budget_bytes or temp_budget(q))
    return racl_from_char_mass(mass, query_char, query_w, query_region, kind, eps)


# -- inference: role-masked self-attention -----------------------------------------------------
