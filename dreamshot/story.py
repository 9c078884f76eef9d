"""Characters, shots and the plan that turns them into a packed story.

``plan_story`` does every check and decision that needs no model: which references are used,
which shots are kept, the latent layout, the prompt segments and which frame reads which
segment. ``encode_story`` then runs the VAE and the text encoder passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .attention import NO_TEXT
from .errors import DreamShotInputError
from .images import fit_image, fit_mask
from .layout import DEFAULT_MAX_LATENT_FRAMES, WAN21, Geometry, StoryLayout, check_resolution
from .modes import Mode, resolve_clean_shots
from .packing import VideoVAE, pack_latent
from .shot_timing import DEFAULT_DURATION
from .text_fold import FoldedText, TextSegment, fold_text, split_zero_rows, unfold_context


# What a reference shows: a person, or a place or object given and listed by shots like a person.
REFERENCE_KINDS = ("character", "location", "prop")


@dataclass(frozen=True)
class Character:
    """One reference: image(s) [N, H, W, 3], optional masks [N, H, W], a name, a caption and its kind
    (``REFERENCE_KINDS``; face-based metrics skip non-characters)."""

    name: str
    images: torch.Tensor
    masks: torch.Tensor | None = None
    description: str = ""
    kind: str = "character"


@dataclass(frozen=True)
class Shot:
    """One storyboard shot: its prompt, the characters in it and an optional given image [H, W, 3]."""

    prompt: str
    characters: tuple[str, ...] = ()
    image: torch.Tensor | None = None
    # Per-character regions in this shot: (name, [H, W] mask in 0..1 or an (x0, y0, x1, y1) box),
    # the regional layout used by role attention.
    regions: tuple[tuple[str, object], ...] = ()
    # This shot's own negative prompt ("" = the pack's) and initial-noise seed (None = derived from
    # the sampler's seed), so one shot can be re-rolled without touching the others' noise.
    negative_prompt: str = ""
    seed: int | None = None
    # What a storyboard board carries for timing and editing (dreamshot.shot_timing): seconds on
    # screen, shot size (free text: ECU, CU, MS, WS, ...), the camera move the animatic renders
    # (shot_timing.CAMERA_MOVES), and the action / dialogue printed under the board.
    duration: float = DEFAULT_DURATION
    shot_size: str = ""
    camera: str = "static"
    action: str = ""
    dialogue: str = ""


BOX_FORMS = "x0, y0, x1, y1 inside the frame, as fractions of the shot (every coordinate <= 1) or in pixels"


def parse_boxes(text: str, input_name: str = "character_boxes") -> tuple[tuple[str, tuple[float, ...]], ...]:
    """ "Mira: 0.05, 0.1, 0.45, 1; Theo: 0.5, 0.1, 0.95, 1" -> ((name, box), ...).

    Boxes are x0, y0, x1, y1, as fractions of the shot (all <= 1) or in pixels. A box starting
    outside the frame (a negative coordinate) is refused here; one ending outside it is refused by
    ``plan_story``, which knows the frame (``box_problem``).
    """
    out = []
    for part in (p.strip() for p in text.replace("\n", ";").split(";")):
        if not part:
            continue
        name, sep, coords = part.partition(":")
        try:
            box = tuple(float(x) for x in coords.split(","))
        except ValueError:
            box = ()
        if not sep or not name.strip() or len(box) != 4 or not all(map(math.isfinite, box)) \
                or box[2] <= box[0] or box[3] <= box[1]:
            raise DreamShotInputError(input_name, f"cannot read the box {part!r}.",
                                      'write "Name: x0, y0, x1, y1" with x1 > x0 and y1 > y0, boxes separated by ";".')
        if min(box) < 0:
            raise DreamShotInputError(input_name, f"the box {part!r} starts outside the frame (negative coordinate); "
                                      "boxes are refused, not clipped.", f"give {BOX_FORMS}, 0 being the left/top edge.")
        out.append((name.strip(), box))
    return tuple(out)


def box_problem(box: Sequence[float], width: int, height: int, token: int = WAN21.pixel_multiple) -> str | None:
    """Why ``box`` cannot be a region of a width x height shot, or None. Refused rather than clipped:
    a clipped box silently changes which tokens role attention constrains. Fractions when every
    coordinate is <= 1, else pixels: a pixel box must lie inside the frame and span at least one
    ``token``-pixel image token each way (16 on Wan2.1; what "0.5, 0, 1.5, 1", a fraction past the
    edge, would not)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
        return "is empty or not a box (needs x1 > x0 and y1 > y0)"
    if min(x0, y0) < 0:
        return "starts outside the frame (negative coordinate)"
    if max(x0, y0, x1, y1) <= 1:
        return None
    if x1 > width or y1 > height:
        return f"reaches outside the {width}x{height} frame (read as pixels, since a coordinate is > 1)"
    if x1 - x0 < token or y1 - y0 < token:
        return (f"is read as pixels (a coordinate is > 1) but is narrower than one {token}-pixel token; "
                "a fraction past the edge of the shot?")
    return None


