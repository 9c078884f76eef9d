"""LoRA file keys: which module each key belongs to (plain string logic, no model needed)."""

from __future__ import annotations

# Suffixes ComfyUI's LoRA loader understands (comfy/weight_adapter/lora.py and comfy/lora.py).
LORA_SUFFIXES = (
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight",
    "_lora.up.weight", "_lora.down.weight",
    ".lora_B.weight", ".lora_A.weight",
    ".lora.up.weight", ".lora.down.weight",
    ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight",
    ".alpha", ".dora_scale", ".diff", ".diff_b", ".reshape_weight", ".set_weight",
    ".w_norm", ".b_norm",
)


def module_of_key(key: str) -> str | None:
    """'diffusion_model.blocks.0.self_attn.q.lora_up.weight' -> 'diffusion_model.blocks.0.self_attn.q'."""
    for suffix in LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def lora_modules(keys) -> dict[str, list[str]]:
    """Group LoRA tensor keys by the module they patch; unknown keys go under ''."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(module_of_key(key) or "", []).append(key)
    return groups
