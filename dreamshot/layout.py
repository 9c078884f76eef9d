"""Where every reference and shot lives in the packed latent and in the DiT's token sequence.

The packed latent is [refs, shots] on the time axis:

- each reference image is VAE-encoded alone, one latent frame each (frames 0..K-1);
- the shots are encoded as ONE video. The Wan VAEs (2.1 and 2.2) compress time 4x causally in
  chunks of 1, 4, 4, ... pixel frames, so a shot repeated T times (T a multiple of 4) fills T/4
  latent frames exactly. The first chunk holds a single pixel frame, so shot 0 is repeated T-3
  times (for the paper's T=4: once, "the first shot is not repeated").

After the DiT's patchify (Wan: (1, 2, 2)), latent frame f owns tokens [f*P, (f+1)*P) with
P = (latent_h/2) * (latent_w/2): Wan flattens tokens frame-major.

What differs between backbones (latent channels, VAE compression, patch size) is a ``Geometry``,
read from ComfyUI's VAE and model by ``comfy_bridge.geometry``; a layout without one is Wan2.1's
(``WAN21``), the geometry every saved story and test before Wan2.2 assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DreamShotInputError


@dataclass(frozen=True)
class Geometry:
    """What the backbone fixes about the packed latent.

    Args:
        latent_channels: channels of a latent frame (the VAE's and the DiT's latent format).
        spatial: VAE spatial compression (pixels per latent cell, each way).
        temporal: VAE time compression (pixel frames per latent frame after the first).
        patch: the DiT's patchify (time, height, width) in latent cells.
        name: what the user loaded, for messages.
    """

    latent_channels: int = 16
    spatial: int = 8
    temporal: int = 4
    patch: tuple[int, int, int] = (1, 2, 2)
    name: str = "Wan2.1"

    @property
    def pixel_multiple_h(self) -> int:
        return self.spatial * self.patch[1]

    @property
    def pixel_multiple_w(self) -> int:
        return self.spatial * self.patch[2]

    @property
    def pixel_multiple(self) -> int:
        """The side of one image token in pixels (both ways for Wan's square patches)."""
        return max(self.pixel_multiple_h, self.pixel_multiple_w)


WAN21 = Geometry()
# Wan2.1's values, kept as names for the code that plans without a model (defaults, messages).
VAE_TIME_COMPRESSION = WAN21.temporal
VAE_SPATIAL_COMPRESSION = WAN21.spatial
PATCH_SIZE = WAN21.patch
PIXEL_MULTIPLE = WAN21.pixel_multiple  # 16
# Wan2.1 was trained on 81-frame clips = 21 latent frames; more is possible but untested.
DEFAULT_MAX_LATENT_FRAMES = 21


def check_resolution(width: int, height: int, geometry: Geometry = WAN21) -> None:
    for name, value, multiple, patch in (("width", width, geometry.pixel_multiple_w, geometry.patch[2]),
                                         ("height", height, geometry.pixel_multiple_h, geometry.patch[1])):
        if value < multiple or value % multiple:
            lower = max(multiple, value - value % multiple)
            raise DreamShotInputError(
                name,
                f"{value} is not a positive multiple of {multiple} "
                f"({geometry.name}'s VAE downsamples by {geometry.spatial}, then patchifies by {patch}).",
                f"use {lower} or {lower + multiple}.",
            )


def check_repeat(repeat: int, geometry: Geometry = WAN21) -> None:
    t = geometry.temporal
    if repeat < 1:
        raise DreamShotInputError(
            "repeat", f"T={repeat} must be at least 1.",
            f"use T={t} (one latent frame per shot, as in the paper).")
    if repeat % t:
        raise DreamShotInputError(
            "repeat",
            f"T={repeat} is not a multiple of the Wan-VAE time compression ({t}): "
            "a shot would share latent frames with its neighbours.",
            f"use T={t} or {2 * t}.")


@dataclass(frozen=True)
class StoryLayout:
    """K reference frames then S shots of `repeat` pixel frames each.

    Args:
        num_refs: K, reference latent frames placed first.
        num_shots: S, storyboard shots.
        width, height: shot (and reference) size in pixels, multiples of the geometry's token side
            (16 for Wan2.1, 32 for Wan2.2-TI2V-5B).
        repeat: T, pixel frames per shot before VAE encoding (multiple of 4).
        ref_characters: for each reference frame, the index of its character.
        clean_shots: for each shot, True when it is given (kept clean) rather than generated.
        geometry: the backbone's (``Geometry``); Wan2.1's by default.
    """

    num_refs: int
    num_shots: int
    width: int
    height: int
    repeat: int = VAE_TIME_COMPRESSION
    ref_characters: tuple[int, ...] = ()
    clean_shots: tuple[bool, ...] = field(default=())
    geometry: Geometry = WAN21

    def __post_init__(self):
        if self.num_shots < 1:
            raise DreamShotInputError("shots", "no shots were given.",
                                      "connect at least one Shot Script.")
        if self.num_refs < 0:
            raise ValueError("num_refs must be >= 0")
        check_resolution(self.width, self.height, self.geometry)
        check_repeat(self.repeat, self.geometry)
        if not self.ref_characters:
            object.__setattr__(self, "ref_characters", tuple(range(self.num_refs)))
        if len(self.ref_characters) != self.num_refs:
            raise ValueError("ref_characters needs one entry per reference frame")
        if not self.clean_shots:
            object.__setattr__(self, "clean_shots", (False,) * self.num_shots)
        if len(self.clean_shots) != self.num_shots:
            raise ValueError("clean_shots needs one entry per shot")

    # -- latent grid ---------------------------------------------------------------------
    @property
    def latent_height(self) -> int:
        return self.height // self.geometry.spatial

    @property
    def latent_width(self) -> int:
        return self.width // self.geometry.spatial

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of one latent frame's image tokens, row-major as Wan flattens a frame."""
        return self.latent_height // self.geometry.patch[1], self.latent_width // self.geometry.patch[2]

    @property
    def frames_per_shot(self) -> int:
        return self.repeat // self.geometry.temporal

    @property
    def num_latent_frames(self) -> int:
        return self.num_refs + self.num_shots * self.frames_per_shot

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.token_grid
        return rows * cols

    @property
    def num_tokens(self) -> int:
        return self.num_latent_frames * self.tokens_per_frame

    def ref_frame(self, ref: int) -> int:
        return ref

    def shot_frames(self, shot: int) -> range:
        start = self.num_refs + shot * self.frames_per_shot
        return range(start, start + self.frames_per_shot)

    def frame_token_span(self, frame: int) -> tuple[int, int]:
        p = self.tokens_per_frame
        return frame * p, (frame + 1) * p

    def ref_token_span(self, ref: int) -> tuple[int, int]:
        return self.frame_token_span(self.ref_frame(ref))

    def shot_token_span(self, shot: int) -> tuple[int, int]:
        frames = self.shot_frames(shot)
        return self.frame_token_span(frames[0])[0], self.frame_token_span(frames[-1])[1]

    def frame_owner(self, frame: int) -> tuple[str, int]:
        """("ref", i) or ("shot", j) for a latent frame."""
        if not 0 <= frame < self.num_latent_frames:
            raise IndexError(frame)
        if frame < self.num_refs:
            return "ref", frame
        return "shot", (frame - self.num_refs) // self.frames_per_shot

    # -- pixel video of the shots --------------------------------------------------------
    def shot_repeats(self, shot: int) -> int:
        """Pixel frames of a shot in the encoded video (shot 0 fills the 1-frame first chunk)."""
        return self.repeat - (self.geometry.temporal - 1) if shot == 0 else self.repeat

    @property
    def num_video_frames(self) -> int:
        return sum(self.shot_repeats(j) for j in range(self.num_shots))

    def keyframe_index(self, shot: int) -> int:
        """Index of a shot's keyframe in the decoded video: the last frame of its run."""
        return sum(self.shot_repeats(j) for j in range(shot + 1)) - 1

    # -- which frames are clean -----------------------------------------------------------
    @property
    def generated_shots(self) -> tuple[int, ...]:
        return tuple(j for j, clean in enumerate(self.clean_shots) if not clean)

    def frame_is_clean(self, frame: int) -> bool:
        kind, index = self.frame_owner(frame)
        return kind == "ref" or self.clean_shots[index]

    def denoise_mask_values(self) -> list[float]:
        """Per latent frame: 1.0 = generate, 0.0 = keep exactly (ComfyUI's noise_mask convention)."""
        return [0.0 if self.frame_is_clean(f) else 1.0 for f in range(self.num_latent_frames)]

    def check_frame_budget(self, max_latent_frames: int) -> None:
        if self.num_latent_frames > max_latent_frames:
            raise DreamShotInputError(
                "shots",
                f"{self.num_refs} reference frame(s) + {self.num_shots} shot(s) x {self.frames_per_shot} "
                f"= {self.num_latent_frames} latent frames, more than the limit of {max_latent_frames} "
                f"(Wan2.1 was trained on {4 * (DEFAULT_MAX_LATENT_FRAMES - 1) + 1}-frame clips = "
                f"{DEFAULT_MAX_LATENT_FRAMES} latent frames).",
                "split the story into several passes (fewer shots or references per pass), "
                "or raise max_latent_frames if you accept the quality and memory cost.")
