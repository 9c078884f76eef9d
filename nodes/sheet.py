"""Storyboard Sheet: the keyframes as one sheet (grid, shot numbers, script, characters, title),
previewed in ComfyUI and saved as PNG and PDF in the output folder."""

import json
import os

import folder_paths
import numpy as np
import torch
from comfy.cli_args import args
from PIL.PngImagePlugin import PngInfo

from ..dreamshot.comfy_bridge.compat import io, ui
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.sheet import render_sheet, safe_stem, save_sheet_files
from ..dreamshot.shot_timing import board_text
from .errors import reported_as
from .types import CATEGORY, Sequence


def _png_metadata(cls) -> PngInfo | None:
    """The workflow and prompt, as SaveImage embeds them (so the PNG can be dropped back in)."""
    hidden = cls.hidden
    if args.disable_metadata or hidden is None or (hidden.prompt is None and not hidden.extra_pnginfo):
        return None
    info = PngInfo()
    if hidden.prompt is not None:
        info.add_text("prompt", json.dumps(hidden.prompt))
    for key, value in (hidden.extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def _script(sequence, num_keyframes: int):
    """Captions, character names and kept/new tags per shot from a packed sequence, the number of
    variants the keyframes hold (DreamShot Sampler's variants: V x shots images) and the board text
    (notes, dialogue, running time: shot_timing.board_text)."""
    if sequence is None:
        return None, None, None, 1, {}
    plan = sequence.plan
    shots = len(plan.shots)
    if num_keyframes % shots:
        raise DreamShotInputError(
            "keyframes", f"{num_keyframes} keyframe(s) but the sequence has {shots} shot(s): not one image per shot "
            "(or per shot of each variant).", "connect the keyframes that DreamShot Sampler made from this sequence.")
    board = board_text(plan.shots)
    captions = board.pop("captions")
    characters = [tuple(shot.characters) for shot in plan.shots]
    clean = plan.layout.clean_shots
    tags = [("kept" if keep else "new") for keep in clean] if any(clean) else None
    return captions, characters, tags, num_keyframes // shots, board


def _split_prefix(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, str]:
    """(folder, safe stem, subfolder) for ``prefix`` inside ``output_dir``; ComfyUI's own check
    refuses prefixes that leave it, ours also follows symlinks."""
    prefix = prefix.strip() or "DreamShot/storyboard"
    if os.path.isabs(prefix) or os.path.splitdrive(prefix)[0]:
        raise DreamShotInputError("filename_prefix", f"{prefix!r} is an absolute path.",
                                  'use a path inside the output folder, e.g. "DreamShot/storyboard".')
    try:
        folder, filename, _, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir, width, height)
    except Exception as e:   # ComfyUI raises a bare Exception for paths outside the output folder
        raise DreamShotInputError("filename_prefix", f"{prefix!r} points outside the output folder.",
                                  "remove '..' from the prefix.") from e
    root = os.path.realpath(output_dir)
    if os.path.commonpath([os.path.realpath(folder), root]) != root:
        raise DreamShotInputError("filename_prefix", f"{prefix!r} leads out of the output folder (a link).",
                                  "save into a real folder inside the output folder.")
    return folder, safe_stem(filename), subfolder


class StoryboardSheet(io.ComfyNode):
    DISPLAY = "Storyboard Sheet"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotStoryboardSheet",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/output",
            description="Lays the keyframes out as a storyboard sheet: a grid with shot numbers, each shot's size, "
                        "camera move, duration, action or script, dialogue and characters under it, and a title "
                        "with the total running time on top. Shows it here and saves it as PNG "
                        "(with the workflow embedded) and PDF in ComfyUI's output folder, never overwriting a file.",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("keyframes", tooltip="One image per shot, in story order (DreamShot Sampler's "
                                                    "keyframes); with the sampler's variants, each variant becomes a "
                                                    "row (the sequence tells how many shots a variant has)."),
                Sequence.Input("sequence", optional=True,
                               tooltip="The Shot Sequence Pack output the keyframes were made from: gives each "
                                       "shot's script text (action, else prompt), dialogue, characters, shot size, "
                                       "camera move and duration with the total running time, and marks kept/new "
                                       "shots in edit mode. Without it only shot numbers are shown."),
                io.String.Input("title", default="Storyboard", tooltip="Title printed on top; empty for none."),
                io.Int.Input("columns", default=0, min=0, max=16,
                             tooltip="Shots per row; 0 = automatic (balanced rows of at most 4). With variants each "
                                     "row is one variant, whatever this says."),
                io.String.Input("filename_prefix", default="DreamShot/storyboard",
                                tooltip="File name prefix inside ComfyUI's output folder; '/' makes subfolders. "
                                        "A counter is added, existing files are never overwritten."),
                io.Boolean.Input("save_pdf", default=True, tooltip="Also save the sheet as a one-page PDF."),
            ],
            outputs=[io.Image.Output(display_name="sheet", tooltip="The sheet as one image.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, keyframes, title, columns, filename_prefix, save_pdf, sequence=None) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            captions, characters, tags, variants, board = _script(sequence, keyframes.shape[0])
            sheet = render_sheet(keyframes, captions, characters, title=title, columns=columns, tags=tags,
                                 variants=variants, **board)
            output_dir = folder_paths.get_output_directory()
            folder, stem, subfolder = _split_prefix(filename_prefix, output_dir, sheet.width, sheet.height)
            png_path, _ = save_sheet_files(sheet, folder, stem, pdf=save_pdf, root=output_dir,
                                           pnginfo=_png_metadata(cls), title=title)
            image = torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0).unsqueeze(0)
            saved = ui.SavedResult(os.path.basename(png_path), subfolder, io.FolderType.output)
            return io.NodeOutput(image, ui=ui.SavedImages([saved]))
