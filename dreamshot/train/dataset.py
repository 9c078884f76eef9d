"""The DreamShot training dataset: a folder with ``manifest.jsonl`` (read, validated, loaded).

Format (version 1)
------------------
A dataset is a folder holding ``manifest.jsonl`` and the images it names (paths are relative
to the folder, ``/``-separated; absolute paths and ``..`` are refused). Each line is one JSON
object, one **sequence** (a story: shots in order plus its cast)::

    {"id": "film01_scene03",
     "shots": [
        {"image": "film01/s03_000.png",
         "caption": "Mira, in a red coat, waits at the bus stop in the rain.",
         "characters": ["mira"],
         "masks": {"mira": "film01/s03_000_mira.png"}},
        {"image": "film01/s03_001.png",
         "caption": "Close-up: Theo hands Mira an umbrella.",
         "characters": ["mira", "theo"],
         "masks": {"mira": "film01/s03_001_mira.png", "theo": "film01/s03_001_theo.png"}}
     ],
     "characters": {
        "mira": {"name": "Mira", "reference": "film01/ref_mira.png",
                 "mask": "film01/ref_mira_saliency.png", "description": "a young woman, red coat"},
        "theo": {"name": "Theo", "reference": "film01/ref_theo.png", "mask": null}
     }}

Fields
~~~~~~
- ``id`` (string, required, unique in the manifest; letters, digits, ``._-`` only): names the
  cache file.
- ``shots`` (list, required, at least one): in story order. Per shot:

  - ``image`` (required): the keyframe (any format Pillow reads; RGB is used).
  - ``caption`` (string, required, may be ""): the shot's script; each shot cross-attends only
    to its own caption.
  - ``characters`` (list of character ids, optional, default []): who is in the shot.
  - ``masks`` (object id -> image path, optional): per character, where it is in this shot
    (grayscale, white = the character, soft edges allowed), e.g. from grounding segmentation.
    Keys must be listed in ``characters``. Used by the RACL loss; a character without a mask
    simply gives no RACL term for that shot.
- ``characters`` (object id -> character, optional, default {}): the cast. Per character:

  - ``reference`` (required): its reference image, or a list of reference images. Each
    reference becomes one clean leading latent frame (encoded alone).
  - ``mask`` (optional, null allowed): the reference's saliency mask (white = character), or
    a list with one entry (path or null) per reference. Without it the whole reference counts.
  - ``name`` (string, optional, default the id) and ``description`` (string, optional): a
    non-empty description is the caption the reference frames cross-attend to.

Every id listed in a shot's ``characters`` must be a key of the sequence's ``characters``.

Video records
~~~~~~~~~~~~~
A line may instead hold one **video clip** for plain text-to-video training (``modes.t2v``: every
frame noised, one caption for all of them)::

    {"id": "clip0001", "video": {"frames": ["clip0001/f00.png", "...", "clip0001/f08.png"],
                                 "caption": "Mira enters from left, Theo at right."}}

- ``video.frames`` (list of image paths, required): the clip's pixel frames in order, ``1 + 4k``
  of them (Wan's VAE encodes 1 + 4k frames to 1 + k latent frames).
- ``video.caption`` (string, required, may be ""): the caption every latent frame cross-attends to.

A video record has no ``shots`` or ``characters``; it trains only ``modes.t2v`` (and the story
modes never draw it).
Images of any size are fitted to the training size when cached (``data.shot_fit``,
``data.reference_fit``; masks are fitted exactly like their image). Lines that are empty or
start with ``#`` are skipped. Unknown keys are refused (a typo would silently drop data).

Every problem is reported as ``manifest.jsonl:LINE: field: problem``, and all problems of a
manifest are collected before failing, so one run lists them all.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path


from ..field_checks import FieldChecker

MANIFEST = "manifest.jsonl"
FORMAT_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEQ_KEYS = {"id", "shots", "characters"}
_VIDEO_SEQ_KEYS = {"id", "video"}
_VIDEO_KEYS = {"frames", "caption"}
_SHOT_KEYS = {"image", "caption", "characters", "masks"}
_CHAR_KEYS = {"name", "reference", "mask", "description"}


class DatasetError(ValueError):
    """Problems found in a manifest, one line each: ``file:line: field: problem``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = self.problems[:50]
        more = f"\n... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n" + "\n".join(shown) + more)


@dataclass(frozen=True)
class CharacterEntry:
    id: str
    name: str
    references: tuple[str, ...]
    masks: tuple[str | None, ...]
    description: str = ""


