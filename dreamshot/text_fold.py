"""Folding the zero padding out of a story's per-shot text: exact, and S x 512 text rows become ~S x 60.

ComfyUI's Wan UMT5 pads every prompt to 512 tokens with rows of exact zeros (``zero_out_masked``)
and ``attention.pad_segments`` pads shorter prompts with zero rows too. The Wan DiT maps each text
row on its own (text embedding, K/V projections, per-token RMS norm; no positional encoding on the
keys), so the z zero rows of a segment all become one and the same key and value. In softmax
attention z identical keys weigh exactly as one of them with ln(z) added to its logit.

A folded segment holds the segment's m non-zero rows (in order), then n zero rows standing for its
z zero rows, each with the key bias ln(z / n) (n * exp(ln(z / n)) = z). A segment that had no zero
row (z = 0) but is padded to the common length gets -inf on those rows: they must weigh nothing.
Real rows get 0. Attention over the folded context with this bias equals attention over the
unfolded one up to float rounding (tests/test_text_padding_fold.py).

The z zero rows of a segment are one key repeated z times, so the folded attention can also run
unmasked, as repeated keys (``repeated_keys``, ``attention.RepeatedKeys``): through any attention
backend, the copies the segment lacks added exactly afterwards.

Only exact-zero rows are folded, whatever produced them, so the folding is exact for any encoder;
an encoder without zero padding just gains nothing. In half precision the bias is rounded to the
model's dtype like every other logit term: on CPU, folded bf16/fp16 attention was no further from a
float64 reference than the unfolded one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .attention import RepeatedKeys


@dataclass(frozen=True)
class TextSegment:
    """One prompt's encoding without its zero rows."""

    rows: torch.Tensor   # [1, m, C]: the non-zero rows, in order
    zero_rows: int       # z: the all-zero rows the unfolded segment had


@dataclass(frozen=True)
class FoldedText:
    """Positive and negative contexts of one story, folded to one common segment length (ComfyUI
    batches cond and uncond together only when their shapes agree)."""

    positive: torch.Tensor                 # [1, n * segment_length, C]
    negative: torch.Tensor
    segment_length: int
    positive_zero_rows: tuple[int, ...]    # per segment: z
    negative_zero_rows: tuple[int, ...]


def split_zero_rows(encoding: torch.Tensor, length: int | None = None) -> TextSegment:
    """[1, L, C] -> its non-zero rows and how many zero rows it has, counting ``length - L`` more
    for padding to ``length`` (as pad_segments does)."""
    if encoding.ndim != 3 or encoding.shape[0] != 1:
        raise ValueError(f"expected a [1, L, C] prompt encoding, got {tuple(encoding.shape)}")
    length = encoding.shape[1] if length is None else length
    if length < encoding.shape[1]:
        raise ValueError("a prompt is longer than the segment length")
    keep = (encoding[0] != 0).any(dim=-1)
    rows = encoding if bool(keep.all()) else encoding[:, keep]
    return TextSegment(rows=rows, zero_rows=length - rows.shape[1])


def context_segments(context: torch.Tensor, num_segments: int,
                     zero_rows: Sequence[int] | None = None) -> list[TextSegment]:
    """The segments of a [1, n * L, C] context; ``zero_rows`` (a folded context's) replaces the zero
    rows counted in each slot."""
    if context.shape[1] % num_segments:
        raise ValueError(f"context of {context.shape[1]} rows does not split into {num_segments} segments")
    seg = context.shape[1] // num_segments
    out = [split_zero_rows(context[:, i * seg:(i + 1) * seg]) for i in range(num_segments)]
    if zero_rows is not None:
        if len(zero_rows) != num_segments:
            raise ValueError(f"{len(zero_rows)} zero-row counts for {num_segments} segments")
        out = [TextSegment(s.rows, int(z)) for s, z in zip(out, zero_rows)]
    return out


