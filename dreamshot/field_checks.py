"""Collecting every problem of a JSON file at once, with the field each one is in.

Shared by the training manifest (dreamshot.train.dataset) and the eval benchmark file
(dreamshot.eval.benchmark): both list all problems as ``FILE: field: problem`` rather than stopping
at the first, and both take image paths relative to their own folder, never escaping it.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath


class FieldChecker:
    def __init__(self, where: str, root: Path, check_files: bool, folder: str = "dataset folder"):
        self.where = where
        self.root = root
        self.check_files = check_files
        self.folder = folder  # how messages name ``root``
        self.problems: list[str] = []

    def bad(self, fieldname: str, problem: str) -> None:
        self.problems.append(f"{self.where}: {fieldname}: {problem}")

    def path(self, fieldname: str, value) -> str | None:
        """The path, normalised to ``/``; None (and a problem) when it is not a relative path inside root."""
        if not isinstance(value, str) or not value.strip():
            self.bad(fieldname, f"expected a relative image path, got {value!r}")
            return None
        p = PurePosixPath(value.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", value):
            self.bad(fieldname, f"{value!r} must be relative to the {self.folder}, without '..'")
            return None
        if self.check_files and not (self.root / p).is_file():
            self.bad(fieldname, f"file {value!r} not found in {self.root}")
        return str(p)

    def string(self, fieldname: str, value, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            self.bad(fieldname, f"expected a string, got {type(value).__name__}")
            return ""
        return value

    def unknown(self, prefix: str, obj: dict, allowed: set[str]) -> None:
        for k in sorted(set(obj) - allowed):
            self.bad(f"{prefix}{k}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
