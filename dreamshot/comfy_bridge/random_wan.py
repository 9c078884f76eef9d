"""Random Wan2.1-format weights built with ComfyUI's own Wan classes (for tests and benchmarks).

comfy layers skip weight initialisation (their tensors start as garbage), so every tensor is
filled explicitly: weights ~ N(0, gain^2 / fan_in), norms and gammas 1, biases 0.

``random_wan_model`` builds a whole ComfyUI MODEL the way ComfyUI loads a Wan2.1 file, but with the
weights made in place where they will live (a 14B DiT is 28.6 GB in bf16: no file, no state dict,
no second copy).
"""

from __future__ import annotations

import torch

# Wan2.1 T2V sizes (dim, ffn_dim, layers); heads are detected as dim // 128.
WAN21_SIZES = {"tiny": (256, 512, 2), "1.3B": (1536, 8960, 30), "14B": (5120, 13824, 40)}


def fill_random(module: torch.nn.Module, seed: int, gain: float = 1.0, generate_on=None) -> None:
    """Fill every parameter of ``module`` in place. ``generate_on``: the device whose generator draws
    the numbers (default the CPU's); each tensor is drawn there in float32 and copied into the
    parameter, whatever its device and dtype (so a float8 weight is a rounded normal sample)."""
    g = torch.Generator(device=generate_on or "cpu").manual_seed(seed)
    where = {} if generate_on is None else {"device": generate_on}

    def drawn(t, p):   # cast where drawn: a copy to the host then moves p's bytes, not float32's
        return t if generate_on is None else t.to(p.dtype)

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or ("norm" in name and p.ndim == 1):
                p.fill_(1.0)
            elif leaf == "bias" or p.ndim == 1:
                p.zero_()
            elif name.endswith("modulation"):  # small: blocks start near their plain path
                p.copy_(drawn(torch.randn(p.shape, generator=g, **where) * 0.1, p))
            else:
                p.copy_(drawn(torch.randn(p.shape, generator=g, **where) * gain / p[0].numel() ** 0.5, p))


def random_wan_dit(dim=256, ffn_dim=512, num_layers=2, seed=0, device=None, dtype=None, fill=True, channels=16):
    """A ComfyUI WanModel (T2V) with random weights (``fill`` False: uninitialised, e.g. on "meta");
    its state_dict uses the original Wan key names. ``channels``: 16 is Wan2.1's layout (also each
    Wan2.2-A14B expert's), 48 Wan2.2-TI2V-5B's (ComfyUI detects out_dim 48 as WAN22_T2V, with the
    Wan2.2 latent format)."""
    import comfy.ldm.wan.model as wan
    import comfy.ops

    model = wan.WanModel(model_type="t2v", dim=dim, ffn_dim=ffn_dim, num_heads=dim // 128, num_layers=num_layers,
                         text_dim=4096, in_dim=channels, out_dim=channels, device=device, dtype=dtype,
                         operations=comfy.ops.disable_weight_init)
    if fill:
        fill_random(model, seed)
    return model


def random_wan_dit_patcher(size: str = "tiny", seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher, WAN21) loaded through comfy.sd from random weights."""
    import comfy.sd

    dim, ffn, layers = WAN21_SIZES[size]
    sd = random_wan_dit(dim, ffn, layers, seed, dtype=torch.float16 if size != "tiny" else None).state_dict()
    return comfy.sd.load_diffusion_model_state_dict(sd)


def random_wan_model(size: str = "tiny", weight_dtype: torch.dtype | None = None, device=None, seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher around model_base.WAN21) of a Wan2.1 T2V DiT with random weights,
    built exactly as comfy.sd.load_diffusion_model_state_dict builds one from a bf16 Wan2.1 file
    (comfy/sd.py @a125cd84): model detection from the weights' names and shapes, the weight dtype
    (``weight_dtype`` is model_options["dtype"], what UNETLoader's weight_dtype sets, e.g. fp8_e4m3fn;
    None: ComfyUI's default for such a file), its manual-cast compute dtype, the operations ComfyUI
    picks, and the patcher's load and offload devices. So ComfyUI's loading (full or partial, low-VRAM
    casts) treats it as a loaded file.

    The weights are made where they will live: the model is built on the meta device, given storage on
    ``device`` (default: ComfyUI's offload device, where comfy.sd leaves a loaded file's weights) and
    filled in place, each tensor drawn on ComfyUI's compute device.
    """
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    dim, ffn, layers = WAN21_SIZES[size]
    # The state dict of a bf16 Wan2.1 file, as shapes only: what model detection reads.
    sd = _file_shapes(dim, ffn, layers)
    load_device = mm.get_torch_device()
    config = comfy.model_detection.model_config_from_unet(sd, "")
    if config is None:
        raise RuntimeError(f"ComfyUI does not detect a Wan2.1 {size} state dict")
    supported = list(config.supported_inference_dtypes)
    unet_dtype = weight_dtype or mm.unet_dtype(model_params=comfy.utils.calculate_parameters(sd),
                                               supported_dtypes=supported, weight_dtype=comfy.utils.weight_dtype(sd))
    config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device, supported))
    model = config.get_model(sd, "", device=torch.device("meta"))
    model.device = None                      # as comfy.sd builds it (no device given)
    offload_device = mm.unet_offload_device()
    target = torch.device(device) if device is not None else offload_device
    model.diffusion_model.to_empty(device=target)
    fill_random(model.diffusion_model, seed, generate_on=load_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _file_shapes(dim: int, ffn_dim: int, num_layers: int) -> dict[str, torch.Tensor]:
    """The state dict of a bf16 Wan2.1 T2V file of these sizes, as meta tensors (no memory)."""
    return random_wan_dit(dim, ffn_dim, num_layers, device="meta", dtype=torch.bfloat16, fill=False).state_dict()
