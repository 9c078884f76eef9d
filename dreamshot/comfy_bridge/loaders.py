"""Model files loaded headless as ComfyUI's loader nodes load them, so a headless run gets the model a
graph gets: the DiT as UNETLoader (Load Diffusion Model) builds it, LoRA names resolved in ComfyUI's
model folders as the loader combos list them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import DreamShotInputError

log = logging.getLogger("DreamShot")

# UNETLoader's weight_dtype choices (nodes.py, the same in 0.3.64 @a125cd84 and 0.38.1 @02217e36).
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
# The deprecated --dit-dtype: a dtype forced on the DiT (model_options["dtype"]), not a UNETLoader choice.
FORCED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def unet_model_options(weight_dtype: str = "default") -> dict:
    """The model_options UNETLoader.load_unet passes to comfy.sd.load_diffusion_model for ``weight_dtype``
    (nodes.py UNETLoader, unchanged from 0.3.64 to 0.38.1): "default" lets ComfyUI choose from the file
    and the device; fp8 stores the weights in fp8 and casts them per layer; "_fast" also asks for fp8
    matmuls."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise DreamShotInputError("weight_dtype", f"{weight_dtype!r} is not one of UNETLoader's choices.",
                                  f"use one of: {', '.join(WEIGHT_DTYPES)}.")
    options: dict = {}
    if weight_dtype == "fp8_e4m3fn":
        options["dtype"] = torch.float8_e4m3fn
    elif weight_dtype == "fp8_e4m3fn_fast":
        options["dtype"] = torch.float8_e4m3fn
        options["fp8_optimizations"] = True
    elif weight_dtype == "fp8_e5m2":
        options["dtype"] = torch.float8_e5m2
    return options


def load_diffusion_model(path: str, weight_dtype: str = "default", forced_dtype: str | None = None):
    """The Wan T2V DiT at ``path`` as UNETLoader loads it (comfy.sd.load_diffusion_model with its
    model_options). ``forced_dtype`` (bf16/fp16/fp32, the deprecated --dit-dtype) replaces UNETLoader's
    dtype choice."""
    import comfy.sd

    from .wan_patches import check_wan_t2v

    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"model.dit: file {str(path)!r} not found")
    options = unet_model_options(weight_dtype)
    if forced_dtype is not None:
        options["dtype"] = FORCED_DTYPES[forced_dtype]
    model = comfy.sd.load_diffusion_model(str(path), model_options=options)
    check_wan_t2v(model)
    return model


def model_file(folder: str, name: str, field: str) -> str:
    """The full path of ``name`` in ComfyUI's model folder ``folder`` ("loras", ...), as a loader node's
    combo resolves it (folder_paths: models/<folder>, extra_model_paths.yaml, --base-directory)."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(folder)) or "none"
        raise DreamShotInputError(field, f"{name!r} is not in ComfyUI's {folder} folder(s) ({searched}).",
                                  f"put the file into models/{folder} (or pass --base-directory), or give its path.")
    return path
