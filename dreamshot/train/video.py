"""Video records in the cache: one clip encoded as one video, trained as plain text-to-video.

A video record (dreamshot.train.dataset, "Video records") is cached like a one-shot story whose
shot is the clip: ``latent.shots`` holds its 1 + k latent frames, there are no references, and
``text.shot.0`` is its caption. Its ``repeat`` is 4 (1 + k), so the story layout's one shot spans
exactly the clip (StoryLayout.shot_repeats(0) = 4k + 1 pixel frames) and ``build_sample`` packs it
as T2S packs a shot: every frame noised, every frame cross-attending to the one caption.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..images import fit_image, load_image
from .cache_tensors import CACHE_DTYPES, trim_text
from .dataset import SequenceEntry


def encode_video(seq: SequenceEntry, root: Path, vae, encode_text, cfg) -> tuple[dict, dict]:
    """(tensors, metadata) of a video record, in the layout ``CacheReader.load`` reads."""
    d = cfg.data
    dt = CACHE_DTYPES[d.cache_dtype]
    clip = seq.shots[0]
    frames = [fit_image(load_image(root / f, f"{seq.id}: {f}"), d.width, d.height, d.shot_fit, f"{seq.id}: {f}") for f in clip.frames]
    latent_frames = 1 + (len(frames) - 1) // 4   # Wan2.1 and Wan2.2 VAEs alike: 4x in time
    latent = vae.encode(torch.stack(frames).float())
    if latent.ndim != 5 or latent.shape[2] != latent_frames:
        raise ValueError(f"{seq.id}: the VAE gave a latent of shape {tuple(latent.shape)} for {len(frames)} frames, "
                         f"expected {latent_frames} latent frames: is model.vae a Wan VAE?")
    tensors = {"latent.shots": latent[0].to(dt),
               "latent.refs": latent[0].new_zeros(latent.shape[1], 0, *latent.shape[3:]).to(dt),
               "text.shot.0": trim_text(encode_text(clip.caption)).to(dt)}
    meta = {"id": seq.id, "line": seq.line, "width": d.width, "height": d.height, "repeat": 4 * latent_frames,
            "shots": [{"caption": clip.caption, "characters": [], "masked": []}], "ref_characters": [],
            "ref_masked": [], "characters": [], "cut_shots": 0, "kind": "video", "frames": len(frames)}
    return tensors, meta
