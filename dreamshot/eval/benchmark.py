"""The storyboard benchmark file: stories (character references + shot scripts), read and validated.

Format (version 1)
------------------
One JSON file; image paths are relative to the file's folder (``/``-separated; absolute paths and
``..`` are refused)::

    {"format": "dreamshot-eval-benchmark", "version": 1,
     "stories": [
       {"id": "01",
        "characters": {
          "mira": {"name": "Mira", "reference": "refs/mira.png"},
          "theo": {"name": "Theo", "reference": ["refs/theo_1.png", "refs/theo_2.png"]}},
        "shots": [
          {"prompt": "Mira waits at the bus stop in the rain.", "characters": ["mira"]},
          {"prompt": "Theo hands Mira an umbrella.", "characters": ["mira", "theo"],
           "boxes": {"mira": [0, 0, 0.5, 1], "theo": [0.5, 0, 1, 1]}}]}]}

- ``format`` / ``version``: optional; when present they must be these values.
- ``stories`` (list, required, at least one). Per story:

  - ``id`` (required, unique; letters, digits, ``._-``): the folder the generated shots are read
    from (``<run>/<id>/shots/<N>.png``, see dreamshot.eval.runner).
  - ``characters`` (object id -> character, optional): ``reference`` (an image or a list of
    images of that character; each must show exactly the character's face, the largest face is
    used), ``name`` (optional, default the id) and ``kind`` (optional: ``character``, the default,
    or ``location`` / ``prop`` for a scene reference, which the face metrics skip).
  - ``shots`` (list, required, at least one), in story order: ``prompt`` (string, required; the
    text CLIP score compares with), ``characters`` (ids expected in the shot, optional) and
    ``boxes`` (optional: where each listed character stands, x0, y0, x1, y1 as fractions of the
    shot when all are <= 1, else pixels; given for one character, it must be given for every
    character of the shot). With boxes a face counts for the character whose box holds it, so
    swapped places count as confusion; without them faces are paired by identity.

Unknown keys are refused (a typo would silently drop data). Every problem is reported as
``FILE: stories[i].field: problem``, all of them at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DreamShotInputError
from ..field_checks import FieldChecker

FORMAT = "dreamshot-eval-benchmark"
FORMAT_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TOP_KEYS = {"format", "version", "stories"}
_STORY_KEYS = {"id", "characters", "shots"}
_CHAR_KEYS = {"name", "reference", "kind"}
KINDS = ("character", "location", "prop")   # as dreamshot.story.REFERENCE_KINDS
_SHOT_KEYS = {"prompt", "characters", "boxes"}


@dataclass(frozen=True)
class BenchCharacter:
    id: str
    name: str
    references: tuple[str, ...]   # paths relative to the benchmark folder
    kind: str = "character"       # location / prop: not measured by the face metrics


@dataclass(frozen=True)
class BenchShot:
    prompt: str
    characters: tuple[str, ...] = ()
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()


@dataclass(frozen=True)
class BenchStory:
    id: str
    characters: tuple[BenchCharacter, ...]
    shots: tuple[BenchShot, ...]


@dataclass(frozen=True)
class Benchmark:
    path: Path
    stories: tuple[BenchStory, ...]

    @property
    def root(self) -> Path:
        return self.path.parent


def _story(chk: FieldChecker, i: int, raw) -> BenchStory | None:
    pre = f"stories[{i}]"
    if not isinstance(raw, dict):
        chk.bad(pre, f"expected an object, got {type(raw).__name__}")
        return None
    chk.unknown(pre + ".", raw, _STORY_KEYS)
    sid = raw.get("id")
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        chk.bad(pre + ".id", f"expected an id of letters, digits, '.', '_', '-' (a folder name), got {sid!r}")
        sid = f"#{i}"
    chars_raw = raw.get("characters") or {}
    characters = []
    if not isinstance(chars_raw, dict):
        chk.bad(pre + ".characters", f"expected an object id -> character, got {type(chars_raw).__name__}")
        chars_raw = {}
    for cid, c in chars_raw.items():
        cpre = f"{pre}.characters.{cid}"
        if not _ID_RE.match(cid):
            chk.bad(cpre, "a character id uses letters, digits, '.', '_' and '-' only")
        if not isinstance(c, dict):
            chk.bad(cpre, f"expected an object, got {type(c).__name__}")
            continue
        chk.unknown(cpre + ".", c, _CHAR_KEYS)
        refs_raw = c.get("reference")
        if refs_raw is None or refs_raw == []:
            chk.bad(cpre + ".reference", "missing (every character needs at least one reference image)")
            refs_raw = []
        many = isinstance(refs_raw, list)
        refs = [chk.path(cpre + ".reference" + (f"[{k}]" if many else ""), r) or ""
                for k, r in enumerate(refs_raw if many else [refs_raw])]
        name = c.get("name", cid)
        if not isinstance(name, str) or not name.strip():
            chk.bad(cpre + ".name", f"expected a non-empty string, got {name!r}")
            name = cid
        kind = c.get("kind", "character")
        if kind not in KINDS:
            chk.bad(cpre + ".kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
            kind = "character"
        characters.append(BenchCharacter(cid, name, tuple(refs), kind))
    shots_raw = raw.get("shots")
    if not isinstance(shots_raw, list) or not shots_raw:
        chk.bad(pre + ".shots", "expected a non-empty list of shots")
        shots_raw = []
    shots = []
    for j, s in enumerate(shots_raw):
        spre = f"{pre}.shots[{j}]"
        if not isinstance(s, dict):
            chk.bad(spre, f"expected an object, got {type(s).__name__}")
            continue
        chk.unknown(spre + ".", s, _SHOT_KEYS)
        prompt = s.get("prompt")
        if not isinstance(prompt, str):
            chk.bad(spre + ".prompt", f"expected a string, got {type(prompt).__name__}")
            prompt = ""
        who = s.get("characters") or []
        if not isinstance(who, list) or not all(isinstance(w, str) for w in who):
            chk.bad(spre + ".characters", f"expected a list of character ids, got {who!r}")
            who = []
        for w in who:
            if w not in chars_raw:
                chk.bad(spre + ".characters", f"unknown character {w!r} (known: {', '.join(chars_raw) or 'none'})")
        if len(set(who)) != len(who):
            chk.bad(spre + ".characters", "a character is listed twice")
        boxes_raw = s.get("boxes") or {}
        boxes = []
        if not isinstance(boxes_raw, dict):
            chk.bad(spre + ".boxes", f"expected an object id -> [x0, y0, x1, y1], got {type(boxes_raw).__name__}")
            boxes_raw = {}
        for cid, b in boxes_raw.items():
            if cid not in who:
                chk.bad(f"{spre}.boxes.{cid}", "gives a box for a character not listed in the shot's characters")
            box = chk.box(f"{spre}.boxes.{cid}", b)
            if box is not None:
                boxes.append((cid, box))
        if boxes_raw and set(boxes_raw) != set(who):
            chk.bad(spre + ".boxes", "give a box for every character of the shot, or none")
        shots.append(BenchShot(prompt, tuple(who), tuple(boxes)))
    return BenchStory(sid, tuple(characters), tuple(shots))


def read_benchmark(path, check_files: bool = True) -> Benchmark:
    """Read and validate a benchmark file; every problem at once in one DreamShotInputError."""
    path = Path(path).expanduser()
    fix = "fix the listed fields (format: dreamshot/eval/benchmark.py, README 'Measuring storyboards')."
    if not path.is_file():
        raise DreamShotInputError("benchmark", f"'{path}' is not a file.", "pass the benchmark .json file.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DreamShotInputError("benchmark", f"'{path}' is not valid JSON ({e}).", fix) from e
    chk = FieldChecker(path.name, path.parent.resolve(), check_files, folder="benchmark file's folder")
    stories: list[BenchStory] = []
    if not isinstance(raw, dict):
        chk.bad("(top)", f"expected an object with 'stories', got {type(raw).__name__}")
        raw = {}
    chk.unknown("", raw, _TOP_KEYS)
    if "format" in raw and raw["format"] != FORMAT:
        chk.bad("format", f"expected {FORMAT!r}, got {raw['format']!r}")
    if "version" in raw and raw["version"] != FORMAT_VERSION:
        chk.bad("version", f"this DreamShot reads version {FORMAT_VERSION}, got {raw['version']!r}")
    stories_raw = raw.get("stories")
    if not isinstance(stories_raw, list) or not stories_raw:
        chk.bad("stories", "expected a non-empty list of stories")
        stories_raw = []
    for i, s in enumerate(stories_raw):
        story = _story(chk, i, s)
        if story is not None:
            stories.append(story)
    ids = [s.id for s in stories]
    for sid in sorted({x for x in ids if ids.count(x) > 1}):
        chk.bad("stories", f"story id {sid!r} is used more than once")
    if chk.problems:
        shown = chk.problems[:50]
        more = f"; ... and {len(chk.problems) - 50} more" if len(chk.problems) > 50 else ""
        raise DreamShotInputError("benchmark", f"{len(chk.problems)} problem(s): " + "; ".join(shown) + more + ".",
                                  fix)
    return Benchmark(path.resolve(), tuple(stories))