def parse_character_names(text: str) -> tuple[str, ...]:
    """ "Alice, Bob" -> ("Alice", "Bob"); blanks dropped, order kept, duplicates removed."""
    names: list[str] = []
    for part in text.replace(";", ",").replace("\n", ",").split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    return tuple(names)


@dataclass
class StoryPlan:
    layout: StoryLayout
    characters: tuple[Character, ...]
    shots: tuple[Shot, ...]
    ref_images: list[torch.Tensor]
    ref_masks: list[torch.Tensor | None]
    shot_images: list[torch.Tensor | None]
    prompts: list[str]           # one text segment each: S shot prompts, then reference captions
    frame_segments: list[int]    # per latent frame: its segment, or NO_TEXT
    shot_characters: list[tuple[int, ...]]  # per shot: indices into characters
    mode: Mode
    shot_regions: list[dict[int, object]] = field(default_factory=list)  # per shot: character -> mask/box
    # Latent frames one sampling pass may hold; checked per pass by the sampler when the story is
    # generated in chunks (see plan_story's check_budget).
    max_latent_frames: int = DEFAULT_MAX_LATENT_FRAMES
    # Per shot, what the VAE encodes in its place when that is not shot_images (None: shot_images,
    # grey for generated shots). Edit mode with the earlier storyboard given encodes it whole: the
    # Wan VAE is causal in time, so a kept shot after a regenerated one then gets the latent it had
    # rather than one encoded after a grey placeholder.
    encode_images: list[torch.Tensor | None] | None = None

    def images_to_encode(self) -> list[torch.Tensor | None]:
        return list(self.shot_images) if self.encode_images is None else list(self.encode_images)


