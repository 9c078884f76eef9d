"""One keyframe per shot, fitted to the training size, and the shot filters.

The keyframe is the sharpest of a few frames from the middle half of the shot (the ends of a shot
are where fades, motion blur and cut artefacts live), with a mild preference for the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .cuts import Shot


def candidate_frames(shot: Shot, count: int = 5) -> list[int]:
    """Up to ``count`` evenly spaced frames from the middle half of the shot."""
    n = shot.frames
    if n <= 0:
        return []
    lo = shot.start + n // 4
    hi = shot.end - 1 - n // 4
    if hi < lo:
        lo = hi = shot.start + n // 2
    picks = np.linspace(lo, hi, num=max(1, min(count, hi - lo + 1))).round().astype(int)
    return sorted(set(int(i) for i in picks))


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the luma (higher = sharper)."""
    g = luma(rgb)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def pick_keyframe(shot: Shot, frames: dict[int, np.ndarray], centre_weight: float = 0.25) -> int:
    """The candidate with the best sharpness x (1 - centre_weight x distance from the shot's centre)."""
    centre = (shot.start + shot.end - 1) / 2
    half = max(shot.frames / 2, 1.0)

    def score(i: int) -> float:
        return sharpness(frames[i]) * (1.0 - centre_weight * abs(i - centre) / half)

    return max(sorted(frames), key=lambda i: (score(i), -abs(i - centre)))  # ties (e.g. flat frames): central


def is_black(rgb: np.ndarray, threshold: float = 0.1) -> bool:
    """Nearly all of the frame darker than ``threshold`` (0..1): fades, black slugs, credits gaps."""
    return float(np.percentile(luma(rgb), 98)) < threshold * 255


def thumbnail(rgb: np.ndarray, size: int = 16) -> np.ndarray:
    """A tiny grey thumbnail in 0..1, for near-duplicate tests."""
    im = Image.fromarray(np.ascontiguousarray(rgb)).convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def near_duplicate(a: np.ndarray, b: np.ndarray, threshold: float = 0.03) -> bool:
    """Two thumbnails differing by less than ``threshold`` on average (0..1)."""
    return float(np.abs(a - b).mean()) < threshold


@dataclass(frozen=True)
class Fit:
    """Scale to cover ``width`` x ``height``, then centre-crop: applied alike to images, masks and boxes."""

    scale: float
    left: int
    top: int
    width: int
    height: int

    @classmethod
    def cover(cls, src_width: int, src_height: int, width: int, height: int) -> "Fit":
        scale = max(width / src_width, height / src_height)
        rw, rh = max(width, round(src_width * scale)), max(height, round(src_height * scale))
        return cls(scale, (rw - width) // 2, (rh - height) // 2, width, height)

    def _resized(self, w: int, h: int) -> tuple[int, int]:
        return max(self.width, round(w * self.scale)), max(self.height, round(h * self.scale))

    def _crop(self):
        return (self.left, self.top, self.left + self.width, self.top + self.height)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        im = Image.fromarray(np.ascontiguousarray(rgb)).resize(self._resized(w, h), Image.BICUBIC)
        return np.asarray(im.crop(self._crop()))

    def mask(self, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape[:2]
        im = Image.fromarray(mask.astype(np.float32), mode="F").resize(self._resized(w, h), Image.BILINEAR)
        return np.clip(np.asarray(im.crop(self._crop())), 0.0, 1.0)

    def box(self, box) -> tuple[float, float, float, float] | None:
        """A source box in fitted pixels, clipped; None when it falls outside the crop."""
        x0, y0, x1, y1 = (float(c) * self.scale for c in box)
        x0, x1 = np.clip([x0 - self.left, x1 - self.left], 0, self.width)
        y0, y1 = np.clip([y0 - self.top, y1 - self.top], 0, self.height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return None
        return float(x0), float(y0), float(x1), float(y1)
