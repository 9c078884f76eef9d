"""Synthetic "shape characters": coloured, textured shapes with known identities.

Used where real faces cannot be: generated test videos (dreamshot.data), storyboard metrics tests
(dreamshot.eval) and the small-scale learnable proof (dreamshot.proof). Each character has its
own saturated colour, shape and texture (a darker shade of its colour), and scenes are drawn on
low-saturation backgrounds, so identity can be read back from colour alone, robustly enough to
survive a tiny VAE's blur.

:class:`ShapeAnalyzer` is a stand-in for insightface behind the same :class:`~dreamshot.faces.FaceAnalyzer`
interface: it "detects" shape characters and embeds each as a fixed-seed unit vector per identity
(blended by colour distance), so ArcFace-style pairing and identity metrics run unchanged on
synthetic data. It is not a face model and says so in its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faces import Face, check_rgb

SHADE = 0.6  # texture colour = SHADE * character colour
MIN_SATURATION = 60  # max(rgb) - min(rgb); backgrounds stay well below it
MAX_COLOUR_DISTANCE = 90.0  # a pixel farther than this from every cast colour is nobody's
EMBEDDING_DIM = 64
EMBEDDING_SEED = 20260417


@dataclass(frozen=True)
class ShapeCharacter:
    id: str
    name: str
    kind: str  # disc | square | triangle | diamond | cross | hexagon
    colour: tuple[int, int, int]
    texture: str  # plain | stripes | dots | checker


SHAPE_CAST: list[ShapeCharacter] = [
    ShapeCharacter("ruby", "Ruby", "disc", (220, 40, 40), "stripes"),
    ShapeCharacter("moss", "Moss", "square", (40, 170, 60), "dots"),
    ShapeCharacter("cobalt", "Cobalt", "triangle", (40, 70, 220), "checker"),
    ShapeCharacter("amber", "Amber", "diamond", (235, 200, 30), "plain"),
    ShapeCharacter("plum", "Plum", "cross", (190, 50, 190), "stripes"),
    ShapeCharacter("teal", "Teal", "hexagon", (30, 190, 200), "dots"),
]


def _shape_mask(kind: str, w: int, h: int) -> np.ndarray:
    """A bool (h, w) mask of the shape inscribed in its box."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (x + 0.5) / max(w, 1) * 2 - 1  # -1..1 across the box
    v = (y + 0.5) / max(h, 1) * 2 - 1
    if kind == "disc":
        return u * u + v * v <= 1.0
    if kind == "square":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if kind == "triangle":
        return (v <= 0.95) & (np.abs(u) <= (v + 1.0) / 2.0 * 0.95 + 0.02)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if kind == "cross":
        return ((np.abs(u) <= 0.35) | (np.abs(v) <= 0.35)) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95)
    if kind == "hexagon":
        return (np.abs(v) <= 0.87) & (np.abs(u) * 0.87 + np.abs(v) * 0.5 <= 0.87)
    raise ValueError(f"unknown shape kind {kind!r}")


