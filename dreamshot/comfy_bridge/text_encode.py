"""The one text-encoding path of DreamShot (nodes, trainer, generate, vistory): CLIPTextEncode's."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("DreamShot")


def encode_text(clip, text: str) -> torch.Tensor:
    """[1, L, C] conditioning of ``text`` exactly as CLIPTextEncode makes it.

    Through ``encode_from_tokens_scheduled`` (CLIPTextEncode's call), so CLIP hooks set on the text
    encoder (LoRA hooks, Set CLIP Hooks) apply. A hook schedule gives several conditionings for
    different step ranges; DreamShot's per-shot text takes one per prompt, the first (warned).
    """
    import comfy.model_management

    scheduled = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    if len(scheduled) > 1:
        log.warning("DreamShot: the text encoder has a hook schedule (%d conditionings); DreamShot uses the "
                    "first for every step.", len(scheduled))
    return scheduled[0][0].to(comfy.model_management.intermediate_device())