@dataclass(frozen=True)
class ShotEntry:
    image: str
    caption: str
    characters: tuple[str, ...] = ()
    masks: tuple[tuple[str, str], ...] = ()   # (character id, mask path)
    frames: tuple[str, ...] = ()   # a video record's clip: every pixel frame (``image`` is the first)


@dataclass(frozen=True)
class SequenceEntry:
    id: str
    line: int
    shots: tuple[ShotEntry, ...]
    characters: tuple[CharacterEntry, ...]
    source: str = field(default="", repr=False)   # the manifest line, for the cache fingerprint

    def character(self, cid: str) -> CharacterEntry:
        for c in self.characters:
            if c.id == cid:
                return c
        raise KeyError(cid)

    @property
    def is_video(self) -> bool:
        """A video record: one clip (its only shot) trained as text-to-video."""
        return any(s.frames for s in self.shots)

    def files(self) -> list[str]:
        out = []
        for s in self.shots:
            out.append(s.image)
            out.extend(s.frames[1:])
            out.extend(p for _, p in s.masks)
        for c in self.characters:
            out.extend(c.references)
            out.extend(m for m in c.masks if m)
        return out


def _parse_character(chk: FieldChecker, cid: str, raw) -> CharacterEntry | None:
    pre = f"characters.{cid}"
    if not _ID_RE.match(cid):
        chk.bad(pre, "a character id uses letters, digits, '.', '_' and '-' only")
    if not isinstance(raw, dict):
        chk.bad(pre, f"expected an object, got {type(raw).__name__}")
        return None
    chk.unknown(pre + ".", raw, _CHAR_KEYS)
    refs_raw = raw.get("reference")
    if refs_raw is None:
        chk.bad(pre + ".reference", "missing (every character needs a reference image)")
        refs_raw = []
    refs_list = refs_raw if isinstance(refs_raw, list) else [refs_raw]
    if isinstance(refs_raw, list) and not refs_raw:
        chk.bad(pre + ".reference", "empty list")
    refs = [chk.path(f"{pre}.reference" + (f"[{i}]" if isinstance(refs_raw, list) else ""), r)
            for i, r in enumerate(refs_list)]
    mask_raw = raw.get("mask")
    if isinstance(mask_raw, list):
        if len(mask_raw) != len(refs_list):
            chk.bad(pre + ".mask", f"{len(mask_raw)} masks for {len(refs_list)} references (one per reference, "
                    "null for none)")
            mask_raw = (mask_raw + [None] * len(refs_list))[:len(refs_list)]
        masks = [None if m is None else chk.path(f"{pre}.mask[{i}]", m) for i, m in enumerate(mask_raw)]
    elif mask_raw is None:
        masks = [None] * len(refs_list)
    else:
        if isinstance(refs_raw, list) and len(refs_list) > 1:
            chk.bad(pre + ".mask", "several references need a list of masks (null for none)")
        masks = [chk.path(pre + ".mask", mask_raw)] + [None] * (len(refs_list) - 1)
    name = chk.string(pre + ".name", raw.get("name")) or cid
    desc = chk.string(pre + ".description", raw.get("description"))
    return CharacterEntry(cid, name, tuple(r or "" for r in refs), tuple(masks), desc)


def _parse_shot(chk: FieldChecker, j: int, raw, cast: set[str]) -> ShotEntry | None:
    pre = f"shots[{j}]"
    if not isinstance(raw, dict):
        chk.bad(pre, f"expected an object, got {type(raw).__name__}")
        return None
    chk.unknown(pre + ".", raw, _SHOT_KEYS)
    image = chk.path(pre + ".image", raw.get("image"))
    if "caption" not in raw:
        chk.bad(pre + ".caption", "missing (use \"\" for a shot without script)")
    caption = chk.string(pre + ".caption", raw.get("caption"))
    chars_raw = raw.get("characters", [])
    chars: list[str] = []
    if not isinstance(chars_raw, list) or not all(isinstance(c, str) for c in chars_raw):
        chk.bad(pre + ".characters", "expected a list of character ids")
    else:
        for c in chars_raw:
            if c not in cast:
                chk.bad(pre + ".characters", f"{c!r} is not in this sequence's characters "
                        f"({', '.join(sorted(cast)) or 'none'})")
            elif c in chars:
                chk.bad(pre + ".characters", f"{c!r} is listed twice")
            else:
                chars.append(c)
    masks_raw = raw.get("masks", {})
    masks: list[tuple[str, str]] = []
    if not isinstance(masks_raw, dict):
        chk.bad(pre + ".masks", "expected an object {character id: mask path}")
    else:
        for cid, p in masks_raw.items():
            if cid not in chars:
                chk.bad(f"{pre}.masks.{cid}", "a mask for a character not listed in this shot's characters")
                continue
            path = chk.path(f"{pre}.masks.{cid}", p)
            if path:
                masks.append((cid, path))
    return ShotEntry(image or "", caption, tuple(chars), tuple(masks))


