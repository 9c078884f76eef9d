"""Decoding with PyAV: video facts and selected frames as RGB uint8 arrays.

Frames are numbered in decode order from 0, which is how PySceneDetect's PyAV backend numbers
them too, so a cut frame from :mod:`.cuts` is the frame index used here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded (the pipeline counts it and goes on)."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int


def find_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive), sorted by relative path for a stable order."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def probe(path: Path) -> VideoInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return VideoInfo(float(rate) if rate else 25.0, int(stream.codec_context.width),
                             int(stream.codec_context.height))
    except av.FFmpegError as e:
        raise VideoError(f"{path}: {e}") from e


def iter_frames(path: Path, wanted):
    """Yield (index, RGB uint8 HxWx3) for the wanted frame indices, in order, decoding once and
    stopping after the last, so a caller can keep only what it still needs."""
    import av

    wanted = set(int(i) for i in wanted)
    if not wanted:
        return
    last = max(wanted)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    yield i, frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except av.FFmpegError as e:
        raise VideoError(f"{path}: {e}") from e


def read_frames(path: Path, wanted) -> dict[int, np.ndarray]:
    """The frames with the given indices (all held in memory: for a few frames only)."""
    return dict(iter_frames(path, wanted))
