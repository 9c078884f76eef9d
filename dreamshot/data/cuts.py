"""Shot boundaries with PySceneDetect (PyAV backend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DreamShotInputError
from .video import VideoError

DETECTORS = ("adaptive", "content", "histogram")


@dataclass(frozen=True)
class Shot:
    index: int   # position in the video's detected shots, 0-based (sidecar captions may key on it)
    start: int   # first frame
    end: int     # one past the last frame
    fps: float

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def start_s(self) -> float:
        return self.start / self.fps

    @property
    def end_s(self) -> float:
        return self.end / self.fps


def make_detector(kind: str, threshold: float | None, min_scene_frames: int):
    """A PySceneDetect detector; ``threshold`` None keeps the library's default for that detector."""
    import scenedetect

    classes = {"adaptive": (scenedetect.AdaptiveDetector, "adaptive_threshold"),
               "content": (scenedetect.ContentDetector, "threshold"),
               "histogram": (scenedetect.HistogramDetector, "threshold")}
    if kind not in classes:
        raise DreamShotInputError("detector", f"unknown shot detector {kind!r}.", f"use one of {', '.join(DETECTORS)}.")
    cls, threshold_name = classes[kind]
    kwargs = {"min_scene_len": int(min_scene_frames)}
    if threshold is not None:
        kwargs[threshold_name] = float(threshold)
    return cls(**kwargs)


def detect_shots(path: Path, kind: str = "adaptive", threshold: float | None = None,
                 min_scene_frames: int = 8) -> list[Shot]:
    """The video's shots in order (a video without cuts is one shot)."""
    import scenedetect

    detector = make_detector(kind, threshold, min_scene_frames)
    try:
        video = scenedetect.open_video(str(path), backend="pyav")
        manager = scenedetect.SceneManager()
        manager.add_detector(detector)
        manager.detect_scenes(video=video)
        scenes = manager.get_scene_list(start_in_scene=True)
        fps = float(video.frame_rate)
    except Exception as e:  # scenedetect wraps decoder errors in several types
        raise VideoError(f"{path}: shot detection failed: {e}") from e
    return [Shot(i, int(a.frame_num), int(b.frame_num), fps) for i, (a, b) in enumerate(scenes)]
