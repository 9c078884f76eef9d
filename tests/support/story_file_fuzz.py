"""Story FILES for the file fuzzer (tests/test_story_file_fuzz.py): what a stranger could hand Load Story.

* valid story documents (cast, shots, boxes, masks, seeds, locks, settings) written as YAML or JSON,
  naming image files of every sort: good ones, truncated, junk, empty, a folder, missing, PNG headers
  claiming 9000x9000 or 30000x30000 pixels (decompression bombs), paths leading out or holding NUL;
* hostile fragments in place of some of their values: alias and merge-key bombs (up to 12 levels of
  up to 12), loops, undefined aliases, deep nesting, numbers of up to 6000 digits, texts of up to
  40,000 characters, tags (timestamps that do not exist, !!binary, !!python/...), odd escapes;
* whole hostile files: deep block nesting, too many shots / characters / references / values, files
  at and just above the size limit;
* damage to the bytes: truncation, inserted bytes (non-UTF-8, NUL, control characters), a BOM, CRLF;
* and raw bytes.

``StoryFile.data`` is what is written; ``kind`` says how it was made (hypothesis events).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from hypothesis import strategies as st
from PIL import Image

NAMES = ("Mira", "Theo", "Pip", "Ann")
PROMPTS = ("", "a walk", "Mira waits at the station.", "two friends talk, rain", "Ünïcode ☂ 雨",
           "line one\nline two", "quotes ' \" and: colons # hash", "- dash [brackets] {braces} *star &amp")


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _image_bytes(h: int, w: int, fmt: str, seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_images(folder: Path) -> None:
    """The image files story files may name, in ``folder``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    good = _image_bytes(24, 16, "PNG", 1)
    files = {
        "ok.png": good, "ok2.png": _image_bytes(24, 16, "PNG", 2), "shot.png": _image_bytes(32, 32, "PNG", 3),
        "photo.jpg": _image_bytes(20, 30, "JPEG", 4), "anim.gif": _image_bytes(8, 8, "GIF", 5),
        "cut.png": good[: len(good) // 2], "empty.png": b"", "junk.png": bytes(range(256)) * 4,
        "bomb.png": _png_header(30000, 30000), "big.png": _png_header(9000, 9000),
        "wide.png": _png_header(100_000, 1), "zero.png": _png_header(0, 0),
    }
    for name, data in files.items():
        (folder / "img" / name).write_bytes(data)
    (folder / "img" / "folder.png").mkdir(exist_ok=True)


GOOD_PATHS = ("img/ok.png", "img/ok2.png", "img/photo.jpg")
PATHS = GOOD_PATHS + ("img/shot.png", "img/anim.gif", "img/cut.png", "img/empty.png", "img/junk.png", "img/bomb.png",
                      "img/big.png", "img/wide.png", "img/zero.png", "img/folder.png", "img/missing.png",
                      "../outside.png", "/etc/passwd", "img/a\0b.png", "img/" + "x" * 300 + ".png", "C:/x.png",
                      "img/../img/ok.png", "", " ")


@dataclass(frozen=True)
class StoryFile:
    name: str          # story.yaml / story.json
    data: bytes
    kind: str          # how it was made

    def __repr__(self) -> str:      # hypothesis prints this on failure: keep it readable
        shown = self.data if len(self.data) <= 600 else self.data[:600] + b"...(%d bytes)" % len(self.data)
        return f"StoryFile({self.name!r}, kind={self.kind!r}, data={shown!r})"


# -- valid documents --------------------------------------------------------------------------------
def _paths(draw, good_share: int = 4):
    pick = st.sampled_from(GOOD_PATHS) if draw(st.integers(0, good_share)) else st.sampled_from(PATHS)
    if draw(st.integers(0, 3)) == 0:
        return draw(st.lists(pick, min_size=1, max_size=3))
    return draw(pick)


@st.composite
def documents(draw) -> dict:
    """A story mapping: mostly valid (good images, known names, sane numbers), sometimes not."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3))
    doc: dict = {}
    if draw(st.booleans()):
        doc["title"] = draw(st.sampled_from(PROMPTS))
    if draw(st.integers(0, 3)) == 0:
        doc["format"], doc["version"] = "dreamshot-story", draw(st.sampled_from((1, 1, 2)))
    if draw(st.integers(0, 2)) == 0:
        doc["settings"] = draw(st.fixed_dictionaries({}, optional={
            "width": st.sampled_from((832, 480, 500)), "height": st.sampled_from((480, 16)),
            "mode": st.sampled_from(("edit", "text_to_shot", "nope")), "seed": st.integers(-1, 2 ** 64),
            "steps": st.integers(0, 50), "cfg": st.floats(allow_nan=True, allow_infinity=True),
            "chunk_size": st.integers(0, 8), "negative_prompt": st.sampled_from(PROMPTS),
            # the settings a graph's nodes hold (headless parity): RACL patch, Shot LoRAs, variants
            "variants": st.sampled_from((1, 3, 0, 65, "2", 1.5)),
            "racl": st.one_of(st.booleans(), st.sampled_from(("yes", None, [1]))),
            "shot_loras": st.sampled_from(([], [{"lora": "missing.safetensors"}],
                                           [{"lora": "../x.safetensors", "shots": [1, 99]}],
                                           [{"lora": "a.safetensors", "character": "Nobody", "strength": "x"}],
                                           {"lora": "a.safetensors"}))}))
    if names:
        chars = []
        for n in names:
            c = {"name": n, "reference": _paths(draw)}
            if draw(st.integers(0, 3)) == 0:
                c["mask"] = _paths(draw)
            if draw(st.booleans()):
                c["description"] = draw(st.sampled_from(PROMPTS))
            if draw(st.integers(0, 3)) == 0:
                c["kind"] = draw(st.sampled_from(("character", "location", "prop", "animal")))
            chars.append(c)
        doc["characters"] = chars
    shots = []
    for _ in range(draw(st.integers(1, 4))):
        s: dict = {"prompt": draw(st.sampled_from(PROMPTS))}
        cast = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3)) if draw(st.booleans()) else []
        if cast:
            s["characters"] = cast
            if draw(st.booleans()):
                s["boxes"] = {n: draw(st.sampled_from(([0, 0, 0.5, 1], [0.1, 0.2, 0.6, 0.9], [0, 0, 64, 48],
                                                        [0.5, 0, 0.1, 1], [0, 0, 1])))
                              for n in cast if draw(st.booleans())}
            if draw(st.integers(0, 2)) == 0:
                s["masks"] = {n: draw(st.sampled_from(PATHS)) for n in cast[:1]}
        if draw(st.integers(0, 2)) == 0:
            s["seed"] = draw(st.sampled_from((0, 7, -1, 2 ** 64 - 1, 2 ** 64, 1.5, "7")))
        if draw(st.integers(0, 3)) == 0:
            s["image"] = draw(st.sampled_from(PATHS))
        if draw(st.integers(0, 3)) == 0:
            s["lock"] = draw(st.sampled_from((True, False, "yes please")))
        if draw(st.integers(0, 4)) == 0:
            s["negative_prompt"] = draw(st.sampled_from(PROMPTS))
        if draw(st.integers(0, 2)) == 0:   # the board's fields (shot timing)
            s.update(draw(st.fixed_dictionaries({}, optional={
                "duration": st.sampled_from((2.0, 0.5, 3600, 0, -1, 1e308, float("nan"), "2s", True)),
                "shot_size": st.sampled_from(("CU", "EWS", "", "x" * 300, 7)),
                "camera": st.sampled_from(("static", "Push-In", "pan_left", "dolly zoom", None)),
                "action": st.sampled_from(PROMPTS), "dialogue": st.sampled_from(PROMPTS + (["a"],))})))
        shots.append(s)
    doc["shots"] = shots
    return doc


# -- hostile fragments (one line, valid where a value goes; anchors prefixed to stay unique) --------
def _yaml_fragments(tag: str):
    n = st.integers
    return st.one_of(
        st.builds(lambda levels, width: _alias_bomb(tag, levels, width), n(1, 12), n(2, 12)),
        st.builds(lambda levels, width: _merge_bomb(tag, levels, width), n(1, 10), n(2, 12)),
        st.builds(lambda d: "[" * d + "]" * d, n(1, 3000)),
        st.builds(lambda d: "{a: " * d + "1" + "}" * d, n(1, 1000)),
        st.builds(lambda d: "[" * d, n(1, 3000)),
        st.builds(lambda k, sign: sign + "9" * k, n(1, 6000), st.sampled_from(("", "-", "+"))),
        st.builds(lambda k: "0x" + "f" * k, n(1, 300)),
        st.builds(lambda k: ":".join(["59"] * k), n(2, 200)),
        st.builds(lambda k, e: "1." + "5" * k + f"e+{e}", n(1, 300), n(0, 999_999)),
        st.builds(lambda k, q: q + "x" * k + q, n(0, 40_000), st.sampled_from(("", '"', "'"))),
        st.sampled_from((
            f"&{tag}r [*{tag}r]", f"&{tag}m {{a: *{tag}m}}", f"*{tag}undefined", "!!timestamp 2001-13-45",
            "2024-02-30", "2001-12-14t21:59:43.10-05:00", "!!int 12x", "!!float x", "!!binary AAA=", "!!binary '@@'",
            "!!python/object/apply:os.system [ls]", "!!python/name:os.system", "!!set {a, b}", "!!omap [a: 1]",
            "!!pairs [a: 1, a: 2]", "!!str 1", "!!null x", "!!bool maybe", "!!map [1]", "!!seq {a: 1}", ".nan",
            "-.inf", "~", "<<", "{<<: 1}", "{<<: [1, 2]}", '"\\ud800"', '"\\x00"', '"\\U0010ffff"', '"\\uFFFE"',
            '"\\N\\_\\L\\P"', "? [a]", "{[1]: 2}", "{{a: 1}: b}", "[a, b,]", "!local x", "!<tag:x> y", "%YAML 1.1",
            "--- x", "...", "|", ">-", "&a", "*", "!", "@x", "`x",
        )),
    )


def _alias_bomb(tag: str, levels: int, width: int) -> str:
    parts = [f"&{tag}0 [" + ", ".join(["Mira"] * width) + "]"]
    parts += [f"&{tag}{i} [" + ", ".join([f"*{tag}{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _merge_bomb(tag: str, levels: int, width: int) -> str:
    parts = [f"&{tag}0 {{" + ", ".join(f"k{i}: {i}" for i in range(width)) + "}"]
    parts += [f"&{tag}{i} {{<<: [" + ", ".join([f"*{tag}{i - 1}"] * width) + "]}" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _json_fragments():
    n = st.integers
    return st.one_of(
        st.builds(lambda d: "[" * d + "]" * d, n(1, 100_000)),
        st.builds(lambda d: '{"a": ' * d + "1" + "}" * d, n(1, 3000)),
        st.builds(lambda k, sign: sign + "9" * k, n(1, 6000), st.sampled_from(("", "-"))),
        st.builds(lambda k, e: "1." + "5" * k + f"e{e}", n(1, 300), n(-999_999, 999_999)),
        st.builds(lambda k: '"' + "x" * k + '"', n(0, 40_000)),
        st.sampled_from(("NaN", "Infinity", "-Infinity", "-0", "1e-400", '"\\ud800"', '"\\u0000"', '"\\ud83d\\ude00"',
                         '{"a": 1, "a": 2}', "[]", "{}", "null", "true", '"a\\/b"', '"\\t"')),
    )


def _placeholders(draw, doc: dict, count: int) -> list[str]:
    """Replace ``count`` values of ``doc`` (in place) by "@@Hk@@" placeholders; their paths."""
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            slots.append((node, k))
            if isinstance(v, (dict, list)):
                walk(v)
    walk(doc)
    chosen = draw(st.lists(st.integers(0, len(slots) - 1), unique=True, min_size=min(count, len(slots)),
                           max_size=min(count, len(slots))))
    marks = []
    for i, idx in enumerate(sorted(chosen, reverse=True)):    # deepest-last order keeps parents valid
        node, key = slots[idx]
        node[key] = f"@@H{i}@@"
        marks.append(f"@@H{i}@@")
    return marks


@st.composite
def structured_files(draw) -> StoryFile:
    doc = draw(documents())
    as_json = draw(st.booleans())
    marks = _placeholders(draw, doc, draw(st.sampled_from((0, 0, 1, 1, 2))))
    if as_json:
        text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from((None, 1, "\t"))))
        marks = [m for m in marks if json.dumps(m) in text]    # a value inside a replaced one is gone
        for mark in marks:
            text = text.replace(json.dumps(mark), draw(_json_fragments()), 1)
    else:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=draw(st.booleans()),
                              default_flow_style=draw(st.sampled_from((False, None, True))), width=10_000)
        marks = [m for m in marks if f"'{m}'" in text]
        for i, mark in enumerate(marks):
            text = text.replace(f"'{mark}'", draw(_yaml_fragments(f"h{i}_")), 1)
    kind = ("json" if as_json else "yaml") + (f" + {len(marks)} hostile value(s)" if marks else "")
    return StoryFile("story.json" if as_json else "story.yaml", text.encode("utf-8"), kind)


# -- whole hostile files ----------------------------------------------------------------------------
@st.composite
def hostile_files(draw) -> StoryFile:
    which = draw(st.sampled_from(("block nesting", "shots", "characters", "references", "values", "size",
                                  "anchors", "keys")))
    n = draw(st.integers(0, 3))
    if which == "block nesting":
        depth = draw(st.integers(25, 60))
        text = "shots:\n" + "".join("  " * i + "- " + ("\n" if i < depth - 1 else "a\n") for i in range(depth))
    elif which == "shots":
        text = "shots:\n" + "".join(f"  - prompt: shot {j}\n" for j in range(498 + n))
    elif which == "characters":
        count = 198 + n
        text = "characters:\n" + "".join(f"  - {{name: c{i}, reference: img/ok.png}}\n" for i in range(count)) \
            + "shots: [{prompt: a}]\n"
    elif which == "references":
        text = "characters:\n  - name: A\n    reference: [" + ", ".join(["img/ok.png"] * (62 + n)) + "]\n" \
            "shots: [{prompt: a, characters: [A]}]\n"
    elif which == "values":
        text = "shots: [{prompt: a}]\ntitle: [" + ", ".join(["1"] * (15_995 + n)) + "]\n"
    elif which == "size":
        body = "shots:\n  - prompt: a\n"
        text = body + "#" * (256 * 1024 - len(body) - 2 + n) + "\n"
    elif which == "anchors":
        text = "".join(f"a{i}: &a{i} x\n" for i in range(draw(st.integers(1, 3000)))) + "shots: [{prompt: a}]\n"
    else:
        text = "shots: [{prompt: a}]\n" + "".join(f"k{i}: {i}\n" for i in range(draw(st.integers(1, 3000))))
    return StoryFile(draw(st.sampled_from(("story.yaml", "story.yml"))), text.encode(), f"hostile file: {which}")


# -- damage ----------------------------------------------------------------------------------------
@st.composite
def damaged(draw, base) -> StoryFile:
    f = draw(base)
    data = bytearray(f.data)
    ops = draw(st.lists(st.sampled_from(("truncate", "insert", "byte", "bom", "crlf")), min_size=1, max_size=3))
    for op in ops:
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "byte" and data:
            data[min(at, len(data) - 1)] = draw(st.sampled_from((0xFF, 0xC3, 0x00, 0x09, 0x0D, 0x85, 0x1B, 0x7F, 0xE2)))
        elif op == "bom":
            data[0:0] = b"\xef\xbb\xbf"
        elif op == "crlf":
            data = bytearray(bytes(data).replace(b"\n", b"\r\n"))
    return StoryFile(f.name, bytes(data), f"{f.kind}, damaged ({', '.join(ops)})")


def raw_files():
    return st.builds(lambda data, name: StoryFile(name, data, "raw bytes"), st.binary(max_size=2000),
                     st.sampled_from(("story.yaml", "story.json")))


def story_files():
    """Every kind, weighted to the structured ones."""
    structured = structured_files()
    return st.one_of(structured, structured, structured, damaged(structured), hostile_files(), raw_files())
