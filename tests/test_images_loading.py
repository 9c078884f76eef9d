"""The one image reader (dreamshot.images.load_image / load_mask): EXIF orientation, transparency on
white (masks: on black), 16-bit greyscale, unreadable files named; and no other module opens image
files, so training, data, eval, vistory, generate and story files see a reference the same way."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.eval.runner import load_rgb
from dreamshot.images import load_image, load_mask

REPO = Path(__file__).resolve().parent.parent


def _rgba(path: Path) -> None:
    px = np.zeros((4, 6, 4), np.uint8)
    px[:, :3] = (200, 20, 20, 255)   # left half: opaque red
    px[:, 3:] = (0, 0, 0, 0)         # right half: transparent (black underneath)
    Image.fromarray(px, "RGBA").save(path)


def test_transparency_is_white_in_images_and_outside_in_masks(tmp_path):
    _rgba(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (4, 6, 3) and img.dtype == torch.float32
    torch.testing.assert_close(img[:, 3:], torch.ones(4, 3, 3))
    torch.testing.assert_close(img[0, 0], torch.tensor([200, 20, 20]) / 255.0)
    mask = load_mask(tmp_path / "a.png")
    assert mask.shape == (4, 6) and bool((mask[:, 3:] == 0).all()) and bool((mask[:, :3] > 0).all())
    # eval reads the same pixels (as uint8)
    assert np.array_equal(load_rgb(tmp_path / "a.png"), (img.numpy() * 255).round().astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    px = np.zeros((4, 8, 3), np.uint8)
    px[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(px).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    img = load_image(tmp_path / "r.jpg")
    assert img.shape == (8, 4, 3)  # shown upright: portrait
    assert img[:4].mean() > 0.9 and img[4:].mean() < 0.1  # the white half is now on top


def test_16_bit_greyscale_and_palette(tmp_path):
    Image.fromarray(np.full((3, 3), 255 * 128, np.uint16)).save(tmp_path / "g16.png")
    torch.testing.assert_close(load_image(tmp_path / "g16.png"), torch.full((3, 3, 3), 128 / 255))
    pal = Image.fromarray(np.full((2, 2, 3), (10, 200, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    torch.testing.assert_close(load_image(tmp_path / "p.png"), torch.tensor([10, 200, 30]).div(255).expand(2, 2, 3))


def test_an_unreadable_file_names_the_input(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DreamShotInputError, match=r"input 'reference 2'.*cannot read the image") as e:
        load_image(tmp_path / "bad.png", "reference 2")
    assert "Fix:" in str(e.value)


def test_no_other_module_opens_image_files():
    opens = [str(p.relative_to(REPO)) for p in sorted((REPO / "dreamshot").rglob("*.py"))
             if re.search(r"Image\.open\(", p.read_text()) and p.name != "images.py"]
    assert opens == [], f"open image files through dreamshot.images.load_image/load_mask: {opens}"


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR claiming width x height RGB, then a few bytes of image data: a
    few dozen bytes that a decoder would expand to width * height * 3 bytes (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height, needle", [
    (9000, 9000, "is 9000x9000: more than 67 megapixels"),        # above our bound, below PIL's
    (30000, 30000, "is far too large: more than 67 megapixels"),  # above PIL's own (DecompressionBombError)
])
def test_huge_images_are_refused_from_the_header(tmp_path, width, height, needle):
    from support.guards import traced_peak

    from dreamshot.images import MAX_IMAGE_PIXELS, image_pixels

    png_header_only(tmp_path / "bomb.png", width, height)
    for read in (load_image, load_mask):
        peak, outcome = traced_peak(read, tmp_path / "bomb.png", "reference")
        assert isinstance(outcome, DreamShotInputError) and needle in str(outcome), outcome
        assert "input 'reference'" in str(outcome) and "scale it down" in str(outcome)
        assert peak < 2 ** 20                       # nothing decoded
    if width * height < 2 * Image.MAX_IMAGE_PIXELS:
        assert image_pixels(tmp_path / "bomb.png") == width * height > MAX_IMAGE_PIXELS


def test_a_truncated_image_names_the_input(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DreamShotInputError, match=r"input 'mask'.*cannot read the image"):
        load_mask(tmp_path / "cut.png")
