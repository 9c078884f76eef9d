"""Measure generated storyboards on disk against a benchmark file.

Folder layout (the ViStoryBench outputs layout)::

    <outputs>/<method>/<mode>/<lang>/<timestamp>/<story_id>/shots/<N>.png

Shots directly in the story folder (``<story_id>/<N>.png``, as ``python -m dreamshot.vistory`` and
the official DreamShot runner write them) are read too when there is no ``shots/`` sub-folder, and
such a folder of stories can be measured on its own as one run (:func:`direct_run`, CLI ``--run``).
``<N>`` is the 1-based shot number (``1.png``, ``01.png``, ``shot_1.png`` and ``.jpg``/``.jpeg``/
``.webp`` all read as shot 1); ``--shot-numbering 0`` reads 0-based names instead. A run is one
``<timestamp>`` folder; by default only the newest timestamp of each method/mode/lang is measured.
A story folder or shot image that is missing is not skipped: its expected characters count as
misses and its CLIP score as 0 (the ``missing_shots`` column says how many).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DreamShotInputError
from ..faces import FaceAnalyzer
from .benchmark import Benchmark, BenchStory
from .clip_score import PromptScorer
from .report import run_row, story_row
from .storyboard import StoryToMeasure, measure_story, reference_embeddings

log = logging.getLogger("DreamShot.eval")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_SHOT_NAME = re.compile(r"^(?:shot[-_]?)?(\d{1,4})$", re.IGNORECASE)


@dataclass(frozen=True)
class Run:
    method: str
    mode: str
    lang: str
    timestamp: str
    folder: Path

    def keys(self) -> dict[str, str]:
        return {"method": self.method, "mode": self.mode, "lang": self.lang, "timestamp": self.timestamp}


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _timestamp_key(name: str) -> str:
    return name.replace("_", "-")   # ViStoryBench writes both 20250429-235959 and 20250429_235959


def find_runs(outputs, methods: Sequence[str] = (), modes: Sequence[str] = (), langs: Sequence[str] = (),
              timestamps: Sequence[str] = (), all_timestamps: bool = False) -> list[Run]:
    """Run folders under ``outputs`` (filters: empty = all; default: the newest timestamp per method/mode/lang)."""
    root = Path(outputs).expanduser()
    if not root.is_dir():
        raise DreamShotInputError("outputs", f"'{root}' is not a folder.",
                                  "pass the folder holding <method>/<mode>/<lang>/<timestamp>/<story_id>/shots/.")
    runs = []
    for m in _subdirs(root):
        if methods and m.name not in methods:
            continue
        for mo in _subdirs(m):
            if modes and mo.name not in modes:
                continue
            for la in _subdirs(mo):
                if langs and la.name not in langs:
                    continue
                stamps = [t for t in _subdirs(la) if not timestamps or t.name in timestamps]
                if not stamps:
                    continue
                if not (all_timestamps or timestamps):
                    stamps = [max(stamps, key=lambda t: _timestamp_key(t.name))]
                runs += [Run(m.name, mo.name, la.name, t.name, t) for t in stamps]
    if not runs:
        raise DreamShotInputError("outputs", f"no run folders <method>/<mode>/<lang>/<timestamp> found in '{root}' "
                                  "(with the filters given).", "check --outputs and the --method/--mode/--lang/"
                                  "--timestamp filters.")
    return runs


def direct_run(folder) -> Run:
    """A folder of ``<story_id>/[shots/]<N>.png`` measured as one run, named after the folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DreamShotInputError("run", f"'{folder}' is not a folder.",
                                  "pass a folder holding <story_id>/<N>.png or <story_id>/shots/<N>.png.")
    return Run(folder.resolve().name, "", "", "", folder)


def load_rgb(path: Path, input_name: str = "outputs") -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as e:
        raise DreamShotInputError(input_name, f"cannot read the image '{path}' ({e}).",
                                  "replace or remove the broken file.") from e


def shot_files(story_dir: Path, num_shots: int, numbering: int = 1) -> list[Path | None]:
    """Per shot (0-based list), its image file in ``story_dir/shots`` or None when missing."""
    files: list[Path | None] = [None] * num_shots
    folder = story_dir / "shots" if (story_dir / "shots").is_dir() else story_dir
    if not folder.is_dir():
        return files
    for p in sorted(folder.iterdir()):
        match = _SHOT_NAME.match(p.stem)
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS or match is None:
            continue
        j = int(match.group(1)) - numbering
        if not 0 <= j < num_shots:
            log.warning("%s: shot number out of range for %d shots (numbering starts at %d); ignored", p, num_shots,
                        numbering)
            continue
        if files[j] is not None:
            raise DreamShotInputError("outputs", f"two images for shot {j + 1}: '{files[j]}' and '{p}'.",
                                      "keep one image per shot number.")
        files[j] = p
    return files


def story_to_measure(bench: Benchmark, story: BenchStory) -> StoryToMeasure:
    ids = [c.id for c in story.characters]
    refs = tuple(tuple(load_rgb(bench.root / r, "benchmark") for r in c.references) for c in story.characters)
    return StoryToMeasure(
        id=story.id, names=tuple(c.name for c in story.characters), references=refs,
        prompts=tuple(s.prompt for s in story.shots),
        shot_characters=tuple(tuple(ids.index(w) for w in s.characters) for s in story.shots),
        shot_boxes=tuple({ids.index(w): box for w, box in s.boxes} for s in story.shots),
        reference_labels=tuple(tuple(f"reference '{r}'" for r in c.references) for c in story.characters),
        kinds=tuple(c.kind for c in story.characters))


def evaluate_runs(bench: Benchmark, runs: Sequence[Run], analyzer: FaceAnalyzer | None,
                  scorer: PromptScorer | None = None, numbering: int = 1,
                  on_story: Callable[[Run, BenchStory], None] | None = None) -> tuple[list[dict], list[dict]]:
    """(story rows, run rows) for every run and every benchmark story."""
    if analyzer is None and scorer is None:
        raise DreamShotInputError("face_model", "neither a face model nor a CLIP model was given: nothing to measure.",
                                  "give --face-model (identity metrics) and/or --clip-model (prompt alignment).")
    stories = [(s, story_to_measure(bench, s)) for s in bench.stories]
    # References are embedded once per story, not once per run.
    refs = {s.id: None if analyzer is None else reference_embeddings(m, analyzer, "benchmark") for s, m in stories}
    story_rows, run_rows = [], []
    for run in runs:
        rows = []
        for story, to_measure in stories:
            if on_story is not None:
                on_story(run, story)
            files = shot_files(run.folder / story.id, len(story.shots), numbering)
            if not any(files):
                log.warning("%s: no shot images for story %s: every shot counts as missing", run.folder, story.id)
            images = [None if f is None else load_rgb(f) for f in files]
            result = measure_story(to_measure, images, analyzer, scorer, input_name="benchmark",
                                   references=refs[story.id])
            rows.append(story_row(result, run.keys()))
        story_rows += rows
        run_rows.append(run_row(rows, run.keys()))
    return story_rows, run_rows
