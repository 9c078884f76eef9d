"""Story files: a whole story (its cast, its shots, the settings of a headless run) in one YAML or JSON
file, read into the same Character and Shot objects the Character Reference / Shot Script chains make.

Format (version 1; docs/story-files.md is the reference)::

    format: dreamshot-story          # optional; when given, exactly this
    version: 1                       # optional; when given, 1
    title: The Lighthouse Keeper     # optional
    settings: {width: 832, height: 480, seed: 42}   # optional, see SETTINGS (also racl, shot_loras, variants)
    characters:                      # optional list, in reference order
      - name: Mira                   # required, unique; shots list it
        kind: character              # optional: character | location | prop
        reference: lighthouse/mira.png         # required: an image, or a list of images
        mask: lighthouse/mira_mask.png         # optional: one mask, or a list (one per reference, null allowed)
        description: a girl in a yellow raincoat   # optional caption of the reference
    shots:                           # required, at least one, in story order
      - prompt: Mira climbs the stairs.        # required
        characters: [Mira]           # optional names (must be characters above when there are any)
        boxes: {Mira: [0.1, 0.1, 0.5, 1]}      # optional x0, y0, x1, y1 (fractions, or pixels)
        masks: {Mira: lighthouse/s1_mira.png}  # optional region masks
        negative_prompt: blurry      # optional, this shot only
        seed: 7                      # optional, this shot's initial noise
        image: lighthouse/shot1.png  # optional fixed image (kept in shot_to_shot / edit)
        lock: true                   # optional: keep this shot from the earlier storyboard
        duration: 2.5                # optional seconds on screen (default 2), for the animatic and timeline
        shot_size: CU                # optional free text (ECU, CU, MCU, MS, WS, EWS, ...)
        camera: push in              # optional: static, push in, pull out, pan left/right, tilt up/down
        action: She climbs.          # optional, printed under the board (else the prompt)
        dialogue: "MIRA: Almost there."        # optional, printed under the board

Paths are relative to the folder holding the story file, ``/``-separated; absolute paths, ``..`` and
links leading out of the allowed folder (ComfyUI's input folder for Load Story) are refused. Unknown
keys are refused (a typo would silently drop data). Every problem is listed at once as
``FILE:LINE: field: problem``; YAML and JSON are read with yaml's SafeLoader / json.loads only, within
the bounds of dreamshot/story_limits.py (file size, nesting, aliases, text, counts, pixels), checked
before anything in the file is expanded.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import DreamShotInputError
from .field_checks import FieldChecker
from .images import fit_image, fit_mask, image_pixels, load_image, load_mask
from .modes import Mode
from .sheet import publish_new, safe_stem, write_temp
from .shot_timing import DEFAULT_DURATION, duration_problem, parse_camera
from .story import REFERENCE_KINDS, Character, Shot
from .story_limits import MAX_IMAGES, MAX_STORY_PIXELS, SourceRefused, count_problems, load_file, load_yaml_text
from .atomic import atomic_write

FORMAT = "dreamshot-story"
FORMAT_VERSION = 1
STORY_SUFFIXES = (".yaml", ".yml", ".json")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_SHOWN = 25
MAX_PROBLEM_CHARS = 500     # one listed problem (a value quoted in it is cut)
DOCS = "docs/story-files.md"
_TOP_KEYS = {"format", "version", "title", "settings", "characters", "shots"}
_CHAR_KEYS = {"name", "kind", "reference", "mask", "description"}
_SHOT_KEYS = {"prompt", "characters", "boxes", "masks", "negative_prompt", "seed", "image", "lock",
              "duration", "shot_size", "camera", "action", "dialogue"}


@dataclass(frozen=True)
class RaclSettings:
    """The RACL Attention Patch's inputs (nodes/racl.py), with its defaults. ``racl: true`` in a file is
    these defaults, ``racl: false`` is ``enabled=False`` (off, also against a command's default)."""

    enabled: bool = True
    strength: float = 1.0               # 0..1
    start_percent: float = 0.0          # 0..1, <= end_percent
    end_percent: float = 1.0
    layers: str = "all"                 # "all" or block numbers like "0-9, 20"
    auto_regions: bool = True

    def document(self):
        """As a story file writes it: false, true (the node's defaults) or the fields that differ."""
        if not self.enabled:
            return False
        changed = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name != "enabled" and getattr(self, f.name) != f.default}
        return changed or True


