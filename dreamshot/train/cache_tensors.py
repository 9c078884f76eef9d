"""How the training cache stores tensors, shared by the story records (cache.py) and the video records
(video.py): the storage dtypes and prompt encodings without their zero padding."""

from __future__ import annotations

import torch

CACHE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def trim_text(cond: torch.Tensor) -> torch.Tensor:
    """[1, L, C] or [L, C] -> [L', C] without the trailing all-zero rows (at least one row kept)."""
    t = cond[0] if cond.ndim == 3 else cond
    nonzero = torch.nonzero(t.abs().sum(dim=-1) > 0).flatten()
    last = int(nonzero[-1]) + 1 if nonzero.numel() else 1
    return t[:last].contiguous()
