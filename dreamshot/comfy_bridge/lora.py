"""Loading a DreamShot LoRA onto ComfyUI's Wan model, refusing files that do not fit it.

ComfyUI's own loader logs "lora key not loaded" and carries on; a DreamShot LoRA that silently
half-loads gives plausible but wrong storyboards, so every key must land on a weight of the
right shape or the load fails with the list of what did not fit.
"""

from __future__ import annotations

import logging

import comfy.lora
import comfy.lora_convert
import comfy.sd
import safetensors
import safetensors.torch
import torch

from . import compat
from ..errors import DreamShotInputError
from ..lora_keys import diffsynth_to_comfy, lora_modules

log = logging.getLogger("DreamShot")


def read_lora(path: str) -> tuple[dict, dict]:
    """Tensors and metadata of a .safetensors LoRA (never pickle)."""
    if not path.lower().endswith(".safetensors"):
        raise DreamShotInputError("lora_name", f"{path!r} is not a .safetensors file.",
                                  "convert the LoRA to .safetensors; DreamShot never loads pickled weights.")
    with safetensors.safe_open(path, framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
    return safetensors.torch.load_file(path, device="cpu"), metadata


def _model_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.model.state_dict().items()}


def check_lora_fits(model, lora: dict, name: str = "lora") -> dict:
    """Map every key onto the model; raise listing keys that map nowhere or have the wrong shape.

    Returns the patch dict for ``ModelPatcher.add_patches``.
    """
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    try:
        lora = diffsynth_to_comfy(lora)   # DiffSynth/PEFT (the released DreamShot LoRAs), kohya
    except ValueError as e:
        raise DreamShotInputError("lora_name", f"{name}: {e}.", "remove the duplicate keys from the file.") from None
    lora = comfy.lora_convert.convert_lora(lora)
    groups = lora_modules(lora.keys())
    unmapped = sorted(groups.pop("", []))
    unmapped += sorted(k for module, keys in groups.items() if module not in key_map for k in keys)
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (f" ... ({len(unmapped)} in all)" if len(unmapped) > 8 else "")
        raise DreamShotInputError(
            "lora_name", f"{name}: {len(unmapped)} key(s) match no weight of this Wan model: {shown}.",
            "use a LoRA trained for Wan2.1 T2V (ComfyUI, DiffSynth/PEFT or kohya key names).")
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    shapes = _model_weight_shapes(model)
    wrong = []
    for target, adapter in patches.items():
        weight_key = target[0] if isinstance(target, tuple) else target
        want = shapes.get(weight_key)
        got = _adapter_shape(adapter)
        if want is not None and got is not None and tuple(got) != tuple(want[: len(got)]):
            wrong.append(f"{weight_key} (LoRA {tuple(got)}, model {want})")
    if wrong:
        shown = "; ".join(wrong[:4]) + (f" ... ({len(wrong)} in all)" if len(wrong) > 4 else "")
        raise DreamShotInputError(
            "lora_name", f"{name} does not match this base model's shapes: {shown}.",
            "load the base model this LoRA was trained on (a 14B LoRA needs Wan2.1 T2V 14B, "
            "a 1.3B LoRA needs 1.3B).")
    return patches


def _adapter_shape(adapter):
    """The weight shape a patch produces: (out, in) for LoRA, the tensor shape for a diff."""
    weights = getattr(adapter, "weights", None)
    if weights is None and isinstance(adapter, tuple) and len(adapter) == 2:
        weights = adapter[1]
    if not weights:
        return None
    if getattr(adapter, "name", None) == "lora":
        up, down = weights[0], weights[1]
        return (up.shape[0], down.shape[1])
    if isinstance(adapter, tuple) and adapter[0] == "diff":
        return tuple(weights[0].shape)
    return None


def _is_module_weight(key: str) -> bool:
    """ModelPatcher patches only modules' ``weight``/``bias``; other parameters (Wan's
    ``blocks.N.modulation``, ``head.modulation``) it accepts and then silently never changes."""
    return key.rsplit(".", 1)[-1] in ("weight", "bias")


def _patch_parameters(m, patches: dict, strength: float) -> list[str]:
    """Apply diffs to bare parameters as object patches: current value + strength * diff.

    The patched value keeps the parameter's dtype, except below 16 bits: fp8 weights (UNETLoader
    fp8_e4m3fn) keep 3 mantissa bits, so rounding the sum back would drop small diffs (measured on the
    tiny DiT: 26% of the entries of a 0.01-scale modulation diff rounded away). Wan casts its
    modulation tables to the compute dtype at every use, so a float32 table works as is (14B: 1.24M
    values, 5 MB). ``compat.add_parameter_patch`` keeps it float32 under newer ComfyUI's dynamic-VRAM
    patcher, which would otherwise cast it back to the model's fp8 when it loads the model.
    """
    done = []
    for key, adapter in patches.items():
        if not (isinstance(adapter, tuple) and adapter[0] == "diff"):
            raise DreamShotInputError("lora_name", f"{key} is a bare parameter and only a full diff can change it, "
                                      f"not a {getattr(adapter, 'name', adapter[0] if isinstance(adapter, tuple) else adapter)}.",
                                      "use a LoRA whose modulation changes are stored as .diff / diff_m.")
        current = m.get_model_object(key)
        diff = adapter[1][0].to(device=current.device, dtype=torch.float32)
        value = current.detach().float() + strength * diff.reshape(current.shape)
        keep = current.dtype if current.element_size() >= 2 else torch.float32
        compat.add_parameter_patch(m, key, torch.nn.Parameter(value.to(keep), requires_grad=False))
        done.append(key)
    return done


def apply_lora(model, path: str, strength: float, name: str | None = None):
    """A clone of ``model`` with the LoRA at ``path`` patched in at ``strength``."""
    lora, metadata = read_lora(path)
    patches = check_lora_fits(model, lora, name or path)
    m = model.clone()
    bare = {k: v for k, v in patches.items() if not _is_module_weight(k if isinstance(k, str) else k[0])}
    applied = m.add_patches({k: v for k, v in patches.items() if k not in bare}, strength)
    applied = list(applied) + _patch_parameters(m, bare, strength)
    log.info("DreamShot LoRA %s: %d weights patched at strength %.2f%s", name or path, len(applied), strength,
             f" (base model: {metadata['dreamshot.base_model']})" if "dreamshot.base_model" in metadata else "")
    return m
