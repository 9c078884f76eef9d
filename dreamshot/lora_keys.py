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


# -- DiffSynth / PEFT / kohya Wan LoRA keys -> ComfyUI keys --------------------------------------
# Wan's parameter names are the same in the original Wan code, DiffSynth and ComfyUI
# (comfy/ldm/wan/model.py); ComfyUI only puts them under "diffusion_model.".
WAN_MODULE_ROOTS = ("blocks.", "patch_embedding", "text_embedding.", "time_embedding.", "time_projection.",
                    "head.", "img_emb.")
# Longest first: "model.diffusion_model." must win over "model.".
KEY_PREFIXES = ("pipe.dit.", "model.diffusion_model.", "diffusion_model.", "dit.", "model.")
# Source suffix -> ComfyUI suffix (LoRAAdapter reads lora_A/lora_B, alpha, diff, diff_b).
SUFFIX_MAP = (
    (".lora_A.default.weight", ".lora_A.weight"),
    (".lora_B.default.weight", ".lora_B.weight"),
    (".lora_A.weight", ".lora_A.weight"),
    (".lora_B.weight", ".lora_B.weight"),
    (".lora_down.weight", ".lora_A.weight"),
    (".lora_up.weight", ".lora_B.weight"),
    (".alpha", ".alpha"),
    (".diff_b", ".diff_b"),
    (".diff", ".diff"),
    # Kijai/LightX2V extractions store the change of a block's modulation table as
    # "blocks.N.diff_m" (a parameter, not a module): it is blocks.N.modulation's diff.
    (".diff_m", ".modulation.diff"),
)


def _split_suffix(key: str) -> tuple[str, str] | None:
    for src, dst in SUFFIX_MAP:
        if key.endswith(src):
            return key[: -len(src)], dst
    return None


def _wan_module(module: str) -> str | None:
    """Strip one known prefix; the bare Wan module name, or None when it is not one."""
    for prefix in ("",) + KEY_PREFIXES:
        if module.startswith(prefix):
            bare = module[len(prefix):]
            if bare.startswith(WAN_MODULE_ROOTS):
                return bare
    return None


def comfy_key(key: str) -> str | None:
    """One DiffSynth/PEFT/kohya Wan LoRA key as ComfyUI reads it, or None if it is not one.

    'blocks.3.self_attn.q.lora_A.default.weight' -> 'diffusion_model.blocks.3.self_attn.q.lora_A.weight'
    'pipe.dit.blocks.0.ffn.0.lora_up.weight'     -> 'diffusion_model.blocks.0.ffn.0.lora_B.weight'
    'dit.blocks.0.cross_attn.o.alpha'            -> 'diffusion_model.blocks.0.cross_attn.o.alpha'
    """
    split = _split_suffix(key)
    if split is None:
        return None
    module, suffix = split
    bare = _wan_module(module)
    if bare is None:
        return None
    return f"diffusion_model.{bare}{suffix}"


def diffsynth_to_comfy(lora: dict) -> dict:
    """Rename every DiffSynth/PEFT/kohya Wan key of a LoRA state dict to ComfyUI's naming (pure).

    Keys that are not recognised are kept as they are, so the caller can report them by their
    original name. Two keys that would land on the same name raise ValueError (e.g. a file holding
    both 'blocks.0.self_attn.q.lora_A.weight' and 'dit.blocks.0.self_attn.q.lora_A.weight').
    """
    out: dict = {}
    source: dict[str, str] = {}
    for key, value in lora.items():
        new = comfy_key(key) or key
        if new in out:
            raise ValueError(f"LoRA keys {source[new]!r} and {key!r} both map to {new!r}")
        out[new] = value
        source[new] = key
    return out
