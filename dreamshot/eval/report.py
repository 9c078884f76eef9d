"""Result rows, their aggregation over a run, and the CSV / markdown writers (atomic)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_text
from .storyboard import StoryResult

STORY_COLUMNS = ("method", "mode", "lang", "timestamp", "story", "shots", "missing_shots", "appearances", "found",
                 "misses", "confused", "identity_similarity", "identity_similarity_detected", "miss_rate",
                 "confusion_rate", "consistency", "clip_score")
RUN_COLUMNS = ("method", "mode", "lang", "timestamp", "stories", "shots", "missing_shots", "appearances",
               "identity_similarity", "identity_similarity_detected", "miss_rate", "confusion_rate", "consistency",
               "clip_score")
HEADERS = {"identity_similarity": "ID sim", "identity_similarity_detected": "ID sim (found)", "miss_rate": "miss",
           "confusion_rate": "confusion", "consistency": "consistency", "clip_score": "CLIP",
           "missing_shots": "missing shots", "appearances": "appearances"}
FLOAT_DIGITS = {"clip_score": 2}


def story_row(result: StoryResult, run: dict[str, str]) -> dict:
    """One CSV row: the run's keys (method, mode, lang, timestamp) + the story's metrics."""
    ident = result.identity
    row = {**run, "story": result.story_id, "shots": result.num_shots, "missing_shots": len(result.missing_shots),
           "clip_score": result.clip_score}
    if ident is None:
        row.update({k: math.nan for k in ("appearances", "found", "misses", "confused", "identity_similarity",
                                          "identity_similarity_detected", "miss_rate", "confusion_rate",
                                          "consistency")})
    else:
        row.update(appearances=ident.appearances, found=ident.found, misses=ident.misses, confused=ident.confused,
                   identity_similarity=ident.identity_similarity,
                   identity_similarity_detected=ident.identity_similarity_detected, miss_rate=ident.miss_rate,
                   confusion_rate=ident.confusion_rate, consistency=ident.consistency)
    return row


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(float(v))]


def run_row(rows: Sequence[dict], run: dict[str, str]) -> dict:
    """A run's summary. Identity values pool every appearance of every story (sums over stories, so a
    story with more appearances weighs more); consistency is the mean over stories that have one;
    CLIP is the mean over all shots."""
    out = {**run, "stories": len(rows), "shots": sum(r["shots"] for r in rows),
           "missing_shots": sum(r["missing_shots"] for r in rows)}
    ident = [r for r in rows if not math.isnan(float(r["appearances"]))]
    n = sum(int(r["appearances"]) for r in ident)
    found = sum(int(r["found"]) for r in ident)
    nan = math.nan
    out["appearances"] = n if ident else nan
    out["identity_similarity"] = sum(r["identity_similarity"] * r["appearances"] for r in ident if r["appearances"]) / n \
        if n else nan
    out["identity_similarity_detected"] = sum(r["identity_similarity_detected"] * r["found"] for r in ident
                                              if r["found"]) / found if found else nan
    out["miss_rate"] = sum(int(r["misses"]) for r in ident) / n if n else nan
    out["confusion_rate"] = sum(int(r["confused"]) for r in ident) / n if n else nan
    cons = _finite(r["consistency"] for r in ident)
    out["consistency"] = sum(cons) / len(cons) if cons else nan
    clip = [(r["clip_score"], r["shots"]) for r in rows if not math.isnan(float(r["clip_score"]))]
    shots = sum(s for _, s in clip)
    out["clip_score"] = sum(c * s for c, s in clip) / shots if shots else nan
    return out


def _cell(key: str, value, empty: str, digits: int | None = None) -> str:
    if isinstance(value, float):
        return empty if math.isnan(value) else f"{value:.{digits or FLOAT_DIGITS.get(key, 3)}f}"
    return str(value)


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(k, r.get(k, ""), "", digits=6) for k in columns])   # full precision for analysis
    return buf.getvalue()


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TEXT_COLUMNS = {"method", "mode", "lang", "timestamp", "story", "characters", "ID sim", "notes"}


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table, padded so it also reads as plain text in a monospace font."""
    cells = [[HEADERS.get(c, c) for c in columns]]
    cells += [[_escape(_cell(c, r.get(c, ""), "–")) for c in columns] for r in rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(columns))]

    def line(row):
        return "| " + " | ".join(v.ljust(w) if c in TEXT_COLUMNS else v.rjust(w)
                                 for v, w, c in zip(row, widths, columns)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if c not in TEXT_COLUMNS else "-" * (w + 2)
                         for w, c in zip(widths, columns)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


LEGEND = ("ID sim: mean cosine of each expected character's face to its reference, a missed face counting 0. "
          "ID sim (found): the same over detected faces only. miss: share of expected characters without a face. "
          "confusion: share whose face is closer to another character's reference. consistency: mean cosine of "
          "a character's faces across its shots (a missed face counts 0). CLIP: 100 * max(cos, 0) of shot and "
          "prompt. Definitions: README 'Measuring storyboards'.")


def write_reports(story_rows: Sequence[dict], run_rows: Sequence[dict], out_dir, title: str = "Storyboard metrics"
                  ) -> tuple[Path, Path, Path]:
    """metrics_stories.csv, metrics_runs.csv and metrics.md in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    stories_csv = atomic_write_text(out / "metrics_stories.csv", to_csv(story_rows, STORY_COLUMNS))
    runs_csv = atomic_write_text(out / "metrics_runs.csv", to_csv(run_rows, RUN_COLUMNS))
    md = [f"# {title}", "", "## Runs", "", markdown_table(run_rows, RUN_COLUMNS), "", "## Stories", "",
          markdown_table(story_rows, STORY_COLUMNS), "", LEGEND, ""]
    markdown = atomic_write_text(out / "metrics.md", "\n".join(md))
    return stories_csv, runs_csv, markdown


def shot_table(result: StoryResult) -> str:
    """A per-shot markdown table and the story's summary line (what the ComfyUI node shows)."""
    rows = []
    for s in result.shots:
        status = []
        if not s.present:
            status.append("image missing")
        status += [f"{n}: missed" for n in s.expected if n not in s.found]
        status += [f"{n}: confused" for n in s.confused]
        sims = ", ".join(f"{n} {v:.3f}" for n, v in zip(s.expected, s.similarity)) if result.identity else "–"
        rows.append({"shot": s.shot, "characters": ", ".join(s.expected) or "–", "ID sim": sims,
                     "CLIP": s.clip_score, "notes": "; ".join(status) or "ok"})
    table = markdown_table(rows, ("shot", "characters", "ID sim", "CLIP", "notes"))
    summary = markdown_table([story_row(result, {})], ("shots", "appearances", "identity_similarity",
                                                      "identity_similarity_detected", "miss_rate", "confusion_rate",
                                                      "consistency", "clip_score"))
    return f"{table}\n\n{summary}\n"


MONO_FONTS = ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf", "NotoSansMono-Regular.ttf", "consola.ttf",
              "Menlo.ttc", "cour.ttf")


def table_image(text: str, font_size: int = 14):
    """The text drawn on white (monospace font when one is installed), as a [1, H, W, 3] float tensor
    for ComfyUI's image preview."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    font = None
    for name in MONO_FONTS:
        try:
            font = ImageFont.truetype(name, font_size)
            break
        except OSError:
            continue
    if font is None:
        try:
            font = ImageFont.load_default(size=font_size)
        except TypeError:    # Pillow < 10.1
            font = ImageFont.load_default()
    lines = text.rstrip("\n").split("\n") or [""]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font_size * 1.4)
    width = int(max(probe.textlength(line, font=font) for line in lines)) + 24
    img = Image.new("RGB", (max(width, 64), line_h * len(lines) + 24), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((12, 12 + i * line_h), line, fill=(20, 20, 20), font=font)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
