"""Draws the reference images of the example story (lighthouse.yaml) with Pillow: a girl (with her
mask), a cat and a lighthouse location. Run from the repository root to redraw them:

    python examples/story/draw_references.py
"""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "lighthouse"
WHITE, INSIDE = (255, 255, 255), 255


class Pair:
    """Draws each shape on the picture and, in white, on the figure's mask."""

    def __init__(self, size):
        self.image = Image.new("RGB", size, WHITE)
        self.mask = Image.new("L", size, 0)
        self.draw, self.mask_draw = ImageDraw.Draw(self.image), ImageDraw.Draw(self.mask)

    def __getattr__(self, shape):
        def both(*args, **kwargs):
            getattr(self.draw, shape)(*args, **kwargs)
            inside = {k: INSIDE if k in ("fill", "outline") and v is not None else v for k, v in kwargs.items()}
            getattr(self.mask_draw, shape)(*args, **inside)
        return both


def mira() -> Pair:
    """A girl in a yellow raincoat with red boots, front view, on white (384x512)."""
    p, ink = Pair((384, 512)), (40, 30, 30)
    p.rectangle([150, 400, 180, 470], fill=(235, 205, 175))            # legs
    p.rectangle([204, 400, 234, 470], fill=(235, 205, 175))
    p.rounded_rectangle([140, 455, 186, 492], 8, fill=(200, 30, 40), outline=ink, width=2)   # boots
    p.rounded_rectangle([198, 455, 244, 492], 8, fill=(200, 30, 40), outline=ink, width=2)
    p.polygon([(192, 170), (110, 410), (274, 410)], fill=(250, 200, 20), outline=ink, width=3)  # raincoat
    p.rounded_rectangle([96, 200, 128, 330], 14, fill=(250, 200, 20), outline=ink, width=3)   # sleeves
    p.rounded_rectangle([256, 200, 288, 330], 14, fill=(250, 200, 20), outline=ink, width=3)
    p.ellipse([98, 320, 126, 348], fill=(235, 205, 175))                # hands
    p.ellipse([258, 320, 286, 348], fill=(235, 205, 175))
    for y in (250, 300, 350):                                           # buttons
        p.ellipse([186, y, 198, y + 12], fill=ink)
    p.ellipse([132, 70, 252, 190], fill=(30, 25, 25))                   # hair
    p.ellipse([144, 92, 240, 188], fill=(240, 210, 180), outline=ink, width=2)   # face
    p.chord([136, 66, 248, 150], 180, 360, fill=(30, 25, 25))           # fringe
    p.ellipse([166, 128, 178, 140], fill=ink)                           # eyes
    p.ellipse([206, 128, 218, 140], fill=ink)
    p.arc([172, 146, 212, 170], 20, 160, fill=(170, 40, 40), width=3)   # smile
    p.ellipse([150, 150, 166, 162], fill=(240, 160, 150))               # cheeks
    p.ellipse([218, 150, 234, 162], fill=(240, 160, 150))
    return p


def pip() -> Image.Image:
    """A small orange cat with a white chest, sitting, on white (384x384)."""
    p, ink, fur = Pair((384, 384)), (50, 35, 25), (235, 140, 40)
    p.arc([240, 170, 340, 330], 270, 180, fill=fur, width=18)           # tail
    p.ellipse([100, 170, 280, 350], fill=fur, outline=ink, width=3)     # body
    p.ellipse([150, 220, 230, 340], fill=(250, 245, 235))               # chest
    p.polygon([(120, 90), (135, 30), (175, 75)], fill=fur, outline=ink, width=3)   # ears
    p.polygon([(260, 90), (245, 30), (205, 75)], fill=fur, outline=ink, width=3)
    p.ellipse([110, 50, 270, 200], fill=fur, outline=ink, width=3)      # head
    p.ellipse([145, 105, 170, 135], fill=(90, 170, 60))                 # eyes
    p.ellipse([210, 105, 235, 135], fill=(90, 170, 60))
    p.ellipse([153, 112, 162, 130], fill=ink)
    p.ellipse([218, 112, 227, 130], fill=ink)
    p.polygon([(182, 145), (198, 145), (190, 155)], fill=(230, 120, 130))   # nose
    for dy in (150, 160):                                               # whiskers
        p.line([(120, dy - 5), (170, dy)], fill=ink, width=2)
        p.line([(210, dy), (260, dy - 5)], fill=ink, width=2)
    p.ellipse([130, 320, 170, 350], fill=(250, 245, 235), outline=ink, width=2)   # paws
    p.ellipse([210, 320, 250, 350], fill=(250, 245, 235), outline=ink, width=2)
    return p.image


def lighthouse() -> Image.Image:
    """A red and white lighthouse on a green cliff above the sea at dusk (832x480): a location."""
    image = Image.new("RGB", (832, 480))
    d = ImageDraw.Draw(image)
    for y in range(480):                                                # dusk sky, top to horizon
        t = min(1.0, y / 300)
        d.line([(0, y), (832, y)], fill=(int(60 + 180 * t), int(60 + 90 * t), int(130 - 20 * t)))
    d.rectangle([0, 300, 832, 480], fill=(30, 70, 120))                 # sea
    for x in range(0, 832, 48):                                         # waves
        d.arc([x, 330 + (x % 96) // 4, x + 40, 350 + (x % 96) // 4], 200, 340, fill=(200, 220, 240), width=2)
    d.polygon([(380, 480), (430, 300), (520, 250), (832, 240), (832, 480)], fill=(60, 130, 60))   # cliff
    d.polygon([(380, 480), (430, 300), (470, 330), (440, 480)], fill=(90, 80, 70))
    x0, x1, top, base = 600, 680, 90, 260
    for k in range(5):                                                  # tapered tower, red/white bands
        y_a, y_b = top + k * (base - top) / 5, top + (k + 1) * (base - top) / 5
        inset_a, inset_b = 12 * (1 - k / 5), 12 * (1 - (k + 1) / 5)
        d.polygon([(x0 + inset_a, y_a), (x1 - inset_a, y_a), (x1 - inset_b, y_b), (x0 + inset_b, y_b)],
                  fill=(200, 40, 40) if k % 2 == 0 else (245, 245, 240))
    d.rectangle([618, 58, 662, 90], fill=(255, 230, 120), outline=(40, 40, 40), width=3)   # lamp room
    d.polygon([(610, 58), (640, 30), (670, 58)], fill=(40, 40, 40))
    d.polygon([(662, 66), (832, 20), (832, 90)], fill=(255, 240, 170))  # beam
    d.rectangle([630, 220, 650, 260], fill=(60, 40, 30))                # door
    return image


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    girl = mira()
    girl.image.save(OUT / "mira.png", optimize=True)
    girl.mask.save(OUT / "mira_mask.png", optimize=True)
    pip().save(OUT / "pip.png", optimize=True)
    lighthouse().save(OUT / "lighthouse.png", optimize=True)


if __name__ == "__main__":
    main()
