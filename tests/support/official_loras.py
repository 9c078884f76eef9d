"""Synthetic LoRA files with the released DreamShot files' key names and shapes, scaled to the tiny DiT
(dim 256, ffn 512, 2 blocks) the tests build: for the LoRA tests and the official workflows."""

from __future__ import annotations

import torch

DIM, FFN, BLOCKS, RANK = 256, 512, 2, 4
# DiffSynth's default LoRA targets "q,k,v,o,ffn.0,ffn.2" (PEFT suffix match: self_attn and cross_attn).
TARGETS = {f"{a}.{p}": (DIM, DIM) for a in ("self_attn", "cross_attn") for p in "qkvo"}
TARGETS.update({"ffn.0": (FFN, DIM), "ffn.2": (DIM, FFN)})   # (out, in)


def released_lora(seed: int, rank: int = RANK) -> dict:
    """Keys exactly as DiffSynth's export_trainable_state_dict writes them (no prefix, no alpha)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(BLOCKS):
        for mod, (out_f, in_f) in TARGETS.items():
            sd[f"blocks.{i}.{mod}.lora_A.default.weight"] = torch.randn(rank, in_f, generator=g) * 0.1
            sd[f"blocks.{i}.{mod}.lora_B.default.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
    return sd


def distill_lora(seed: int, rank: int = 8, alpha: float = 4.0) -> dict:
    """LightX2V-style: ComfyUI-native names, lora_up/lora_down with alpha."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(BLOCKS):
        for mod, (out_f, in_f) in TARGETS.items():
            key = f"diffusion_model.blocks.{i}.{mod}"
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * 0.1
            sd[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd
