"""Loading image files and fitting reference and shot images to the storyboard size. Images are
[H, W, 3] floats in 0..1, masks [H, W]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import DreamShotInputError

FIT_METHODS = ("pad_white", "crop", "stretch", "error")
# The most pixels one image file may have (8192 x 8192; a 48-megapixel photo fits): checked from the
# header before decoding, so a small file claiming a huge image (a decompression bomb) costs nothing.
# PIL's own bound (Image.MAX_IMAGE_PIXELS, process-wide and ComfyUI's too) is left as it is.
MAX_IMAGE_PIXELS = 8192 * 8192


def _too_large(path, input_name: str, size: str) -> DreamShotInputError:
    return DreamShotInputError(input_name, f"the image '{path}' is {size}: more than "
                               f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels ({MAX_IMAGE_PIXELS} pixels).",
                               "scale it down first (a storyboard frame is about 1 megapixel).")


def image_pixels(path: str | Path, input_name: str = "image") -> int:
    """Width x height from the file's header, nothing decoded (a budget check before loading)."""
    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Image.DecompressionBombError:
        raise _too_large(path, input_name, "far too large") from None
    except (OSError, ValueError, EOFError) as e:
        raise DreamShotInputError(input_name, f"cannot read the image '{path}' ({e}).",
                                  "replace the file with a readable PNG, JPEG or WebP.") from e


def _read_rgb(path: str | Path, background: int, input_name: str) -> torch.Tensor:
    try:
        with Image.open(path) as im:   # reads the header only
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise _too_large(path, input_name, f"{im.width}x{im.height}")
            im = ImageOps.exif_transpose(im)  # upright, as ComfyUI's Load Image shows it
            if im.mode.startswith("I"):  # 16/32-bit greyscale: ComfyUI's Load Image scaling
                im = im.point(lambda v: v * (1 / 255)).convert("L")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                under = Image.new("RGBA", im.size, (background,) * 3 + (255,))
                im = Image.alpha_composite(under, im)
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)   # a new array: divided in place
            rgb /= 255.0
    except Image.DecompressionBombError:   # PIL's own bound (2x its MAX_IMAGE_PIXELS), also from the header
        raise _too_large(path, input_name, "far too large") from None
    except DreamShotInputError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DreamShotInputError(input_name, f"cannot read the image '{path}' ({e}).",
                                  "replace the file with a readable PNG, JPEG or WebP.") from e
    return torch.from_numpy(rgb)


def load_image(path: str | Path, input_name: str = "image") -> torch.Tensor:
    """An image file -> [H, W, 3] float in 0..1: the one image reader of every headless tool (train,
    data, eval, vistory, generate, story files).

    EXIF orientation applied; 16-bit greyscale scaled as ComfyUI's Load Image does; transparency
    composited on white, as the official DreamShot code pads references with white (ComfyUI's Load
    Image instead drops alpha to RGB and gives it as a MASK: see docs/storyboard-features.md, mask
    meaning). An unreadable file is a DreamShotInputError naming ``input_name``.
    """
    return _read_rgb(path, 255, input_name)


def load_mask(path: str | Path, input_name: str = "mask") -> torch.Tensor:
    """A mask file (white = inside) -> [H, W] float in 0..1: a greyscale file exactly, a coloured one as
    the mean of its channels. Transparent pixels are outside (composited on black, not white)."""
    rgb = _read_rgb(path, 0, input_name)
    grey = rgb[..., 0]
    return grey if torch.equal(grey, rgb[..., 1]) and torch.equal(grey, rgb[..., 2]) else rgb.mean(dim=-1)


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = image.movedim(-1, 0).unsqueeze(0)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0).movedim(0, -1).clamp(0.0, 1.0)


def fit_image(image: torch.Tensor, width: int, height: int, method: str = "pad_white",
              input_name: str = "image") -> torch.Tensor:
    """Bring one [H, W, C] image to [height, width, 3].

    pad_white keeps the aspect ratio and pads with white, as the official DreamShot code does for
    references; crop fills the frame and centre-crops; stretch ignores the aspect ratio; error
    refuses any size other than the target.
    """
    if image.ndim != 3 or image.shape[-1] < 3:
        raise DreamShotInputError(input_name, f"expected an [H, W, 3] image, got shape {tuple(image.shape)}.",
                                  "connect an IMAGE.")
    image = image[..., :3].float()
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if method == "error":
        raise DreamShotInputError(
            input_name, f"image is {w}x{h} but the storyboard is {width}x{height}.",
            "resize it first, or set the fit method to pad_white, crop or stretch.")
    if method == "stretch":
        return _resize(image, height, width)
    if method == "crop":
        scale = max(height / h, width / w)
        rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
        resized = _resize(image, rh, rw)
        top, left = (rh - height) // 2, (rw - width) // 2
        return resized[top:top + height, left:left + width]
    if method == "pad_white":
        scale = min(height / h, width / w)
        rh, rw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
        out = torch.ones(height, width, 3, dtype=image.dtype, device=image.device)
        top, left = (height - rh) // 2, (width - rw) // 2
        out[top:top + rh, left:left + rw] = _resize(image, rh, rw)
        return out
    raise DreamShotInputError("fit", f"unknown fit method {method!r}.", f"use one of {', '.join(FIT_METHODS)}.")


def fit_mask(mask: torch.Tensor, width: int, height: int, method: str = "pad_white") -> torch.Tensor:
    """Fit a [H, W] mask exactly as fit_image fits its image (padding counts as outside)."""
    as_image = mask.float().unsqueeze(-1).expand(*mask.shape, 3)
    if method == "pad_white":
        # the padding is outside the character: 0, not white
        fitted = fit_image(as_image, width, height, "pad_white")
        inside = fit_image(torch.zeros_like(as_image), width, height, "pad_white") < 0.5
        return torch.where(inside[..., 0], fitted[..., 0], torch.zeros_like(fitted[..., 0]))
    return fit_image(as_image, width, height, method)[..., 0]
