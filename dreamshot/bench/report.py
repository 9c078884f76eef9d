"""Markdown tables and a PNG line plot (Pillow only; matplotlib is not a dependency)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec); a missing value or NaN shows as "-" (not measured)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    def cell(value, spec):  # NaN: not measured (e.g. no time under shape accounting)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, str):   # a cell of free text (an error message) must not break the row
            return value.replace("|", "/").replace("\n", " ")
        return format(value, spec)

    body = ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              size=(900, 560)) -> Image.Image:
    w, h = size
    left, right, top, bottom = 80, 220, 50, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts] + [0.0, 1.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = 0.0, max(ys) * 1.1

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        _, py = px(x0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((8, py - 6), f"{y:.2f}", fill="black", font=font)
    for x in sorted(set(xs)):
        qx, _ = px(x, y0)
        d.text((qx - 6, h - bottom + 6), f"{x:g}", fill="black", font=font)
    _, one = px(x0, 1.0)
    d.line([left, one, w - right, one], fill=(180, 180, 180))
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = [px(x, y) for x, y in sorted(pts)]
        if len(coords) > 1:
            d.line(coords, fill=color, width=3)
        for cx, cy in coords:
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=color)
        d.text((w - right + 12, top + 18 * i), name, fill=color, font=font)
    d.text((left, 16), title, fill="black", font=font)
    d.text(((w - right + left) // 2 - 30, h - 24), xlabel, fill="black", font=font)
    d.text((8, top - 30), ylabel, fill="black", font=font)
    return img