def _parse_video(chk: FieldChecker, raw) -> ShotEntry | None:
    if not isinstance(raw, dict):
        chk.bad("video", "expected an object {frames: [image paths], caption: text}")
        return None
    chk.unknown("video.", raw, _VIDEO_KEYS)
    frames_raw = raw.get("frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        chk.bad("video.frames", "expected a non-empty list of frame image paths")
        return None
    if len(frames_raw) % 4 != 1:
        n = len(frames_raw)
        chk.bad("video.frames", f"{n} frames: a clip has 1 + 4k frames (Wan's VAE compresses time 4x after "
                f"the first frame); use {n - (n - 1) % 4} or {n - (n - 1) % 4 + 4}")
    frames = [chk.path(f"video.frames[{i}]", f) for i, f in enumerate(frames_raw)]
    if "caption" not in raw:
        chk.bad("video.caption", "missing (use \"\" for a clip without caption)")
    caption = chk.string("video.caption", raw.get("caption"))
    if any(f is None for f in frames):
        return None
    return ShotEntry(frames[0], caption, frames=tuple(frames))


def parse_sequence(raw, where: str, root: Path, check_files: bool = True,
                   line: int = 0, source: str = "") -> tuple[SequenceEntry | None, list[str]]:
    """One manifest object -> (SequenceEntry or None, problems)."""
    chk = FieldChecker(where, root, check_files)
    if not isinstance(raw, dict):
        chk.bad("(line)", f"expected a JSON object, got {type(raw).__name__}")
        return None, chk.problems
    video = "video" in raw
    chk.unknown("", raw, _VIDEO_SEQ_KEYS if video else _SEQ_KEYS)
    sid = raw.get("id")
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        chk.bad("id", f"{sid!r}: expected a string of letters, digits, '.', '_' and '-' (at most 128)")
        sid = None
    if video:
        clip = _parse_video(chk, raw["video"])
        if chk.problems or sid is None or clip is None:
            return None, chk.problems
        return SequenceEntry(sid, line, (clip,), (), source), []
    chars_raw = raw.get("characters", {})
    characters: list[CharacterEntry] = []
    if not isinstance(chars_raw, dict):
        chk.bad("characters", "expected an object {character id: {reference, mask, name, description}}")
        chars_raw = {}
    for cid, craw in chars_raw.items():
        c = _parse_character(chk, cid, craw)
        if c is not None:
            characters.append(c)
    shots_raw = raw.get("shots")
    shots: list[ShotEntry] = []
    if not isinstance(shots_raw, list) or not shots_raw:
        chk.bad("shots", "expected a non-empty list of shots")
    else:
        cast = set(chars_raw)
        for j, sraw in enumerate(shots_raw):
            s = _parse_shot(chk, j, sraw, cast)
            if s is not None:
                shots.append(s)
    if chk.problems or sid is None:
        return None, chk.problems
    return SequenceEntry(sid, line, tuple(shots), tuple(characters), source), []


def read_manifest(dataset_dir: str | Path, check_files: bool = True) -> list[SequenceEntry]:
    """Parse and validate ``<dataset_dir>/manifest.jsonl``; raise DatasetError listing every problem."""
    root = Path(dataset_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError([f"{path}: not found (a dataset folder holds {MANIFEST}, one JSON sequence per line)"])
    problems: list[str] = []
    sequences: list[SequenceEntry] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(stripped)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: (line): not valid JSON: {e.msg} at column {e.colno}")
                continue
            seq, bad = parse_sequence(raw, where, root, check_files, lineno, stripped)
            problems.extend(bad)
            sid = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(sid, str):
                if sid in seen:
                    problems.append(f"{where}: id: {sid!r} already used on line {seen[sid]}")
                    continue
                seen[sid] = lineno
            if seq is not None:
                sequences.append(seq)
    if not problems and not sequences:
        problems.append(f"{path}: no sequences")
    if problems:
        raise DatasetError(problems)
    return sequences


def file_digest(root: Path, rel_paths: list[str]) -> str:
    """sha1 over the bytes of the given files (the cache re-encodes a sequence whose files change)."""
    h = hashlib.sha1()
    for rel in rel_paths:
        h.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


