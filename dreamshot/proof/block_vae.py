"""A block-mean autoencoder written into ComfyUI's Wan2.1 VAE module (exact weights, no training).

Why not a trained VAE: ComfyUI's loader fixes the Wan2.1 VAE at full size (127M parameters); on
this project's 2-core CPU one training step of even its linear path takes ~1.4 s and a plain
ComfyUI encode ~1.6 s per frame, which does not fit a proof that runs in minutes. A random VAE
reconstructs nothing. So the weights are *set*:

- every residual branch and attention block is off exactly (its last layer is zero);
- the encoder averages each 8x8 pixel block (three stride-2 2x2 means); latent channel c holds the
  block's mean colour component c mod 3 (R, G, B, R, G, B, ...), so all 16 channels carry signal
  (with 13 constant channels, the DiT's loss was mostly about those and it never learned colour);
- the decoder averages the copies of each component and writes it back to the 8x8 block (nearest
  upsampling);
- the two normalised heads (RMS norm + SiLU) are kept in their linear range by a constant channel
  (magnitude ``K``, so the norm is ~constant) and an offset ``B`` (so SiLU(x) ~ x), removed after;
- every causal 3D convolution keeps only its current-frame tap and the temporal down/up-sampling
  picks/copies the current frame, so a shot repeated T times encodes to its single-image latent and
  decodes to T copies of it;
- the latent is then rescaled per channel so that ComfyUI's Wan2.1 latent normalisation maps it to
  mean 0 / std 1, folded into the 1x1 convolutions around it.

Decoded images are mosaics of 8x8 blocks in the right colours: enough for the colour classifier
(dreamshot.shapes.classify_region), not for texture or outline. ``BlockVAE`` runs the same weights
skipping the exactly-zero branches (~100x faster on CPU); tests check it equals ComfyUI's
``comfy.sd.VAE`` loaded from the saved file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..comfy_bridge.compat import causal_conv_spatial_padding
from ..comfy_bridge.random_wan import fill_random
from ..atomic import atomic_save_safetensors

Z_DIM = 16
K = 1000.0   # the constant channel: the RMS norm's denominator is ~K whatever the colours
B = 12.0     # offset of the colour channels inside the network: SiLU(x + B) ~ x + B
RGB, CONST = [0, 1, 2], 3


def _centre_tap(conv, pairs, bias=None):
    """Zero ``conv`` and set out<-in identity pairs at its centre (current-frame) tap."""
    w = conv.weight
    w.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    idx = (w.shape[-2] // 2, w.shape[-1] // 2)
    for o, i in pairs:
        if w.ndim == 5:
            w[o, i, -1, idx[0], idx[1]] = 1.0
        else:
            w[o, i, idx[0], idx[1]] = 1.0
    for o, v in (bias or {}).items():
        conv.bias[o] = v


def _mean_2x2(conv, channels):
    """A stride-2 3x3 Conv2d (after ZeroPad right/bottom) as the mean of each 2x2 block."""
    conv.weight.zero_()
    conv.bias.zero_()
    for c in channels:
        conv.weight[c, c, 0:2, 0:2] = 0.25


@torch.no_grad()
def build_block_vae(seed: int = 0):
    """ComfyUI's WanVAE (Wan2.1 sizes) set up as the block-mean autoencoder described above."""
    import comfy.ldm.wan.vae as wan_vae

    vae = wan_vae.WanVAE(dim=96, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    fill_random(vae, seed, gain=1.0)   # the switched-off layers keep finite random weights
    keep = RGB + [CONST]
    for m in vae.modules():
        if isinstance(m, wan_vae.ResidualBlock):
            m.residual[-1].weight.zero_()
            m.residual[-1].bias.zero_()
            if not isinstance(m.shortcut, torch.nn.Identity):
                _centre_tap(m.shortcut, [(c, c) for c in keep])
        elif isinstance(m, wan_vae.AttentionBlock):
            m.proj.weight.zero_()
            m.proj.bias.zero_()
        elif isinstance(m, wan_vae.Resample):
            if m.mode.startswith("downsample"):
                _mean_2x2(m.resample[1], keep)
            else:
                _centre_tap(m.resample[1], [(c, c) for c in keep])
            if hasattr(m, "time_conv"):
                w = m.time_conv.weight   # [out, in, 3, 1, 1]
                w.zero_()
                m.time_conv.bias.zero_()
                eye = torch.eye(w.shape[1])
                w[:, :, -1, 0, 0] = eye if w.shape[0] == w.shape[1] else torch.cat([eye, eye])
    for m in vae.modules():   # frame-local time everywhere
        if isinstance(m, wan_vae.CausalConv3d) and m.weight.shape[2] > 1 and m.weight.shape[3] > 1:
            m.weight[:, :, :-1] = 0.0
    enc, dec = vae.encoder, vae.decoder
    _centre_tap(enc.conv1, [(c, c) for c in RGB], {**{c: B for c in RGB}, CONST: K})
    for head in (enc.head, dec.head):
        head[0].gamma.fill_(K / head[0].scale)   # x / |x| * sqrt(C) * gamma ~ x
    _centre_tap(enc.head[2], [(c, c % 3) for c in range(Z_DIM)], {c: -B for c in range(Z_DIM)})
    _centre_tap(vae.conv1, [(c, c) for c in range(2 * Z_DIM)])
    _centre_tap(vae.conv2, [(c, c) for c in range(Z_DIM)])
    _centre_tap(dec.conv1, [], {**{c: B for c in RGB}, CONST: K})
    copies = [list(range(c, Z_DIM, 3)) for c in RGB]
    for c in RGB:   # the mean of the copies of each colour component
        dec.conv1.weight[c, copies[c], -1, 1, 1] = 1.0 / len(copies[c])
    _centre_tap(dec.head[2], [(c, c) for c in RGB], {c: -B for c in RGB})
    return vae


@torch.no_grad()
def normalise_latent(vae, images: torch.Tensor) -> None:
    """Per latent channel, mu' = a * mu + b so that ComfyUI's Wan2.1 ``process_in`` gives mean 0 and
    std 1 over ``images`` ([N, 3, H, W] in -1..1); constant channels map to 0. Folded into
    ``vae.conv1`` (mu half) and, inverted, into ``vae.conv2``: the autoencoder is unchanged."""
    import comfy.latent_formats

    fmt = comfy.latent_formats.Wan21()
    m_w, s_w = fmt.latents_mean.flatten().float(), fmt.latents_std.flatten().float()
    mu = torch.cat([thin_encode(vae, images[i:i + 64]) for i in range(0, len(images), 64)])
    m, s = mu.mean(dim=(0, 2, 3)), mu.std(dim=(0, 2, 3))
    dead = s < 1e-6
    a = torch.where(dead, torch.ones_like(s), s_w / s.clamp_min(1e-6))
    b = m_w - a * m
    w1 = vae.conv1.weight
    w1[:Z_DIM] *= a.view(-1, 1, 1, 1, 1)
    vae.conv1.bias[:Z_DIM] = a * vae.conv1.bias[:Z_DIM] + b
    w2 = vae.conv2.weight   # new conv2(mu') = old conv2((mu' - b) / a)
    vae.conv2.bias -= w2[:, :, 0, 0, 0] @ (b / a)
    w2 /= a.view(1, -1, 1, 1, 1)


# -- the same network, skipping the exactly-zero branches (frame by frame) -------------------------
def _conv(m, x):
    """A CausalConv3d on one frame: its current-frame tap as a 2D convolution."""
    return F.conv2d(x, m.weight[:, :, -1], m.bias, m.stride[1:], causal_conv_spatial_padding(m))


def _head(head, x):
    x = head[0](x.unsqueeze(2)).squeeze(2)   # RMS_norm(images=False) wants [B, C, T, H, W]
    return _conv(head[2], head[1](x))


def _path(layers, x):
    import comfy.ldm.wan.vae as wan_vae

    for layer in layers:
        if isinstance(layer, wan_vae.ResidualBlock):
            x = x if isinstance(layer.shortcut, torch.nn.Identity) else _conv(layer.shortcut, x)
        elif isinstance(layer, wan_vae.Resample):
            x = layer.resample(x)
        # AttentionBlock: identity (proj is zero)
    return x


def thin_encode(vae, x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in -1..1 -> mu [N, 16, H/8, W/8]."""
    x = _path(vae.encoder.downsamples, _conv(vae.encoder.conv1, x))
    return _conv(vae.conv1, _head(vae.encoder.head, x))[:, :Z_DIM]


def thin_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """mu [N, 16, h, w] -> [N, 3, 8h, 8w] in about -1..1."""
    x = _path(vae.decoder.upsamples, _conv(vae.decoder.conv1, _conv(vae.conv2, z)))
    return _head(vae.decoder.head, x)


class BlockVAE:
    """VideoVAE (dreamshot.packing) over the block VAE's weights, as ComfyUI's VAE encodes/decodes:
    pixels [F, H, W, 3] in 0..1 <-> latent [1, 16, 1 + (F - 1) / 4, H/8, W/8]."""

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        # Latent frame i reads frame 0 (i = 0) or the last frame of its chunk of 4 (what the
        # current-frame temporal taps select).
        idx = [0] + list(range(4, pixels.shape[0], 4))
        x = pixels[idx].float().permute(0, 3, 1, 2) * 2 - 1
        return thin_encode(self.vae, x).permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        frames = thin_decode(self.vae, latent[0].permute(1, 0, 2, 3).float())
        frames = ((frames + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
        repeats = torch.tensor([1] + [4] * (frames.shape[0] - 1))
        return frames.repeat_interleave(repeats, dim=0).unsqueeze(0)


def write_block_vae(path: str | Path, images: list[np.ndarray], seed: int = 0):
    """Build, normalise on ``images`` (RGB uint8), save in Wan2.1 key format; returns the module."""
    vae = build_block_vae(seed)
    data = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    normalise_latent(vae, data)
    atomic_save_safetensors(path, {k: v.float() for k, v in vae.state_dict().items()})
    return vae
