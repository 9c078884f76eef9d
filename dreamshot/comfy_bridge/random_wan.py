"""Random Wan2.1-format weights built with ComfyUI's own Wan classes (for tests and benchmarks).

comfy layers skip weight initialisation (their tensors start as garbage), so every tensor is
filled explicitly: weights ~ N(0, gain^2 / fan_in), norms and gammas 1, biases 0.
"""

from __future__ import annotations

import torch

# Wan2.1 T2V sizes (dim, ffn_dim, layers); heads are detected as dim // 128.
WAN21_SIZES = {"tiny": (256, 512, 2), "1.3B": (1536, 8960, 30), "14B": (5120, 13824, 40)}


def fill_random(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or ("norm" in name and p.ndim == 1):
                p.fill_(1.0)
            elif leaf == "bias" or p.ndim == 1:
                p.zero_()
            elif name.endswith("modulation"):  # small: blocks start near their plain path
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * gain / p[0].numel() ** 0.5)


def random_wan_dit(dim=256, ffn_dim=512, num_layers=2, seed=0, device=None, dtype=None, channels=16):
    """A ComfyUI WanModel (T2V) with random weights; its state_dict uses the original Wan key names.
    ``channels``: 16 is Wan2.1's layout (also each Wan2.2-A14B expert's), 48 Wan2.2-TI2V-5B's (ComfyUI
    detects out_dim 48 as WAN22_T2V, with the Wan2.2 latent format)."""
    import comfy.ldm.wan.model as wan
    import comfy.ops

    model = wan.WanModel(model_type="t2v", dim=dim, ffn_dim=ffn_dim, num_heads=dim // 128, num_layers=num_layers,
                         text_dim=4096, in_dim=channels, out_dim=channels, device=device, dtype=dtype,
                         operations=comfy.ops.disable_weight_init)
    fill_random(model, seed)
    return model


def random_wan_dit_patcher(size: str = "tiny", seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher, WAN21) loaded through comfy.sd from random weights."""
    import comfy.sd

    dim, ffn, layers = WAN21_SIZES[size]
    sd = random_wan_dit(dim, ffn, layers, seed, dtype=torch.float16 if size != "tiny" else None).state_dict()
    return comfy.sd.load_diffusion_model_state_dict(sd)