def _texture_mask(texture: str, w: int, h: int) -> np.ndarray:
    """Where the darker shade goes; the pattern scales with the box so it survives resizing."""
    y, x = np.mgrid[0:h, 0:w]
    period = max(4, min(w, h) // 4)
    if texture == "plain":
        return np.zeros((h, w), dtype=bool)
    if texture == "stripes":
        return ((x + y) // max(period // 2, 1)) % 2 == 1
    if texture == "dots":
        cx = (x % period) - period / 2
        cy = (y % period) - period / 2
        return cx * cx + cy * cy <= (period / 4) ** 2
    if texture == "checker":
        return ((x // period) + (y // period)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(float(c))) for c in box)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    return x0, y0, x1, y1


def draw_character(image: np.ndarray, who: ShapeCharacter, box) -> np.ndarray:
    """Draw ``who`` inside ``box`` (x0, y0, x1, y1 pixels) in place; returns its bool HxW mask."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _clip_box(box, width, height)
    full = np.zeros((height, width), dtype=bool)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return full
    # Draw in the unclipped box's frame so a shape cut by the image edge keeps its form.
    bx0, by0, bx1, by1 = (int(round(float(c))) for c in box)
    shape = _shape_mask(who.kind, bx1 - bx0, by1 - by0)
    texture = _texture_mask(who.texture, bx1 - bx0, by1 - by0)
    sl = (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))
    shape, texture = shape[sl], texture[sl]
    colour = np.array(who.colour, dtype=np.float32)
    patch = np.where(texture[..., None], colour * SHADE, colour)
    region = image[y0:y1, x0:x1]
    region[shape] = patch[shape].round().astype(np.uint8)
    full[y0:y1, x0:x1] = shape
    return full


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A low-saturation scene: two soft bands (sky/ground) with noise, different per seed."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(110, 200) + rng.uniform(-12, 12, size=3)
    bottom = rng.uniform(60, 150) + rng.uniform(-12, 12, size=3)
    horizon = rng.uniform(0.35, 0.7) * height
    rows = (np.arange(height)[:, None] > horizon).astype(np.float32)
    img = top[None, None, :] * (1 - rows[..., None]) + bottom[None, None, :] * rows[..., None]
    img = np.broadcast_to(img, (height, width, 3)) + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def render_scene(width: int, height: int, placements, background_seed: int = 0,
                 backdrop: np.ndarray | None = None):
    """Characters placed on a background. ``placements``: [(ShapeCharacter, box)], drawn in order
    (later ones occlude earlier ones). Returns (RGB uint8 HxWx3, [bool HxW mask per placement]);
    masks are visible pixels only (occlusion removed). ``backdrop`` (HxWx3 uint8, drawn on in place)
    replaces the generated ``background(width, height, background_seed)``."""
    image = background(width, height, background_seed) if backdrop is None else backdrop
    masks: list[np.ndarray] = []
    for who, box in placements:
        drawn = draw_character(image, who, box)
        for m in masks:
            m &= ~drawn
        masks.append(drawn)
    return image, masks


def _palette(cast) -> tuple[np.ndarray, np.ndarray]:
    """(2K, 3) colours (full and textured shade) and their character index."""
    colours = np.array([c.colour for c in cast], dtype=np.float32)
    return np.concatenate([colours, colours * SHADE]), np.concatenate([np.arange(len(cast))] * 2)


def pixel_identities(image: np.ndarray, cast=SHAPE_CAST) -> np.ndarray:
    """Per pixel: the index of the cast member whose colour it is, or -1 (background / unclear)."""
    img = check_rgb(image).astype(np.float32)
    palette, owner = _palette(cast)
    dist = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)  # H, W, 2K
    nearest = dist.argmin(-1)
    ok = (dist.min(-1) <= MAX_COLOUR_DISTANCE) & ((img.max(-1) - img.min(-1)) >= MIN_SATURATION)
    return np.where(ok, owner[nearest], -1)


def classify_region(image: np.ndarray, mask_or_box, cast=SHAPE_CAST, min_fraction: float = 0.2):
    """Which cast member fills a region (bool mask HxW or box x0,y0,x1,y1): (index or None, confidence).

    A vote of the region's character-coloured pixels; None when under ``min_fraction`` of the
    region is any character's colour. Confidence = the winner's share of the region.
    """
    ids = pixel_identities(image, cast)
    if isinstance(mask_or_box, np.ndarray) and mask_or_box.shape == ids.shape:
        region = ids[mask_or_box.astype(bool)]
    else:
        x0, y0, x1, y1 = _clip_box(mask_or_box, ids.shape[1], ids.shape[0])
        region = ids[y0:y1, x0:x1].reshape(-1)
    if region.size == 0:
        return None, 0.0
    counts = np.bincount(region[region >= 0], minlength=len(cast))
    if counts.sum() < min_fraction * region.size:
        return None, 0.0
    best = int(counts.argmax())
    return best, float(counts[best] / region.size)


def identity_embeddings(n: int, dim: int = EMBEDDING_DIM, seed: int = EMBEDDING_SEED) -> np.ndarray:
    """Fixed-seed unit vectors, one per identity (near-orthogonal in 64 dimensions)."""
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class ShapeAnalyzer:
    """Stand-in for insightface on synthetic shape characters (see module docstring)."""

    def __init__(self, cast=SHAPE_CAST, min_area: int = 12):
        self.cast = list(cast)
        self.min_area = min_area
        self.name = "shape-stand-in (not a face model)"
        self._vectors = identity_embeddings(len(self.cast))
        self._colours = np.array([c.colour for c in self.cast], dtype=np.float32)

    def embed_colour(self, mean_colour: np.ndarray) -> np.ndarray:
        """Identity vectors blended by closeness of a region's colour to each character's."""
        d = np.linalg.norm(self._colours - mean_colour[None], axis=1)
        w = np.exp(-(d - d.min()) / 20.0)
        e = (w[:, None] * self._vectors).sum(0)
        return (e / np.linalg.norm(e)).astype(np.float32)

    def detect(self, image: np.ndarray) -> list[Face]:
        from scipy import ndimage  # a ComfyUI requirement

        img = check_rgb(image)
        ids = pixel_identities(img, self.cast)
        faces: list[Face] = []
        for k in range(len(self.cast)):
            present = ndimage.binary_closing(ids == k, structure=np.ones((3, 3)), iterations=1) | (ids == k)
            labels, n = ndimage.label(present)
            for lab in range(1, n + 1):
                comp = labels == lab
                area = int(comp.sum())
                if area < self.min_area:
                    continue
                ys, xs = np.nonzero(comp)
                box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
                own = comp & (ids == k)
                pix = img[own].astype(np.float32)
                # Textured pixels are SHADE x colour: scale them back so the mean colour is the character's.
                bright = pix.max(1) >= (self._colours[k].max() * (1 + SHADE) / 2)
                mean = np.where(bright[:, None], pix, pix / SHADE).mean(0)
                fill = area / max((box[2] - box[0]) * (box[3] - box[1]), 1.0)
                faces.append(Face(box=box, score=float(min(1.0, fill)), embedding=self.embed_colour(mean)))
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
