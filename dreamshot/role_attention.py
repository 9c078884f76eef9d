"""Role attention: keep each character's identity coming from its own reference.

Multi-character confusion (A's face on B's body) happens in self-attention: the shot tokens of
A's body read identity from B's reference tokens. The same token-level role map serves
training (the RACL loss) and inference (the masked self-attention patch).

Token space
-----------
Latent frame f owns tokens [f*P, (f+1)*P) (see ``layout``); inside a frame tokens are row-major
on the (H/16, W/16) patch grid. Pixel masks are area-averaged onto that grid, so a token's weight
is the fraction of its 16x16 pixel patch inside the mask (soft edges allowed). A reference frame
without a mask counts whole as its character. A shot region applies to every latent frame of
its shot. Hard membership (inference, auto regions) is weight >= ``threshold`` (0.5); the loss
keeps the soft weights.

RACL (Role-Attention Consistency Loss)
---------------------------------------
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

Inference patch
---------------
Each query token gets a group id: -1 unconstrained (reference tokens, shots without region
info), 0 shot background (outside every region), c+1 inside character c's region. A group-0
query gets the additive logit bias log(1 - strength) on every character's reference tokens, a
group c+1 query on the reference tokens of the other characters. strength 1 gives -inf: exactly
zero attention mass; strength 0 returns the unpatched attention. The bias is one [N] vector per
group broadcast to [1, 1, 1, N] in PyTorch SDPA, so the mask costs O(N) memory, never N x N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import AttentionFn, rows_per_slice, sdpa_attention
from .attention_stats import character_mass, index_blocks, key_set_logsumexp, select_tokens, temp_budget
from .errors import DreamShotInputError
from .layout import PIXEL_MULTIPLE, StoryLayout

UNCONSTRAINED = -1
BACKGROUND = 0
DEFAULT_THRESHOLD = 0.5
RACL_KINDS = ("mass", "log")

Box = Sequence[float]
RegionSpec = Union[torch.Tensor, Box]


# -- masks in token space --------------------------------------------------------------------
def pixel_mask_to_tokens(mask: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Area-average a pixel mask onto the patch-token grid.

    Parameters
    ----------
    mask : Tensor
        [H, W] or [..., H, W], values in 0..1 (bool accepted).
    grid : (h_tok, w_tok), optional
        Token grid; default (H // 16, W // 16), Wan's VAE (8x) + patchify (2x).

    Returns
    -------
    Tensor
        [..., h_tok * w_tok] float32 weights, row-major (h then w) as Wan flattens a frame.
    """
    if mask.dim() < 2:
        raise ValueError(f"mask must be [..., H, W], got shape {tuple(mask.shape)}")
    mask = mask.float()
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError("mask values must lie in 0..1")
    *lead, height, width = mask.shape
    if grid is None:
        grid = (height // PIXEL_MULTIPLE, width // PIXEL_MULTIPLE)
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"token grid {grid} is empty for a {height}x{width} mask")
    # adaptive average pooling = exact area average when H, W are multiples of the grid
    pooled = F.adaptive_avg_pool2d(mask.reshape(-1, 1, height, width), grid)
    return pooled.reshape(*lead, grid[0] * grid[1]).clamp_(0.0, 1.0)


def box_to_mask(box: Box, width: int, height: int, normalized: bool | None = None) -> torch.Tensor:
    """A [height, width] mask of a box (x0, y0, x1, y1), each pixel weighted by its area covered.

    Parameters
    ----------
    box : (x0, y0, x1, y1)
        Pixel coordinates (x1, y1 exclusive edges), or fractions of the image size.
    width, height : int
        Mask size in pixels.
    normalized : bool, optional
        Force the interpretation; by default a box whose coordinates are all <= 1 is taken as
        normalised (a 1-pixel box is never what a user means).
    """
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if normalized is None:
        normalized = max(x0, y0, x1, y1) <= 1.0
    if normalized:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty: needs x1 > x0 and y1 > y0")

    def coverage(lo: float, hi: float, size: int) -> torch.Tensor:
        px = torch.arange(size, dtype=torch.float64)
        return (torch.minimum(px + 1, torch.tensor(hi)) - torch.maximum(px, torch.tensor(lo))).clamp(0, 1)

    return (coverage(y0, y1, height)[:, None] * coverage(x0, x1, width)[None, :]).float()


