"""``--animatic`` / ``--timeline`` of ``python -m dreamshot.generate``: the storyboard just written, played
in time and handed to an editor, with the nodes' own code (dreamshot.animatic, dreamshot.timeline).

    <out>/animatic_<n>_.mp4       each shot for its duration, its camera move, shot numbers and timecode
    <out>/timeline_<n>_.otio      (+ .edl, .xml with the adapters) and the folder timeline_<n>_/ with the
                                  keyframes (and the animatic) the timeline points at

Nothing is overwritten: the next free counter is taken. Needs no ComfyUI.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ..animatic import AnimaticSettings, boards_for, write_animatic
from ..images import load_image
from ..sheet import next_counter
from ..shot_timing import check_fps
from ..timeline import export_timeline, timeline_shots


def add_arguments(ap: argparse.ArgumentParser) -> None:
    group = ap.add_argument_group("animatic and editorial timeline (after the storyboard)")
    group.add_argument("--animatic", action="store_true",
                       help="also write <out>/animatic_<n>_.mp4: the keyframes played in time (each shot's duration "
                            "and camera move from the story file; shot numbers and timecode burned in)")
    group.add_argument("--timeline", action="store_true",
                       help="also write <out>/timeline_<n>_.otio (+ .edl and .xml when their OpenTimelineIO adapters "
                            "are installed) for an editor, with its keyframes (and the animatic) beside it")
    group.add_argument("--fps", type=float, default=24.0, help="frame rate of the animatic and timeline (default 24)")


def write_editorial(shots, keyframes: list[Path], out: Path, title: str, fps: float = 24.0, animatic: bool = True,
                    timeline: bool = True) -> dict[str, Path]:
    """The animatic and/or the timeline of ``shots`` (dreamshot.story.Shot) from the keyframe PNGs in
    ``out``; returns {"animatic": path, "timeline": .otio path} for what was written."""
    images = torch.stack([load_image(p, "keyframes")[..., :3] for p in keyframes])
    settings = AnimaticSettings(fps=fps)
    written: dict[str, Path] = {}
    if animatic:
        counter = next_counter(str(out), "animatic", (".mp4",))
        while True:
            try:
                written["animatic"] = write_animatic(out / f"animatic_{counter:05d}_.mp4", boards_for(images, shots),
                                                     settings).path
                break
            except FileExistsError:
                counter += 1
    if timeline:
        def copy_animatic(path: Path) -> bool:
            shutil.copyfile(written["animatic"], path)
            return False        # the story file carries no sound
        files = export_timeline(out, "timeline", title, timeline_shots(images, shots), check_fps(fps),
                                copy_animatic if "animatic" in written else None)
        written["timeline"] = files.timelines["otio"]
    return written
