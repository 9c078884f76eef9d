"""Shot captions: from a sidecar file next to the video, or from a captioner; never invented.

Sidecars (first found wins), for ``clip.mp4``:

- ``clip.captions.json``, either keyed by shot index (the detected shots, 0-based, as listed in
  ``records/videos/<video>.json`` after a run)::

      {"shots": {"0": "Mira waits at the bus stop.", "1": "Theo runs in the rain."}}

  or by time ranges in seconds::

      {"segments": [{"start": 0.0, "end": 4.2, "caption": "Mira waits at the bus stop."}]}

- ``clip.srt`` (SubRip): each cue's text is the caption of its time range.

A shot takes the caption of the time range covering its keyframe; where several do, the one
overlapping the shot most. A captioner is a callable ``captioner(image, info) -> str | None``
(``image``: the fitted keyframe, RGB uint8; ``info``: video, shot index, start/end seconds).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import DreamShotInputError
from .cuts import Shot


class Captioner(Protocol):
    def __call__(self, image: np.ndarray, info: dict) -> str | None:
        ...


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    caption: str


@dataclass
class SidecarCaptions:
    path: Path | None
    by_shot: dict[int, str]
    segments: list[Segment]

    def caption(self, shot: Shot, keyframe: int) -> str | None:
        if shot.index in self.by_shot:
            return self.by_shot[shot.index]
        t = (keyframe + 0.5) / shot.fps
        covering = [s for s in self.segments if s.start <= t < s.end]
        if not covering:
            return None
        best = max(covering, key=lambda s: min(s.end, shot.end_s) - max(s.start, shot.start_s))
        return best.caption


def sidecar_paths(video: Path) -> list[Path]:
    return [video.with_suffix(".captions.json"), video.with_suffix(".srt")]


def _bad(path: Path, problem: str) -> DreamShotInputError:
    return DreamShotInputError(str(path), problem, "see the caption formats in dreamshot/data/captions.py.")


def _parse_json(path: Path) -> SidecarCaptions:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"cannot read it as JSON ({e}).") from e
    if not isinstance(raw, dict) or not ({"shots", "segments"} & set(raw)):
        raise _bad(path, 'expected an object with "shots" and/or "segments".')
    by_shot: dict[int, str] = {}
    for k, v in (raw.get("shots") or {}).items():
        if not str(k).isdigit() or not isinstance(v, str):
            raise _bad(path, f'"shots" entry {k!r}: expected a shot index and a caption string.')
        by_shot[int(k)] = v.strip()
    segments = []
    for i, s in enumerate(raw.get("segments") or []):
        try:
            seg = Segment(float(s["start"]), float(s["end"]), str(s["caption"]).strip())
        except (KeyError, TypeError, ValueError) as e:
            raise _bad(path, f'"segments"[{i}]: expected {{"start": s, "end": s, "caption": text}} ({e}).') from e
        if seg.end <= seg.start:
            raise _bad(path, f'"segments"[{i}]: end {seg.end} is not after start {seg.start}.')
        segments.append(seg)
    return SidecarCaptions(path, by_shot, segments)


_SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{1,3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{1,3})")


def _parse_srt(path: Path) -> SidecarCaptions:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read it as UTF-8 text ({e}).") from e
    segments = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()):
        lines = block.strip().split("\n")
        for j, line in enumerate(lines):
            m = _SRT_TIME.search(line)
            if m:
                g = [int(x) for x in m.groups()]
                start = g[0] * 3600 + g[1] * 60 + g[2] + int(m.group(4).ljust(3, "0")) / 1000
                end = g[4] * 3600 + g[5] * 60 + g[6] + int(m.group(8).ljust(3, "0")) / 1000
                caption = " ".join(s.strip() for s in lines[j + 1:] if s.strip())
                if caption and end > start:
                    segments.append(Segment(start, end, caption))
                break
    return SidecarCaptions(path, {}, segments)


def load_sidecar(video: Path) -> SidecarCaptions:
    """The video's sidecar captions, or an empty set when it has none."""
    for p in sidecar_paths(video):
        if p.is_file():
            return _parse_json(p) if p.suffix == ".json" else _parse_srt(p)
    return SidecarCaptions(None, {}, [])