# -- role map ---------------------------------------------------------------------------------
def _hard(tokens: torch.Tensor, weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """Tokens with weight >= threshold; a mask smaller than one token keeps its best token(s)."""
    keep = weights >= threshold
    if not bool(keep.any()) and weights.numel():
        keep = weights == weights.max()
    return tokens[keep]


@dataclass
class ShotRegion:
    """One character's region in one shot, on all latent frames of the shot.

    ``tokens``/``weights``: global token indices with weight > 0 and their soft weights (loss);
    ``hard_tokens``: those with weight >= the role map's threshold (inference).
    """

    shot: int
    character: int
    tokens: torch.Tensor
    weights: torch.Tensor
    hard_tokens: torch.Tensor


@dataclass
class RoleMap:
    """Token-level roles of one story: reference-character tokens and shot regions.

    Attributes
    ----------
    num_tokens : int
        N, tokens of the whole packed sequence.
    ref_tokens, ref_weights : list[Tensor]
        Per character c: global indices of its reference tokens with weight > 0 (all its
        reference frames) and their soft weights. A reference without mask counts whole (1).
    ref_hard_tokens : list[Tensor]
        Per character: reference tokens with weight >= threshold (the keys the patch biases).
    regions : list[ShotRegion]
        Per (shot, character) region given by a mask or box.
    shot_spans : list[(start, end)]
        Token span of each shot (all its latent frames).
    threshold : float
        Hard-membership threshold used for ``*_hard_tokens``.
    """

    num_tokens: int
    ref_tokens: list[torch.Tensor]
    ref_weights: list[torch.Tensor]
    ref_hard_tokens: list[torch.Tensor]
    regions: list[ShotRegion]
    shot_spans: list[tuple[int, int]]
    threshold: float = DEFAULT_THRESHOLD

    @property
    def num_characters(self) -> int:
        return len(self.ref_tokens)

    def shots_with_regions(self) -> list[int]:
        return sorted({r.shot for r in self.regions})

    def unregioned_shots(self) -> list[int]:
        """Shots with no region given (candidates for ``auto_regions``; tokens: ``shot_spans``)."""
        given = set(self.shots_with_regions())
        return [j for j in range(len(self.shot_spans)) if j not in given]

    def group_of_query(self) -> torch.Tensor:
        """[N] group ids for ``role_masked_self_attention``.

        -1 for reference tokens and for shots without any region (no information: leave them
        to ``auto_regions`` or unconstrained); in a shot with regions, 0 outside all of them and
        c+1 inside character c's region. Where hard regions overlap, the higher weight wins
        (ties: lower character index).
        """
        groups = torch.full((self.num_tokens,), UNCONSTRAINED, dtype=torch.long)
        for j in self.shots_with_regions():
            a, b = self.shot_spans[j]
            groups[a:b] = BACKGROUND
        best = torch.zeros(self.num_tokens)
        for region in sorted(self.regions, key=lambda r: (r.shot, r.character)):
            weight = torch.zeros(self.num_tokens)
            weight[region.tokens] = region.weights.to(weight.device)
            hard = torch.zeros(self.num_tokens, dtype=torch.bool)
            hard[region.hard_tokens] = True
            wins = hard & (weight > best)
            groups[wins] = region.character + 1
            best = torch.where(wins, weight, best)
        return groups

    def to(self, device: torch.device | str) -> "RoleMap":
        def mv(t):
            return t.to(device)
        regions = [ShotRegion(r.shot, r.character, mv(r.tokens), mv(r.weights), mv(r.hard_tokens))
                   for r in self.regions]
        return RoleMap(self.num_tokens, [mv(t) for t in self.ref_tokens], [mv(w) for w in self.ref_weights],
                       [mv(t) for t in self.ref_hard_tokens], regions, list(self.shot_spans), self.threshold)


def _as_mask(spec: RegionSpec, layout: StoryLayout, what: str) -> torch.Tensor:
    if not isinstance(spec, torch.Tensor):
        return box_to_mask(spec, layout.width, layout.height)
    mask = spec
    if mask.dim() == 3 and mask.shape[0] == 1:  # ComfyUI MASK batch of one
        mask = mask[0]
    if mask.dim() != 2:
        raise DreamShotInputError(what, f"expected one [H, W] mask, got shape {tuple(spec.shape)}.",
                                  "give a single mask (batch of 1).")
    return mask


def build_role_map(layout: StoryLayout,
                   ref_masks: Sequence[torch.Tensor | None] | None = None,
                   shot_regions: Sequence[Mapping[int, RegionSpec] | None] | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> RoleMap:
    """Downsample reference masks and shot regions to token space.

    Parameters
    ----------
    layout : StoryLayout
        ``layout.ref_characters`` maps reference frame -> character index.
    ref_masks : list of Tensor or None, optional
        Per reference frame, a [H, W] (or [1, H, W]) mask of its character in 0..1; None = the
        whole reference frame is the character.
    shot_regions : list of {character: mask or box} or None, optional
        Per shot, each character's region as a [H, W] mask or an (x0, y0, x1, y1) box (pixels or
        normalised, see ``box_to_mask``). Applies to every latent frame of the shot.
    threshold : float
        Hard-membership threshold (weight >= threshold) for inference; the loss keeps soft weights.

    Masks of another size are area-resized onto the (height/16, width/16) token grid.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    grid = (layout.height // PIXEL_MULTIPLE, layout.width // PIXEL_MULTIPLE)
    p = layout.tokens_per_frame
    ref_masks = list(ref_masks) if ref_masks else [None] * layout.num_refs
    if len(ref_masks) != layout.num_refs:
        raise ValueError(f"{len(ref_masks)} reference masks for {layout.num_refs} reference frames")
    shot_regions = list(shot_regions) if shot_regions else [None] * layout.num_shots
    if len(shot_regions) != layout.num_shots:
        raise ValueError(f"{len(shot_regions)} region dicts for {layout.num_shots} shots")

    num_chars = max(layout.ref_characters, default=-1) + 1
    toks: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    wts: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    hard: list[list[torch.Tensor]] = [[] for _ in range(num_chars)]
    for ref, char in enumerate(layout.ref_characters):
        start = layout.ref_token_span(ref)[0]
        if ref_masks[ref] is None:
            w = torch.ones(p)
        else:
            w = pixel_mask_to_tokens(_as_mask(ref_masks[ref], layout, "mask"), grid)
            if not bool((w > 0).any()):
                raise DreamShotInputError("mask", f"the mask of reference {ref} is empty.",
                                          "paint the character in the mask, or leave the mask unconnected.")
        local = torch.nonzero(w > 0).squeeze(1)
        toks[char].append(start + local)
        wts[char].append(w[local])
        hard[char].append(_hard(start + local, w[local], threshold))

    regions: list[ShotRegion] = []
    for shot, spec in enumerate(shot_regions):
        for char in sorted(spec or {}):
            if not 0 <= char < num_chars or not toks[char]:
                raise DreamShotInputError(
                    "regions", f"shot {shot} has a region for character {char}, which has no reference frame.",
                    "give that character a reference image, or remove its region.")
            w = pixel_mask_to_tokens(_as_mask(spec[char], layout, "regions"), grid)
            local = torch.nonzero(w > 0).squeeze(1)
            if not local.numel():
                continue  # an empty region says nothing
            frames = torch.tensor([layout.frame_token_span(f)[0] for f in layout.shot_frames(shot)])
            tokens = (frames[:, None] + local[None, :]).reshape(-1)
            weights = w[local].repeat(len(frames))
            regions.append(ShotRegion(shot, char, tokens, weights, _hard(tokens, weights, threshold)))

    def cat(parts: list[torch.Tensor], dtype) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return RoleMap(
        num_tokens=layout.num_tokens,
        ref_tokens=[cat(t, torch.long) for t in toks],
        ref_weights=[cat(w, torch.float32) for w in wts],
        ref_hard_tokens=[cat(h, torch.long) for h in hard],
        regions=regions,
        shot_spans=[layout.shot_token_span(j) for j in range(layout.num_shots)],
        threshold=threshold,
    )


# -- attention sub-blocks ---------------------------------------------------------------------
def _split_heads(x: torch.Tensor, idx: torch.Tensor | None, heads: int) -> torch.Tensor:
    """[B, N, H*d] (rows idx) -> [B, H, |idx|, d] float32 (scores in fp32 whatever the model dtype)."""
    if idx is not None:
        x = x.index_select(1, idx.to(x.device))
    b, n, inner = x.shape
    if inner % heads:
        raise ValueError(f"width {inner} does not split into {heads} heads")
    return x.reshape(b, n, heads, inner // heads).transpose(1, 2).float()


def _scale(scale: float | None, q: torch.Tensor, heads: int) -> float:
    return scale if scale is not None else (q.shape[-1] // heads) ** -0.5


def _maybe_checkpoint(fn, *args):
    # Recompute each block in backward: saved memory stays O(rows), not O(rows x keys).
    if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, torch.Tensor)):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def full_logsumexp(q: torch.Tensor, k: torch.Tensor, query_idx: torch.Tensor, heads: int,
                   scale: float | None = None, budget_bytes: int | None = None,
                   key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Log of the softmax denominator over ALL N keys for some queries, [B, H, |query_idx|] float32.

    Blocks of rows x keys within ``budget_bytes`` (default ``attention_stats.temp_budget(q)``).
    ``key_bias`` [N] is added to every query's logits (the patch's per-key bias). Differentiable (a
    debugging and test path: each row block is recomputed in backward over all N keys, and its
    gradient is a full-size tensor; training uses ``racl_loss``, whose backward is blockwise).
    """
    s = _scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    if not _needs_grad(q, k):
        return key_set_logsumexp(q, k, heads, query_idx, [None], s, budget, key_bias=key_bias)[..., 0]
    b, n, _ = q.shape
    rows = max(1, budget // (3 * 4 * b * heads * n))
    bias = None if key_bias is None else key_bias.float().to(q.device)

    def part(q_, k_, rows_):
        logits = _split_heads(q_, rows_, heads) @ _split_heads(k_, None, heads).transpose(-1, -2) * s
        return torch.logsumexp(logits if bias is None else logits + bias, dim=-1)

    query_idx = query_idx.to(q.device)
    return torch.cat([_maybe_checkpoint(part, q, k, query_idx[a:a + rows])
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
    kh = _split_heads(k, key_idx, heads)
    s = _scale(scale, q, heads)
    lse = full_logsumexp(q, k, query_idx, heads, scale, budget) if normalization == "full" else None
    b = q.shape[0]
    rows = max(1, budget // (3 * 4 * b * heads * max(1, kh.shape[2])))
    query_idx = query_idx.to(q.device)
    out = []
    for a in range(0, len(query_idx), rows):
        logits = _split_heads(q, query_idx[a:a + rows], heads) @ kh.transpose(-1, -2) * s
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
    mass = character_mass(q, k, heads, query_idx, key_idx, cmat, _scale(scale, q, heads),
                          budget_bytes or temp_budget(q))
    return racl_from_char_mass(mass, query_char, query_w, query_region, kind, eps)


# -- inference: role-masked self-attention -----------------------------------------------------
def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in 0..1, got {strength}")


def role_bias_value(strength: float) -> float:
    """Additive logit bias on forbidden keys: log(1 - strength) (-inf at 1, 0 at 0)."""
    _check_strength(strength)
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
    _check_strength(strength)
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
    _check_strength(strength)
    n = q.shape[1]
    _check_groups(group_of_query, n, len(ref_char_tokens))
    dev = q.device
    query_idx = query_idx.to(dev)
    qgroups = group_of_query.to(dev)[query_idx]
    out = q.new_zeros(q.shape[0], heads, len(query_idx), dtype=torch.float32)
    s = _scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    with torch.no_grad():
        for g in torch.unique(qgroups).tolist():
            rows = torch.nonzero(qgroups == g).squeeze(1)
            bias = group_key_bias(g, ref_char_tokens, n, strength, device=dev)
            lse = key_set_logsumexp(q, k, heads, query_idx[rows], [key_idx, None], s, budget, key_bias=bias)
            out[:, :, rows] = torch.exp(lse[..., 0] - lse[..., 1])
    return out


def auto_regions(q: torch.Tensor, k: torch.Tensor, heads: int, shot_tokens: Sequence[torch.Tensor],
                 shot_casts: Sequence[Sequence[int]], ref_char_tokens: Sequence[torch.Tensor],
                 batch: slice | None = None, min_mass: float = 0.0, scale: float | None = None,
                 budget_bytes: int | None = None) -> list[torch.Tensor]:
    """Regions from the attention itself: per shot j, a group id (c+1) for each of ``shot_tokens[j]``.

    A token of shot j may draw identity only from one character of the shot's cast
    ``shot_casts[j]`` (the characters the shot lists; a character the shot does not list is never
    chosen):

    - no cast member has reference tokens: -1 (unconstrained), there is nothing to choose;
    - one has: every token of the shot is tied to it, computed from nothing (the shot must not read
      the other characters' references, whichever token it is);
    - several: the one whose reference tokens receive most of the token's attention, as a share of
      its attention on the cast's references, averaged over heads and over the batch rows ``batch``
      (None: all rows; the caller picks the positive prompt's rows, see comfy_bridge.role_patch).

    There is no background in this mode: without masks nothing says a token is background, and
    forbidding every reference could erase a character that is still forming. With ``min_mass`` > 0,
    a token whose chosen character's mass, as a fraction of its whole attention row (all N keys), is
    below it stays -1: it barely reads any reference, so there is nothing to redirect.

    Without gradients; logits in q's dtype, in blocks of rows x reference keys within
    ``budget_bytes`` (default ``attention_stats.temp_budget(q)``).
    """
    if len(shot_tokens) != len(shot_casts):
        raise ValueError(f"{len(shot_tokens)} shots of tokens for {len(shot_casts)} casts")
    dev = q.device
    out = [torch.full((len(t),), UNCONSTRAINED, dtype=torch.long, device=dev) for t in shot_tokens]
    with_refs = {c for c, t in enumerate(ref_char_tokens) if t.numel()}
    by_cast: dict[tuple[int, ...], list[int]] = {}
    for j, (tokens, cast) in enumerate(zip(shot_tokens, shot_casts)):
        candidates = tuple(sorted(set(cast) & with_refs))
        if not candidates or not len(tokens):
            continue
        if len(candidates) == 1 and min_mass <= 0:
            out[j].fill_(candidates[0] + 1)
            continue
        by_cast.setdefault(candidates, []).append(j)
    s = _scale(scale, q, heads)
    budget = budget_bytes or temp_budget(q)
    for candidates, shots in by_cast.items():
        rows = torch.cat([shot_tokens[j].cpu() for j in shots])
        key_sets = [ref_char_tokens[c] for c in candidates] + ([None] if min_mass > 0 else [])
        lse = key_set_logsumexp(q, k, heads, rows, key_sets, s, budget, batch)
        norm = lse[..., -1:] if min_mass > 0 else torch.logsumexp(lse, dim=-1, keepdim=True)
        mass = torch.exp(lse[..., :len(candidates)] - norm).mean(dim=(0, 1))  # [rows, candidates]
        best, pick = mass.max(dim=-1)
        g = torch.tensor(candidates, device=dev)[pick] + 1
        if min_mass > 0:
            g = torch.where(best >= min_mass, g, torch.full_like(g, UNCONSTRAINED))
        for j, part in zip(shots, g.split([len(shot_tokens[j]) for j in shots])):
            out[j] = part
    return out


# -- step range -------------------------------------------------------------------------------
def step_in_range(percent: float, start: float = 0.0, end: float = 1.0) -> bool:
    """True when sampling progress ``percent`` (0 = first step, 1 = last) lies in [start, end].

    The ComfyUI bridge turns sigmas into percents (or compares sigmas with
    ``sigma_in_range``), as ComfyUI's own start_percent/end_percent do.
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
    return start <= percent <= end


def sigma_in_range(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """Sigma form of ``step_in_range``: sigmas decrease, so sigma_end <= sigma <= sigma_start."""
    return sigma_end <= sigma <= sigma_start
