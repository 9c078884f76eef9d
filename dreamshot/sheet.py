"""The storyboard sheet: keyframes laid out as a grid with shot numbers, script text and a title.

Pure Pillow + torch (no comfy import). ``render_sheet`` draws the sheet, ``safe_stem`` turns any
text into a harmless file-name stem, and ``save_sheet_files`` writes the PNG (and PDF) next to each
other without ever overwriting a file or leaving the folder it was given.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont, features

from .errors import DreamShotInputError

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (96, 96, 96)
ACCENT = (200, 40, 40)
FRAME = (180, 180, 180)

MAX_AUTO_COLUMNS = 4
MAX_CAPTION_LINES = 4
ELLIPSIS = "\u2026"


# --------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class SheetStyle:
    """Sizes in pixels; ``None`` ones follow the cell width."""

    cell_width: int | None = None     # thumbnails are scaled to this width (default: the keyframe's, at most 640)
    margin: int | None = None
    gutter: int | None = None
    font_size: int | None = None
    max_caption_lines: int = MAX_CAPTION_LINES
    # "auto": a common system TrueType font (wide Unicode coverage) when one is installed, else
    # Pillow's bundled font; "default": always Pillow's bundled font; or a path to a .ttf/.otf.
    font: str = "auto"


def auto_columns(num_shots: int) -> int:
    """Balanced rows of at most MAX_AUTO_COLUMNS: 4 -> 4, 5 -> 3, 6 -> 3, 8 -> 4, 9 -> 3."""
    if num_shots <= MAX_AUTO_COLUMNS:
        return max(1, num_shots)
    rows = math.ceil(num_shots / MAX_AUTO_COLUMNS)
    return math.ceil(num_shots / rows)


# Looked up by Pillow in the system font folders (Linux XDG/fontconfig dirs, Windows Fonts).
SYSTEM_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf",
                "Helvetica.ttc")


@functools.lru_cache(maxsize=64)
def _font(size: int, choice: str = "auto") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font at ``size``. Pillow's bundled font needs no file (the fixed bitmap one without FreeType)."""
    if not features.check("freetype2"):
        return ImageFont.load_default()
    names = SYSTEM_FONTS if choice == "auto" else () if choice == "default" else (choice,)
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    if choice not in ("auto", "default"):
        raise DreamShotInputError("font", f"cannot read the font {choice!r}.", "give a .ttf/.otf file path.")
    try:
        return ImageFont.load_default(size=size)
    except TypeError:       # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def _is_bundled(font) -> bool:
    """Pillow's bundled font covers basic Latin only (no accents, no dashes)."""
    return not isinstance(getattr(font, "path", None), (str, bytes, os.PathLike))


_ASCII_PUNCTUATION = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2012": "-", "\u2212": "-", "\u2022": "\u00b7",
                                    "\u00a0": " "})


def _clean_text(text: str, font=None) -> str:
    """One line of printable text: control characters (newlines included) become spaces. With
    Pillow's bundled font, accents are dropped (é -> e) and dashes made ASCII so they do not
    render as empty boxes."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(text))
    if font is not None and _is_bundled(font):
        text = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCTUATION))
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.split())


def _with_ellipsis(text: str, font, width: float) -> str:
    """``text`` + an ellipsis, shortened until it fits ``width`` pixels."""
    text = text.rstrip()
    while text and font.getlength(text + ELLIPSIS) > width:
        text = text[:-1].rstrip()
    return text + ELLIPSIS


def _fit(text: str, font, width: float) -> str:
    """``text`` as it is if it fits ``width`` pixels, else cut with an ellipsis."""
    return text if font.getlength(text) <= width else _with_ellipsis(text, font, width)


def wrap_text(text: str, font, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words longer than a line are split; at most
    ``max_lines`` lines, the last one ending in an ellipsis when text was left out."""
    words = _clean_text(text, font).split(" ")
    lines: list[str] = []
    line = ""
    for word in (w for w in words if w):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], font, width)
    return lines


