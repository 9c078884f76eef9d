"""Sampling held-out stories (and clips) through ComfyUI's samplers, and scoring who ends up where."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from . import dataset as ds
from . import videos as vd
from .assets import load_block_vae, load_text_encoder, text_encoder
from .report import Tally, name_check, renamed, score_story, who_is_there
from .settings import CONDITIONS, ProofSettings

log = logging.getLogger("DreamShot")


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.numpy() * 255).round().clip(0, 255).astype(np.uint8)


def load_model(dit: Path, shift: float, lora: Path | None = None, mask_padding: bool = False):
    """The DiT through ComfyUI's loader, sampling at the training shift, with a trained file applied;
    ``mask_padding``: prompt padding hidden from cross-attention, as it was in training."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from ..comfy_bridge import training as bridge
    from ..comfy_bridge.lora import apply_lora
    from ..comfy_bridge.wan_patches import mask_text_padding

    model = ModelSamplingSD3().patch(bridge.load_dit(str(dit), "fp32"), shift)[0]
    model = apply_lora(model, str(lora), 1.0) if lora is not None else model
    return mask_text_padding(model) if mask_padding else model


def sample_condition(model, vae, encode, spec: ds.StorySpec, s: ProofSettings, mode: str, seed: int) -> list[np.ndarray]:
    """Generated shots (uint8 RGB) of one held-out story: all shots together with references (r2s),
    the same with the role attention patch and each character's box from the script as its region
    (what Character Reference boxes + RACL Attention Patch do in ComfyUI; r2s_roles), or each shot
    alone from its caption (t2s)."""
    from ..comfy_bridge.sampling import sample_long_story
    from ..modes import Mode
    from ..story import Character, Shot, encode_story, plan_story

    def run(characters, shots, m):
        plan = plan_story(characters, shots, s.width, s.height, repeat=4, mode=m, fit="pad_white")
        seq = encode_story(plan, vae, encode, "")
        images, _ = sample_long_story(model, seq, seed, s.sample_steps, 1.0, "euler", "simple")
        return [to_uint8(im) for im in images]

    regions = mode == "r2s_roles"
    shots = [Shot(prompt=spec.caption(j), characters=tuple(p.role for p in spec.shots[j]),
                  regions=tuple((p.role, p.box) for p in spec.shots[j]) if regions else ())
             for j in range(len(spec.shots))]
    if regions:
        from ..comfy_bridge.role_patch import RoleAttentionConfig, with_role_attention

        model = with_role_attention(model, RoleAttentionConfig(strength=1.0))
    if mode in ("r2s", "r2s_roles"):
        characters = []
        for role, ci in spec.cast.items():
            image, mask = ds.render_reference(ci, s.width, s.height)
            characters.append(Character(name=role, images=as_tensor(image)[None],
                                        masks=torch.from_numpy(mask.astype(np.float32))[None], description=role))
        return run(characters, shots, Mode.REFERENCE_TO_SHOT)
    return [run([], [Shot(prompt=sh.prompt)], Mode.TEXT_TO_SHOT)[0] for sh in shots]


def score_model(model, models_dir: Path, stories: list[ds.StorySpec], s: ProofSettings, seed: int,
                sheet_stories: int = 4) -> dict:
    """Every condition on every story (story i samples with seed ``seed * 1000 + i``): counts,
    per-story outcomes, and the first stories' generated shots for the contact sheet; then the name
    check on the first ``s.name_check_stories``: R2S again with the names rotated (report.name_check)."""
    vae = load_block_vae(models_dir / "vae.safetensors")
    encode = text_encoder(load_text_encoder(models_dir / "umt5.safetensors"), s.text_length)
    tallies = {c: Tally() for c in CONDITIONS}
    per_story, sheet, pairs = [], {c: [] for c in CONDITIONS}, []
    for i, spec in enumerate(stories):
        entry = {"id": spec.id, "seed": seed * 1000 + i}
        for c in CONDITIONS:
            shots = sample_condition(model, vae, encode, spec, s, c, seed * 1000 + i)
            if c == "r2s":
                r2s_shots = shots
            entry[c] = score_story(tallies[c], shots, spec)
            entry[c + "_found"] = [[who_is_there(im, spec, j, k) for k in range(len(spec.shots[j]))]
                                   for j, im in enumerate(shots)]
            if i < sheet_stories:
                sheet[c].append(shots)
        if i < s.name_check_stories:
            pairs.append((r2s_shots, sample_condition(model, vae, encode, renamed(spec), s, "r2s", seed * 1000 + i), spec))
        per_story.append(entry)
        log.info("proof: sampled held-out story %d/%d", i + 1, len(stories))
    return {"counts": {c: t.counts for c, t in tallies.items()}, "per_story": per_story, "sheet": sheet,
            "name_check": name_check(pairs)}


def ceiling(models_dir: Path, stories: list[ds.StorySpec], s: ProofSettings) -> dict:
    """The real shots through the VAE, scored like samples: what a perfect DiT could reach."""
    vae = load_block_vae(models_dir / "vae.safetensors")
    tally = Tally()
    for spec in stories:
        gt = [ds.render_shot(spec, j, s.width, s.height)[0] for j in range(len(spec.shots))]
        score_story(tally, [to_uint8(vae.decode(vae.encode(as_tensor(im)[None]))[0, 0]) for im in gt], spec)
    return tally.counts