def plan_story(characters: Sequence[Character], shots: Sequence[Shot], width: int, height: int,
               repeat: int = 4, mode: Mode | str = Mode.REFERENCE_TO_SHOT,
               keyframes: torch.Tensor | None = None, lock_shots: Sequence[int] = (),
               fit: str = "pad_white", max_latent_frames: int = DEFAULT_MAX_LATENT_FRAMES,
               check_budget: bool = True, geometry: Geometry | None = None) -> StoryPlan:
    """Check the story and decide its layout.

    Args:
        characters: the character references, in order (their order is the reference order).
        shots: the shots, in story order.
        width, height: storyboard size (multiples of the geometry's token side: 16 on Wan2.1).
        repeat: T, pixel frames per shot (multiple of 4).
        mode: see dreamshot.modes.
        keyframes: optional [N, H, W, 3] images of an earlier storyboard, for lock_shots.
        lock_shots: 0-based shots kept from ``keyframes`` (overrides a shot's own image).
        fit: how images of another size are fitted (pad_white, crop, stretch, error).
        max_latent_frames: refuse longer packs.
        check_budget: False leaves the max_latent_frames check to the sampler, which knows whether
            the story is generated in one pass or in chunks (each chunk is then checked).
        geometry: the backbone's latent geometry (comfy_bridge.geometry reads it from the VAE);
            None: Wan2.1's.
    """
    mode = Mode.parse(mode)
    geometry = geometry or WAN21
    check_resolution(width, height, geometry)
    if not shots:
        raise DreamShotInputError("shots", "no shots were given.", "connect at least one Shot Script.")
    characters = tuple(characters)
    shots = tuple(shots)
    names = [c.name for c in characters]
    for c in characters:
        if c.kind not in REFERENCE_KINDS:
            raise DreamShotInputError("characters", f"{c.name!r} is of unknown kind {c.kind!r}.",
                                      f"use one of: {', '.join(REFERENCE_KINDS)}.")
        if not c.name.strip():
            raise DreamShotInputError("characters", "a character has an empty name.",
                                      "give every Character Reference a name.")
        if names.count(c.name) > 1:
            raise DreamShotInputError("characters", f"two characters are named {c.name!r}.",
                                      "give each Character Reference a unique name.")
    shot_characters = []
    for j, shot in enumerate(shots):
        unknown = [n for n in shot.characters if n not in names]
        # text_to_shot with no cast: names are only words of the script, nothing to check them against
        if unknown and (names or mode.uses_references):
            known = ", ".join(names) if names else "none connected"
            raise DreamShotInputError(
                "shots", f"shot {j + 1} names unknown character(s) {', '.join(map(repr, unknown))} "
                f"(known: {known}).",
                "fix the name in the Shot Script, or connect a Character Reference with that name.")
        shot_characters.append(tuple(names.index(n) for n in shot.characters if n in names))
    shot_regions = [_shot_regions(j, shot, names, width, height, geometry.pixel_multiple)
                    for j, shot in enumerate(shots)]

    given: list[torch.Tensor | None] = [s.image for s in shots]
    if lock_shots:
        if keyframes is None:
            raise DreamShotInputError("lock_shots", "shots are locked but no keyframes are connected.",
                                      "connect the earlier storyboard's IMAGE to 'keyframes'.")
        if keyframes.shape[0] < len(shots):
            raise DreamShotInputError(
                "keyframes", f"{keyframes.shape[0]} keyframe(s) for {len(shots)} shots.",
                "connect one keyframe per shot (the IMAGE output of DreamShot Sampler).")
        for j in lock_shots:
            given[j] = keyframes[j]
    shot_images = [None if img is None else fit_image(img, width, height, fit, "shots")
                   for img in given]

    ref_images, ref_masks, ref_characters = [], [], []
    if mode.uses_references:
        for ci, c in enumerate(characters):
            if c.images.ndim != 4 or c.images.shape[0] < 1:
                raise DreamShotInputError("characters", f"character {c.name!r} has no image.",
                                          "connect an IMAGE to its Character Reference.")
            for n in range(c.images.shape[0]):
                ref_images.append(fit_image(c.images[n], width, height, fit, "characters"))
                mask = None if c.masks is None else fit_mask(c.masks[min(n, c.masks.shape[0] - 1)],
                                                             width, height, fit)
                ref_masks.append(mask)
                ref_characters.append(ci)

    clean = resolve_clean_shots(mode, len(ref_images), [img is not None for img in shot_images])
    # Images given for shots that are generated anyway are not needed.
    shot_images = [img if keep else None for img, keep in zip(shot_images, clean)]
    encode_images = None
    if keyframes is not None and any(clean) and not all(clean) and keyframes.shape[0] >= len(shots):
        encode_images = [img if img is not None else fit_image(keyframes[j], width, height, fit, "keyframes")
                         for j, img in enumerate(shot_images)]
    layout = StoryLayout(num_refs=len(ref_images), num_shots=len(shots), width=width, height=height,
                         repeat=repeat, ref_characters=tuple(ref_characters), clean_shots=clean,
                         geometry=geometry)
    if check_budget:
        layout.check_frame_budget(max_latent_frames)

    prompts = [s.prompt for s in shots]
    caption_segment: dict[int, int] = {}
    for ci in dict.fromkeys(ref_characters):
        if characters[ci].description.strip():
            caption_segment[ci] = len(prompts)
            prompts.append(characters[ci].description)
    frame_segments = []
    for f in range(layout.num_latent_frames):
        kind, index = layout.frame_owner(f)
        if kind == "ref":
            frame_segments.append(caption_segment.get(ref_characters[index], NO_TEXT))
        else:
            frame_segments.append(index)
    return StoryPlan(layout=layout, characters=characters, shots=shots, ref_images=ref_images,
                     ref_masks=ref_masks, shot_images=shot_images, prompts=prompts,
                     frame_segments=frame_segments, shot_characters=shot_characters, mode=mode,
                     shot_regions=shot_regions if mode.uses_references else [{} for _ in shots],
                     max_latent_frames=max_latent_frames, encode_images=encode_images)


