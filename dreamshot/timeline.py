"""The editorial timeline: the storyboard as a cut an editor opens in Premiere, Resolve, Final Cut or Avid.

Built with OpenTimelineIO (``opentimelineio``): one clip per shot on the "Boards" track, named "Shot N",
its keyframe PNG as media, its duration cut at the animatic's frames (``shot_timing.shot_starts``), the
prompt, cast, size, camera, action and dialogue as metadata and its dialogue (else action) as a marker;
with an animatic, a second video track "Animatic" cut into the same shots from the MP4 (and its sound
on an audio track). Written as ``.otio`` always, ``.edl`` (CMX 3600, the Boards track: an EDL holds one
video track) when ``otio-cmx3600-adapter`` is installed and ``.xml`` (Final Cut Pro 7 XML, which
Premiere and Resolve import) when ``otio-fcp-adapter`` is; ``available_formats`` says which.

Files: ``<stem>_<counter>_.otio/.edl/.xml`` and the media folder ``<stem>_<counter>_/`` (shot_01.png,
..., animatic.mp4) beside them; media paths in the timelines are relative to the timeline's folder,
so the folder moves as a whole. Nothing is overwritten; a failed export leaves nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import torch

from .atomic import atomic_write
from .errors import DreamShotInputError
from .sheet import _to_pil, next_counter, publish_new, safe_stem, write_temp
from .shot_timing import DEFAULT_DURATION, shot_starts

log = logging.getLogger("DreamShot")

# format -> (OTIO adapter, the PyPI package that brings it)
FORMATS = {"otio": ("otio_json", "opentimelineio"), "edl": ("cmx_3600", "otio-cmx3600-adapter"),
           "xml": ("fcp_xml", "otio-fcp-adapter")}
INSTALL = "pip install opentimelineio otio-cmx3600-adapter otio-fcp-adapter"


def _otio():
    try:
        import opentimelineio
    except ImportError:
        raise DreamShotInputError("timeline", "OpenTimelineIO is not installed.",
                                  f"install it in ComfyUI's Python: {INSTALL} (requirements.txt lists it).") from None
    return opentimelineio


def available_formats() -> dict[str, bool]:
    """Which timeline files can be written here: {"otio": ..., "edl": ..., "xml": ...}."""
    try:
        otio = _otio()
    except DreamShotInputError:
        return {fmt: False for fmt in FORMATS}
    adapters = {a.name for a in otio.plugins.ActiveManifest().adapters}
    return {fmt: name in adapters for fmt, (name, _) in FORMATS.items()}


@dataclass(frozen=True)
class TimelineShot:
    """One shot for the timeline: its keyframe [H, W, 3] in 0..1, duration in seconds, and what an
    editor reads about it (metadata under "dreamshot"; ``marker`` becomes a marker at its first frame)."""

    image: torch.Tensor
    duration: float
    name: str = ""                 # "" = "Shot N"
    marker: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TimelineFiles:
    timelines: dict[str, Path]    # format -> file
    media: Path                    # the media folder
    frames: int
    missing: tuple[str, ...]       # formats not written: their adapter is not installed


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def build_timeline(title: str, shots: Sequence[TimelineShot], fps: Fraction, images: Sequence[str],
                   animatic: str | None = None, animatic_audio: bool = False):
    """The OTIO Timeline (media paths as given: ``images`` one per shot, ``animatic`` the MP4)."""
    otio = _otio()
    rate = float(fps)
    starts = shot_starts([s.duration for s in shots], fps)

    def rt(frames: int):
        return otio.opentime.RationalTime(frames, rate)

    def span(start: int, frames: int):
        return otio.opentime.TimeRange(rt(start), rt(frames))

    timeline = otio.schema.Timeline(name=_one_line(title) or "Storyboard", global_start_time=rt(0))
    timeline.metadata["dreamshot"] = {"fps": rate, "frames": starts[-1], "shots": len(shots)}
    boards = otio.schema.Track(name="Boards", kind=otio.schema.TrackKind.Video)
    moving = otio.schema.Track(name="Animatic", kind=otio.schema.TrackKind.Video) if animatic else None
    for j, (shot, image) in enumerate(zip(shots, images)):
        name = _one_line(shot.name) or f"Shot {j + 1}"
        frames = starts[j + 1] - starts[j]
        clip = otio.schema.Clip(name=name, source_range=span(0, frames),
                                media_reference=otio.schema.ExternalReference(target_url=image,
                                                                              available_range=span(0, frames)))
        clip.metadata["dreamshot"] = {"shot": j + 1, "duration_seconds": float(shot.duration), **shot.metadata}
        if _one_line(shot.marker):
            clip.markers.append(otio.schema.Marker(name=_one_line(shot.marker), marked_range=span(0, 0),
                                                   color=otio.schema.MarkerColor.YELLOW))
        boards.append(clip)
        if moving is not None:
            moving.append(otio.schema.Clip(
                name=name, source_range=span(starts[j], frames),
                media_reference=otio.schema.ExternalReference(target_url=animatic, available_range=span(0, starts[-1]))))
    timeline.tracks.append(boards)
    if moving is not None:
        timeline.tracks.append(moving)
        if animatic_audio:
            sound = otio.schema.Track(name="Animatic audio", kind=otio.schema.TrackKind.Audio)
            sound.append(otio.schema.Clip(name="Animatic", source_range=span(0, starts[-1]),
                                          media_reference=otio.schema.ExternalReference(
                                              target_url=animatic, available_range=span(0, starts[-1]))))
            timeline.tracks.append(sound)
    return timeline


def _serialise(timeline, fmt: str) -> bytes:
    otio = _otio()
    if fmt == "edl":     # CMX 3600 holds one video track: the boards
        timeline = timeline.deepcopy()
        for track in [t for t in timeline.tracks if t.name != "Boards"]:
            timeline.tracks.remove(track)
    return otio.adapters.write_to_string(timeline, FORMATS[fmt][0]).encode("utf-8")


def export_timeline(out_dir: str | Path, stem: str, title: str, shots: Sequence[TimelineShot], fps: float | Fraction,
                    write_animatic: Callable[[Path], bool] | None = None, root: str | Path | None = None,
                    max_tries: int = 10000) -> TimelineFiles:
    """Write the timeline files and their media into ``out_dir`` (inside ``root`` when given).

    ``write_animatic(path)``, when given, writes the animatic MP4 at ``path`` and returns whether it
    has sound. The first counter free for every file and the media folder is taken; the media
    folder is claimed first (exclusively), filled atomically, and the timeline files are published
    last, each only under a free name, so a timeline never points at missing media.
    """
    fps = Fraction(fps)
    if not stem or safe_stem(stem) != stem:
        raise DreamShotInputError("filename_prefix", f"{stem!r} is not a safe file name.",
                                  "use letters, digits, '-', '_' and '/' for subfolders.")
    out_dir = Path(out_dir)
    if root is not None:
        real, base = os.path.realpath(out_dir), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise DreamShotInputError("filename_prefix", f"{out_dir} is outside the output folder.",
                                      "save inside ComfyUI's output folder (no '..', no links out of it).")
    if not shots:
        raise DreamShotInputError("keyframes", "no shots for the timeline.", "connect the storyboard's keyframes.")
    formats = available_formats()
    if not formats["otio"]:
        _otio()      # raises with the install command
    written = [fmt for fmt, ok in formats.items() if ok]
    missing = tuple(fmt for fmt, ok in formats.items() if not ok)
    frames = shot_starts([s.duration for s in shots], fps)[-1]
    start = next_counter(str(out_dir), stem, tuple(f".{fmt}" for fmt in FORMATS) + ("",))
    for counter in range(start, start + max_tries):
        base = f"{stem}_{counter:05d}_"
        media = out_dir / base
        targets = {fmt: out_dir / f"{base}.{fmt}" for fmt in written}
        if any(os.path.lexists(p) for p in targets.values()):
            continue
        try:
            os.mkdir(media)          # exclusive: the folder is ours from here on
        except FileExistsError:
            continue
        published: list[Path] = []
        try:
            images = []
            for j, shot in enumerate(shots):
                name = f"shot_{j + 1:02d}.png"
                atomic_write(media / name, lambda tmp, im=shot.image: _to_pil(im).save(tmp, format="PNG"))
                images.append(f"{base}/{name}")
            animatic, audio = None, False
            if write_animatic is not None:
                audio = bool(write_animatic(media / "animatic.mp4"))
                animatic = f"{base}/animatic.mp4"
            timeline = build_timeline(title, shots, fps, images, animatic, audio)
            for fmt, target in targets.items():
                tmp = write_temp(str(out_dir), _serialise(timeline, fmt))
                try:
                    ok = publish_new(tmp, str(target))
                finally:
                    if os.path.lexists(tmp):
                        os.unlink(tmp)
                if not ok:
                    raise FileExistsError(target)
                published.append(target)
        except FileExistsError:       # lost a race for a name: free what was taken, try the next counter
            for p in published:
                os.unlink(p)
            shutil.rmtree(media, ignore_errors=True)
            continue
        except BaseException:
            for p in published:
                os.unlink(p)
            shutil.rmtree(media, ignore_errors=True)
            raise
        if missing:
            log.info("DreamShot timeline: %s not written (install %s)", ", ".join(f".{m}" for m in missing),
                     ", ".join(FORMATS[m][1] for m in missing))
        return TimelineFiles(targets, media, frames, missing)
    raise DreamShotInputError("filename_prefix", f"no free file name for {stem!r} after {max_tries} tries.",
                              "use another filename_prefix.")


def timeline_shots(keyframes: torch.Tensor, shots=None, duration: float = DEFAULT_DURATION) -> list[TimelineShot]:
    """One TimelineShot per keyframe [S, H, W, C], described by ``shots`` (dreamshot.story.Shot, one per
    keyframe), or ``duration`` seconds each without them."""
    if shots is None:
        return [TimelineShot(keyframes[j], duration) for j in range(keyframes.shape[0])]
    if len(shots) != keyframes.shape[0]:
        raise DreamShotInputError("keyframes", f"{keyframes.shape[0]} keyframe(s) for {len(shots)} shot(s).",
                                  "connect the keyframes made from these shots.")
    out = []
    for j, s in enumerate(shots):
        meta = {"prompt": s.prompt, "characters": list(s.characters)}
        meta.update({k: getattr(s, k) for k in ("shot_size", "camera", "action", "dialogue") if getattr(s, k)})
        out.append(TimelineShot(keyframes[j], s.duration, marker=s.dialogue or s.action, metadata=meta))
    return out
