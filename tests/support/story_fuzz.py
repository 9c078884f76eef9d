"""Stories as data, run through the nodes the way a workflow runs them, and what must come out.

A ``StorySpec`` is everything a user sets on the story nodes: the cast (references per character,
their sizes, masks, captions), the shots (characters, given images, boxes or masks, own seeds), the
pack's settings (mode, size, repeat, fit, max_latent_frames, keyframes + lock_shots), the sampler's
(seed, steps, cfg, ref_cfg, chunk_size, context_shots) and an optional RACL Attention Patch.
``run_story`` builds it with Character Reference / Shot Script chains, Shot Sequence Pack, RACL
Attention Patch, DreamShot Sampler and Storyboard Sheet, inside the real ComfyUI (``N`` runner of
tests/conftest.py). ``problems`` is the oracle: the (node, input) pairs a story's invalid settings
must be reported under; an empty set means the story must work.

Models: the tiny Wan2.1 DiT loaded by ComfyUI's loader, the proof's block VAE (exact weights,
frame-local, ~100x faster than ComfyUI's full Wan VAE on CPU: dreamshot/proof/block_vae.py) and
the tiny UMT5 tokenizing without padding to 512 (as the proof does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .node_calls import comfy_folders

PACK = "Shot Sequence Pack"
SAMPLER = "DreamShot Sampler"
RACL = "RACL Attention Patch"
SCRIPT = "Shot Script"
REFERENCE = "Character Reference"
SHEET = "Storyboard Sheet"


@dataclass(frozen=True)
class CharSpec:
    name: str
    refs: int = 1                   # images in the reference batch
    size: tuple[int, int] = (32, 32)  # (h, w) of the reference images
    mask: bool = False
    mask_meaning: str = "auto"
    description: str = ""
    kind: str = "character"


@dataclass(frozen=True)
class ShotSpec:
    prompt: str
    characters: tuple[str, ...] = ()
    image: bool = False             # a given image on the Shot Script
    boxes: str = ""                 # character_boxes text
    masks: bool = False             # one character mask per listed character
    seed: int = -1


@dataclass(frozen=True)
class RaclSpec:
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    layers: str = "all"
    auto_regions: bool = True


@dataclass(frozen=True)
class StorySpec:
    chars: tuple[CharSpec, ...]
    shots: tuple[ShotSpec, ...]
    mode: str = "reference_to_shot"
    width: int = 32
    height: int = 32
    repeat: int = 4
    fit: str = "pad_white"
    max_latent_frames: int = 21
    keyframes: bool = False          # connect an earlier storyboard (one image per shot)
    lock: tuple[int, ...] = ()       # 1-based shots to lock from it
    seed: int = 0
    steps: int = 1
    cfg: float = 1.0
    ref_cfg: float = 1.0
    chunk_size: int = 0
    context_shots: int = 0
    racl: RaclSpec | None = None
    data_seed: int = 0               # the pixels of every image of the story

    def replace(self, **kw) -> "StorySpec":
        return dataclasses.replace(self, **kw)


@dataclass
class StoryRun:
    """What the nodes produced."""

    sequence: object
    model: object
    images: torch.Tensor
    latent: torch.Tensor
    inputs: dict = field(default_factory=dict)   # the image tensors handed to the nodes


def _image(gen: torch.Generator, h: int, w: int) -> torch.Tensor:
    # Coarse blocks, so the block VAE's 8x8 means still tell images apart.
    small = torch.rand(1, max(1, h // 8), max(1, w // 8), 3, generator=gen)
    return torch.nn.functional.interpolate(small.permute(0, 3, 1, 2), size=(h, w), mode="nearest").permute(0, 2, 3, 1)


def story_inputs(spec: StorySpec) -> dict:
    """The IMAGE/MASK tensors of ``spec``: refs[i] [N, h, w, 3], ref_masks[i] [N, h, w] or None,
    shot_images[j] [1, H, W, 3] or None, shot_masks[j] [n, H', W'] or None, keyframes [S, H, W, 3] or None."""
    gen = torch.Generator().manual_seed(spec.data_seed)
    refs, ref_masks = [], []
    for c in spec.chars:
        h, w = c.size
        refs.append(torch.cat([_image(gen, h, w) for _ in range(c.refs)]))
        if c.mask:
            m = torch.zeros(c.refs, h, w)
            m[:, h // 4: h - h // 4, w // 4: w - w // 4] = 1.0   # the character in the middle
            ref_masks.append(m)
        else:
            ref_masks.append(None)
    shot_images, shot_masks = [], []
    for s in spec.shots:
        shot_images.append(_image(gen, spec.height, spec.width) if s.image else None)
        if s.masks and s.characters:
            n = len(s.characters)
            m = torch.zeros(n, spec.height, spec.width)
            for i in range(n):   # vertical stripes, one per character
                m[i, :, i * spec.width // n:(i + 1) * spec.width // n] = 1.0
            shot_masks.append(m)
        else:
            shot_masks.append(None)
    keyframes = (torch.cat([_image(gen, spec.height, spec.width) for _ in spec.shots])
                 if spec.keyframes else None)
    return {"refs": refs, "ref_masks": ref_masks, "shot_images": shot_images, "shot_masks": shot_masks,
            "keyframes": keyframes}


def run_story(N, models, spec: StorySpec, inputs: dict | None = None, sheet_dir=None) -> StoryRun:
    """Build and sample ``spec`` through the nodes. ``models``: (MODEL, VAE, CLIP)."""
    model, vae, clip = models
    inputs = inputs or story_inputs(spec)
    chars = None
    for c, image, mask in zip(spec.chars, inputs["refs"], inputs["ref_masks"]):
        (chars,) = N.DreamShotCharacterReference(image=image, name=c.name, description=c.description, mask=mask,
                                                 characters=chars, kind=c.kind, mask_meaning=c.mask_meaning)
    shots = None
    for s, image, masks in zip(spec.shots, inputs["shot_images"], inputs["shot_masks"]):
        (shots,) = N.DreamShotShotScript(prompt=s.prompt, characters=", ".join(s.characters), image=image,
                                         shots=shots, character_masks=masks, character_boxes=s.boxes,
                                         shot_seed=s.seed)
    (sequence,) = N.DreamShotShotSequencePack(
        vae=vae, clip=clip, shots=shots, width=spec.width, height=spec.height, mode=spec.mode,
        negative_prompt="blurry", repeat=spec.repeat, fit=spec.fit, max_latent_frames=spec.max_latent_frames,
        characters=chars, keyframes=inputs["keyframes"], lock_shots=", ".join(map(str, spec.lock)))
    if spec.racl is not None:
        r = spec.racl
        (model,) = N.DreamShotRACLAttentionPatch(model=model, strength=r.strength, start_percent=r.start_percent,
                                                 end_percent=r.end_percent, layers=r.layers,
                                                 auto_regions=r.auto_regions)
    images, latent = sample(N, model, sequence, spec)
    if sheet_dir is not None:
        sheet(N, images, sequence, sheet_dir)
    return StoryRun(sequence=sequence, model=model, images=images, latent=latent, inputs=inputs)


def sample(N, model, sequence, spec: StorySpec, **overrides):
    args = dict(model=model, sequence=sequence, seed=spec.seed, steps=spec.steps, cfg=spec.cfg,
                sampler_name="euler", scheduler="simple", ref_cfg=spec.ref_cfg, chunk_size=spec.chunk_size,
                context_shots=spec.context_shots)
    args.update(overrides)
    images, latent = N.DreamShotSampler(**args)
    return images, latent["samples"]


def sheet(N, images, sequence, out_dir):
    """Storyboard Sheet into ``out_dir`` (ComfyUI's output folder is pointed there for the call)."""
    with comfy_folders(output=out_dir):
        (image,) = N.DreamShotStoryboardSheet(keyframes=images, sequence=sequence, title="fuzz", columns=0,
                                              filename_prefix="fuzz/sheet", save_pdf=False)
    return image


# -- the oracle -------------------------------------------------------------------------------------
def _uses_refs(spec: StorySpec) -> bool:
    return spec.mode != "text_to_shot"


def given_shots(spec: StorySpec) -> list[bool]:
    """Per shot: an image is given (its own, or locked from the keyframes)."""
    locked = {j - 1 for j in spec.lock} if spec.keyframes else set()
    return [s.image or j in locked for j, s in enumerate(spec.shots)]


def problems(spec: StorySpec) -> set[tuple[str, str]]:
    """Every (node, input) a DreamShotInputError may rightly name for ``spec``; empty: it must work.

    Written from the user's side (what the README and the tooltips promise), not from the code."""
    out: set[tuple[str, str]] = set()
    S = len(spec.shots)
    for name, value in (("width", spec.width), ("height", spec.height)):
        if value < 16 or value % 16:
            out.add((PACK, name))
    if spec.repeat < 1 or spec.repeat % 4:
        out.add((PACK, "repeat"))
    if any(j < 1 or j > S for j in spec.lock):
        out.add((PACK, "lock_shots"))
    if spec.lock and not spec.keyframes:
        out.add((PACK, "lock_shots"))
    names = [c.name for c in spec.chars]
    for j, s in enumerate(spec.shots):
        unknown = [n for n in s.characters if n not in names]
        if unknown and (names or _uses_refs(spec)):
            out.add((PACK, "shots"))
    if spec.fit == "error":
        for c in spec.chars:
            if _uses_refs(spec) and tuple(c.size) != (spec.height, spec.width):
                out.add((PACK, "characters"))
    given = given_shots(spec)
    n_given = sum(given)
    refs = sum(c.refs for c in spec.chars) if _uses_refs(spec) else 0
    if spec.mode == "reference_to_shot":
        if refs == 0:
            out.add((PACK, "characters"))
        if n_given:
            out.add((PACK, "shots"))
    elif spec.mode == "text_to_shot":
        if n_given:
            out.add((PACK, "shots"))
    else:
        if n_given == 0 or n_given == S:
            out.add((PACK, "shots"))
        if spec.mode == "shot_to_shot" and False in given and any(given[given.index(False):]):
            out.add((PACK, "shots"))
    if spec.racl is not None and spec.racl.start_percent > spec.racl.end_percent:
        out.add((RACL, "start_percent"))
    if not out and pass_frames(spec) and max(pass_frames(spec)) > spec.max_latent_frames:
        out.add((SAMPLER, "chunk_size"))
    return out


def chunks(num_shots: int, chunk_size: int, context_shots: int) -> list[tuple[list[int], list[int]]]:
    """(context, targets) per pass, as README describes chunk_size / context_shots."""
    if chunk_size <= 0 or chunk_size >= num_shots:
        return [([], list(range(num_shots)))]
    return [(list(range(max(0, start - context_shots), start)),
             list(range(start, min(start + chunk_size, num_shots))))
            for start in range(0, num_shots, chunk_size)]


def pass_frames(spec: StorySpec) -> list[int]:
    """Latent frames of each sampling pass that runs (a pass whose shots are all kept is skipped)."""
    per_shot = spec.repeat // 4
    given = given_shots(spec)
    refs_of = {c.name: c.refs for c in spec.chars} if _uses_refs(spec) else {}
    plan = chunks(len(spec.shots), spec.chunk_size, spec.context_shots)
    if len(plan) == 1:
        return [sum(refs_of.values()) + len(spec.shots) * per_shot]
    out = []
    for context, targets in plan:
        if all(given[j] for j in targets):
            continue
        cast = {n for j in targets for n in spec.shots[j].characters if n in refs_of}
        out.append(sum(refs_of[n] for n in cast) + (len(context) + len(targets)) * per_shot)
    return out