@dataclass(frozen=True)
class _Metrics:
    """Sizes and fonts of a sheet, from the keyframe width and the style; the text block is the same
    height under every cell so rows line up."""

    cell_w: int
    cell_h: int
    font_size: int
    margin: int
    gutter: int
    line_h: int
    body: object
    label: object
    heading: object
    text_w: int
    caption_lines: list
    has_names: bool
    text_h: int
    title_text: str
    title_h: int
    dialogue_lines: list
    running_time: str


def _measure(images: torch.Tensor, captions, characters, title: str, style: SheetStyle, num: int,
             dialogue=None, running_time: str = "") -> _Metrics:
    src_h, src_w = int(images.shape[1]), int(images.shape[2])
    cell_w = max(style.cell_width or min(src_w, 640), 96)
    cell_h = max(1, round(src_h * cell_w / src_w))
    font_size = style.font_size or max(12, round(cell_w / 30))
    margin = style.margin if style.margin is not None else max(16, font_size * 2)
    gutter = style.gutter if style.gutter is not None else max(12, font_size)
    line_h = round(font_size * 1.3)
    body = _font(font_size, style.font)
    heading = _font(round(font_size * 2), style.font)
    text_w = cell_w - 2
    caption_lines = [wrap_text(c, body, text_w, style.max_caption_lines) if c else [] for c in (captions or [""] * num)]
    # Dialogue in quotes under the action, as a board's dialogue line (straight quotes in the bundled font).
    open_q, close_q = ('"', '"') if _is_bundled(body) else ("\u201c", "\u201d")
    dialogue_lines = [wrap_text(f"{open_q}{d.strip()}{close_q}", body, text_w, style.max_caption_lines)
                      if d and d.strip() else [] for d in (dialogue or [""] * num)]
    has_names = characters is not None and any(characters)
    text_h = round(line_h * 1.25) + (line_h if has_names else 0) \
        + line_h * max(len(c) + len(d) for c, d in zip(caption_lines, dialogue_lines)) + line_h // 2
    title_text = _clean_text(title, heading)
    running_time = _clean_text(running_time or "", body)
    title_h = round(font_size * 2 * 1.3) + margin if title_text or running_time else 0
    return _Metrics(cell_w, cell_h, font_size, margin, gutter, line_h, body, _font(round(font_size * 1.15), style.font),
                    heading, text_w, caption_lines, has_names, text_h, title_text, title_h, dialogue_lines,
                    running_time)


