"""Per-shot LoRA: a LoRA's low-rank change applied to the token rows of chosen shots only.

A LoRA on a linear layer y = x W^T + b (up U [out, r], down D [r, in], alpha) merges as
W' = W + s (alpha / r) U D. Here the weight is never changed or copied: on the rows R of the scoped
shots the layer's own output gets s (alpha / r) (x_R D^T) U^T added, which is x_R W'^T + b up to
rounding, and every other row stays exactly x W^T + b. In the joint pass every shot is a run of
token rows (dreamshot.layout), so one pass can hold several LoRAs on several shots.

Which rows a Wan layer sees (module names as in comfy/ldm/wan/model.py):

- image tokens: the blocks' self-attention q/k/v/o, cross-attention q/o, feed-forward 0/2, and the
  head's linear. A shot's rows are its latent frames' tokens.
- text rows: the blocks' cross-attention k/v and the text embedding. A shot's rows are its own
  prompt segment: per-shot cross-attention lets a shot's tokens read only that segment, so the
  scoped shots see exactly the merged model's keys and values and no other shot reads them.

Reference frames get no shot LoRA, except that a LoRA bound to a character may also take that
character's reference frames (and its caption segment) with ``include_references``.

Pure torch: the ComfyUI side (loading the file, installing the layer patches) is
dreamshot.comfy_bridge.shot_lora.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .attention import NO_TEXT
from .errors import DreamShotInputError

NODE = "Shot LoRA"

IMAGE_ROWS = "image"
TEXT_ROWS = "text"
_IMAGE_MODULE = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qo]|ffn\.[02])|head\.head")
_TEXT_MODULE = re.compile(r"blocks\.\d+\.cross_attn\.[kv]|text_embedding\.[02]")


def row_kind(module: str) -> str | None:
    """IMAGE_ROWS or TEXT_ROWS for a Wan linear layer ('blocks.3.self_attn.q', with or without the
    'diffusion_model.' prefix), None for a layer a shot cannot own (time embedding, patch embedding,
    norms, modulation: they act on the timestep or on every token alike)."""
    name = module.removeprefix("diffusion_model.")
    if _IMAGE_MODULE.fullmatch(name):
        return IMAGE_ROWS
    if _TEXT_MODULE.fullmatch(name):
        return TEXT_ROWS
    return None


def parse_shot_numbers(text: str) -> tuple[int, ...] | None:
    """ "2, 4-5" -> (1, 3, 4) (0-based); "" or "all" -> None (every shot)."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    picked: set[int] = set()
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            lo_i, hi_i = int(lo), int(hi) if hi.strip() else int(lo)
        except ValueError:
            raise DreamShotInputError("shots", f"{part!r} is not a shot number or range.",
                                      'write shot numbers as in the story, from 1, like "2, 4-5" (or "all").',
                                      node=NODE) from None
        if min(lo_i, hi_i) < 1:
            raise DreamShotInputError("shots", f"{part!r}: shots are numbered from 1.",
                                      'write shot numbers from 1, like "1, 3-4".', node=NODE)
        picked.update(range(min(lo_i, hi_i) - 1, max(lo_i, hi_i)))
    return tuple(sorted(picked))


