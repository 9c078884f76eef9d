"""Two-scale guidance: text CFG and reference-image CFG (pure tensor code, no ComfyUI).

The released DreamShot runner passes ``cfg_scale`` and ``img_cfg_scale`` to its pipeline (defaults:
30 steps, text 3, reference 2; with the LightX2V 4-step LoRA: text 1, reference 1.5; reference 1 for
a chunk without references), but the pipeline code that combines them (DreamShotPipeline in the
authors' DiffSynth fork) is not public. The formula below is therefore OUR CHOICE, not a verified
copy of the official one. We chose the nested form because it is the only common form that agrees
with the released settings: with text cfg 1 (LightX2V) it needs no negative pass, only a pass
without references, and with reference cfg 1 it is exactly ordinary text CFG.

    cond      = positive text, references visible
    cond_nr   = positive text, shots blind to the references ("no references")
    uncond    = negative text, references visible

    guided = cond_nr + ref_cfg * (cond - cond_nr)        # reference guidance
    out    = uncond + cfg * (guided - uncond)            # text guidance (skipped when cfg == 1)

"No references" is done inside self-attention: shot tokens get no attention to reference tokens
(exactly zero mass, every layer), so the shots' output is what the model gives with the references
dropped, while the latent keeps its shape (the reference frames stay in place, clean, and are
overwritten afterwards anyway).
"""

from __future__ import annotations

import torch

from .attention import AttentionFn, rows_per_slice


def reference_guidance(cond: torch.Tensor, cond_no_refs: torch.Tensor, ref_cfg: float) -> torch.Tensor:
    """cond_nr + ref_cfg * (cond - cond_nr); returns ``cond`` itself when ref_cfg == 1."""
    if ref_cfg == 1.0:
        return cond
    return cond_no_refs + ref_cfg * (cond - cond_no_refs)


def two_scale_guidance(cond: torch.Tensor, cond_no_refs: torch.Tensor, uncond: torch.Tensor | None,
                       cfg: float, ref_cfg: float) -> torch.Tensor:
    """uncond + cfg * (reference_guidance(...) - uncond); ``uncond`` may be None when cfg == 1."""
    guided = reference_guidance(cond, cond_no_refs, ref_cfg)
    if cfg == 1.0 or uncond is None:
        return guided
    return uncond + cfg * (guided - uncond)


def self_attention_without_refs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                                num_ref_tokens: int, attention: AttentionFn) -> torch.Tensor:
    """Self-attention [B, N, H*d] where tokens after the first ``num_ref_tokens`` cannot see those.

    Reference tokens attend among themselves only, so nothing of theirs reaches the shots. Both
    parts are computed in row slices (attention.ROW_SLICES) written into one output, so the extra
    memory stays near the plain call's (concatenating two whole outputs would double it).
    """
    r = num_ref_tokens
    if r <= 0:
        return attention(q, k, v, heads)
    out = torch.empty_like(q)
    for first, end in ((0, r), (r, q.shape[1])):
        step = rows_per_slice(end - first)
        for a in range(first, end, step):
            e = min(end, a + step)
            out[:, a:e] = attention(q[:, a:e], k[:, first:end], v[:, first:end], heads)
    return out
