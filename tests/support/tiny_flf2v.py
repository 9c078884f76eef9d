"""A tiny random Wan2.1 FLF2V (first-last-frame to video) checkpoint for the "animate between boards"
workflow: ComfyUI's own WanModel as the 14B FLF2V is built (model_type i2v, 36 input channels: noise,
mask and the first/last frame latents; an image-embedding MLP with the FLF position embedding of 514
tokens), at the tiny DiT's size (dim 256, 2 blocks), saved under the original key names, so
ComfyUI's detection loads it as WAN21 image-to-video with flf_pos_embed_token_number 514."""

from __future__ import annotations

from pathlib import Path


def write_tiny_flf2v(path, seed: int = 0) -> Path:
    import comfy.ldm.wan.model as wan
    import comfy.ops
    import safetensors.torch

    from dreamshot.comfy_bridge.random_wan import fill_random

    model = wan.WanModel(model_type="i2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, in_dim=36,
                         out_dim=16, flf_pos_embed_token_number=514, operations=comfy.ops.disable_weight_init)
    fill_random(model, seed)
    safetensors.torch.save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)
