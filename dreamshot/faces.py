"""Faces: detection + identity embeddings behind one small interface, and one-to-one pairing.

The paper pairs shot characters with references by ArcFace similarity. ArcFace comes from
insightface, always from a model folder the user names (``buffalo_l`` and friends; their weights
are licensed for non-commercial research only). Nothing is ever downloaded: insightface fetches
a model pack when given a bare pack name, so we only ever hand it an existing folder and also
disable its downloader while loading.

Anything with a ``detect(rgb) -> list[Face]`` method is a :class:`FaceAnalyzer`, so tests and
synthetic data (``dreamshot.shapes.ShapeAnalyzer``) use the same code paths as real faces.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import DreamShotInputError

log = logging.getLogger("DreamShot.faces")

INSIGHTFACE_HELP = ("put an insightface model pack folder there (e.g. buffalo_l: det_10g.onnx + w600k_r50.onnx "
                    "from the insightface model zoo; non-commercial licence) and pass that folder")


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float
    embedding: np.ndarray  # float32, L2-normalised, shape (D,)


@runtime_checkable
class FaceAnalyzer(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 HxWx3 image, best first."""
        ...


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def check_rgb(image: np.ndarray, input_name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DreamShotInputError(input_name, f"expected an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}.",
                                  "convert the image to 8-bit RGB first.")
    return image


class InsightFaceAnalyzer:
    """insightface's FaceAnalysis (detection + ArcFace recognition) over RGB images."""

    def __init__(self, app, folder: Path):
        self._app = app
        self.name = f"insightface:{folder.name}"

    def detect(self, image: np.ndarray) -> list[Face]:
        rgb = check_rgb(image)
        found = self._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # insightface reads BGR (OpenCV order)
        faces = [Face(box=tuple(float(x) for x in f.bbox[:4]), score=float(f.det_score),
                      embedding=_normalise(f.normed_embedding if f.normed_embedding is not None else f.embedding))
                 for f in found if getattr(f, "embedding", None) is not None]
        return sorted(faces, key=lambda f: -f.score)


@contextlib.contextmanager
def _no_downloads():
    """insightface's download helpers raise while we load: a missing file must never be fetched."""
    patched = []
    try:
        from insightface.utils import download, storage
    except ImportError:
        yield
        return

    def refuse(*args, **kwargs):
        raise DreamShotInputError("model_dir", "insightface tried to download a model (a file is missing).",
                                  INSIGHTFACE_HELP + ".")

    for mod, attr in ((storage, "download"), (storage, "download_onnx"), (download, "download_file")):
        if hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, refuse)
    try:
        yield
    finally:
        for mod, attr, original in patched:
            setattr(mod, attr, original)


def load_insightface(model_dir, *, det_size=(640, 640), providers=None) -> InsightFaceAnalyzer:
    """An insightface detector + ArcFace embedder from an existing model folder (never downloads)."""
    if model_dir is None or str(model_dir).strip() == "":
        raise DreamShotInputError("model_dir", "no insightface model folder was given.", INSIGHTFACE_HELP + ".")
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise DreamShotInputError("model_dir", f"'{folder}' is not a folder.", INSIGHTFACE_HELP + ".")
    folder = folder.resolve()
    onnx = sorted(p.name for p in folder.glob("*.onnx"))
    if not onnx:
        raise DreamShotInputError("model_dir", f"'{folder}' holds no .onnx model files.", INSIGHTFACE_HELP + ".")
    try:
        from insightface.app import FaceAnalysis
    except ImportError as e:
        raise DreamShotInputError("model_dir", f"the insightface package is not installed ({e}).",
                                  "pip install insightface onnxruntime (or onnxruntime-gpu).") from e
    with _no_downloads():
        try:
            app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "recognition"],
                               providers=list(providers) if providers else ["CPUExecutionProvider"])
        except AssertionError as e:  # insightface asserts when no detection model was recognised
            raise DreamShotInputError("model_dir", f"'{folder}' has {onnx} but no face detection model insightface "
                                      "recognises.", INSIGHTFACE_HELP + ".") from e
    if "recognition" not in app.models:
        raise DreamShotInputError("model_dir", f"'{folder}' has a detector but no recognition (ArcFace) model "
                                  f"among {onnx}.", INSIGHTFACE_HELP + ".")
    app.prepare(ctx_id=-1 if not providers or "CPUExecutionProvider" in providers else 0, det_size=tuple(det_size))
    log.info("insightface models from %s: %s", folder, ", ".join(sorted(app.models)))
    return InsightFaceAnalyzer(app, folder)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` (N, D) with every row of ``b`` (M, D): (N, M)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0] if a.ndim == 2 else 0, b.shape[0] if b.ndim == 2 else 0), dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def assign(similarity: np.ndarray, min_similarity: float) -> list[int | None]:
    """One-to-one pairing of rows to columns maximising total similarity (Hungarian).

    Returns, per row, its column or None (no column left, or the best pairing is below
    ``min_similarity``: an unknown face stays unknown rather than being forced onto a reference).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    out: list[int | None] = [None] * sim.shape[0]
    if sim.size == 0:
        return out
    from scipy.optimize import linear_sum_assignment  # a ComfyUI requirement

    rows, cols = linear_sum_assignment(-sim)
    for r, c in zip(rows, cols):
        if sim[r, c] >= min_similarity:
            out[int(r)] = int(c)
    return out