# -- the prior: does it keep who is who through a clip? -------------------------------------------
def clip_persistence(frames: list[np.ndarray], spec: vd.ClipSpec, s: ProofSettings) -> list[dict]:
    """Per character of a clip: the colour classifier's answer at its box in each latent frame where
    the clip's geometry has it wholly in view (latent frame f shows pixel frame 4f)."""
    from ..shapes import classify_region

    out = []
    for track in spec.tracks:
        seen = [classify_region(im, spec.box(track, 4 * f, s.width, s.height))[0]
                for f, im in enumerate(frames) if spec.visible(track, 4 * f, s.width, s.height)]
        out.append({"role": track.role, "character": track.character, "seen": seen})
    return out


def cast_in_frames(frames: list[np.ndarray], min_blocks: int = 4) -> list[list[int]]:
    """Per frame, the cast members with at least ``min_blocks`` 8x8 blocks of their colour in view
    (wherever they are: a check of who is there that does not need the clip's geometry)."""
    from ..shapes import pixel_identities

    out = []
    for im in frames:
        ids = pixel_identities(im[4::8, 4::8])   # one pixel per block: the decoded image is block-constant
        counts = np.bincount(ids[ids >= 0], minlength=6)
        out.append([int(k) for k in np.nonzero(counts >= min_blocks)[0]])
    return out


def cast_rates(clips: list[tuple[vd.ClipSpec, list[list[int]]]]) -> dict:
    """Over clips whose characters stay in view throughout (no one enters or leaves): same_cast, the
    same cast members in every latent frame; right_count, as many as the caption names, every frame."""
    steady = [(spec, cast) for spec, cast in clips if " enters " not in spec.caption and " leaves " not in spec.caption]
    same = sum(1 for _, cast in steady if cast[0] and all(c == cast[0] for c in cast))
    right = sum(1 for spec, cast in steady if all(len(c) == len(spec.tracks) for c in cast))
    return {"clips": len(steady), "same_cast": same / len(steady) if steady else float("nan"),
            "right_count": right / len(steady) if steady else float("nan")}


def persistence_rates(tracks: list[dict]) -> dict:
    """kept: one character in every frame it is in view (at least two); present: some character each
    time; first_is_cast: how often the first view is any cast member (sanity)."""
    usable = [t for t in tracks if len(t["seen"]) >= 2]
    kept = sum(1 for t in usable if t["seen"][0] is not None and len(set(t["seen"])) == 1)
    present = sum(1 for t in usable if None not in t["seen"])
    return {"tracks": len(usable), "kept": kept / len(usable) if usable else float("nan"),
            "present": present / len(usable) if usable else float("nan")}


def decode_frames(vae, latent: torch.Tensor) -> list[np.ndarray]:
    from .block_vae import thin_decode

    with torch.no_grad():
        x = thin_decode(vae.vae, latent[0].permute(1, 0, 2, 3).float())
    return [to_uint8(((f + 1) / 2).clamp(0, 1).permute(1, 2, 0)) for f in x]


def sample_clips(model, models_dir: Path, clips: list[vd.ClipSpec], s: ProofSettings, seed: int) -> dict:
    """Generate each clip from its caption alone (plain T2V through the sampler); score persistence,
    and the same on the real clips through the VAE (the ceiling)."""
    from ..comfy_bridge.sampling import sample_long_story
    from ..modes import Mode
    from ..story import Shot, encode_story, plan_story

    vae = load_block_vae(models_dir / "vae.safetensors")
    encode = text_encoder(load_text_encoder(models_dir / "umt5.safetensors"), s.text_length, strict=False)
    generated, real, sheet, casts, real_casts = [], [], [], [], []
    for i, spec in enumerate(clips):
        n = 1 + (spec.frames - 1) // 4
        plan = plan_story([], [Shot(prompt=spec.caption)], s.width, s.height, repeat=4 * n, mode=Mode.TEXT_TO_SHOT)
        _, latent = sample_long_story(model, encode_story(plan, vae, encode, ""), seed * 1000 + i, s.sample_steps,
                                      1.0, "euler", "simple")
        frames = decode_frames(vae, latent)
        truth = [vd.render_frame(spec, 4 * f, s.width, s.height) for f in range(n)]
        truth = decode_frames(vae, vae.encode(torch.stack([as_tensor(im) for im in truth])
                                              .repeat_interleave(torch.tensor([1] + [4] * (n - 1)), dim=0)))
        generated += clip_persistence(frames, spec, s)
        real += clip_persistence(truth, spec, s)
        casts.append((spec, cast_in_frames(frames)))
        real_casts.append((spec, cast_in_frames(truth)))
        if i < 6:
            sheet.append((truth, frames))
    return {"generated": {**persistence_rates(generated), **cast_rates(casts)},
            "real": {**persistence_rates(real), **cast_rates(real_casts)}, "sheet": sheet,
            "captions": [c.caption for c in clips[:6]]}


def contact_sheet(path: Path, rows: list[list[np.ndarray]]) -> None:
    from PIL import Image

    from ..atomic import atomic_write

    rows = [r for r in rows if r]
    h, w = rows[0][0].shape[:2]
    sheet = np.full((len(rows) * (h + 2), max(len(r) for r in rows) * (w + 2), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet[i * (h + 2):i * (h + 2) + h, j * (w + 2):j * (w + 2) + w] = im
    atomic_write(path, lambda tmp: Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2),
                                                                 Image.NEAREST).save(tmp, format="PNG"))

