"""Shape videos for the video prior: the proof's characters move, enter, leave and meet.

A clip is 9, 13 or 17 frames (1 + 4k: 3-5 latent frames) of one scene on the stories' stage (their
grey background inside the dark frame) with 1-3 characters of :data:`dreamshot.shapes.SHAPE_CAST`, each
under a **role name drawn per clip** as the stories draw them. The one caption names them only
by role and action ("Mira enters from left, Theo at right."), so which shape "Mira" is can be
known only from the clip itself: identity persists through time, not through words. Characters
keep to their own side of the frame (no crossing), so every frame of a real clip is unambiguous.

Actions (``ACTIONS``), each with its caption phrase:

- ``at``: stays at a slot ("Mira at left");
- ``enters``: comes in from the left or right edge to a slot ("Mira enters from left");
- ``leaves``: goes from a slot out at the left or right edge ("Mira leaves to right");
- ``moves``: walks from one slot to another ("Mira moves to centre");
- ``meets``: two characters walk from left and right to meet at the centre ("Mira meets Theo").
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..shapes import SHAPE_CAST, draw_character
from ..atomic import atomic_write_text
from .dataset import ROLES, _save_png, shot_background, slot_box

FRAME_COUNTS = (9, 13, 17)
CAST_WEIGHTS = {1: 0.3, 2: 0.45, 3: 0.25}
ACTIONS = ("at", "enters", "leaves", "moves", "meets")
WORDS = ("enters", "leaves", "moves", "meets", "from", "to")   # caption words besides roles and slots


@dataclass(frozen=True)
class Track:
    character: int                  # index into SHAPE_CAST
    role: str
    xs: tuple[float, ...]           # the box's left edge per pixel frame (off-screen allowed)
    phrase: str                     # its part of the caption ("" when a pair phrase covers it)


@dataclass(frozen=True)
class ClipSpec:
    id: str
    frames: int
    tracks: tuple[Track, ...]
    caption: str

    def box(self, track: Track, t: int, width: int, height: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = slot_box("centre", width, height)
        x = int(round(track.xs[t]))
        return (x, y0, x + (x1 - x0), y1)

    def visible(self, track: Track, t: int, width: int, height: int) -> bool:
        """Wholly inside the image (what the classifier may read)."""
        x0, _, x1, _ = self.box(track, t, width, height)
        return x0 >= 0 and x1 <= width


def _slot_x(slot: str, width: int, height: int) -> float:
    return float(slot_box(slot, width, height)[0])


def _path(n: int, a: float, b: float, rng: random.Random) -> tuple[float, ...]:
    """From a to b over frames t0..t1 (drawn), still before and after."""
    t0 = rng.randint(0, n // 3)
    t1 = rng.randint(max(t0 + 2, n // 2), n - 1)
    return tuple(a + (b - a) * min(1.0, max(0.0, (t - t0) / (t1 - t0))) for t in range(n))


def make_clip(clip_id: str, rng: random.Random, width: int, height: int) -> ClipSpec:
    n = rng.choice(FRAME_COUNTS)
    size = rng.choices(list(CAST_WEIGHTS), weights=list(CAST_WEIGHTS.values()))[0]
    chars = rng.sample(range(len(SHAPE_CAST)), size)
    roles = rng.sample(ROLES, size)
    w = slot_box("centre", width, height)[2] - slot_box("centre", width, height)[0]
    off = {"left": -float(w) - 2, "right": float(width) + 2}
    tracks: list[Track] = []
    if size == 2 and rng.random() < 0.4:   # a meeting: from left and right to the centre, side by side
        mid = width / 2
        ends = (mid - w - 1, mid + 1)
        for k, side in enumerate(("left", "right")):
            xs = _path(n, _slot_x(side, width, height), ends[k], rng)
            tracks.append(Track(chars[k], roles[k], xs, f"{roles[0]} meets {roles[1]}" if k == 0 else ""))
    else:
        # each character owns a lane (left / centre / right) and acts only within it and its own edge
        lanes = {1: [rng.choice(("left", "centre", "right"))], 2: rng.choice([["left", "right"], ["left", "centre"],
                                                                             ["centre", "right"]]),
                 3: ["left", "centre", "right"]}[size]
        free = {"left", "centre", "right"} - set(lanes)
        for c, role, lane in zip(chars, roles, lanes):
            here = _slot_x(lane, width, height)
            options = ["at"]
            if lane != "centre" or size == 1:
                options += ["enters", "leaves"]
            moves_to = [s for s in free if abs(("left", "centre", "right").index(s)
                                               - ("left", "centre", "right").index(lane)) == 1]
            if moves_to:
                options.append("moves")
            action = rng.choice(options)
            if action == "at":
                xs, phrase = (here,) * n, f"{role} at {lane}"
            elif action in ("enters", "leaves"):
                side = lane if lane != "centre" else rng.choice(("left", "right"))
                a, b = (off[side], here) if action == "enters" else (here, off[side])
                xs = _path(n, a, b, rng)
                phrase = f"{role} enters from {side}" if action == "enters" else f"{role} leaves to {side}"
            else:
                to = rng.choice(moves_to)
                free.discard(to)
                xs, phrase = _path(n, here, _slot_x(to, width, height), rng), f"{role} moves to {to}"
            tracks.append(Track(c, role, xs, phrase))
    phrases = [t.phrase for t in tracks if t.phrase]
    rng.shuffle(phrases)   # phrase order says nothing about position
    return ClipSpec(clip_id, n, tuple(tracks), ", ".join(phrases) + ".")


def make_clips(count: int, seed: int, width: int, height: int, prefix: str = "clip") -> list[ClipSpec]:
    rng = random.Random(seed)
    return [make_clip(f"{prefix}{i:04d}", rng, width, height) for i in range(count)]


def render_frame(spec: ClipSpec, t: int, width: int, height: int) -> np.ndarray:
    image = shot_background(width, height)
    for track in spec.tracks:
        draw_character(image, SHAPE_CAST[track.character], spec.box(track, t, width, height))
    return image


def write_videos(root: str | Path, clips: list[ClipSpec], width: int, height: int) -> Path:
    """Frames and ``manifest.jsonl`` of video records (dreamshot.train.dataset, "Video records")."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for spec in clips:
        frames = [f"{spec.id}/{_save_png(root / spec.id / f'f{t:02d}.png', render_frame(spec, t, width, height))}"
                  for t in range(spec.frames)]
        lines.append({"id": spec.id, "video": {"frames": frames, "caption": spec.caption}})
    atomic_write_text(root / "manifest.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    return root


def clips_to_json(clips: list[ClipSpec]) -> list[dict]:
    return [asdict(c) for c in clips]