@dataclass(frozen=True)
class ShotLoraSettings:
    """One Shot LoRA node's inputs (nodes/shot_lora.py)."""

    lora: str                           # a file in ComfyUI's models/loras, as the node's lora_name
    strength: float = 1.0
    shots: str = ""                     # "2, 4-5" (from 1), "all", or "" (the shots listing ``character``)
    character: str = ""
    include_references: bool = False

    def document(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name == "lora" or getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class StorySettings:
    """What a headless run (python -m dreamshot.generate) needs beyond the story; None = not given
    (the command's flag or default applies). In ComfyUI the nodes' widgets decide instead (Load Story
    warns that it does not apply them)."""

    width: int | None = None            # multiple of 16
    height: int | None = None           # multiple of 16
    mode: str | None = None             # dreamshot.modes.Mode; default: edit with fixed/locked shots,
                                        # else reference_to_shot with characters, else text_to_shot
    seed: int | None = None             # the sampler's seed
    steps: int | None = None
    cfg: float | None = None            # text guidance
    ref_cfg: float | None = None        # reference-image guidance
    chunk_size: int | None = None       # shots per pass (0 = all in one pass)
    context_shots: int | None = None    # earlier shots given clean to each later pass
    negative_prompt: str | None = None  # for every shot without its own
    variants: int | None = None         # storyboards of seed, seed + 1, ... (DreamShot Sampler's variants)
    racl: RaclSettings | None = None    # the RACL Attention Patch (None: not given = off)
    shot_loras: tuple[ShotLoraSettings, ...] | None = None   # Shot LoRA nodes, in chain order

    def given(self) -> dict[str, Any]:
        """The settings given, as a story file writes them (plain YAML/JSON values)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "racl":
                value = value.document()
            elif f.name == "shot_loras":
                value = [lora.document() for lora in value]
            out[f.name] = value
        return out


# name -> (kind, minimum): kinds int, number, mode, string, racl, shot_loras
SETTINGS = {"width": ("int", 16), "height": ("int", 16), "mode": ("mode", None), "seed": ("int", 0),
            "steps": ("int", 1), "cfg": ("number", 0), "ref_cfg": ("number", 0), "chunk_size": ("int", 0),
            "context_shots": ("int", 0), "negative_prompt": ("string", None), "variants": ("int", 1),
            "racl": ("racl", None), "shot_loras": ("shot_loras", None)}
MAX_VARIANTS = 64            # DreamShot Sampler's variants widget
_LAYERS = re.compile(r"(?i)\s*all\s*|\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*,?\s*")
_RACL_KEYS = {f.name for f in fields(RaclSettings)} - {"enabled"}
_SHOT_LORA_KEYS = {f.name for f in fields(ShotLoraSettings)}


@dataclass(frozen=True)
class Story:
    """A story in memory: what a story file holds, what Save Story writes."""

    characters: tuple[Character, ...]
    shots: tuple[Shot, ...]
    title: str = ""
    locked: tuple[int, ...] = ()          # 0-based shots to keep from an earlier storyboard
    settings: StorySettings = StorySettings()

    @property
    def lock_text(self) -> str:
        """The locked shots as the Shot Sequence Pack's lock_shots reads them: "1, 3" (1-based)."""
        return ", ".join(str(j + 1) for j in self.locked)

    def default_mode(self) -> Mode:
        if self.settings.mode:
            return Mode(self.settings.mode)
        if self.locked or any(s.image is not None for s in self.shots):
            return Mode.EDIT
        return Mode.REFERENCE_TO_SHOT if self.characters else Mode.TEXT_TO_SHOT


def _clip(problem: str) -> str:
    return problem if len(problem) <= MAX_PROBLEM_CHARS else problem[:MAX_PROBLEM_CHARS - 5] + " ...)"


def _fail(path: Path, problems: list[str]) -> DreamShotInputError:
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    shown = [_clip(p) for p in problems[:MAX_SHOWN]]
    return DreamShotInputError(
        "story", f"{len(problems)} problem(s) in the story file {path.name}:\n  " + "\n  ".join(shown)
        + more + "\n", f"correct the listed fields (FILE:LINE: field: problem; shots[0] is the first shot); the format "
        f"is described in {DOCS}.")


# ----------------------------------------------------------------------------------------- reading
def _source_lines(root, name: str) -> tuple[dict[str, int], list[str]]:
    """Field path -> 1-based line, from the marks of YAML's node graph ``root`` (story_limits composes
    JSON as YAML for this; None: no line numbers), and the keys given twice (both loaders keep the
    last silently)."""
    import yaml

    lines: dict[str, int] = {}
    twice: list[str] = []
    seen: set[int] = set()

    def walk(node, path: str) -> None:
        if id(node) in seen:      # an alias: walked once (no exponential "billion laughs" walk)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                k = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                sub = f"{path}.{k}" if path else k
                if k in keys:
                    twice.append(f"{name}:{key.start_mark.line + 1}: {sub}: given twice (the later one would "
                                 "silently replace the first)")
                keys.add(k)
                lines.setdefault(sub, key.start_mark.line + 1)
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines.setdefault(sub, item.start_mark.line + 1)
                walk(item, sub)

    if root is not None:
        lines["(top)"] = root.start_mark.line + 1
        walk(root, "")
    return lines, twice


def _load_source(path: Path) -> tuple[Any, dict[str, int], list[str]]:
    try:
        raw, root = load_file(path)     # every bound of story_limits checked before anything expands
    except SourceRefused as e:
        raise _fail(path, [e.problem]) from None
    lines, twice = _source_lines(root, path.name)
    return raw, lines, twice


def _int(chk: FieldChecker, field: str, value, minimum: int, maximum: int | None = None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        limits = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        chk.bad(field, f"expected a whole number {limits}, got {value!r}")
        return None
    return value


def parse_settings(chk: FieldChecker, raw, prefix: str = "settings") -> StorySettings:
    if raw is None:
        return StorySettings()
    if not isinstance(raw, dict):
        chk.bad(prefix, f"expected a mapping of settings ({', '.join(SETTINGS)}), got {type(raw).__name__}")
        return StorySettings()
    chk.unknown(prefix + ".", raw, set(SETTINGS))
    values: dict[str, Any] = {}
    for key, (kind, minimum) in SETTINGS.items():
        if key not in raw or raw[key] is None:
            continue
        value, field = raw[key], f"{prefix}.{key}"
        if kind == "int":
            value = _int(chk, field, value, minimum, {"seed": MAX_SEED, "variants": MAX_VARIANTS}.get(key))
            if value is not None and key in ("width", "height") and value % 16:
                lower = max(16, value - value % 16)
                chk.bad(field, f"{value} is not a multiple of 16 (use {lower} or {lower + 16})")
                value = None
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < minimum:
                chk.bad(field, f"expected a number >= {minimum}, got {value!r}")
                value = None
            else:
                value = float(value)
        elif kind == "mode":
            if value not in [m.value for m in Mode]:
                chk.bad(field, f"unknown mode {value!r} (use one of: {', '.join(m.value for m in Mode)})")
                value = None
        elif kind == "racl":
            value = parse_racl(chk, field, value)
        elif kind == "shot_loras":
            if not isinstance(value, list):
                chk.bad(field, f"expected a list of Shot LoRAs (- lora: name.safetensors ...), got "
                        f"{type(value).__name__}")
                value = None
            else:
                loras = [parse_shot_lora(chk, f"{field}[{i}]", item) for i, item in enumerate(value)]
                value = tuple(lora for lora in loras if lora is not None)
        else:
            value = chk.string(field, value)
        if value is not None:
            values[key] = value
    return StorySettings(**values)


def _number(chk: FieldChecker, field: str, value, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        chk.bad(field, f"expected a number from {low:g} to {high:g}, got {value!r}")
        return None
    return float(value)


def _bool(chk: FieldChecker, field: str, value) -> bool | None:
    if not isinstance(value, bool):
        chk.bad(field, f"expected true or false, got {value!r}")
        return None
    return value


def parse_racl(chk: FieldChecker, field: str, raw) -> RaclSettings | None:
    """``true``, ``false`` or a mapping of the RACL Attention Patch's inputs (checked as the node checks
    them; the layers against the model only when it is loaded)."""
    if isinstance(raw, bool):
        return RaclSettings(enabled=raw)
    if not isinstance(raw, dict):
        chk.bad(field, f"expected true, false or a mapping of {', '.join(sorted(_RACL_KEYS))}, got "
                f"{type(raw).__name__}")
        return None
    chk.unknown(field + ".", raw, _RACL_KEYS)
    values: dict[str, Any] = {}
    ok = True
    for key in ("strength", "start_percent", "end_percent"):
        if raw.get(key) is not None:
            values[key] = _number(chk, f"{field}.{key}", raw[key], 0.0, 1.0)
            ok &= values[key] is not None
    if raw.get("auto_regions") is not None:
        values["auto_regions"] = _bool(chk, f"{field}.auto_regions", raw["auto_regions"])
        ok &= values["auto_regions"] is not None
    if raw.get("layers") is not None:
        layers = raw["layers"]
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = str(layers)
        elif isinstance(layers, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in layers):
            layers = ", ".join(map(str, layers))
        layers = chk.string(f"{field}.layers", layers).strip() or "all"
        # The form only; the node's parse_layers checks the numbers against the model once it is loaded.
        if not _LAYERS.fullmatch(layers):
            chk.bad(f"{field}.layers", f'expected "all" or block numbers like "0-9, 20", got {layers!r}')
            ok = False
        values["layers"] = layers
    if not ok:
        return None
    settings = RaclSettings(**values)
    if settings.start_percent > settings.end_percent:
        chk.bad(f"{field}.start_percent", f"start {settings.start_percent:g} is after end {settings.end_percent:g} "
                "(set start_percent <= end_percent)")
        return None
    return settings


def parse_shot_lora(chk: FieldChecker, field: str, raw) -> ShotLoraSettings | None:
    """One Shot LoRA: a mapping with ``lora`` (a file name in ComfyUI's models/loras) and the node's
    other inputs, checked as the node checks them."""
    from .shot_lora import parse_shot_numbers

    if not isinstance(raw, dict):
        chk.bad(field, f"expected a mapping with lora and shots or character, got {type(raw).__name__}")
        return None
    chk.unknown(field + ".", raw, _SHOT_LORA_KEYS)
    n = len(chk.problems)
    lora = chk.string(f"{field}.lora", raw.get("lora")).strip()
    if not lora:
        chk.bad(f"{field}.lora", "missing (the LoRA's file name in ComfyUI's models/loras, e.g. ink.safetensors)")
    elif Path(lora).is_absolute() or ".." in lora.replace("\\", "/").split("/") or ":" in lora \
            or not lora.lower().endswith(".safetensors"):
        chk.bad(f"{field}.lora", f"{lora!r}: give a .safetensors file name inside ComfyUI's models/loras (as the "
                "Shot LoRA node lists it), not a path")
    strength = 1.0 if raw.get("strength") is None else _number(chk, f"{field}.strength", raw["strength"], -10, 10)
    shots = raw.get("shots", "")
    if isinstance(shots, int) and not isinstance(shots, bool):
        shots = str(shots)
    elif isinstance(shots, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in shots):
        shots = ", ".join(map(str, shots))
    shots = chk.string(f"{field}.shots", shots).strip()
    picked = None
    try:
        picked = parse_shot_numbers(shots)
    except DreamShotInputError as e:
        chk.bad(f"{field}.shots", e.problem.rstrip("."))
    character = chk.string(f"{field}.character", raw.get("character")).strip()
    refs = False if raw.get("include_references") is None else _bool(chk, f"{field}.include_references",
                                                                     raw["include_references"])
    if picked is None and not character and shots.lower() != "all" and len(chk.problems) == n:
        chk.bad(field, 'no shots and no character: give shots (like "2, 4-5", or all) or a character')
    if refs and not character:
        chk.bad(f"{field}.include_references", "references belong to characters; give the character, or leave "
                "include_references false")
    if len(chk.problems) != n:
        return None
    return ShotLoraSettings(lora=lora, strength=strength, shots=shots, character=character,
                            include_references=bool(refs))


def check_shot_lora_scopes(chk: FieldChecker, settings: StorySettings, shot_characters,
                           field: str = "settings.shot_loras"):
    """Each Shot LoRA's shots and character against the story's shots (dreamshot.shot_lora.story_scope,
    what the sampler checks), before anything is loaded."""
    from .shot_lora import ShotLoRA, parse_shot_numbers, story_scope

    for i, lora in enumerate(settings.shot_loras or ()):
        probe = ShotLoRA(name=lora.lora, strength=lora.strength, deltas={}, shots=parse_shot_numbers(lora.shots),
                         character=lora.character or None, include_references=lora.include_references)
        try:
            story_scope(probe, shot_characters)
        except DreamShotInputError as e:
            chk.bad(f"{field}[{i}].{e.input_name}", e.problem.rstrip("."))


def parse_settings_text(text: str, input_name: str = "settings") -> StorySettings:
    """Settings written as YAML (``width: 832`` lines, or a JSON object): Save Story's input."""
    if not (text or "").strip():
        return StorySettings()
    fix = f"write one setting per line as 'name: value' ({', '.join(SETTINGS)}; see {DOCS})."
    try:
        raw, root = load_yaml_text(text, input_name)
    except SourceRefused as e:
        raise DreamShotInputError(input_name, _clip(e.problem) + ".", fix) from None
    lines, _ = _source_lines(root, input_name)
    chk = FieldChecker(input_name, Path("."), False, lines={f"settings.{k}": v for k, v in lines.items()})
    settings = parse_settings(chk, raw)
    if chk.problems:
        raise DreamShotInputError(input_name, "; ".join(chk.problems) + ".", fix)
    return settings


@dataclass(frozen=True)
class _CharacterEntry:
    field: str
    name: str
    kind: str
    references: tuple[str, ...]
    masks: tuple[str | None, ...]       # () none, (one,) for every reference, or one per reference
    description: str


@dataclass(frozen=True)
class _ShotEntry:
    field: str
    prompt: str
    characters: tuple[str, ...]
    boxes: tuple[tuple[str, tuple[float, ...]], ...]
    masks: tuple[tuple[str, str], ...]
    negative_prompt: str
    seed: int | None
    image: str | None
    lock: bool
    timing: dict[str, Any] | None = None   # Shot's timing fields given in the file (duration, shot_size, camera, action, dialogue)


def _paths(chk: FieldChecker, field: str, raw, allow_none: bool = False) -> list[str | None]:
    """A path or a non-empty list of paths (None entries only when ``allow_none``)."""
    many = isinstance(raw, list)
    items = raw if many else [raw]
    if many and not items:
        chk.bad(field, "an empty list; give at least one image path")
    out: list[str | None] = []
    for k, item in enumerate(items):
        sub = f"{field}[{k}]" if many else field
        if item is None and allow_none and many:
            out.append(None)
            continue
        out.append(chk.path(sub, item) or "")
    return out


def _character(chk: FieldChecker, i: int, raw, names: dict[str, str]) -> _CharacterEntry | None:
    pre = f"characters[{i}]"
    if not isinstance(raw, dict):
        chk.bad(pre, f"expected a mapping with name and reference, got {type(raw).__name__}")
        return None
    chk.unknown(pre + ".", raw, _CHAR_KEYS)
    name = "" if raw.get("name") is None else chk.string(pre + ".name", raw["name"]).strip()
    if not name and not isinstance(raw.get("name"), (bool, int, float)):
        chk.bad(pre + ".name", "missing or empty (every character needs a unique name that shots list)")
    elif name in names:
        chk.bad(pre + ".name", f"{name!r} is already the name of {names[name]}; names must be unique")
    elif name:
        names[name] = pre
    kind = raw.get("kind", "character")
    if kind not in REFERENCE_KINDS:
        chk.bad(pre + ".kind", f"expected one of {', '.join(REFERENCE_KINDS)}, got {kind!r}")
        kind = "character"
    if raw.get("reference") is None:
        chk.bad(pre + ".reference", "missing (every character needs a reference image)")
        refs: list = []
    else:
        refs = _paths(chk, pre + ".reference", raw["reference"])
    masks: list = []
    if raw.get("mask") is not None:
        masks = _paths(chk, pre + ".mask", raw["mask"], allow_none=True)
        if isinstance(raw["mask"], list) and len(masks) != len(refs):
            chk.bad(pre + ".mask", f"{len(masks)} mask(s) for {len(refs)} reference(s): give one mask for every "
                    "reference (null for none), or a single mask path")
    description = chk.string(pre + ".description", raw.get("description")).strip()
    return _CharacterEntry(pre, name, kind, tuple(refs), tuple(masks), description)


def _shot(chk: FieldChecker, j: int, raw, cast: dict[str, str]) -> _ShotEntry | None:
    pre = f"shots[{j}]"
    if not isinstance(raw, dict):
        chk.bad(pre, f"expected a mapping with at least a prompt, got {type(raw).__name__}")
        return None
    chk.unknown(pre + ".", raw, _SHOT_KEYS)
    if "prompt" not in raw:
        chk.bad(pre + ".prompt", "missing (every shot needs a prompt)")
    prompt = chk.string(pre + ".prompt", raw.get("prompt"))
    who_raw = raw.get("characters") or []
    who: list[str] = []
    if not isinstance(who_raw, list) or not all(isinstance(w, str) and w.strip() for w in who_raw):
        chk.bad(pre + ".characters", f"expected a list of character names, e.g. [Mira, Theo], got {who_raw!r}")
    else:
        who = [w.strip() for w in who_raw]
        if len(set(who)) != len(who):
            chk.bad(pre + ".characters", "a character is listed twice")
        unknown = [w for w in who if w not in cast]
        if unknown and cast:
            chk.bad(pre + ".characters", f"unknown character(s) {', '.join(map(repr, unknown))} (known: "
                    f"{', '.join(cast)})")

    def per_character(key: str, check) -> list:
        raw_map = raw.get(key) or {}
        if not isinstance(raw_map, dict):
            chk.bad(f"{pre}.{key}", f"expected a mapping name -> value, got {type(raw_map).__name__}")
            return []
        out = []
        for name, value in raw_map.items():
            field = f"{pre}.{key}.{name}"
            if name not in who or name not in cast:
                chk.bad(field, f"{name!r} is not listed in this shot's characters"
                        + ("" if name in cast else " nor defined under characters"))
                continue
            checked = check(field, value)
            if checked:
                out.append((name, checked))
        return out

    boxes = per_character("boxes", chk.box)
    masks = per_character("masks", chk.path)
    negative = chk.string(pre + ".negative_prompt", raw.get("negative_prompt"))
    seed = None if raw.get("seed") is None else _int(chk, pre + ".seed", raw["seed"], 0, MAX_SEED)
    image = None if raw.get("image") is None else (chk.path(pre + ".image", raw["image"]) or "")
    lock = raw.get("lock", False)
    if not isinstance(lock, bool):
        chk.bad(pre + ".lock", f"expected true or false, got {lock!r}")
        lock = False
    return _ShotEntry(pre, prompt, tuple(who), tuple(boxes), tuple(masks), negative, seed, image, lock,
                      _timing(chk, pre, raw))


def _timing(chk: FieldChecker, pre: str, raw: dict) -> dict:
    """The shot's board fields that are given (dreamshot.shot_timing); absent ones keep Shot's defaults."""
    out: dict[str, Any] = {}
    if raw.get("duration") is not None:
        problem = duration_problem(raw["duration"])
        if problem:
            chk.bad(pre + ".duration", problem)
        else:
            out["duration"] = float(raw["duration"])
    if raw.get("camera") is not None:
        try:
            out["camera"] = parse_camera(raw["camera"])
        except DreamShotInputError as e:
            chk.bad(pre + ".camera", f"{e.problem.rstrip('.')} ({e.fix.rstrip('.')})")
    for key in ("shot_size", "action", "dialogue"):
        if raw.get(key) is not None:
            out[key] = chk.string(f"{pre}.{key}", raw[key]).strip()
    return out


def _parse(path: Path, confine: Path | None):
    path = Path(path)
    if path.suffix.lower() not in STORY_SUFFIXES:
        raise DreamShotInputError("story", f"{path.name} is not a story file.",
                                  f"use a file ending in {', '.join(STORY_SUFFIXES)}.")
    if confine is not None:
        root = os.path.realpath(confine)
        if os.path.commonpath([os.path.realpath(path), root]) != root:
            raise DreamShotInputError("story", f"{path} leads out of {root}.",
                                      "pick a story file inside that folder (no '..', no links out of it).")
    if not path.is_file():
        raise DreamShotInputError("story", f"the story file {path} was not found.", "check the path.")
    raw, lines, twice = _load_source(path)
    chk = FieldChecker(path.name, path.parent, True, folder="story file's folder", lines=lines,
                       confine=confine if confine is not None else path.parent)
    chk.problems.extend(twice)
    if not isinstance(raw, dict):
        chk.bad("(top)", "expected a mapping with 'shots' (and title, settings, characters)"
                + (", but the file is empty" if raw is None else f", got {type(raw).__name__}"))
        raise _fail(path, chk.problems)
    too_many = count_problems(raw)      # before any entry is looked at
    if too_many:
        for field, problem in too_many:
            chk.bad(field, problem)
        raise _fail(path, chk.problems)
    chk.unknown("", raw, _TOP_KEYS)
    if "format" in raw and raw["format"] != FORMAT:
        chk.bad("format", f"expected {FORMAT!r}, got {raw['format']!r}")
    if "version" in raw and raw["version"] != FORMAT_VERSION:
        chk.bad("version", f"this DreamShot reads version {FORMAT_VERSION}, got {raw['version']!r}")
    title = chk.string("title", raw.get("title")).strip()
    settings = parse_settings(chk, raw.get("settings"))
    chars_raw = raw.get("characters") or []
    if not isinstance(chars_raw, list):
        chk.bad("characters", f"expected a list of characters (- name: ...), got {type(chars_raw).__name__}")
        chars_raw = []
    names: dict[str, str] = {}
    characters = [e for i, raw_c in enumerate(chars_raw) if (e := _character(chk, i, raw_c, names)) is not None]
    shots_raw = raw.get("shots")
    if not isinstance(shots_raw, list) or not shots_raw:
        chk.bad("shots", "expected a non-empty list of shots (- prompt: ...)")
        shots_raw = []
    shots = [e for j, raw_s in enumerate(shots_raw) if (e := _shot(chk, j, raw_s, names)) is not None]
    if not chk.problems:
        check_shot_lora_scopes(chk, settings, [s.characters for s in shots])
    return chk, title, settings, characters, shots


def _check_images(chk: FieldChecker, char_entries: list[_CharacterEntry], shot_entries: list[_ShotEntry]) -> None:
    """Before any image is decoded: how many the story names and their pixels together (from the
    files' headers), every mention counted, as each is loaded."""
    named = [(_field(c.field, key, paths, k), p) for c in char_entries
             for key, paths in (("reference", c.references), ("mask", c.masks)) for k, p in enumerate(paths) if p]
    named += [(f"{s.field}.image", s.image) for s in shot_entries if s.image]
    named += [(f"{s.field}.masks.{name}", rel) for s in shot_entries for name, rel in s.masks]
    if len(named) > MAX_IMAGES:
        chk.bad(named[MAX_IMAGES][0], f"the story names {len(named)} images; at most {MAX_IMAGES} (split it "
                "into several files)")
        return
    total = 0
    for field, rel in named:
        try:
            total += image_pixels(chk.root / rel, field)
        except DreamShotInputError as e:
            chk.bad(field, e.problem.rstrip("."))
            continue
        if total > MAX_STORY_PIXELS:
            chk.bad(field, f"the story's images add up to more than {MAX_STORY_PIXELS // 1_000_000} megapixels "
                    f"by this one ({total // 1_000_000}); scale them down (a storyboard frame is about 1 megapixel)")
            return


def _read(chk: FieldChecker, field: str, rel: str, mask: bool = False) -> torch.Tensor | None:
    try:
        return (load_mask if mask else load_image)(chk.root / rel, field)
    except DreamShotInputError as e:
        chk.bad(field, e.problem.rstrip("."))
        return None


def _field(entry_field: str, key: str, values: tuple, k: int) -> str:
    return f"{entry_field}.{key}[{k}]" if len(values) > 1 else f"{entry_field}.{key}"


def _load_character(chk: FieldChecker, c: _CharacterEntry) -> Character | None:
    images = [_read(chk, _field(c.field, "reference", c.references, k), p) for k, p in enumerate(c.references)]
    masks = [None if p is None else _read(chk, _field(c.field, "mask", c.masks, k), p, mask=True)
             for k, p in enumerate(c.masks)]
    if any(x is None for x in images) or any(m is None for m, p in zip(masks, c.masks) if p is not None):
        return None
    for k, (m, p) in enumerate(zip(masks, c.masks)):
        if m is not None and tuple(m.shape) != tuple(images[k].shape[:2]):
            chk.bad(_field(c.field, "mask", c.masks, k), f"the mask {p!r} is {m.shape[1]}x{m.shape[0]} but its "
                    f"reference is {images[k].shape[1]}x{images[k].shape[0]}; use the mask made for that image")
            return None
    # One tensor per character: further references are fitted (padded white) to the first one's size.
    h, w = images[0].shape[:2]
    stacked = torch.stack([fit_image(x, w, h, "pad_white") for x in images])
    mask_tensor = None
    if masks:
        full = torch.ones(h, w)
        mask_tensor = torch.stack([full if m is None else fit_mask(m, w, h, "pad_white") for m in masks])
    return Character(name=c.name, images=stacked, masks=mask_tensor, description=c.description, kind=c.kind)


def _load_shot(chk: FieldChecker, s: _ShotEntry) -> Shot | None:
    image = None if s.image is None else _read(chk, s.field + ".image", s.image)
    regions: list = list(s.boxes)
    for name, rel in s.masks:
        mask = _read(chk, f"{s.field}.masks.{name}", rel, mask=True)
        if mask is not None:
            regions.append((name, mask))
    if (s.image is not None and image is None) or len(regions) != len(s.boxes) + len(s.masks):
        return None
    return Shot(prompt=s.prompt, characters=s.characters, image=image, regions=tuple(regions),
                negative_prompt=s.negative_prompt, seed=s.seed, **(s.timing or {}))


def read_story(path: str | Path, confine: str | Path | None = None) -> Story:
    """Read, check and load a story file (images included).

    Args:
        path: the .yaml / .yml / .json file.
        confine: the folder the story file and every image it names must stay inside, symlinks
            followed (Load Story: ComfyUI's input folder); default the story file's own folder.

    Raises:
        DreamShotInputError listing every problem as ``FILE:LINE: field: problem``.
    """
    path = Path(path)
    chk, title, settings, char_entries, shot_entries = _parse(path, None if confine is None else Path(confine))
    if chk.problems:
        raise _fail(path, chk.problems)
    _check_images(chk, char_entries, shot_entries)
    if chk.problems:
        raise _fail(path, chk.problems)
    characters = [_load_character(chk, c) for c in char_entries]
    shots = [_load_shot(chk, s) for s in shot_entries]
    if chk.problems:
        raise _fail(path, chk.problems)
    return Story(characters=tuple(characters), shots=tuple(shots), title=title,
                 locked=tuple(j for j, s in enumerate(shot_entries) if s.lock), settings=settings)


def story_files_used(path: str | Path, confine: str | Path | None = None) -> list[Path]:
    """The story file and every image it names (for fingerprints); raises like read_story."""
    path = Path(path)
    chk, _, _, char_entries, shot_entries = _parse(path, None if confine is None else Path(confine))
    if chk.problems:
        raise _fail(path, chk.problems)
    rels = [p for c in char_entries for p in (*c.references, *c.masks) if p]
    rels += [p for s in shot_entries for p in ([s.image] if s.image else []) + [m for _, m in s.masks]]
    return [path] + [path.parent / rel for rel in rels]


def list_story_files(folder: str | Path, max_depth: int = 2) -> list[str]:
    """Story files in ``folder`` and its subfolders (``max_depth`` levels, hidden ones skipped), as
    sorted ``/``-separated relative paths."""
    folder = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        depth = len(rel.parts)
        dirnames[:] = [] if depth >= max_depth else sorted(d for d in dirnames if not d.startswith("."))
        found += [(rel / f).as_posix() for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in STORY_SUFFIXES]
    return sorted(found)


# ----------------------------------------------------------------------------------------- writing
def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def story_document(story: Story, image_dir: str) -> tuple[dict, list[tuple[str, bytes]]]:
    """The story as a story-file mapping and its images as PNG files [(path in image_dir, bytes)];
    paths in the mapping are ``image_dir/<file>``."""
    files: list[tuple[str, bytes]] = []
    taken: set[str] = set()

    def add(stem: str, pixels: np.ndarray) -> str:
        name, n = f"{stem}.png", 2
        while name.lower() in taken:
            name, n = f"{stem}_{n}.png", n + 1
        taken.add(name.lower())
        files.append((name, _png_bytes(pixels)))
        return f"{image_dir}/{name}"

    def one_or_list(items: list):
        return items[0] if len(items) == 1 else items

    doc: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION}
    if story.title:
        doc["title"] = story.title
    if story.settings.given():
        doc["settings"] = story.settings.given()
    characters = []
    for c in story.characters:
        stem = safe_stem(c.name, default="character")
        entry: dict[str, Any] = {"name": c.name}
        if c.kind != "character":
            entry["kind"] = c.kind
        n = c.images.shape[0]
        entry["reference"] = one_or_list([add(stem if n == 1 else f"{stem}_{k + 1}", _to_uint8(c.images[k, ..., :3]))
                                          for k in range(n)])
        if c.masks is not None:
            masks = c.masks if c.masks.ndim == 3 else c.masks.unsqueeze(0)
            if masks.shape[0] not in (1, n):   # as plan_story reads them: the last mask for the rest
                masks = masks[[min(k, masks.shape[0] - 1) for k in range(n)]]
            entry["mask"] = one_or_list([add(f"{stem}_mask" if masks.shape[0] == 1 else f"{stem}_mask_{k + 1}",
                                             _to_uint8(m)) for k, m in enumerate(masks)])
        if c.description:
            entry["description"] = c.description
        characters.append(entry)
    if characters:
        doc["characters"] = characters
    shots = []
    for j, s in enumerate(story.shots):
        entry = {"prompt": s.prompt}
        if s.characters:
            entry["characters"] = list(s.characters)
        boxes = {name: [float(v) for v in spec] for name, spec in s.regions if not isinstance(spec, torch.Tensor)}
        masks = {name: add(f"shot_{j + 1:02d}_{safe_stem(name, default='character')}_mask", _to_uint8(spec))
                 for name, spec in s.regions if isinstance(spec, torch.Tensor)}
        if boxes:
            entry["boxes"] = boxes
        if masks:
            entry["masks"] = masks
        if s.negative_prompt:
            entry["negative_prompt"] = s.negative_prompt
        if s.seed is not None:
            entry["seed"] = int(s.seed)
        if s.image is not None:
            entry["image"] = add(f"shot_{j + 1:02d}", _to_uint8(s.image[..., :3]))
        if j in story.locked:
            entry["lock"] = True
        if s.duration != DEFAULT_DURATION:
            entry["duration"] = float(s.duration)
        for key in ("shot_size", "camera", "action", "dialogue"):
            if getattr(s, key) and getattr(s, key) != ("static" if key == "camera" else ""):
                entry[key] = getattr(s, key)
        shots.append(entry)
    doc["shots"] = shots
    return doc, files


def dump_story(doc: dict, suffix: str = ".yaml") -> str:
    if suffix.lower() == ".json":
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    import yaml

    header = f"# DreamShot story file ({DOCS}). Paths are relative to this file's folder.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)


def write_story(path: str | Path, story: Story, confine: str | Path | None = None) -> Path:
    """Write ``story`` as ``path`` (.yaml/.yml/.json) with its images as PNGs in the folder of the same
    name beside it (``lighthouse.yaml`` + ``lighthouse/``). Never overwrites: FileExistsError when
    either exists. The images are written first, each atomically, and the story file last, published
    only under a free name, so a story file always has all its images; on failure nothing is left.
    ``confine``: the folder the files must stay inside (symlinks followed)."""
    path = Path(path)
    if path.suffix.lower() not in STORY_SUFFIXES:
        raise DreamShotInputError("story", f"{path.name} does not end in {', '.join(STORY_SUFFIXES)}.",
                                  "name the story file e.g. story.yaml.")
    if confine is not None:
        root = os.path.realpath(confine)
        if os.path.commonpath([os.path.realpath(path.parent), root]) != root:
            raise DreamShotInputError("story", f"{path} leads out of {root}.", "save inside that folder.")
    folder = path.with_suffix("")
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists")
    doc, files = story_document(story, folder.name)
    if files:
        os.mkdir(folder)             # exclusive: FileExistsError when taken
    tmp = None
    try:
        for name, data in files:
            atomic_write(folder / name, lambda t, data=data: Path(t).write_bytes(data))
        tmp = write_temp(str(path.parent), dump_story(doc, path.suffix).encode("utf-8"))
        if not publish_new(tmp, str(path)):
            raise FileExistsError(f"{path} exists")
    except BaseException:
        if files:
            shutil.rmtree(folder, ignore_errors=True)    # the folder is ours: created just above
        raise
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path
