"""What a storyboard shot carries besides its picture: how long it lasts, its size, the camera move,
the action and the dialogue; and the arithmetic that turns durations into frames.

The frame arithmetic is shared by the animatic and the editorial timeline, so both cut at the same
frames: shot j starts at frame ``round(t_j * fps)``, t_j the sum of the durations before it. The
total is then exactly ``round(sum(durations) * fps)`` and no error accumulates over a long story.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

from .errors import DreamShotInputError

DEFAULT_DURATION = 2.0            # seconds, as Storyboarder's default board duration
MAX_DURATION = 3600.0
# Camera moves the animatic can render on a still; "static" is none. Story files and the Shot Script
# accept exactly these (spaces, '-' and '_' alike).
CAMERA_MOVES = ("static", "push in", "pull out", "pan left", "pan right", "tilt up", "tilt down")
# The usual shot sizes; shot_size is free text, these are only suggested.
SHOT_SIZES = ("ECU", "CU", "MCU", "MS", "MLS", "LS", "WS", "EWS")


def parse_camera(text, input_name: str = "camera") -> str:
    """'Push-In' -> 'push in'; '' or None -> 'static'; anything else is refused (a typo would silently
    render no move)."""
    if text is None:
        return "static"
    if not isinstance(text, str):
        raise DreamShotInputError(input_name, f"expected a camera move, got {text!r}.",
                                  f"use one of: {', '.join(CAMERA_MOVES)}.")
    move = " ".join(text.replace("-", " ").replace("_", " ").lower().split())
    if not move:
        return "static"
    if move not in CAMERA_MOVES:
        raise DreamShotInputError(input_name, f"unknown camera move {text!r}.", f"use one of: {', '.join(CAMERA_MOVES)}.")
    return move


def duration_problem(value) -> str | None:
    """Why ``value`` is not a shot duration in seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"expected a number of seconds, got {value!r}"
    if not 0 < value <= MAX_DURATION:
        return f"{value} s is not between 0 (excluded) and {MAX_DURATION:g} s"
    return None


def check_fps(fps: float, input_name: str = "fps") -> Fraction:
    """fps as the exact rate the video and the timeline use: three decimals, as ComfyUI's video nodes."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 1 <= fps <= 240:
        raise DreamShotInputError(input_name, f"{fps!r} frames per second is not between 1 and 240.",
                                  "use e.g. 24, 25 or 30.")
    return Fraction(round(fps * 1000), 1000)


def shot_starts(durations: Sequence[float], fps: float | Fraction) -> list[int]:
    """Frame where each shot starts, plus the total as a last entry (len(durations) + 1 values).

    Exact arithmetic on the decimal durations (Fraction of their repr) so 0.1 + 0.2 cuts where 0.3 does.
    Raises when a shot would get no frame at this rate."""
    rate = Fraction(fps)
    starts, t = [0], Fraction(0)
    for j, d in enumerate(durations):
        problem = duration_problem(d)
        if problem:
            raise DreamShotInputError("duration", f"shot {j + 1}: {problem}.", "give every shot a positive duration.")
        t += Fraction(repr(float(d)))
        starts.append(round(t * rate))
        if starts[-1] == starts[-2]:
            raise DreamShotInputError("duration", f"shot {j + 1} lasts {d} s: less than one frame at {float(rate):g} "
                                      "fps, so it would vanish from the video.",
                                      f"make it at least {1 / float(rate):.3f} s, or raise fps.")
    return starts


def frame_count(durations: Sequence[float], fps: float | Fraction) -> int:
    """round(sum(durations) * fps): the animatic's length in frames."""
    return shot_starts(durations, fps)[-1]


def timecode(frame: int, fps: float | Fraction) -> str:
    """HH:MM:SS:FF, non-drop-frame, counted at the nearest whole rate (23.976 counts as 24)."""
    base = max(1, round(float(fps)))
    seconds, ff = divmod(int(frame), base)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}"


def running_time(seconds: float) -> str:
    """2.5 -> '0:02.5', 84 -> '1:24', 3725 -> '1:02:05' (tenths only when there are any)."""
    tenths = round(seconds * 10)
    whole, tenth = divmod(tenths, 10)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return text + (f".{tenth}" if tenth else "")


def board_notes(shot) -> str:
    """The sheet's line after a shot number: size, camera move (when it moves) and duration."""
    parts = [shot.shot_size.strip()] if shot.shot_size.strip() else []
    if shot.camera and shot.camera != "static":
        parts.append(shot.camera)
    parts.append(f"{shot.duration:g} s")
    return " \u00b7 ".join(parts)


def board_text(shots) -> dict:
    """What the Storyboard Sheet prints from the shots (render_sheet's keyword arguments): each board's
    caption (its action line, else its prompt), notes (board_notes), dialogue, and the running time."""
    total = sum(s.duration for s in shots)
    return {"captions": [s.action or s.prompt for s in shots], "notes": [board_notes(s) for s in shots],
            "dialogue": [s.dialogue for s in shots],
            "running_time": f"{len(shots)} shot{'s' if len(shots) != 1 else ''}, running time {running_time(total)}"}