def _blank_sheet(m: _Metrics, width: int, height: int):
    """(sheet, draw): a white page with the title and its rule drawn."""
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if m.title_text or m.running_time:
        right = width - m.margin
        if m.running_time:      # right-aligned on the title's line, as industry sheets print it
            rt = _fit(m.running_time, m.label, (width - 2 * m.margin) // 2)
            right -= round(m.label.getlength(rt))
            draw.text((right, m.margin + round(m.font_size * 2 * 1.3) - m.line_h), rt, font=m.label, fill=MUTED)
            right -= m.gutter
        if m.title_text:
            draw.text((m.margin, m.margin), _fit(m.title_text, m.heading, right - m.margin), font=m.heading, fill=INK)
        y_rule = m.margin + round(m.font_size * 2 * 1.3) + m.margin // 2
        draw.line([(m.margin, y_rule), (width - m.margin, y_rule)], fill=FRAME, width=1)
    return sheet, draw


def _draw_caption(draw, m: _Metrics, x: int, ty: int, j: int, tags, characters, notes=None) -> None:
    """Shot j's caption from (x, ty): "Shot N", its tag and its notes (size, camera, duration), the
    names of its cast (when ``characters`` is given), then its wrapped caption and dialogue lines."""
    heading_text = f"Shot {j + 1}"
    draw.text((x, ty), heading_text, font=m.label, fill=INK)
    tx = x + m.label.getlength(heading_text + "  ")
    if tags is not None and tags[j]:
        tag = _fit(_clean_text(tags[j], m.body), m.body, x + m.text_w - tx)
        draw.text((tx, ty), tag, font=m.body, fill=ACCENT)
        tx += m.body.getlength(tag + "  ")
    if notes is not None and notes[j] and tx < x + m.text_w:
        draw.text((tx, ty), _fit(_clean_text(notes[j], m.body), m.body, x + m.text_w - tx), font=m.body, fill=MUTED)
    ty += round(m.line_h * 1.25)
    if characters is not None:
        names = ", ".join(n for n in (_clean_text(n, m.body) for n in characters[j]) if n)
        draw.text((x, ty), _fit(names, m.body, m.text_w) if names else "", font=m.body, fill=ACCENT)
        ty += m.line_h
    for line in m.caption_lines[j]:
        draw.text((x, ty), line, font=m.body, fill=MUTED)
        ty += m.line_h
    for line in m.dialogue_lines[j]:
        draw.text((x, ty), line, font=m.body, fill=INK)
        ty += m.line_h


def _to_pil(image: torch.Tensor) -> Image.Image:
    """[H, W, C] 0..1 -> RGB PIL image (grey or RGBA inputs accepted)."""
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    array = (image[..., :3].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")


def render_sheet(images: torch.Tensor, captions: Sequence[str] | None = None,
                 characters: Sequence[Sequence[str]] | None = None, title: str = "", columns: int = 0,
                 tags: Sequence[str] | None = None, style: SheetStyle = SheetStyle(), variants: int = 1,
                 notes: Sequence[str] | None = None, dialogue: Sequence[str] | None = None,
                 running_time: str = "") -> Image.Image:
    """Lay keyframes out as a storyboard sheet.

    Args:
        images: [S, H, W, C] in 0..1 (C = 1, 3 or 4), one keyframe per shot, in story order; with
            ``variants`` V > 1, [V*S, ...] variant by variant (DreamShot Sampler's order).
        captions: per shot, its script text (wrapped under the image), or None.
        characters: per shot, the character names in it (shown under the shot number), or None.
        title: drawn on top; empty draws no title row.
        columns: shots per row; 0 picks balanced rows of at most 4. Ignored with variants.
        tags: per shot, a short word shown after the shot number (e.g. "kept", "new"), or None.
        style: sizes; by default everything follows the keyframe width (capped at 640 px).
        variants: V storyboards of the same story: one row each, labelled, the script once under the
            last row.
        notes: per shot, a short line after the shot number (shot_timing.board_notes: size, camera
            move, duration), or None.
        dialogue: per shot, its dialogue (quoted under the caption, in ink), or None.
        running_time: printed on the right of the title row (e.g. "4 shots, 0:09.5"); "" for none.

    Returns:
        An RGB PIL image.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1 \
            or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DreamShotInputError("keyframes", f"expected an IMAGE batch [S, H, W, 3], got {shape}.",
                                  "connect the keyframes output of DreamShot Sampler.")
    if variants < 1 or images.shape[0] % variants:
        raise DreamShotInputError("keyframes", f"{images.shape[0]} keyframe(s) do not split into {variants} variants.",
                                  "connect the keyframes of one DreamShot Sampler run.")
    if variants > 1:
        return _render_variants(images, captions, characters, title, tags, style, variants, notes, dialogue,
                                running_time)
    num = images.shape[0]
    for name, values in (("captions", captions), ("characters", characters), ("tags", tags), ("notes", notes),
                         ("dialogue", dialogue)):
        if values is not None and len(values) != num:
            raise DreamShotInputError(name, f"{len(values)} {name} for {num} keyframes.",
                                      "give one entry per keyframe.")
    if columns < 0:
        raise DreamShotInputError("columns", f"columns must be 0 (auto) or more, got {columns}.",
                                  "use 0 for automatic or a positive number.")
    cols = min(columns or auto_columns(num), num)
    rows = math.ceil(num / cols)

    m = _measure(images, captions, characters, title, style, num, dialogue, running_time)

    width = 2 * m.margin + cols * m.cell_w + (cols - 1) * m.gutter
    height = 2 * m.margin + m.title_h + rows * (m.cell_h + m.text_h) + (rows - 1) * m.gutter
    sheet, draw = _blank_sheet(m, width, height)

    badge_pad = max(4, m.font_size // 3)
    for j in range(num):
        r, c = divmod(j, cols)
        x = m.margin + c * (m.cell_w + m.gutter)
        y = m.margin + m.title_h + r * (m.cell_h + m.text_h + m.gutter)
        thumb = _to_pil(images[j])
        if thumb.size != (m.cell_w, m.cell_h):
            thumb = thumb.resize((m.cell_w, m.cell_h), Image.LANCZOS)
        sheet.paste(thumb, (x, y))
        draw.rectangle([x - 1, y - 1, x + m.cell_w, y + m.cell_h], outline=FRAME, width=1)
        # Shot number badge on the image.
        number = str(j + 1)
        box_w = round(m.label.getlength(number)) + 2 * badge_pad
        box_h = m.line_h + badge_pad
        draw.rectangle([x, y, x + box_w, y + box_h], fill=INK)
        draw.text((x + badge_pad, y + badge_pad // 2), number, font=m.label, fill=BACKGROUND)

        _draw_caption(draw, m, x, y + m.cell_h + m.line_h // 3, j, tags, characters if m.has_names else None, notes)
    return sheet


def _render_variants(images: torch.Tensor, captions, characters, title: str, tags, style: SheetStyle,
                     variants: int, notes=None, dialogue=None, running_time: str = "") -> Image.Image:
    """render_sheet for V variants of S shots: a row per variant with its label on the left, each
    image with its shot number, and the shots' script once under the last row."""
    num = images.shape[0] // variants
    for name, values in (("captions", captions), ("characters", characters), ("tags", tags), ("notes", notes),
                         ("dialogue", dialogue)):
        if values is not None and len(values) != num:
            raise DreamShotInputError(name, f"{len(values)} {name} for {num} shots.", "give one entry per shot.")
    m = _measure(images, captions, characters, title, style, num, dialogue, running_time)
    row_labels = [f"Variant {v + 1}" for v in range(variants)]
    label_w = round(max(m.label.getlength(t) for t in row_labels)) + m.gutter

    width = 2 * m.margin + label_w + num * m.cell_w + (num - 1) * m.gutter
    height = 2 * m.margin + m.title_h + variants * m.cell_h + (variants - 1) * m.gutter + m.text_h
    sheet, draw = _blank_sheet(m, width, height)

    badge_pad = max(4, m.font_size // 3)
    x0 = m.margin + label_w
    for v in range(variants):
        y = m.margin + m.title_h + v * (m.cell_h + m.gutter)
        draw.text((m.margin, y + (m.cell_h - m.line_h) // 2), row_labels[v], font=m.label, fill=INK)
        for j in range(num):
            x = x0 + j * (m.cell_w + m.gutter)
            thumb = _to_pil(images[v * num + j])
            if thumb.size != (m.cell_w, m.cell_h):
                thumb = thumb.resize((m.cell_w, m.cell_h), Image.LANCZOS)
            sheet.paste(thumb, (x, y))
            draw.rectangle([x - 1, y - 1, x + m.cell_w, y + m.cell_h], outline=FRAME, width=1)
            number = str(j + 1)
            box_w = round(m.label.getlength(number)) + 2 * badge_pad
            draw.rectangle([x, y, x + box_w, y + m.line_h + badge_pad], fill=INK)
            draw.text((x + badge_pad, y + badge_pad // 2), number, font=m.label, fill=BACKGROUND)

    y_text = m.margin + m.title_h + variants * m.cell_h + (variants - 1) * m.gutter
    for j in range(num):
        x = x0 + j * (m.cell_w + m.gutter)
        _draw_caption(draw, m, x, y_text + m.line_h // 3, j, tags, characters if m.has_names else None, notes)
    return sheet


# ------------------------------------------------------------------------------------- file names

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_UNSAFE = re.compile(r"[^\w\-.]+")
MAX_STEM_BYTES = 100     # leaves room for "_00001_.png" under any file system's 255-byte limit


def safe_stem(text: str, default: str = "storyboard", max_bytes: int = MAX_STEM_BYTES) -> str:
    """A file-name stem that cannot leave its folder or surprise a file system.

    Keeps letters, digits, '_', '-' and single inner dots; path separators, control characters,
    spaces and anything else become '_'; no leading dot (so never '.' or '..'), no trailing dot,
    no Windows device names; at most ``max_bytes`` bytes of UTF-8. Empty results give ``default``.
    """
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join("_" if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"_{2,}", "_", text)
    text = text.strip("._ ")
    encoded = text.encode("utf-8")[:max_bytes]
    text = encoded.decode("utf-8", errors="ignore").rstrip("._ ")
    if not text:
        return default
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


# ---------------------------------------------------------------------------------------- saving

_COUNTER = "{stem}_{counter:05d}_"


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def next_counter(out_dir: str, stem: str, suffixes: Sequence[str] = (".png", ".pdf")) -> int:
    """1 + the highest counter already used by ``<stem>_<counter>_<suffix>`` in ``out_dir``, as ComfyUI
    numbers files (a suffix "" matches folders)."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)_(?:" + "|".join(map(re.escape, suffixes)) + ")$", re.IGNORECASE)
    used = [int(m.group(1)) for m in map(pattern.match, os.listdir(out_dir)) if m]
    return max(used, default=0) + 1


def write_temp(out_dir: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".dreamshot-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def publish_new(tmp: str, target: str) -> bool:
    """Give ``tmp``'s content the name ``target`` only if no such file exists; False if taken.

    A hard link is atomic and fails when the name exists. Where links are not supported, the
    name is first claimed exclusively (O_EXCL) and then replaced by the finished file: the
    replaced file is always the empty one just created here, never someone else's.
    """
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        with open(target, "xb"):
            pass
    except FileExistsError:
        return False
    os.replace(tmp, target)
    return True


def _encode_png(image: Image.Image, pnginfo=None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=pnginfo, compress_level=4)
    return buf.getvalue()


def _encode_pdf(image: Image.Image, title: str = "") -> bytes:
    buf = io.BytesIO()
    # One page, as wide as A4 landscape (11.69 in) whatever the sheet's pixel size.
    resolution = max(72.0, image.width / 11.69)
    image.convert("RGB").save(buf, "PDF", resolution=resolution, title=_clean_text(title) or "Storyboard",
                              creator="ComfyUI-DreamShot")
    return buf.getvalue()


def save_sheet_files(image: Image.Image, out_dir: str, stem: str, *, pdf: bool = True, root: str | None = None,
                     pnginfo=None, title: str = "", max_tries: int = 10000) -> tuple[str, str | None]:
    """Save ``image`` as ``<stem>_<counter>_.png`` (and ``.pdf`` with the same counter) in ``out_dir``.

    Never overwrites: the first counter free for both files is taken, each file is written to a
    temporary file in ``out_dir`` and published under its name only if that name is still free.
    Refuses a stem that is not already safe (see ``safe_stem``) and an ``out_dir`` that resolves
    (symlinks followed) outside ``root`` when ``root`` is given.

    Returns:
        (png_path, pdf_path or None).
    """
    if not stem or safe_stem(stem) != stem:
        raise DreamShotInputError("filename_prefix", f"{stem!r} is not a safe file name.",
                                  "use letters, digits, '-', '_' and '/' for subfolders.")
    if root is not None and not _inside(out_dir, root):
        raise DreamShotInputError("filename_prefix", f"{out_dir!r} is outside the output folder.",
                                  "save inside ComfyUI's output folder (no '..', no links out of it).")
    if not os.path.isdir(out_dir):
        raise DreamShotInputError("filename_prefix", f"the folder {out_dir!r} does not exist.",
                                  "create it, or use another filename_prefix.")
    payloads = [(".png", _encode_png(image, pnginfo))]
    if pdf:
        payloads.append((".pdf", _encode_pdf(image, title)))
    temps = [(ext, write_temp(out_dir, data)) for ext, data in payloads]
    try:
        counter = next_counter(out_dir, stem)
        for counter in range(counter, counter + max_tries):
            base = _COUNTER.format(stem=stem, counter=counter)
            targets = [os.path.join(out_dir, base + ext) for ext, _ in temps]
            if any(os.path.lexists(t) for t in targets):
                continue
            published: list[str] = []
            for (_, tmp), target in zip(temps, targets):
                if not publish_new(tmp, target):
                    break
                published.append(target)
            if len(published) == len(targets):
                return targets[0], (targets[1] if pdf else None)
            for target in published:     # lost a race for the second name: free the first, try the next counter
                os.unlink(target)
        raise DreamShotInputError("filename_prefix", f"no free file name for {stem!r} after {max_tries} tries.",
                                  "use another filename_prefix.")
    finally:
        for _, tmp in temps:
            if os.path.lexists(tmp):
                os.unlink(tmp)