@dataclass(frozen=True, eq=False)
class LowRankDelta:
    """One linear layer's change: up [out, r], down [r, in], scale = alpha / r; optional bias
    change [out] (a LoRA's diff_b)."""

    up: torch.Tensor | None
    down: torch.Tensor | None
    scale: float = 1.0
    bias: torch.Tensor | None = None

    def on(self, device, dtype) -> "LowRankDelta":
        def cast(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return LowRankDelta(cast(self.up), cast(self.down), self.scale, cast(self.bias))


@dataclass(frozen=True, eq=False)
class ShotLoRA:
    """A LoRA scoped to shots: its per-layer deltas (layer path under ComfyUI's BaseModel, e.g.
    'diffusion_model.blocks.0.self_attn.q') and where it applies.

    shots: 0-based story shots, None = every shot; character: only the shots that list this name
    (intersected with ``shots``); include_references: also the character's reference frames.
    """

    name: str
    strength: float
    deltas: Mapping[str, LowRankDelta] = field(repr=False)
    shots: tuple[int, ...] | None = None
    character: str | None = None
    include_references: bool = False

    def __deepcopy__(self, memo):
        # Immutable. ModelPatcher.clone deep-copies model_options: this keeps it from copying the
        # LoRA's tensors at every clone.
        return self


@dataclass(frozen=True)
class StoryPass:
    """One sampling pass of a story: the whole story's plan and, for each shot of the pass (in the
    pass's order), its index in the story. Long stories are sampled in passes (chunks) whose shots
    are renumbered from 0."""

    story: object            # dreamshot.story.StoryPlan of the whole story
    shots: tuple[int, ...]


def story_scope(lora: ShotLoRA, shot_characters: Sequence[Sequence[str]]) -> frozenset[int]:
    """The story shots (0-based) ``lora`` applies to; ``shot_characters`` = each story shot's names.

    Refuses shot numbers beyond the story, a character no shot lists, and a scope that is empty.
    """
    n = len(shot_characters)
    picked = set(range(n)) if lora.shots is None else set(lora.shots)
    beyond = sorted(j + 1 for j in picked if j >= n)
    if beyond:
        raise DreamShotInputError("shots", f"{lora.name}: the story has {n} shot(s), got shot(s) {beyond}.",
                                  f"use shot numbers 1..{n}.", node=NODE)
    if lora.character:
        listing = {j for j, names in enumerate(shot_characters) if lora.character in names}
        if not listing:
            raise DreamShotInputError(
                "character", f"{lora.name}: no shot of the story lists {lora.character!r}.",
                "write the name exactly as the Shot Scripts list it (case matters), or leave character empty.",
                node=NODE)
        if not picked & listing:
            shown = ", ".join(str(j + 1) for j in sorted(picked))
            raise DreamShotInputError(
                "shots", f"{lora.name}: none of shots {shown} lists {lora.character!r} (shots listing it: "
                f"{', '.join(str(j + 1) for j in sorted(listing))}).",
                "leave shots empty to follow the character, or list shots that show the character.", node=NODE)
        picked &= listing
    return frozenset(picked)


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def pass_rows(lora: ShotLoRA, scope: frozenset[int], plan, pass_shots: Sequence[int],
              segment_length: int) -> dict[str, tuple[tuple[int, int], ...]]:
    """{IMAGE_ROWS: token spans, TEXT_ROWS: context row spans} of one pass for ``lora``.

    plan: the pass's StoryPlan; pass_shots: each pass shot's story index; segment_length: rows per
    prompt segment in the pass's context (segment i = rows [i L, (i + 1) L)).
    """
    lay = plan.layout
    image, text = [], []

    def segment(frame: int):
        s = plan.frame_segments[frame]
        if s != NO_TEXT:
            text.append((s * segment_length, (s + 1) * segment_length))

    for i, j in enumerate(pass_shots):
        if j in scope:
            image.append(lay.shot_token_span(i))
            segment(lay.shot_frames(i)[0])   # every frame of a shot reads the shot's segment
    if lora.include_references and lora.character:
        for r, c in enumerate(lay.ref_characters):
            if plan.characters[c].name == lora.character:
                image.append(lay.ref_token_span(r))
                segment(lay.ref_frame(r))
    return {IMAGE_ROWS: _merge(image), TEXT_ROWS: _merge(text)}


def add_scoped_delta(out: torch.Tensor, x: torch.Tensor, spans: Sequence[tuple[int, int]],
                     delta: LowRankDelta, strength: float) -> torch.Tensor:
    """Add ``strength`` x ``delta`` of input ``x`` [B, N, in] to ``out`` [B, N, out], in place, on the
    rows in ``spans`` only; ``delta`` already on out's device and dtype.

    Memory: per span and batch item one [rows, r] product, then an in-place addmm into ``out``
    (no [rows, out] temporary, no weight-sized tensor).
    """
    scale = strength * delta.scale
    for a, b in spans:
        for n in range(x.shape[0]):
            rows = out[n, a:b]
            if delta.down is not None:
                h = torch.mm(x[n, a:b].to(delta.down.dtype), delta.down.t())
                rows.addmm_(h, delta.up.t(), alpha=scale)
            if delta.bias is not None:
                rows.add_(delta.bias, alpha=strength)
    return out
