"""Render README's Storyboard Sheet picture (docs/images/storyboard-sheet.png) from the example story.

The Storyboard Sheet node's own layout code (dreamshot.sheet.render_sheet) lays out lighthouse.yaml's
shots with their board text (size, camera, duration, action or prompt, dialogue, running time) and cast; as keyframes it uses the story's hand-drawn reference images
(each shot shows its cast side by side on white). It is a picture of the sheet, not of model output.

    python examples/story/sheet_picture.py [--out docs/images/storyboard-sheet.png]
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from dreamshot.atomic import atomic_write  # noqa: E402
from dreamshot.images import fit_image  # noqa: E402
from dreamshot.sheet import render_sheet  # noqa: E402
from dreamshot.shot_timing import board_text  # noqa: E402
from dreamshot.story_file import read_story  # noqa: E402

WIDTH, HEIGHT = 416, 240


def stand_in(images: list[torch.Tensor]) -> torch.Tensor:
    """The cast's references side by side on a white [HEIGHT, WIDTH, 3] frame."""
    frame = torch.ones(HEIGHT, WIDTH, 3)
    if not images:
        return frame
    cell = WIDTH // len(images)
    for i, image in enumerate(images):
        frame[:, i * cell:(i + 1) * cell] = fit_image(image, cell, HEIGHT, "pad_white")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parents[1] / "docs" / "images" / "storyboard-sheet.png"))
    args = parser.parse_args()
    story = read_story(HERE / "lighthouse.yaml")
    refs = {c.name: c.images[0] for c in story.characters}
    frames = torch.stack([stand_in([refs[n] for n in shot.characters]) for shot in story.shots])
    board = board_text(story.shots)
    sheet = render_sheet(frames, board.pop("captions"), [list(s.characters) for s in story.shots],
                         title=story.title, columns=2, **board)
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))


if __name__ == "__main__":
    main()
