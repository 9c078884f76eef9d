"""Bounds on story files, checked before anything in a file is expanded (issue 23).

Story files come from other people. A 400-byte YAML file whose aliases nest nine levels of nine
(9^9 values once expanded) used to take the parser 86 s and 6.4 GB before it refused the file, and
froze ComfyUI's server meanwhile. Here every bound is checked while the file is read: the raw bytes
first (size, UTF-8), then YAML's node graph as it is composed, where an alias is one shared node,
so its expanded size is added up (a memo per node), never walked; JSON's parsed tree (JSON has no
aliases, but deep nesting and huge numbers). Only then is anything constructed. So any file is read
or refused in a fixed time and memory, each refusal naming ``FILE:LINE``.

The limits lie far above any real story (docs/story-files.md, "Limits"); they are here, in one place.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from .images import MAX_IMAGE_PIXELS

MAX_FILE_BYTES = 256 * 1024           # the file; a 40-shot story is ~15 KB
MAX_DEPTH = 32                        # nesting; a story needs 6 (shots[0].boxes.Mira[0])
MAX_NODES = 16_000                    # values and aliases written in the file (a shot is 3 to ~25)
MAX_EXPANDED_NODES = 50_000           # values once aliases and merge keys (<<) are expanded
MAX_EXPANDED_CHARS = 4 * 1024 * 1024  # characters of text once aliases are expanded
MAX_TEXT_CHARS = 20_000               # one string: a prompt, a description, a name, a path
MAX_NUMBER_CHARS = 100                # one number (a seed has at most 20 digits)
MAX_SHOTS = 500
MAX_CHARACTERS = 200                  # in the story, and listed by one shot (boxes, masks)
MAX_REFERENCES = 64                   # images of one character (and masks)
MAX_IMAGES = 2_000                    # image paths a story names, each mention counted
MAX_STORY_PIXELS = 2 ** 28            # their pixels together (~3.2 GB as float32 RGB)
# MAX_IMAGE_PIXELS (one image, checked from its header before decoding) is dreamshot.images'.

__all__ = ["MAX_CHARACTERS", "MAX_DEPTH", "MAX_EXPANDED_CHARS", "MAX_EXPANDED_NODES", "MAX_FILE_BYTES",
           "MAX_IMAGES", "MAX_IMAGE_PIXELS", "MAX_NODES", "MAX_NUMBER_CHARS", "MAX_REFERENCES", "MAX_SHOTS",
           "MAX_STORY_PIXELS", "MAX_TEXT_CHARS", "SourceRefused", "count_problems", "load_file", "load_yaml_text"]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class SourceRefused(Exception):
    """A file (or settings text) refused before it was constructed: ``problem`` reads
    ``NAME:LINE[:COLUMN]: what`` (``NAME: what`` for the whole file)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def _size_text(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


# ----------------------------------------------------------------------------------------- bytes
def _read_bytes(path: Path) -> bytes:
    """At most MAX_FILE_BYTES + 1 bytes: a larger file is never read whole."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SourceRefused(f"{path.name}: the file is larger than {_size_text(MAX_FILE_BYTES)} "
                            f"(story files are at most {MAX_FILE_BYTES} bytes)")
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SourceRefused(f"{name}:{line}:{column}: not UTF-8 text ({e.reason}, byte 0x{data[e.start]:02x} at "
                            f"offset {e.start}); save the file as UTF-8") from None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, max(0, offset)) + 1


# ----------------------------------------------------------------------------------------- YAML
@functools.lru_cache(maxsize=None)
def _loader_class():
    import yaml
    from yaml.constructor import ConstructorError

    class BoundedLoader(yaml.SafeLoader):
        """yaml.SafeLoader that checks the bounds while it composes (before anything is constructed)
        and reports a value it cannot construct (a date like 2024-02-30) at its line."""

        def __init__(self, text: str, name: str):
            super().__init__(text)
            self.name = name
            self.depth = 0
            self.count = 0
            self.sizes: dict[int, tuple[int, int]] = {}   # id(node) -> (values, characters) expanded

        def refuse(self, mark, problem: str):
            raise SourceRefused(f"{self.name}:{mark.line + 1}: {problem}")

        def fetch_flow_collection_start(self, TokenClass):
            # The scanner keeps a possible key per open [ or { and rechecks them all at each token:
            # unbounded, a line of 5000 [ took seconds before the composer saw a node.
            if self.flow_level >= MAX_DEPTH:
                self.refuse(self.get_mark(), f"values nested more than {MAX_DEPTH} deep")
            super().fetch_flow_collection_start(TokenClass)

        def compose_node(self, parent, index):
            event = self.peek_event()
            self.count += 1
            if self.count > MAX_NODES:
                self.refuse(event.start_mark, f"more than {MAX_NODES} values and aliases in the file")
            if isinstance(event, yaml.AliasEvent):
                node = super().compose_node(parent, index)
                if id(node) not in self.sizes:     # its anchor is still open: the value contains itself
                    self.refuse(event.start_mark, f"the alias *{event.anchor} is used inside the value it "
                                "names (a loop)")
                return node
            if self.depth >= MAX_DEPTH:
                self.refuse(event.start_mark, f"values nested more than {MAX_DEPTH} deep")
            if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_TEXT_CHARS:
                self.refuse(event.start_mark, f"a text of {len(event.value)} characters (at most "
                            f"{MAX_TEXT_CHARS})")
            self.depth += 1
            node = super().compose_node(parent, index)
            self.depth -= 1
            if isinstance(node, yaml.ScalarNode):
                if node.tag in (_INT, _FLOAT) and len(node.value) > MAX_NUMBER_CHARS:
                    self.refuse(node.start_mark, f"a number of {len(node.value)} characters (at most "
                                f"{MAX_NUMBER_CHARS}; put it in quotes if it is text)")
                size = (1, len(node.value))
            else:
                items = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
                sizes = [self.sizes[id(n)] for n in items]
                size = (1 + sum(s[0] for s in sizes), sum(s[1] for s in sizes))
            if size[0] > MAX_EXPANDED_NODES:
                self.refuse(node.start_mark, f"this value expands to {size[0]} values through its aliases "
                            f"(at most {MAX_EXPANDED_NODES})")
            if size[1] > MAX_EXPANDED_CHARS:
                self.refuse(node.start_mark, f"this value expands to {size[1]} characters of text through its "
                            f"aliases (at most {MAX_EXPANDED_CHARS})")
            self.sizes[id(node)] = size
            return node

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep)
            except (ValueError, TypeError, OverflowError) as e:
                kind = node.tag.rsplit(":", 1)[-1]
                raise ConstructorError(None, None, f"cannot read {str(node.value)[:80]!r} as {kind} ({e}); put it "
                                       "in quotes if it is text", node.start_mark) from None

    return BoundedLoader


def _yaml_error(e, text: str, name: str) -> SourceRefused:
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        where = f"{name}:{mark.line + 1}:{mark.column + 1}"
    elif getattr(e, "position", None) is not None:          # ReaderError: a character YAML does not allow
        where = f"{name}:{_line_of(text, e.position)}"
    else:
        where = name
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
    context = getattr(e, "context", None)
    return SourceRefused(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else ""))


def _compose(text: str, name: str):
    """The document's root node (None when empty), every bound checked; raises SourceRefused or
    yaml.YAMLError (the file is no YAML)."""
    loader = _loader_class()(text, name)
    return loader, loader.get_single_node()


def _load_yaml(text: str, name: str) -> tuple[Any, Any]:
    import yaml

    try:
        loader, root = _compose(text, name)
        try:
            data = None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise _yaml_error(e, text, name) from None
    except RecursionError:     # not expected within MAX_DEPTH; never let it escape unnamed
        raise SourceRefused(f"{name}: values nested too deeply") from None
    return data, root


# ----------------------------------------------------------------------------------------- JSON
class _LongNumber(Exception):
    def __init__(self, digits: str):
        self.digits = digits


def _json_number(convert):
    def parse(digits: str):
        if len(digits) > MAX_NUMBER_CHARS:
            raise _LongNumber(digits)
        return convert(digits)
    return parse


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _json_deep_line(text: str) -> int | None:
    """The line where brackets first nest deeper than MAX_DEPTH (strings skipped)."""
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _line_of(text, m.start())
        elif c in "]}":
            depth -= 1
    return None


def _json_tree(data, text: str, name: str) -> None:
    """The bounds on a parsed JSON tree (no line numbers but the deep one's): for JSON that YAML
    cannot read to find lines."""
    stack, count = [(data, 1, "(top)")], 0
    while stack:
        value, depth, path = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SourceRefused(f"{name}: more than {MAX_NODES} values in the file")
        if depth > MAX_DEPTH:
            raise SourceRefused(f"{name}:{_json_deep_line(text) or 1}: values nested more than {MAX_DEPTH} deep")
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise SourceRefused(f"{name}: {path}: a text of {len(value)} characters (at most {MAX_TEXT_CHARS})")
        if isinstance(value, dict):
            for k, v in value.items():
                if len(k) > MAX_TEXT_CHARS:
                    raise SourceRefused(f"{name}: {path}: a key of {len(k)} characters (at most {MAX_TEXT_CHARS})")
                stack.append((v, depth + 1, f"{path}.{k[:40]}"))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))


# JSON text as YAML reads it, for line numbers: tabs (JSON whitespace, never raw inside a JSON string)
# and characters YAML's reader refuses become spaces, one for one, so lines and columns stay.
_NOT_YAML = re.compile(r"[^\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _load_json(text: str, name: str) -> tuple[Any, Any]:
    """The data (json.loads) and, for line numbers, YAML's node graph of the same text (None when
    YAML cannot read that JSON)."""
    import yaml

    try:
        data = json.loads(text, parse_int=_json_number(int), parse_float=_json_number(float))
    except json.JSONDecodeError as e:
        raise SourceRefused(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except _LongNumber as e:
        raise SourceRefused(f"{name}:{_line_of(text, text.find(e.digits))}: a number of {len(e.digits)} characters "
                            f"(at most {MAX_NUMBER_CHARS}; put it in quotes if it is text)") from None
    except RecursionError:
        raise SourceRefused(f"{name}:{_json_deep_line(text) or 1}: values nested more than {MAX_DEPTH} deep") \
            from None
    except ValueError as e:     # nothing else is known to raise it; never let it escape unnamed
        raise SourceRefused(f"{name}: not valid JSON: {e}") from None
    try:
        loader, root = _compose(_NOT_YAML.sub(" ", text), name)
        loader.dispose()
    except yaml.YAMLError:        # valid JSON that YAML cannot read: bounds on the tree, no lines
        _json_tree(data, text, name)
        root = None
    return data, root


# ----------------------------------------------------------------------------------------- entry points
def load_file(path: Path) -> tuple[Any, Any]:
    """A story file's data and YAML node graph (for line numbers; None for JSON YAML cannot read, or
    an empty file), every bound checked first. Raises SourceRefused."""
    path = Path(path)
    text = _decode(_read_bytes(path), path.name)
    if path.suffix.lower() == ".json":
        return _load_json(text, path.name)
    return _load_yaml(text, path.name)


def load_yaml_text(text: str, name: str) -> tuple[Any, Any]:
    """YAML text from a widget (Save Story's settings), bounded like a file."""
    if len(text) > MAX_FILE_BYTES:
        raise SourceRefused(f"{name}: the text is longer than {MAX_FILE_BYTES} characters")
    return _load_yaml(text, name)


def count_problems(raw: dict) -> list[tuple[str, str]]:
    """(field, problem) for a story mapping holding more shots, characters, references or names per
    shot than the limits allow: checked before any entry is looked at."""
    out = []

    def check(field: str, value, limit: int, what: str, fix: str) -> bool:
        if isinstance(value, (list, dict)) and len(value) > limit:
            out.append((field, f"{len(value)} {what}; at most {limit} ({fix})"))
            return False
        return True

    shots, characters = raw.get("shots"), raw.get("characters")
    if check("shots", shots, MAX_SHOTS, "shots", "split the story into several files") and isinstance(shots, list):
        for j, shot in enumerate(shots):
            if isinstance(shot, dict):
                for key in ("characters", "boxes", "masks"):
                    check(f"shots[{j}].{key}", shot.get(key), MAX_CHARACTERS, "entries", "one per character")
    if check("characters", characters, MAX_CHARACTERS, "characters", "split the story into several files") \
            and isinstance(characters, list):
        for i, c in enumerate(characters):
            if isinstance(c, dict):
                for key in ("reference", "mask"):
                    check(f"characters[{i}].{key}", c.get(key), MAX_REFERENCES, "images", "pick the best ones")
    return out