def fold_text(positive: Sequence[TextSegment], negative: Sequence[TextSegment], avoid_length: int = -1,
              min_length: int = 0) -> FoldedText:
    """Fold both contexts to one segment length: the longest segment's non-zero rows (+1 where it had
    zero rows), at least ``min_length``, and +1 when n * length would equal ``avoid_length`` (the
    attention hook tells self- from cross-attention by key length)."""
    if len(positive) != len(negative):
        raise ValueError(f"{len(positive)} positive and {len(negative)} negative segments")
    segs = list(positive) + list(negative)
    seg_len = max([min_length] + [s.rows.shape[1] + (s.zero_rows > 0) for s in segs])
    if seg_len * len(positive) == avoid_length:
        seg_len += 1

    def cat(parts):
        return torch.cat([F.pad(s.rows, (0, 0, 0, seg_len - s.rows.shape[1])) for s in parts], dim=1)

    return FoldedText(positive=cat(positive), negative=cat(negative), segment_length=seg_len,
                      positive_zero_rows=tuple(s.zero_rows for s in positive),
                      negative_zero_rows=tuple(s.zero_rows for s in negative))


def unfold_context(context: torch.Tensor, zero_rows: Sequence[int]) -> torch.Tensor:
    """The unfolded context a folded one stands for: each segment's non-zero rows, then its z zero
    rows (tests and debugging: attention over it without bias equals the folded attention)."""
    segs = context_segments(context, len(zero_rows), zero_rows)
    lengths = {s.rows.shape[1] + s.zero_rows for s in segs}
    if len(lengths) != 1:
        raise ValueError(f"segments stand for different unfolded lengths {sorted(lengths)}")
    length = lengths.pop()
    return torch.cat([F.pad(s.rows, (0, 0, 0, length - s.rows.shape[1])) for s in segs], dim=1)


def _zero_rows(context: torch.Tensor, num_segments: int) -> torch.Tensor:
    """[n, L] bool: which rows of each segment of a [1, n * L, C] context are all zero."""
    if context.shape[1] % num_segments:
        raise ValueError(f"context of {context.shape[1]} rows does not split into {num_segments} segments")
    return (context[0] == 0).all(dim=-1).view(num_segments, -1)


def key_bias(context: torch.Tensor, zero_rows: Sequence[int]) -> torch.Tensor:
    """[n * L] float32 additive key bias of a folded context: 0 on non-zero rows; on the n zero rows
    of a segment ln(z / n), or -inf when the segment had no zero row (z = 0)."""
    zero = _zero_rows(context, len(zero_rows))
    n = zero.sum(dim=1).tolist()
    values = []
    for i, (z, count) in enumerate(zip(zero_rows, n)):
        if z and not count:
            raise ValueError(f"segment {i} stands for {z} zero rows but holds none")
        values.append(math.log(z / count) if z else (-math.inf if count else 0.0))
    bias = torch.tensor(values, dtype=torch.float32)[:, None].expand_as(zero)
    return torch.where(zero, bias, torch.zeros(())).reshape(-1)


def padding_mask_bias(context: torch.Tensor, num_segments: int) -> torch.Tensor:
    """[n * L] float32 key bias that hides every all-zero (padding) row from cross-attention: -inf
    there, 0 on the words. A segment that is all zero rows keeps them (0), so it still has keys.

    Not Wan's behaviour (Wan2.1 attends to its zero-padded 512 rows, and ComfyUI keeps that): an
    option for models trained this way, like the shapes proof's tiny DiT, which otherwise put all its
    cross-attention on the padding (hidden, it leaned on constant words instead: docs/proof.md)."""
    zero = _zero_rows(context, num_segments)
    hide = zero & ~zero.all(dim=1, keepdim=True)
    return torch.where(hide, torch.tensor(-math.inf), torch.zeros(())).reshape(-1).float()


