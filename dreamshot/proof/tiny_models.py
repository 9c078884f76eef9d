"""Tiny Wan2.1-format DiT and UMT5 for the proof, built with ComfyUI's own classes.

Same construction as the test suite's tiny models (tests/support/tiny_models.py, which package code
cannot import): real Wan/UMT5 key names, so ComfyUI's loaders detect and load them. The DiT is a
little deeper than the tests' (4 blocks): two blocks are the minimum for "read the role from the
text, then copy from the matching reference", and the extra two make that easier to learn.
The UMT5 keeps d_model 4096 / 24 layers (what ComfyUI's detection reads) with 1 head and d_kv/d_ff
16, word-preserving weights (see ``EMBEDDING_GAIN``) and a sentencepiece model trained here on the
proof's caption words.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from ..comfy_bridge.random_wan import fill_random, random_wan_dit
from ..atomic import atomic_save_safetensors
from .dataset import ROLES, SLOTS
from .videos import WORDS as VIDEO_WORDS

TINY_UMT5_CONFIG = {"d_model": 4096, "num_layers": 24, "num_heads": 1, "d_kv": 16, "d_ff": 16, "vocab_size": 512}
DIT_SIZE = {"dim": 256, "ffn_dim": 1024, "num_layers": 4}

_WORDS = [*ROLES, *SLOTS, *VIDEO_WORDS, "at", "and", "a", "the", "with", "in",
          "on", "shape", "character", "scene", "story", "blurry", "low", "quality"]
# The random UMT5 keeps each word itself: embeddings at unit scale per element and the attention / FFN
# output projections scaled down, so 24 random layers add context instead of replacing the word.
# Fully random (gain 1) they did replace it: "Mira" in two captions came out at cosine ~0.2, as
# unlike as two different words, so a caption's name could not be matched to a reference's.
EMBEDDING_GAIN = 64.0      # fill_random gives the [vocab, 4096] embedding std 1/64
RESIDUAL_GAIN = 0.1        # attention o / FFN wo: "Mira" in two captions then at cosine ~0.97


def write_dit(path: str | Path, seed: int) -> Path:
    model = random_wan_dit(DIT_SIZE["dim"], DIT_SIZE["ffn_dim"], DIT_SIZE["num_layers"], seed)
    identity_init(model)
    return atomic_save_safetensors(path, model.state_dict())


@torch.no_grad()
def identity_init(model) -> None:
    """Start the random DiT as a velocity model that passes its input through (v_hat ~ x_t).

    A flow model must return the noise it is given (v = noise - x0); a random DiT does not, and in
    the proof's budget it never learned to, so every sample kept its starting noise. Here the head
    is the pseudo-inverse of the patch embedding (scaled for unit-variance input, in the head's
    (pt, ph, pw, c) output order), and the time embedding's last layer, the time projection and the
    head's modulation start at zero (adaLN-zero, as DiT): blocks then add only small residuals
    (their frozen modulation is 0.1-scale) and the head's shift/scale start at 0. Training grows
    the time conditioning back (the proof trains these modules, lora.full_finetune_modules)."""
    for t in (model.time_embedding[2].weight, model.time_embedding[2].bias, model.time_projection[1].weight,
              model.time_projection[1].bias, model.head.modulation, model.head.head.bias):
        t.zero_()
    wp = model.patch_embedding.weight.flatten(1).double()           # [dim, c*pt*ph*pw], (c, pt, ph, pw)
    pt, ph, pw = model.patch_size
    c = model.out_dim
    inv = torch.linalg.pinv(wp).view(c, pt, ph, pw, -1).permute(1, 2, 3, 0, 4).reshape(c * pt * ph * pw, -1)
    # LayerNorm before the head divides by the std of the embedded token: undo it for unit-variance input.
    probe = torch.randn(wp.shape[1], 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    emb = wp @ probe
    scale = ((emb - emb.mean(0)) ** 2).mean(0).sqrt().mean()
    model.head.head.weight.copy_((inv * scale).to(model.head.head.weight.dtype))


def _spiece_model(seed: int) -> bytes:
    """A unigram sentencepiece model (byte fallback; pad 0, eos 1, unk 2 as UMT5) trained in memory."""
    import sentencepiece as spm

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) + rng.choice(".,") for _ in range(2000)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out,
                                   vocab_size=TINY_UMT5_CONFIG["vocab_size"], model_type="unigram", pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    return out.getvalue()


def write_text_encoder(path: str | Path, seed: int) -> Path:
    import comfy.ops
    import comfy.text_encoders.t5 as t5

    cfg = dict(TINY_UMT5_CONFIG, model_type="umt5", is_gated_act=True, dense_act_fn="gelu_pytorch_tanh",
               relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
    model = t5.T5(cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    fill_random(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("shared.weight"):
                p.mul_(EMBEDDING_GAIN)
            elif name.endswith((".o.weight", ".wo.weight")):
                p.mul_(RESIDUAL_GAIN)
    sd = dict(model.state_dict())
    sd["spiece_model"] = torch.frombuffer(bytearray(_spiece_model(seed)), dtype=torch.uint8)
    return atomic_save_safetensors(path, sd)


def merge_deltas(dit: str | Path, trained: str | Path, out: str | Path) -> Path:
    """A DiT file with a full fine-tune's ``.diff`` / ``.diff_b`` deltas added to its weights (what
    ComfyUI's LoRA loader applies at strength 1): the video prior as a plain Wan2.1 checkpoint."""
    import safetensors.torch

    base = safetensors.torch.load_file(str(dit))
    merged = dict(base)
    for key, delta in safetensors.torch.load_file(str(trained)).items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith(".diff"):
            target = name[: -len(".diff")] + ".weight"
        elif name.endswith(".diff_b"):
            target = name[: -len(".diff_b")] + ".bias"
        else:
            raise ValueError(f"{trained}: {key} is not a full fine-tune delta (.diff / .diff_b): cannot merge it")
        if target not in base or base[target].shape != delta.shape:
            raise ValueError(f"{trained}: {key} does not match a weight of {dit}")
        merged[target] = (base[target].double() + delta.double()).to(base[target].dtype)
    return atomic_save_safetensors(out, merged)
