"""The animatic: storyboard keyframes played in time, written as an H.264 MP4 one frame at a time.

Each shot holds its keyframe for its duration (``shot_timing.shot_starts`` decides the frames, so the
video has exactly round(sum(durations) x fps) frames). Optional: crossfades centred on the cuts, the
shot's camera move rendered on the still (a slow push in / pull out, pan or tilt), the shot number,
a caption (dialogue, else action, else prompt) and the timecode burned in, and an audio track.

Memory: frames are rendered and encoded one at a time; at most two shots' pictures (the two sides of
a crossfade), one frame and the encoder's own buffers are alive, whatever the story's length.

Pure Pillow + numpy + PyAV (``av``, which ComfyUI ships); no comfy import.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import DreamShotInputError
from .sheet import _clean_text, _font, _to_pil, publish_new, wrap_text
from .shot_timing import CAMERA_MOVES, DEFAULT_DURATION, check_fps, shot_starts, timecode

log = logging.getLogger("DreamShot")

FITS = ("pad", "crop")             # pad: whole board, black bars; crop: fill the frame, centre-cropped
TRANSITIONS = ("cut", "crossfade")
MAX_SIZE = 7680
BAND_ALPHA = 170                   # the caption band's opacity, out of 255


@dataclass(frozen=True)
class Board:
    """One shot of the animatic: its keyframe [H, W, 3] in 0..1 (a view, not copied), how long it lasts,
    its camera move and the text that can be burned in."""

    image: torch.Tensor
    duration: float
    camera: str = "static"
    caption: str = ""
    label: str = ""                # the burned-in shot number; "" = its position, 1-based


@dataclass(frozen=True)
class AnimaticSettings:
    fps: float = 24.0
    width: int = 0                 # 0: the keyframes' size
    height: int = 0
    fit: str = "pad"
    transition: str = "cut"
    transition_seconds: float = 0.5
    shot_numbers: bool = True
    captions: bool = False
    timecode: bool = True
    camera_moves: bool = True
    move_amount: float = 0.12      # a move travels / zooms by this fraction of the frame
    crf: int = 18                  # x264 quality (0 best .. 51 worst)
    preset: str = "veryfast"       # x264 speed preset


@dataclass(frozen=True)
class AnimaticInfo:
    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    starts: tuple[int, ...]        # first frame of each shot, then the total
    audio: bool


def output_size(settings: AnimaticSettings, keyframe: torch.Tensor) -> tuple[int, int]:
    """(width, height): the settings', or the keyframe's; H.264 4:2:0 needs both even."""
    width = settings.width or int(keyframe.shape[1])
    height = settings.height or int(keyframe.shape[0])
    if not (settings.width or settings.height):
        width, height = width - width % 2, height - height % 2
    for name, value in (("width", width), ("height", height)):
        if value < 16 or value > MAX_SIZE or value % 2:
            raise DreamShotInputError(name, f"{value} is not an even number from 16 to {MAX_SIZE}.",
                                      "use an even size, e.g. 1280 x 720 (0 = the keyframes' size).")
    return width, height


def check_settings(settings: AnimaticSettings) -> Fraction:
    rate = check_fps(settings.fps)
    if settings.fit not in FITS:
        raise DreamShotInputError("fit", f"unknown fit {settings.fit!r}.", f"use one of: {', '.join(FITS)}.")
    if settings.transition not in TRANSITIONS:
        raise DreamShotInputError("transition", f"unknown transition {settings.transition!r}.",
                                  f"use one of: {', '.join(TRANSITIONS)}.")
    if not 0 <= settings.transition_seconds <= 60:
        raise DreamShotInputError("transition_seconds", f"{settings.transition_seconds} s is not from 0 to 60.",
                                  "use e.g. 0.5.")
    if not 0 <= settings.move_amount <= 1:
        raise DreamShotInputError("move_amount", f"{settings.move_amount} is not from 0 to 1.", "use e.g. 0.12.")
    return rate


def fit_board(image: torch.Tensor, width: int, height: int, fit: str = "pad") -> Image.Image:
    """A keyframe [H, W, C] in 0..1 as a width x height RGB picture: unchanged pixels when the size
    matches, else scaled (Lanczos) to fit with black bars ("pad") or to fill, centre-cropped ("crop")."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DreamShotInputError("keyframes", f"expected [H, W, 3] keyframes, got {tuple(image.shape)}.",
                                  "connect DreamShot Sampler's keyframes.")
    pic = _to_pil(image)
    if pic.size == (width, height):
        return pic
    w, h = pic.size
    scale = (min if fit == "pad" else max)(width / w, height / h)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    if fit == "crop":
        rw, rh = max(rw, width), max(rh, height)
    pic = pic.resize((rw, rh), Image.LANCZOS)
    if fit == "crop":
        left, top = (rw - width) // 2, (rh - height) // 2
        return pic.crop((left, top, left + width, top + height))
    out = Image.new("RGB", (width, height), (0, 0, 0))
    out.paste(pic, ((width - rw) // 2, (height - rh) // 2))
    return out


def _ease(p: float) -> float:
    """Slow in, slow out (smoothstep), as camera moves on a still are usually keyed."""
    return p * p * (3 - 2 * p)


def move_window(camera: str, p: float, amount: float, width: int, height: int) -> tuple[float, float, float]:
    """(zoom, x0, y0): the part of the still shown at progress p in 0..1 of the shot, a window of
    width/zoom x height/zoom whose top-left corner is (x0, y0). static = the whole still."""
    if camera == "static" or amount <= 0:
        return 1.0, 0.0, 0.0
    e = _ease(min(max(p, 0.0), 1.0))
    if camera in ("push in", "pull out"):
        zoom = 1 + amount * (e if camera == "push in" else 1 - e)
        return zoom, (width - width / zoom) / 2, (height - height / zoom) / 2
    zoom = 1 + amount
    spare_x, spare_y = width - width / zoom, height - height / zoom
    if camera == "pan right":      # the camera turns right: the window travels left -> right
        return zoom, spare_x * e, spare_y / 2
    if camera == "pan left":
        return zoom, spare_x * (1 - e), spare_y / 2
    if camera == "tilt down":
        return zoom, spare_x / 2, spare_y * e
    if camera == "tilt up":
        return zoom, spare_x / 2, spare_y * (1 - e)
    raise DreamShotInputError("camera", f"unknown camera move {camera!r}.", f"use one of: {', '.join(CAMERA_MOVES)}.")


class _Dresser:
    """Burned-in text: the shot number (top left), the timecode (top right) and the caption (bottom,
    on a dark band), sized from the frame height."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.size = max(10, round(height / 24))
        self.font = _font(self.size)
        self.pad = max(3, self.size // 3)

    def _box(self, draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, right: bool = False) -> None:
        w = round(self.font.getlength(text)) + 2 * self.pad
        h = round(self.size * 1.2) + self.pad
        x, y = (xy[0] - w, xy[1]) if right else xy
        draw.rectangle([x, y, x + w, y + h], fill=(0, 0, 0))
        draw.text((x + self.pad, y + self.pad // 2), text, font=self.font, fill=(255, 255, 255))

    def shot_overlay(self, label: str, caption: str) -> list[tuple[Image.Image, Image.Image, tuple[int, int]]]:
        """The shot's own text as patches (RGB, mask, top-left corner) to paste on its frames; only the
        parts that carry text, so pasting them on every frame of a moving shot stays cheap."""
        if not label and not caption:
            return []
        rgb = Image.new("RGB", (self.width, self.height))
        mask = Image.new("L", (self.width, self.height), 0)
        draw, mdraw = ImageDraw.Draw(rgb), ImageDraw.Draw(mask)
        if label:
            for d, fill in ((draw, None), (mdraw, 255)):
                w = round(self.font.getlength(label)) + 2 * self.pad
                d.rectangle([self.pad, self.pad, self.pad + w, self.pad + round(self.size * 1.2) + self.pad],
                            fill=fill if fill is not None else (0, 0, 0))
            draw.text((2 * self.pad, self.pad + self.pad // 2), label, font=self.font, fill=(255, 255, 255))
            mdraw.text((2 * self.pad, self.pad + self.pad // 2), label, font=self.font, fill=255)
        lines = wrap_text(_clean_text(caption, self.font), self.font, self.width - 6 * self.pad, 2) if caption else []
        if lines:
            line_h = round(self.size * 1.25)
            top = self.height - self.pad - line_h * len(lines) - self.pad
            mdraw.rectangle([0, top, self.width, self.height], fill=BAND_ALPHA)
            y = top + self.pad // 2
            for line in lines:
                x = (self.width - round(self.font.getlength(line))) // 2
                draw.text((x, y), line, font=self.font, fill=(255, 255, 255))
                mdraw.text((x, y), line, font=self.font, fill=255)
                y += line_h
        patches = []
        for top, bottom in ((0, self.height // 2), (self.height // 2, self.height)):
            box = mask.crop((0, top, self.width, bottom)).getbbox()
            if box is not None:
                box = (box[0], box[1] + top, box[2], box[3] + top)
                patches.append((rgb.crop(box), mask.crop(box), box[:2]))
        return patches

    def stamp_timecode(self, pic: Image.Image, text: str) -> None:
        self._box(ImageDraw.Draw(pic), (self.width - self.pad, self.pad), text, right=True)


class _Shots:
    """Each shot's picture at the output size, made when first needed and dropped when the story has
    moved past it: at most two (the sides of a crossfade) are alive."""

    def __init__(self, boards: Sequence[Board], settings: AnimaticSettings, width: int, height: int,
                 counts: Sequence[int]):
        self.boards, self.settings, self.width, self.height, self.counts = boards, settings, width, height, counts
        self.dresser = _Dresser(width, height)
        self._cache: dict[int, tuple[Image.Image, list]] = {}

    def _prepared(self, j: int) -> tuple[Image.Image, list]:
        if j not in self._cache:
            for old in [k for k in self._cache if k < j - 1]:
                del self._cache[old]
            board, s = self.boards[j], self.settings
            still = fit_board(board.image, self.width, self.height, s.fit)
            overlay = self.dresser.shot_overlay((board.label or str(j + 1)) if s.shot_numbers else "",
                                                board.caption if s.captions else "")
            if not self.moves(j):     # text once on the still; a moving shot gets it on every frame
                for rgb, mask, at in overlay:
                    still.paste(rgb, at, mask)
                overlay = []
            self._cache[j] = (still, overlay)
        return self._cache[j]

    def moves(self, j: int) -> bool:
        return self.settings.camera_moves and self.boards[j].camera != "static" and self.settings.move_amount > 0

    def picture(self, j: int, i: int) -> Image.Image:
        """Shot j's i-th frame (i may run past either end inside a crossfade: the still is held)."""
        still, overlay = self._prepared(j)
        if not self.moves(j):
            return still
        n = self.counts[j]
        p = min(max(i, 0), n - 1) / (n - 1) if n > 1 else 0.0
        zoom, x0, y0 = move_window(self.boards[j].camera, p, self.settings.move_amount, self.width, self.height)
        # resize of a sub-pixel box: the window scaled to the frame (3x faster than an affine transform)
        pic = still.resize((self.width, self.height), Image.BILINEAR,
                           box=(x0, y0, x0 + self.width / zoom, y0 + self.height / zoom))
        for rgb, mask, at in overlay:
            pic.paste(rgb, at, mask)
        return pic


def _crossfade_frames(counts: Sequence[int], rate: Fraction, seconds: float) -> list[int]:
    """Frames of each crossfade (one per cut), centred on the cut; each fits inside both its shots."""
    want = round(Fraction(repr(float(seconds))) * rate)
    return [min(want, counts[j], counts[j + 1]) for j in range(len(counts) - 1)]


def render_frames(boards: Sequence[Board], settings: AnimaticSettings = AnimaticSettings()
                  ) -> Iterator[np.ndarray]:
    """The animatic's frames, [H, W, 3] uint8, one at a time, in order."""
    rate = check_settings(settings)
    if not boards:
        raise DreamShotInputError("keyframes", "no shots to play.", "connect the storyboard's keyframes.")
    width, height = output_size(settings, boards[0].image)
    starts = shot_starts([b.duration for b in boards], rate)
    counts = [b - a for a, b in zip(starts, starts[1:])]
    shots = _Shots(boards, settings, width, height, counts)
    fades = _crossfade_frames(counts, rate, settings.transition_seconds) if settings.transition == "crossfade" \
        else [0] * (len(boards) - 1)
    # per cut c (between shot c and c + 1): the frames [lo, lo + n) blend the two shots
    windows = [(starts[c + 1] - n // 2, n) for c, n in enumerate(fades)]
    last_key, last = None, None
    j = 0
    for f in range(starts[-1]):
        while f >= starts[j + 1]:
            j += 1
        i = f - starts[j]
        blend = None
        if j + 1 < len(boards) and windows[j][1] and f >= windows[j][0]:          # fading out into j + 1
            lo, n = windows[j]
            blend = (j, i, j + 1, f - starts[j + 1], (f - lo + 1) / (n + 1))
        elif j > 0 and windows[j - 1][1] and f < windows[j - 1][0] + windows[j - 1][1]:   # fading in from j - 1
            lo, n = windows[j - 1]
            blend = (j - 1, f - starts[j - 1], j, i, (f - lo + 1) / (n + 1))
        if blend is None:
            pic = shots.picture(j, i)
            key = (j, None) if not shots.moves(j) else None
        else:
            a, ia, b, ib, alpha = blend
            pic = Image.blend(shots.picture(a, ia), shots.picture(b, ib), alpha)
            key = None
        if settings.timecode:
            pic = pic.copy() if key is not None else pic
            shots.dresser.stamp_timecode(pic, timecode(f, rate))
            key = None
        if key is None or key != last_key:
            last = np.asarray(pic)
        last_key = key
        yield last


def _audio_source(audio, duration: float):
    """(waveform [C, N] float32 numpy, sample rate, layout) of a ComfyUI AUDIO {"waveform": [B, C, N],
    "sample_rate"}, cut to the video's duration; the first item of a batch, at most two channels."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise DreamShotInputError("audio", "expected ComfyUI's AUDIO (a waveform and a sample rate).",
                                  "connect a Load Audio node.")
    wave, rate = audio["waveform"], int(audio["sample_rate"])
    if not isinstance(wave, torch.Tensor) or wave.ndim != 3 or wave.shape[1] < 1 or rate < 1:
        raise DreamShotInputError("audio", f"the waveform has shape {tuple(getattr(wave, 'shape', ()))}, "
                                  "expected [batch, channels, samples].", "connect a Load Audio node.")
    if wave.shape[1] > 2:
        log.warning("DreamShot animatic: the audio has %d channels; the first two are kept (stereo).", wave.shape[1])
    samples = min(int(wave.shape[2]), round(duration * rate))
    return wave[0, :2, :samples].float().clamp(-1, 1).cpu().numpy(), rate, "mono" if wave.shape[1] == 1 else "stereo"


def write_animatic(path: str | Path, boards: Sequence[Board], settings: AnimaticSettings = AnimaticSettings(),
                   audio=None, on_frame: Callable[[int, int], None] | None = None,
                   overwrite: bool = False) -> AnimaticInfo:
    """Render ``boards`` into ``path`` (.mp4, H.264 yuv420p, AAC audio when ``audio`` is given).

    Streams: each frame is encoded as soon as it is drawn. The file is written under a temporary name
    in the same folder and appears complete under ``path``, which is never overwritten unless
    ``overwrite`` (FileExistsError). ``on_frame(done, total)`` is called after each frame (progress,
    cancellation: an exception it raises stops the writing and leaves nothing behind).
    """
    import av

    path = Path(path)
    rate = check_settings(settings)
    if not boards:
        raise DreamShotInputError("keyframes", "no shots to play.", "connect the storyboard's keyframes.")
    width, height = output_size(settings, boards[0].image)
    starts = shot_starts([b.duration for b in boards], rate)
    total = starts[-1]
    sound = _audio_source(audio, total / rate) if audio is not None else None
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists")
    fd, tmp = tempfile.mkstemp(prefix=".dreamshot-", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as out:
            video = out.add_stream("libx264", rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"crf": str(int(settings.crf)), "preset": settings.preset}
            astream, sent = None, 0
            if sound is not None:
                astream = out.add_stream("aac", rate=sound[1], layout=sound[2])
            shot_start = set(starts)
            for f, frame in enumerate(render_frames(boards, settings)):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts = f
                vf.time_base = 1 / rate
                if f in shot_start:         # a key frame at every cut: editors seek and cut there exactly
                    vf.pict_type = av.video.frame.PictureType.I
                out.mux(video.encode(vf))
                if astream is not None:     # interleaved: the sound up to the end of this frame
                    upto = min(sound[0].shape[1], round((f + 1) * sound[1] / rate))
                    if upto > sent:
                        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound[0][:, sent:upto]), format="fltp",
                                                        layout=sound[2])
                        af.sample_rate, af.pts, af.time_base = sound[1], sent, Fraction(1, sound[1])
                        out.mux(astream.encode(af))
                        sent = upto
                if on_frame is not None:
                    on_frame(f + 1, total)
            out.mux(video.encode(None))
            if astream is not None:
                out.mux(astream.encode(None))
        if overwrite:
            os.replace(tmp, path)
        elif not publish_new(tmp, str(path)):
            raise FileExistsError(f"{path} exists")
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return AnimaticInfo(path, total, rate, width, height, tuple(starts), sound is not None)


def caption_of(shot) -> str:
    """What the animatic burns in under a shot: its dialogue, else its action, else its prompt."""
    return shot.dialogue or shot.action or shot.prompt


def boards_for(keyframes: torch.Tensor, shots=None, duration: float = DEFAULT_DURATION) -> list[Board]:
    """One Board per keyframe [S, H, W, C]: timed, moved and captioned by ``shots`` (dreamshot.story.Shot,
    one per keyframe), or ``duration`` seconds each, static and uncaptioned, without them."""
    if shots is None:
        return [Board(keyframes[j], duration) for j in range(keyframes.shape[0])]
    if len(shots) != keyframes.shape[0]:
        raise DreamShotInputError("keyframes", f"{keyframes.shape[0]} keyframe(s) for {len(shots)} shot(s).",
                                  "connect the keyframes made from these shots.")
    return [Board(keyframes[j], s.duration, s.camera, caption_of(s)) for j, s in enumerate(shots)]
