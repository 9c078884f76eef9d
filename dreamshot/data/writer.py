"""The output folder: images, per-sequence and per-video records, ``manifest.jsonl``, ``summary.json``.

Layout::

    OUT/manifest.jsonl                  what dreamshot.train reads (rebuilt from the records)
    OUT/summary.json                    kept / dropped counts by reason, over all videos
    OUT/<video>/<sequence>/shot_00.png  keyframes; shot_00_<character>.png their masks;
                                        ref_<character>.png (+ _mask.png) the references
    OUT/records/settings.json           the settings the folder was made with
    OUT/records/sequences/<id>.json     a finished sequence: its manifest entry + provenance
                                        (source frames, mask sources, pairing similarities)
    OUT/records/videos/<video>.json     a finished video: its shots and counts

Every file is written atomically (temporary file, then rename) and a sequence's record only after
its images, so a run killed at any moment leaves finished sequences intact and nothing half
written; the next run skips what has a record. Provenance such as ``mask_source`` lives in the
records, not in the manifest, because dreamshot.train refuses unknown manifest fields.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DreamShotInputError
from ..atomic import atomic_write, atomic_write_json, atomic_write_text
from ..train.dataset import MANIFEST, parse_sequence

log = logging.getLogger("DreamShot.data")

RECORDS = "records"
SUMMARY = "summary.json"


def video_key(relative: str) -> str:
    """A stable, manifest-safe folder name for a video: its stem plus a hash of its relative path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(relative).stem).strip("-._")[:40] or "video"
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:6]}"


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class DatasetWriter:
    def __init__(self, out: Path, settings: dict):
        self.out = Path(out)
        self.records = self.out / RECORDS
        (self.records / "sequences").mkdir(parents=True, exist_ok=True)
        (self.records / "videos").mkdir(parents=True, exist_ok=True)
        self._clean_temporaries()
        self._check_settings(settings)

    def _clean_temporaries(self) -> None:
        """Remove the temporary files of writes a killed run left behind (atomic_write's pattern)."""
        for p in self.out.rglob(".*.tmp"):
            if p.is_file():
                p.unlink()

    def _check_settings(self, settings: dict) -> None:
        path = self.records / "settings.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old != settings:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise DreamShotInputError(
                    "out", f"{self.out} was made with other settings ({', '.join(changed)} differ), so "
                    "resuming would mix two datasets.",
                    "use the same settings to resume, or a new output folder.")
        else:
            atomic_write_json(path, settings)

    # -- records -------------------------------------------------------------------------------
    def video_record(self, key: str) -> dict | None:
        p = self.records / "videos" / f"{key}.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def sequence_record(self, seq_id: str) -> dict | None:
        p = self.records / "sequences" / f"{seq_id}.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def finish_video(self, key: str, record: dict) -> None:
        atomic_write_json(self.records / "videos" / f"{key}.json", record)

    def finish_sequence(self, seq_id: str, entry: dict, provenance: dict) -> dict:
        """Check the entry with dreamshot.train's own reader, then record it (after its images)."""
        _, problems = parse_sequence(entry, f"sequence {seq_id}", self.out, check_files=True)
        if problems:  # a bug here, not a user error: never write a manifest line training would refuse
            raise RuntimeError("dreamshot.data produced an invalid sequence:\n" + "\n".join(problems))
        record = {"entry": entry, "provenance": provenance}
        atomic_write_json(self.records / "sequences" / f"{seq_id}.json", record)
        return record

    # -- files ---------------------------------------------------------------------------------
    def write_image(self, rel: str, rgb: np.ndarray) -> str:
        data = _png_bytes(Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), mode="RGB"))
        atomic_write(self.out / rel, lambda tmp: Path(tmp).write_bytes(data))
        return rel

    def write_mask(self, rel: str, mask: np.ndarray) -> str:
        data = _png_bytes(Image.fromarray((np.clip(mask, 0, 1) * 255).round().astype(np.uint8), mode="L"))
        atomic_write(self.out / rel, lambda tmp: Path(tmp).write_bytes(data))
        return rel

    # -- manifest and summary -------------------------------------------------------------------
    def rebuild_manifest(self, order: list[str]) -> int:
        """Write manifest.jsonl from the sequence records, videos in ``order`` (their keys), then by shot."""
        rank = {k: i for i, k in enumerate(order)}
        records = []
        for p in (self.records / "sequences").glob("*.json"):
            rec = json.loads(p.read_text(encoding="utf-8"))
            prov = rec["provenance"]
            records.append((rank.get(prov["video_key"], len(rank)), prov["video_key"], prov["first_shot"], rec))
        records.sort(key=lambda r: r[:3])
        lines = [json.dumps(r[3]["entry"], ensure_ascii=False, sort_keys=True) for r in records]
        atomic_write_text(self.out / MANIFEST, "".join(line + "\n" for line in lines))
        return len(lines)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.out / SUMMARY, summary)