def _shot_regions(j: int, shot: Shot, names: list[str], width: int, height: int, token: int) -> dict[int, object]:
    regions: dict[int, object] = {}
    for name, spec in shot.regions:
        if name in shot.characters and name not in names:
            continue   # text_to_shot without a cast: the names are words of the script, no reference to mark
        if name not in shot.characters:
            raise DreamShotInputError(
                "character_boxes", f"shot {j + 1} gives a region for {name!r}, who is not listed in its characters.",
                f"add {name!r} to the shot's characters, or remove the region.")
        if isinstance(spec, torch.Tensor):
            spec = fit_mask(spec, width, height, "stretch")
        else:
            problem = box_problem(spec, width, height, token)
            if problem:
                coords = ", ".join(f"{float(v):g}" for v in spec)
                raise DreamShotInputError(
                    "character_boxes", f"shot {j + 1}: the box of {name!r} ({coords}) {problem}; boxes are refused, "
                    "not clipped.", f"give {BOX_FORMS}.")
        regions[names.index(name)] = spec
    return regions


@dataclass
class StorySequence:
    """A packed story ready to sample: what flows between ShotSequencePack and DreamShotSampler."""

    plan: StoryPlan
    latent: torch.Tensor          # [1, C, F, h, w], clean frames filled, others placeholders
    positive: torch.Tensor        # [1, n_segments * L, C_text]
    negative: torch.Tensor        # same shape: the negative prompt per shot, captions for refs
    segment_length: int
    vae: Any = field(default=None, repr=False)   # decodes the result; opaque here
    # Folded text (dreamshot.text_fold): per segment, the zero rows of the unfolded prompt encoding
    # that its trailing zero rows stand for. None: the contexts are used as they are (no key bias).
    positive_zero_rows: tuple[int, ...] | None = None
    negative_zero_rows: tuple[int, ...] | None = None

    @property
    def layout(self) -> StoryLayout:
        return self.plan.layout

    @property
    def num_segments(self) -> int:
        return len(self.plan.prompts)

    def denoise_mask(self) -> torch.Tensor:
        """[1, 1, F, h, w]: 1 = generate, 0 = keep (latent resolution, so no interpolation)."""
        lay = self.layout
        values = torch.tensor(lay.denoise_mask_values(), dtype=torch.float32)
        return values.view(1, 1, -1, 1, 1).expand(1, 1, lay.num_latent_frames,
                                                  lay.latent_height, lay.latent_width).contiguous()


