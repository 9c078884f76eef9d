"""What every cell shares: the datasets, the tiny models, the trainer's caches, the held-out stories.

Also the proof's encoders (the block VAE's fast path, the unpadded tiny UMT5) and the training
config every run (prior and fine-tunes) is written from.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..train.config import toml_text
from . import dataset as ds
from . import videos as vd
from .settings import Paths, ProofSettings

log = logging.getLogger("DreamShot")


def write_train_config(path: Path, p: Paths, s: ProofSettings, *, dit: Path, dataset: Path, cache: Path, out: Path,
                       steps: int, lr: float, seed: int, modes: dict, racl_lambda: float) -> Path:
    """A dreamshot.train config: every block and the embeddings/head trained whole, fp32, resumable."""
    from .tiny_models import DIT_SIZE, TINY_UMT5_CONFIG

    sections = {
        "model": {"dit": str(dit), "vae": str(p.models / "vae.safetensors"),
                  "text_encoder": str(p.models / "umt5.safetensors"), "text_encoder_config": TINY_UMT5_CONFIG,
                  "dtype": "fp32"},
        "data": {"dataset": str(dataset), "cache_dir": str(cache), "width": s.width, "height": s.height,
                 "max_shots": s.shots_per_story, "text_min_length": s.text_length, "cache_dtype": "fp32",
                 "mask_text_padding": s.mask_text_padding,
                 "shot_fit": "crop", "reference_fit": "pad_white"},
        "train": {"output_dir": str(out), "steps": steps, "seed": seed, "gradient_checkpointing": False,
                  "timestep_shift": s.shift},
        "modes": {"r2s": 0.0, "t2s": 0.0, "s2s": 0.0, **modes},
        "racl": {"lambda": racl_lambda, "layers": list(s.racl_layers) if s.racl_layers else "all"},
        # Every block trained fully (a random DiT has nothing for a LoRA to adapt).
        "lora": {"full_finetune_blocks": list(range(DIT_SIZE["num_layers"])),
                 "full_finetune_modules": list(s.train_modules), "save_dtype": "fp32"},
        "optimizer": {"lr": lr, "scheduler": "cosine", "warmup_steps": min(50, steps // 10)},
        # resume = latest: a job killed mid-training continues from its last checkpoint
        "checkpoint": {"every": s.checkpoint_every, "total_limit": 1, "resume": "latest"},
        "logging": {"log_every": max(1, steps // 50), "progress": False},
    }
    atomic_write_text(path, toml_text(sections, "DreamShot proof: written by python -m dreamshot.proof"))
    return path


def load_block_vae(path: str | Path):
    import safetensors.torch

    from .block_vae import BlockVAE, build_block_vae

    vae = build_block_vae()
    vae.load_state_dict(safetensors.torch.load_file(str(path)))
    return BlockVAE(vae)


def load_text_encoder(path: str | Path, real_loader=None):
    """The tiny UMT5 through ComfyUI's loader, tokenizing without UMT5's padding to 512 tokens
    (ComfyUI's tokenizer option ``umt5xxl_min_length``): ~50x faster on a CPU, and the cache and the
    sampler both encode this way, so training and sampling see the same text."""
    from ..comfy_bridge import training as bridge
    from .tiny_models import TINY_UMT5_CONFIG

    clip = (real_loader or bridge.load_text_encoder)(str(path), TINY_UMT5_CONFIG)
    clip.set_tokenizer_option("umt5xxl_min_length", 1)
    return clip


@contextmanager
def fast_encoders():
    """The trainer's cache step with the block VAE's fast path (equal to ComfyUI's VAE on these
    weights, checked in tests/test_proof_models.py; ComfyUI's full VAE takes ~1.6 s a frame here) and
    unpadded, memoised captions (the same few captions recur across stories)."""
    from ..comfy_bridge import training as bridge

    real = bridge.load_vae, bridge.load_text_encoder, bridge.encode_text
    memo: dict = {}

    def encode_text(clip, text):
        if (id(clip), text) not in memo:
            memo[id(clip), text] = real[2](clip, text)
        return memo[id(clip), text]

    bridge.load_vae = load_block_vae
    bridge.load_text_encoder = lambda path, _override=None: load_text_encoder(path, real[1])
    bridge.encode_text = encode_text
    try:
        yield
    finally:
        bridge.load_vae, bridge.load_text_encoder, bridge.encode_text = real


def text_encoder(clip, length: int, strict: bool = True):
    """text -> [1, L, 4096] padded with zero rows to ``length`` (the training segment length); a
    longer caption is an error (``strict``) or kept whole (what the trainer does: its segment is
    max(text_min_length, longest caption))."""
    from ..comfy_bridge import training as bridge
    from ..train.cache_tensors import trim_text

    memo: dict[str, torch.Tensor] = {}

    def encode(text: str) -> torch.Tensor:
        if text not in memo:
            t = trim_text(bridge.encode_text(clip, text))
            if t.shape[0] > length and strict:
                raise ValueError(f"caption {text!r} has {t.shape[0]} tokens > text_length {length}")
            memo[text] = torch.nn.functional.pad(t, (0, 0, 0, max(0, length - t.shape[0]))).unsqueeze(0)
        return memo[text]
    return encode


def held_out(p: Paths, s: ProofSettings) -> list[ds.StorySpec]:
    """The held-out stories the cells score: the test set, or the dev set while exploring."""
    return ds.stories_from_json(json.loads(p.held_out.read_text())[s.split])


def build_assets(p: Paths, s: ProofSettings) -> dict:
    """Datasets, models and caches; returns timings (s)."""
    from ..comfy_bridge.headless import import_comfy

    import_comfy()
    timings = {}
    t = time.perf_counter()
    train = ds.make_stories(s.train_stories, s.data_seed, s.width, s.height, "train", s.shots_per_story)
    test = ds.make_stories(s.test_stories, s.data_seed + 1, s.width, s.height, "test", s.shots_per_story)
    dev = ds.make_stories(s.dev_stories, s.data_seed + 2, s.width, s.height, "dev", s.shots_per_story)
    ds.write_dataset(p.stories, train, s.width, s.height)
    atomic_write_json(p.held_out, {"test": ds.stories_to_json(test), "dev": ds.stories_to_json(dev)})
    timings["stories"] = time.perf_counter() - t
    t = time.perf_counter()
    clips = vd.make_clips(s.videos, s.data_seed + 10, s.width, s.height)
    vd.write_videos(p.videos, clips, s.width, s.height)
    timings["videos"] = time.perf_counter() - t

    from .block_vae import write_block_vae
    from .tiny_models import write_dit, write_text_encoder

    t = time.perf_counter()
    write_dit(p.models / "dit.safetensors", s.data_seed)
    write_text_encoder(p.models / "umt5.safetensors", s.data_seed)
    # the latent scale is set on the stories' images (the videos' scenes are greys of the same range)
    images = [ds.render_shot(sp, j, s.width, s.height)[0] for sp in train for j in range(len(sp.shots))]
    images += [ds.render_reference(ci, s.width, s.height)[0]
               for ci in sorted({c for sp in train for c in sp.cast.values()})]
    write_block_vae(p.models / "vae.safetensors", images, s.data_seed)
    timings["models"] = time.perf_counter() - t

    from ..train.cache import run_cache
    from ..train.config import load_config

    t = time.perf_counter()
    with fast_encoders():
        for name, data, cache, modes in (("stories", p.stories, p.story_cache, {"r2s": 0.6, "t2s": 0.4}),
                                         ("videos", p.videos, p.video_cache, {"t2v": 1.0})):
            cfg = write_train_config(p.assets / f"cache_{name}.toml", p, s, dit=p.models / "dit.safetensors",
                                     dataset=data, cache=cache, out=p.assets / "unused", steps=1, lr=s.lr,
                                     seed=s.data_seed, modes=modes, racl_lambda=0.0)
            run_cache(load_config(cfg))
    timings["caches"] = time.perf_counter() - t
    return timings