def repeated_keys(bias: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A fold's key bias (``key_bias``) as repeated keys: per segment, how many copies of its zero row
    it stands for beyond those it holds (sum of exp(bias) - 1 over its rows, float32) and the row of one
    copy (its first row with a nonzero bias; 0 where there is none and nothing to add).

    Exact because every row with a nonzero bias is a zero text row, and all of a segment's zero rows
    are the same key and value (the module docstring). None when some bias is negative (a row that must
    weigh less than once: -inf filler, text hidden by ``padding_mask_bias``): removing copies would
    cancel in floating point, so such a bias stays an additive mask.
    """
    if bias.shape[0] % num_segments:
        raise ValueError(f"a key bias of {bias.shape[0]} rows does not split into {num_segments} segments")
    b = bias.double().view(num_segments, -1)
    if bool((b < 0).any()):
        return None
    extra = b.exp().sub(1).sum(dim=1).float()
    index = (b != 0).to(torch.int8).argmax(dim=1)
    return extra, index


class StoryKeyBias:
    """The positive and negative key biases of a folded story, handed to ComfyUI's attention hook.

    ``for_batch`` gives the [B, Lk] bias for a model call whose batch is
    ``transformer_options["cond_or_uncond"]`` (0 = positive, 1 = negative) x equal chunks; results
    are cached per device and dtype, so the bias is moved to the GPU once per batch layout, not once
    per block. Not a dict: ComfyUI copies nested dicts of transformer_options, this stays shared.
    """

    def __init__(self, positive: torch.Tensor, negative: torch.Tensor, num_segments: int | None = None):
        if positive.shape != negative.shape:
            raise ValueError("positive and negative key biases differ in length")
        self.positive, self.negative = positive, negative
        self._cache: dict = {}
        # Both biases as repeated keys (repeated_keys), when both can be and the segments are known.
        parts = None if num_segments is None else (repeated_keys(positive, num_segments),
                                                   repeated_keys(negative, num_segments))
        self._repeats = parts if parts is not None and None not in parts else None

    def __len__(self) -> int:
        return self.positive.shape[0]

    def _rows(self, cond_or_uncond: Sequence[int] | None, batch: int, positive, negative) -> torch.Tensor:
        """``positive`` / ``negative`` stacked per batch row of a call with ``cond_or_uncond``."""
        chunks = tuple(cond_or_uncond or ())
        if not chunks:
            if not torch.equal(self.positive, self.negative):
                raise RuntimeError("DreamShot: the folded story text needs transformer_options['cond_or_uncond'] "
                                   "(set by ComfyUI's calc_cond_batch) to tell positive from negative rows")
            chunks = (0,)
        if batch % len(chunks) or any(c not in (0, 1) for c in chunks):
            raise RuntimeError(f"DreamShot: cannot map a batch of {batch} to cond_or_uncond {list(chunks)}")
        rows = torch.stack([negative if c else positive for c in chunks])
        return rows.repeat_interleave(batch // len(chunks), dim=0)

    def for_batch(self, cond_or_uncond: Sequence[int] | None, batch: int, device, dtype) -> torch.Tensor:
        """[B, Lk] additive key bias of a model call."""
        key = (tuple(cond_or_uncond or ()), batch, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._rows(cond_or_uncond, batch, self.positive, self.negative).to(device=device,
                                                                                                 dtype=dtype)
        return self._cache[key]

    def repeated_for_batch(self, cond_or_uncond: Sequence[int] | None, batch: int, device) -> RepeatedKeys | None:
        """The bias of a model call as repeated keys ([B, S] each), or None where it is not repeated keys
        (``repeated_keys``; or built without ``num_segments``)."""
        if self._repeats is None:
            return None
        key = ("repeated", tuple(cond_or_uncond or ()), batch, str(device))
        if key not in self._cache:
            (pe, pi), (ne, ni) = self._repeats
            self._cache[key] = RepeatedKeys(self._rows(cond_or_uncond, batch, pe, ne).to(device),
                                            self._rows(cond_or_uncond, batch, pi, ni).to(device))
        return self._cache[key]

    def __deepcopy__(self, memo):   # ModelPatcher.clone deep-copies model_options: share, read-only
        return self
