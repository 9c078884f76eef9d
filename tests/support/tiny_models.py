"""Tiny random Wan-format checkpoints for tests (real key names, tiny dims where possible).

- DiT: ComfyUI's own WanModel (dim 256 -> detected as 2 heads, 2 layers), saved under the
  original Wan2.1 key names, so comfy.sd.load_diffusion_model detects WAN21 T2V. Two seeds of it
  stand for the two Wan2.2-T2V-A14B experts (ComfyUI loads each as a Wan2.1-architecture WAN21).
- Wan2.2-TI2V-5B DiT: the same with 48 latent channels in and out, which ComfyUI detects as
  WAN22_T2V (model_base.WAN22, latent format Wan22).
- VAE: Wan2.1's VAE cannot shrink in ComfyUI (dim 96 / z_dim 16 are fixed), so it is full size
  with random weights (~127M params, ~254 MB as bf16). The Wan2.2 VAE cannot shrink either
  (comfy/sd.py fixes dim 160 / z_dim 48): full size, ~705M params, ~1.4 GB as bf16, written only
  when a Wan2.2 test asks for it.
- Text encoder: UMT5 with d_model 4096 and 24 layers (what ComfyUI's detection reads) but 1 head,
  d_kv 16, d_ff 16, plus a tiny sentencepiece model trained here under the "spiece_model" key
  (unigram, byte fallback, ~500 pieces; pad 0, eos 1, unk 2 as in UMT5). ComfyUI's stock CLIPLoader
  cannot build it: load it with load_tiny_umt5_clip() or, in the server, the test-only node
  DreamShotTestTinyUMT5Loader (tests/support/test_nodes_pack).

comfy layers skip weight initialisation, so every tensor is filled explicitly. Every write is atomic
(a temp file in the same folder, then os.replace).
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path

import torch

# Shared with the test-only loader node that the server runs (tests/support/test_nodes_pack).
TINY_UMT5_CONFIG = json.loads((Path(__file__).with_name("test_nodes_pack") / "tiny_umt5_config.json").read_text())


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


def write_tiny_wan22_dit(path, dim=256, ffn_dim=512, num_layers=2, seed=0) -> Path:
    """A tiny Wan2.2-TI2V-5B-layout DiT (48 latent channels)."""
    from dreamshot.comfy_bridge.random_wan import random_wan_dit

    model = random_wan_dit(dim, ffn_dim, num_layers, seed, channels=48)
    _atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(path))
    return Path(path)


def write_random_wan22_vae(path, seed=0, dtype=torch.bfloat16) -> Path:
    """The Wan2.2 VAE (ComfyUI's comfy.ldm.wan.vae2_2.WanVAE at the sizes comfy/sd.py detects), random."""
    import comfy.ldm.wan.vae2_2 as wan22_vae

    return _write_random_vae(wan22_vae.WanVAE, 160, 48, path, seed, dtype)


def write_random_wan_vae(path, seed=0, dtype=torch.bfloat16) -> Path:
    import comfy.ldm.wan.vae as wan_vae

    return _write_random_vae(wan_vae.WanVAE, 96, 16, path, seed, dtype)


def _write_random_vae(vae_class, dim, z_dim, path, seed, dtype) -> Path:
    """ComfyUI's Wan VAE class at the one layout comfy/sd.py builds for it, randomly filled, saved."""
    vae = vae_class(dim=dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False, True, True], dropout=0.0)
    _fill(vae, seed, gain=0.5)
    _atomic_save({k: v.to(dtype) for k, v in vae.state_dict().items()}, Path(path))
    return Path(path)


_WORDS = """a an the and or but with without under over in on at by from to into of for near behind next
man woman girl boy child old young tall short small big red green blue yellow black white grey brown orange
hair coat raincoat hat scarf dress shirt jacket boots umbrella bag glasses beard smile face eyes hand hands
street road city town village forest river lake sea beach mountain hill sky sun moon star cloud rain snow wind
fog night day morning evening sunset light lights neon reflections shadow window door room kitchen table chair
car bus train station stop bridge tower house garden park tree flower grass dog cat bird horse
walks runs stands sits looks turns holds opens smiles laughs waits talks reads jumps dances meets leaves enters
offers share shares close up wide shot medium long view seen from above below behind camera pans zooms slowly
together alone bright dark warm cold wet glowing rainy snowy sunny empty crowded quiet happy sad tired calm
Mira Theo Alice Bob character reference storyboard frame scene""".split()


def _tiny_spiece_model(vocab_size: int | None = None, seed: int = 0) -> bytes:
    """A tiny sentencepiece model (serialized) trained in memory on generated English.

    Unigram with byte fallback (any text tokenizes, no <unk> in practice); ids as in UMT5:
    pad 0, eos 1, unk 2, no bos."""
    import sentencepiece as spm

    vocab_size = vocab_size or TINY_UMT5_CONFIG["vocab_size"]
    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 16))) + rng.choice(".,;:!?")
              for _ in range(3000)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   byte_fallback=True, hard_vocab_limit=False, minloglevel=2,
                                   num_threads=1)
    proto = out.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    if (sp.pad_id(), sp.eos_id(), sp.unk_id()) != (0, 1, 2):
        raise RuntimeError("tiny sentencepiece model: UMT5 needs pad 0, eos 1, unk 2")
    if sp.vocab_size() > vocab_size:
        raise RuntimeError(f"tiny sentencepiece model: {sp.vocab_size()} pieces > {vocab_size} embedding rows")
    return proto


def tiny_umt5_state_dict(seed=0) -> dict:
    import comfy.ops
    import comfy.text_encoders.t5 as t5

    cfg = dict(TINY_UMT5_CONFIG, model_type="umt5", is_gated_act=True, dense_act_fn="gelu_pytorch_tanh",
               relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
    model = t5.T5(cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    _fill(model, seed)
    sd = {k: v.detach() for k, v in model.state_dict().items()}  # the module is dropped: no copy needed
    sd["spiece_model"] = torch.frombuffer(bytearray(_tiny_spiece_model()), dtype=torch.uint8)
    return sd


def write_tiny_umt5(path, seed=0) -> Path:
    _atomic_save(tiny_umt5_state_dict(seed), Path(path))
    return Path(path)


def load_tiny_umt5_clip(path):
    import comfy.sd

    return comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.WAN,
                              model_options={"umt5xxl_model_config": dict(TINY_UMT5_CONFIG)})
