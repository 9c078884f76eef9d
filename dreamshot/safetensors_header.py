"""Reading a .safetensors file's JSON header (names, dtypes, shapes) without reading any tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_header(path: str | Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", ...}} of a .safetensors file (its JSON header; no tensor is read)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header
