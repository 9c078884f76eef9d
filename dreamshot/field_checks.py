"""Collecting every problem of a JSON or YAML file at once, with the field each one is in.

Shared by the training manifest (dreamshot.train.dataset), the eval benchmark file
(dreamshot.eval.benchmark) and story files (dreamshot.story_file): all list every problem as
``FILE[:LINE]: field: problem`` rather than stopping at the first, and all take image paths relative
to their own folder, never escaping it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Mapping


class FieldChecker:
    """Args:
        where: how messages name the file.
        root: the folder relative paths start from.
        check_files: whether named files must exist.
        folder: how messages name ``root``.
        lines: optional field path -> line in the file (YAML/JSON source); a problem names the line of
            its field, or of the closest enclosing field that has one.
        confine: optional folder that every path must stay inside once symlinks are followed.
    """

    def __init__(self, where: str, root: Path, check_files: bool, folder: str = "dataset folder",
                 lines: Mapping[str, int] | None = None, confine: Path | None = None):
        self.where = where
        self.root = root
        self.check_files = check_files
        self.folder = folder  # how messages name ``root``
        self.lines = lines or {}
        self.confine = confine
        self.problems: list[str] = []

    def line(self, fieldname: str) -> int | None:
        path = fieldname
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("(top)")     # a missing top-level field: the document's line, where known

    def bad(self, fieldname: str, problem: str) -> None:
        line = self.line(fieldname)
        where = f"{self.where}:{line}" if line is not None else self.where
        self.problems.append(f"{where}: {fieldname}: {problem}")

    def path(self, fieldname: str, value) -> str | None:
        """The path, normalised to ``/``; None (and a problem) when it is not a relative path inside root."""
        if not isinstance(value, str) or not value.strip():
            self.bad(fieldname, f"expected a relative image path, got {value!r}")
            return None
        p = PurePosixPath(value.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", value):
            self.bad(fieldname, f"{value!r} must be relative to the {self.folder}, without '..'")
            return None
        full = self.root / p
        try:   # a NUL character or a name too long for the system: ValueError / OSError, named here
            if self.confine is not None:
                confine = os.path.realpath(self.confine)
                if os.path.commonpath([os.path.realpath(full), confine]) != confine:
                    self.bad(fieldname, f"{value!r} leads out of {confine} (a link)")
                    return None
            if self.check_files and not full.is_file():
                self.bad(fieldname, f"file {value!r} not found in {self.root}")
        except (OSError, ValueError) as e:
            self.bad(fieldname, f"{value[:200]!r} cannot be a file name here ({getattr(e, 'strerror', None) or e})")
            return None
        return str(p)

    def string(self, fieldname: str, value, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            quote = " (put it in quotes)" if isinstance(value, (bool, int, float)) else ""
            self.bad(fieldname, f"expected a string, got {type(value).__name__}{quote}")
            return ""
        return value

    def box(self, fieldname: str, raw) -> tuple[float, float, float, float] | None:
        """[x0, y0, x1, y1]: finite numbers >= 0 with x1 > x0 and y1 > y0."""
        ok = isinstance(raw, list) and len(raw) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
        if not ok or not (raw[2] > raw[0] and raw[3] > raw[1]) or min(raw) < 0:
            self.bad(fieldname, f"expected [x0, y0, x1, y1] with x1 > x0, y1 > y0, all >= 0, got {raw!r}")
            return None
        return tuple(float(v) for v in raw)

    def unknown(self, prefix: str, obj: dict, allowed: set[str]) -> None:
        for k in sorted(set(obj) - allowed, key=str):
            self.bad(f"{prefix}{k}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
