"""Tiny random Wan2.1-format checkpoints for tests (real key names, tiny dims where possible).

- DiT: ComfyUI's own WanModel (dim 256 -> detected as 2 heads, 2 layers), saved under the
  original Wan2.1 key names, so comfy.sd.load_diffusion_model detects WAN21 T2V.
- VAE: Wan2.1's VAE cannot shrink in ComfyUI (dim 96 / z_dim 16 are fixed), so it is full size
  with random weights (~127M params, ~254 MB as bf16).
- Text encoder: UMT5 with d_model 4096 and 24 layers (what ComfyUI's detection reads) but 1 head,
  d_kv 16, d_ff 16, plus a tiny sentencepiece model trained here under the "spiece_model" key.

comfy layers skip weight initialisation, so every tensor is filled explicitly.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

TINY_UMT5_CONFIG = {"d_model": 4096, "num_layers": 24, "num_heads": 1, "d_kv": 16, "d_ff": 16,
                    "vocab_size": 384}


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fill(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    from dreamshot.comfy_bridge.random_wan import fill_random

    fill_random(module, seed, gain)


def tiny_wan_dit_state_dict(dim=256, ffn_dim=512, num_layers=2, seed=0) -> dict:
    from dreamshot.comfy_bridge.random_wan import random_wan_dit

    return {k: v.detach().clone() for k, v in random_wan_dit(dim, ffn_dim, num_layers, seed).state_dict().items()}


def write_tiny_wan_dit(path, dim=256, ffn_dim=512, num_layers=2, seed=0) -> Path:
    _atomic_save(tiny_wan_dit_state_dict(dim, ffn_dim, num_layers, seed), Path(path))
    return Path(path)


def write_random_wan_vae(path, seed=0, dtype=torch.bfloat16) -> Path:
    import comfy.ldm.wan.vae as wan_vae

    vae = wan_vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    _fill(vae, seed, gain=0.5)
    _atomic_save({k: v.to(dtype) for k, v in vae.state_dict().items()}, Path(path))
    return Path(path)


def _tiny_spiece_model() -> bytes:
    import sentencepiece as spm

    words = ("a the man woman girl boy old young red green blue hair coat hat street rain night city walks "
             "smiles stands sits looks at close up wide shot medium of and with under in on by dog cat house "
             "car bus stop umbrella beard light neon window door table cup tea sky sun moon tree river").split()
    corpus = [" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(400)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out,
                                   vocab_size=TINY_UMT5_CONFIG["vocab_size"], model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
                                   hard_vocab_limit=False)
    return out.getvalue()


def tiny_umt5_state_dict(seed=0) -> dict:
    import comfy.ops
    import comfy.text_encoders.t5 as t5

    cfg = dict(TINY_UMT5_CONFIG, model_type="umt5", is_gated_act=True, dense_act_fn="gelu_pytorch_tanh",
               relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
    model = t5.T5(cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    _fill(model, seed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(_tiny_spiece_model()), dtype=torch.uint8)
    return sd


def write_tiny_umt5(path, seed=0) -> Path:
    _atomic_save(tiny_umt5_state_dict(seed), Path(path))
    return Path(path)


def load_tiny_umt5_clip(path):
    import comfy.sd

    return comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.WAN,
                              model_options={"umt5xxl_model_config": dict(TINY_UMT5_CONFIG)})
