"""Per-character masks: pluggable segmenters, or detector boxes dilated to body regions.

Segmenter interface
-------------------
A segmenter is any callable ``segmenter(image, box=None) -> mask`` with a ``name`` attribute:

- ``image``: RGB uint8 array, H x W x 3;
- ``box``: optional prompt (x0, y0, x1, y1) in pixels: the character's body region (box-prompted
  models such as SAM-style segmenters use it; others may ignore it);
- returns a float array H x W in 0..1 (1 = the character).

The pipeline multiplies the result by the character's body region, so a segmenter that ignores
the prompt (a saliency model) still yields one mask per character.

Two loaders turn files into segmenters (never pickles, never downloads):

- :class:`OnnxSegmenter` (``model.onnx``, onnxruntime): input 0 float32 ``[1, 3, H, W]`` RGB in
  0..1; an optional second input float32 ``[1, 4]`` takes the box; output 0 is ``[1, 1, H, W]``,
  ``[1, H, W]`` or ``[H, W]``, probabilities in 0..1 (values outside 0..1 are taken as logits and
  passed through a sigmoid). A model with a fixed H, W gets the image resized to it and its mask
  resized back.
- :class:`TorchSegmenter` (``weights.safetensors`` + ``package.module:Class``): the class is
  imported, built with no arguments, given the weights with ``load_state_dict(strict=True)``;
  ``forward(image [1, 3, H, W] float 0..1, box [1, 4] float or None)`` returns the mask as above.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import DreamShotInputError
from .plugins import import_object

log = logging.getLogger("DreamShot.data")

Box = tuple[float, float, float, float]


class Segmenter(Protocol):
    name: str

    def __call__(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        ...


def _as_mask(raw: np.ndarray, height: int, width: int, input_name: str) -> np.ndarray:
    m = np.asarray(raw, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise DreamShotInputError(input_name, f"the segmenter returned shape {np.asarray(raw).shape}, not a mask.",
                                  "return [1, 1, H, W], [1, H, W] or [H, W] (see dreamshot/data/masks.py).")
    if m.size and (m.min() < 0.0 or m.max() > 1.0):
        m = 1.0 / (1.0 + np.exp(-m))  # logits
    if m.shape != (height, width):
        m = np.asarray(Image.fromarray(m, mode="F").resize((width, height), Image.BILINEAR))
    return np.clip(m, 0.0, 1.0)


class OnnxSegmenter:
    def __init__(self, path: Path, providers=None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DreamShotInputError("segmenter", f"onnxruntime is not installed ({e}).",
                                      "pip install onnxruntime (or onnxruntime-gpu).") from e
        try:
            self._session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise DreamShotInputError("segmenter", f"onnxruntime cannot load {path} ({e}).",
                                      "give an ONNX segmenter as documented in dreamshot/data/masks.py.") from e
        inputs = self._session.get_inputs()
        if not 1 <= len(inputs) <= 2 or len(inputs[0].shape) != 4:
            raise DreamShotInputError("segmenter", f"{path} has inputs {[(i.name, i.shape) for i in inputs]}.",
                                      "expected image [1, 3, H, W] and optionally box [1, 4] "
                                      "(see dreamshot/data/masks.py).")
        self._image_name = inputs[0].name
        self._box_name = inputs[1].name if len(inputs) == 2 else None
        h, w = inputs[0].shape[2:]
        self._size = (w, h) if isinstance(h, int) and isinstance(w, int) else None
        self.name = f"onnx:{path.name}"

    def __call__(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        height, width = image.shape[:2]
        x = image
        sx = sy = 1.0
        if self._size is not None and self._size != (width, height):
            x = np.asarray(Image.fromarray(image).resize(self._size, Image.BICUBIC))
            sx, sy = self._size[0] / width, self._size[1] / height
        feeds = {self._image_name: (x.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]}
        if self._box_name is not None:
            b = box if box is not None else (0.0, 0.0, float(width), float(height))
            feeds[self._box_name] = np.array([[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]], dtype=np.float32)
        out = self._session.run(None, feeds)[0]
        return _as_mask(out, height, width, "segmenter")


class TorchSegmenter:
    def __init__(self, weights: Path, class_spec: str, device: str = "cpu"):
        import safetensors.torch
        import torch

        cls = import_object(class_spec, "segmenter_class")
        try:
            module = cls()
        except TypeError as e:
            raise DreamShotInputError("segmenter_class", f"{class_spec} cannot be built without arguments ({e}).",
                                      "name a torch.nn.Module class whose constructor takes no arguments.") from e
        if not isinstance(module, torch.nn.Module):
            raise DreamShotInputError("segmenter_class", f"{class_spec} is not a torch.nn.Module.",
                                      "name a torch.nn.Module class.")
        state = safetensors.torch.load_file(str(weights), device="cpu")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DreamShotInputError("segmenter", f"{weights} does not fit {class_spec}: {e}",
                                      "give the weights saved from that class (safetensors).") from e
        self._module = module.eval().to(device)
        self._device = device
        self.name = f"torch:{class_spec}:{weights.name}"

    def __call__(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        import torch

        height, width = image.shape[:2]
        x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(self._device)
        b = None if box is None else torch.tensor([box], dtype=torch.float32, device=self._device)
        with torch.inference_mode():
            out = self._module(x, b)
        return _as_mask(out.float().cpu().numpy(), height, width, "segmenter")


def load_segmenter(path, class_spec: str | None = None, input_name: str = "segmenter") -> Segmenter:
    """A segmenter from a file: ``.onnx`` (onnxruntime) or ``.safetensors`` with ``class_spec``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DreamShotInputError(input_name, f"'{p}' is not a file.",
                                  "give a segmenter model file (.onnx, or .safetensors with a class).")
    if p.suffix.lower() == ".onnx":
        return OnnxSegmenter(p)
    if p.suffix.lower() == ".safetensors":
        if not class_spec:
            raise DreamShotInputError(input_name, f"'{p}' holds weights but no model class was named.",
                                      "also give the torch module class as package.module:Class.")
        return TorchSegmenter(p, class_spec)
    raise DreamShotInputError(input_name, f"'{p}' is neither .onnx nor .safetensors.",
                              "export the segmenter to ONNX, or save its weights as safetensors.")


def body_box(face: Box, width: int, height: int, widen: float = 2.6, above: float = 0.5,
             below: float = 5.0) -> Box:
    """A face box grown to the body it sits on: ``widen`` x its width, ``above`` / ``below`` x its
    height over / under it, clipped to the image (a person is about 7 heads tall)."""
    x0, y0, x1, y1 = face
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    return (max(0.0, cx - w * widen / 2), max(0.0, y0 - h * above),
            min(float(width), cx + w * widen / 2), min(float(height), y1 + h * below))


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.float32)
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1.0
    return m


def character_mask(image: np.ndarray, region: Box, segmenter: Segmenter | None) -> tuple[np.ndarray, str]:
    """(mask HxW in 0..1, source): the segmenter's mask inside ``region``, or the region itself ("box")."""
    h, w = image.shape[:2]
    inside = box_mask(region, h, w)
    if segmenter is None:
        return inside, "box"
    return _as_mask(segmenter(image, region), h, w, "segmenter") * inside, "segmenter"
