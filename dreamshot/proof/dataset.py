"""The "shapes story" dataset: stories of shape characters, in dreamshot.train's manifest format.

Each story draws 3 characters (at most one per shot, so all appear) from
:data:`dreamshot.shapes.SHAPE_CAST` and gives each a **role name** drawn at random per story
(``ROLES``). Captions and reference descriptions use only role names and places ("Mira at
centre."), never colours or shapes, so the text alone cannot say which shape "Mira" is: only the
reference images can. That is the contrast the proof measures.

Shots are ``width`` x ``height`` scenes on one plain background with the story's characters placed
by count (``LAYOUT``; one: centre; two: left and right, in caption order), each slot a whole number
of DiT patches wide, inside a dark frame. Wan's RoPE is relative and the proof's block VAE has no
border effects, so without the frame nothing would tell a token where in the shot it is. Earlier
versions (random sky/ground backgrounds, 1-3 characters in jittered slots, no frame) left the tiny
DiT to learn scenery it could not predict and positions it could not observe.
References are one character alone on a plain light background, with its saliency mask; every
shot has one mask per character (RACL uses them).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..shapes import SHAPE_CAST, draw_character, render_scene
from ..atomic import atomic_write, atomic_write_text

ROLES = ("Mira", "Theo", "Alice", "Bob")
SLOTS = ("left", "centre", "right")
REFERENCE_BACKGROUND = 235  # plain, unsaturated: nobody's colour
SHOT_BACKGROUND = 120        # plain grey, the same in every shot
FRAME = (4, 60)              # a dark 4-px frame around every shot: (width px, grey level)
# One character per shot. Runs with two (left and right, "Mira at left, Theo at right.") left most
# slots empty at this budget (60-70 % of placements without any character, with or without RACL),
# so they could not show identity; the layouts are kept for them.
MAX_PER_SHOT = 1
CAST_SIZES = (3, 4)
LAYOUT = {1: ("centre",), 2: ("left", "right"), 3: ("left", "centre", "right")}


@dataclass(frozen=True)
class Placement:
    character: int                      # index into SHAPE_CAST
    role: str                           # the story's name for it
    slot: str                           # left | centre | right
    box: tuple[int, int, int, int]      # x0, y0, x1, y1 pixels


@dataclass(frozen=True)
class StorySpec:
    id: str
    cast: dict[str, int]                # role -> SHAPE_CAST index
    shots: list[list[Placement]]

    def caption(self, j: int) -> str:
        return ", ".join(f"{p.role} at {p.slot}" for p in self.shots[j]) + "."


def slot_box(slot: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The box of a slot: a third of the width (at 96 px, two 16-px DiT patches), most of the height."""
    k = SLOTS.index(slot)
    w = width // 3
    pad_x, pad_y = max(1, w // 10), max(1, height // 8)
    return (k * w + pad_x, pad_y, (k + 1) * w - pad_x, height - pad_y)


def make_story(story_id: str, rng: random.Random, width: int, height: int, num_shots: int = 3) -> StorySpec:
    n_chars = min(rng.choice(CAST_SIZES), num_shots * MAX_PER_SHOT)
    chars = rng.sample(range(len(SHAPE_CAST)), n_chars)
    roles = rng.sample(ROLES, n_chars)
    cast = dict(zip(roles, chars))
    # Every character appears in some shot: training packs only the references of characters in the
    # shots (as the official code does), and sampling gives the same references.
    while True:
        shots, seen = [], set()
        while len(shots) < num_shots:
            who = rng.sample(roles, rng.randint(1, min(n_chars, MAX_PER_SHOT)))
            # No caption twice in a story (it also makes the shots of a story differ).
            if tuple(who) in seen:
                continue
            seen.add(tuple(who))
            shots.append([Placement(cast[r], r, s, slot_box(s, width, height)) for r, s in zip(who, LAYOUT[len(who)])])
        if {p.role for shot in shots for p in shot} == set(roles):
            return StorySpec(story_id, cast, shots)


def make_stories(count: int, seed: int, width: int, height: int, prefix: str, num_shots: int = 3) -> list[StorySpec]:
    rng = random.Random(seed)
    return [make_story(f"{prefix}{i:03d}", rng, width, height, num_shots) for i in range(count)]


def render_shot(spec: StorySpec, j: int, width: int, height: int) -> tuple[np.ndarray, list[np.ndarray]]:
    return render_scene(width, height, [(SHAPE_CAST[p.character], p.box) for p in spec.shots[j]],
                        backdrop=shot_background(width, height))


def shot_background(width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), FRAME[1], dtype=np.uint8)
    image[FRAME[0]:height - FRAME[0], FRAME[0]:width - FRAME[0]] = SHOT_BACKGROUND
    return image


def render_reference(character: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The character alone, centred, on a plain background; (image, saliency mask)."""
    image = np.full((height, width, 3), REFERENCE_BACKGROUND, dtype=np.uint8)
    mask = draw_character(image, SHAPE_CAST[character], slot_box("centre", width, height))
    return image, mask


def _save_png(path: Path, array: np.ndarray) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path.name


def _mask_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def write_dataset(root: str | Path, stories: list[StorySpec], width: int, height: int) -> Path:
    """Images, masks and ``manifest.jsonl`` (dreamshot.train format) for ``stories`` under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    refs = {}
    lines = []
    for spec in stories:
        characters = {}
        for role, ci in spec.cast.items():
            if ci not in refs:
                image, mask = render_reference(ci, width, height)
                cid = SHAPE_CAST[ci].id
                refs[ci] = (f"refs/{_save_png(root / 'refs' / f'{cid}.png', image)}",
                            f"refs/{_save_png(root / 'refs' / f'{cid}_mask.png', _mask_png(mask))}")
            # The role is the id and the name; the description (what the reference frame reads) is the role too.
            characters[role.lower()] = {"name": role, "reference": refs[ci][0], "mask": refs[ci][1],
                                        "description": role}
        shots = []
        for j in range(len(spec.shots)):
            image, masks = render_shot(spec, j, width, height)
            base = f"{spec.id}/shot{j}"
            shot = {"image": f"{spec.id}/{_save_png(root / f'{base}.png', image)}", "caption": spec.caption(j),
                    "characters": [p.role.lower() for p in spec.shots[j]], "masks": {}}
            for p, m in zip(spec.shots[j], masks):
                shot["masks"][p.role.lower()] = f"{spec.id}/{_save_png(root / f'{base}_{p.role.lower()}.png', _mask_png(m))}"
            shots.append(shot)
        lines.append({"id": spec.id, "shots": shots, "characters": characters})
    atomic_write_text(root / "manifest.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    return root


def stories_to_json(stories: list[StorySpec]) -> list[dict]:
    return [asdict(s) for s in stories]


def stories_from_json(items: list[dict]) -> list[StorySpec]:
    return [StorySpec(d["id"], dict(d["cast"]),
                      [[Placement(p["character"], p["role"], p["slot"], tuple(p["box"])) for p in shot]
                       for shot in d["shots"]]) for d in items]