def encode_story(plan: StoryPlan, vae: VideoVAE, encode_text: Callable[[str], torch.Tensor],
                 negative_prompt: str = "") -> StorySequence:
    """Run the VAE and the text encoder: the packed latent and the per-segment contexts.

    ``encode_text(text) -> [1, L, C]``. Each distinct text is encoded once. ``negative_prompt`` is the
    negative text of every shot without its own (``Shot.negative_prompt``). The contexts are folded
    (dreamshot.text_fold): each segment keeps its non-zero rows and as few zero rows as the longest
    segment needs, with the counts that keep the attention exactly that of the padded prompts.
    """
    latent = pack_latent(vae, plan.layout, plan.ref_images, plan.images_to_encode())
    cache: dict[str, torch.Tensor] = {}

    def enc(text: str) -> torch.Tensor:
        if text not in cache:
            cache[text] = encode_text(text)
        return cache[text]

    n_shots = plan.layout.num_shots
    positive_parts = [enc(p) for p in plan.prompts]
    # Negative: each shot's own negative prompt, else the pack's, in its shot segment; reference
    # captions unchanged, so CFG pushes only on the shots' text.
    negative_parts = [enc(s.negative_prompt.strip() or negative_prompt) for s in plan.shots] + positive_parts[n_shots:]
    text = fold_story_text(positive_parts, negative_parts, plan.layout.num_tokens)
    return StorySequence(plan=plan, latent=latent, positive=text.positive, negative=text.negative,
                         segment_length=text.segment_length, vae=vae, positive_zero_rows=text.positive_zero_rows,
                         negative_zero_rows=text.negative_zero_rows)


def fold_story_text(positive_parts: Sequence[torch.Tensor], negative_parts: Sequence[torch.Tensor],
                    num_tokens: int) -> FoldedText:
    """Positive and negative prompt encodings [1, L_i, C] (one per segment) -> the folded contexts,
    exactly equivalent to the unfolded ones: pad_segments of each to the longest prompt (+1 where
    n * length would equal the image-token count: the attention hook tells self- from
    cross-attention by key length). Positive and negative share one segment length so ComfyUI
    batches them together."""
    unfolded = max(p.shape[1] for p in list(positive_parts) + list(negative_parts))
    if unfolded * len(positive_parts) == num_tokens:
        unfolded += 1
    return fold_text([split_zero_rows(p, unfolded) for p in positive_parts],
                     [split_zero_rows(p, unfolded) for p in negative_parts], avoid_length=num_tokens)


def fold_chunk_text(positive: Sequence[TextSegment], negative: Sequence[TextSegment], segment_length: int,
                    num_tokens: int) -> FoldedText:
    """A pass over some of a story's segments (long stories in chunks): the story's segments
    (text_fold.context_segments) folded again for a pass of ``num_tokens`` image tokens, at least as
    long as the story's (so a chunk's segments are the story's rows), exactly equivalent to the
    story's unfolded segments re-padded as pad_segments does (+1 row where n * length would equal
    ``num_tokens``)."""
    unfolded = {s.rows.shape[1] + s.zero_rows for s in list(positive) + list(negative)}
    if len(unfolded) != 1:
        raise ValueError(f"segments stand for different unfolded lengths {sorted(unfolded)}")
    extra = 1 if unfolded.pop() * len(positive) == num_tokens else 0

    def more(segs):
        return [TextSegment(s.rows, s.zero_rows + extra) for s in segs]
    return fold_text(more(positive), more(negative), avoid_length=num_tokens, min_length=segment_length)


def unfold_story(sequence: StorySequence) -> StorySequence:
    """The same story with the contexts padded as before folding (no key bias): for tests and for
    comparing against the unfolded attention."""
    from dataclasses import replace

    if sequence.positive_zero_rows is None:
        return sequence
    pos = unfold_context(sequence.positive, sequence.positive_zero_rows)
    neg = unfold_context(sequence.negative, sequence.negative_zero_rows)
    return replace(sequence, positive=pos, negative=neg, segment_length=pos.shape[1] // sequence.num_segments,
                   positive_zero_rows=None, negative_zero_rows=None)
