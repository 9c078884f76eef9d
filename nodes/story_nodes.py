"""Character Reference and Shot Script: the story's cast and its shots, chained into lists."""

import logging

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.mask_meaning import MASK_MEANINGS, character_mask
from ..dreamshot.seeds import MAX_SEED
from ..dreamshot.shot_timing import CAMERA_MOVES, DEFAULT_DURATION, MAX_DURATION, SHOT_SIZES, parse_camera
from ..dreamshot.story import REFERENCE_KINDS, Character, Shot, parse_boxes, parse_character_names
from .errors import reported_as
from .types import CATEGORY, Characters, Shots


log = logging.getLogger("DreamShot")


class CharacterReference(io.ComfyNode):
    DISPLAY = "Character Reference"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotCharacterReference",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/conditioning",
            description="One reference of the cast: a character, or a scene reference (kind location or prop: "
                        "a place or an object), with image(s), a name that shots list, and an optional mask and "
                        "description. Chain several to build the cast.",
            is_experimental=True,
            inputs=[
                io.Image.Input("image", tooltip="Reference image of the character; a batch gives several "
                                                "references of the same character."),
                io.String.Input("name", default="Character 1",
                                tooltip="Unique name; list it in a Shot Script's characters to put the character "
                                        "in that shot."),
                io.String.Input("description", default="", multiline=True,
                                tooltip="Optional caption of the reference (what the reference frame's tokens read "
                                        "in cross-attention). Empty: the reference reads no text."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional mask of the character in the reference, used by role attention; "
                                      "without it the whole reference counts. Both conventions are accepted, see "
                                      "mask_meaning: Load Image's MASK of a cut-out PNG is 1 where the image is "
                                      "transparent (the background), a mask painted in the mask editor is 1 on the "
                                      "painted part."),
                Characters.Input("characters", optional=True,
                                 tooltip="Characters defined before this one (chain Character References)."),
                io.Combo.Input("kind", options=list(REFERENCE_KINDS), default=REFERENCE_KINDS[0], optional=True,
                               tooltip="character: a person. location / prop: a place or an object, listed by shots "
                                       "like a character; role attention treats it as a role of its own (a "
                                       "location's shots give it their background), face metrics skip it."),
                io.Combo.Input("mask_meaning", options=list(MASK_MEANINGS), default=MASK_MEANINGS[0], optional=True,
                               tooltip="What 1 means in 'mask'. auto: 1 = background when the mask covers most of "
                                       "the image border (Load Image's MASK of a cut-out) or is all 0 (an image "
                                       "without transparency: the whole reference counts), else 1 = character. "
                                       "Or say it: '1 = character' / '1 = background'."),
            ],
            outputs=[Characters.Output(display_name="characters")],
        )

    @classmethod
    def execute(cls, image, name, description="", mask=None, characters=None, kind=REFERENCE_KINDS[0],
                mask_meaning=MASK_MEANINGS[0]) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            name = name.strip()
            if not name:
                raise DreamShotInputError("name", "the name is empty.", "give the character a name.")
            if image.ndim != 4 or image.shape[0] < 1:
                raise DreamShotInputError("image", f"expected an IMAGE batch, got shape {tuple(image.shape)}.",
                                          "connect a Load Image node.")
            if mask is not None:
                if mask.ndim == 2:
                    mask = mask.unsqueeze(0)
                if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
                    raise DreamShotInputError(
                        "mask", f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
                        f"{image.shape[2]}x{image.shape[1]}.", "use the mask that belongs to this image.")
                mask, inverted = character_mask(mask, mask_meaning)
                if inverted and mask_meaning == "auto":
                    log.info("DreamShot: the mask of %r covers most of the image border, so it is read as 1 = "
                             "background (Load Image's MASK of a cut-out) and inverted.", name)
            previous = tuple(characters or ())
            if any(c.name == name for c in previous):
                raise DreamShotInputError("name", f"a character named {name!r} is already in the chain.",
                                          "give each character a unique name.")
            if kind not in REFERENCE_KINDS:
                raise DreamShotInputError("kind", f"unknown kind {kind!r}.", f"use one of: {', '.join(REFERENCE_KINDS)}.")
            new = Character(name=name, images=image[..., :3], masks=mask, description=description.strip(), kind=kind)
            return io.NodeOutput(previous + (new,))


class ShotScript(io.ComfyNode):
    DISPLAY = "Shot Script"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotShotScript",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/conditioning",
            description="One storyboard shot: its prompt, the characters in it, and optionally a fixed image "
                        "(kept as it is in shot_to_shot and edit modes). Chain several in story order.",
            is_experimental=True,
            inputs=[
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What happens in this shot. Only this shot's frames read this prompt."),
                io.String.Input("characters", default="",
                                tooltip="Names of the characters in this shot, comma separated (as given to "
                                        "Character Reference)."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional fixed image for this shot (shot_to_shot / edit modes keep it)."),
                Shots.Input("shots", optional=True, tooltip="The shots before this one (chain Shot Scripts)."),
                io.Mask.Input("character_masks", optional=True,
                              tooltip="Optional regional layout: one mask per listed character, in the order of "
                                      "'characters' (a batch). Used by the RACL Attention Patch."),
                io.String.Input("character_boxes", default="", optional=True,
                                tooltip='Optional regional layout as boxes: "Mira: 0.05, 0.1, 0.45, 1; Theo: 0.5, '
                                        '0.1, 0.95, 1" (x0, y0, x1, y1 as fractions of the shot, or whole pixels). '
                                        'A box reaching outside the frame is refused, not clipped.'),
                io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                                tooltip="This shot's own negative prompt; empty = Shot Sequence Pack's."),
                io.Int.Input("shot_seed", default=-1, min=-1, max=MAX_SEED, optional=True,
                             tooltip="This shot's own initial-noise seed; -1 = derived from DreamShot Sampler's seed "
                                     "and the shot's number. Change it to re-roll this shot alone: the other shots' "
                                     "initial noise stays exactly the same."),
                io.Float.Input("duration", default=DEFAULT_DURATION, min=0.01, max=MAX_DURATION, step=0.1,
                               optional=True,
                               tooltip="Seconds this shot stays on screen in the Storyboard Animatic and the "
                                       "Editorial Timeline; printed on the Storyboard Sheet with the total running "
                                       "time."),
                io.String.Input("shot_size", default="", optional=True,
                                tooltip=f"Shot size printed on the sheet, free text; the usual ones: "
                                        f"{', '.join(SHOT_SIZES)}."),
                io.Combo.Input("camera", options=list(CAMERA_MOVES), default=CAMERA_MOVES[0], optional=True,
                               tooltip="Camera move, printed on the sheet; the Storyboard Animatic renders it on "
                                       "the still as a slow push in / pull out, pan or tilt (static: none)."),
                io.String.Input("action", default="", optional=True,
                                tooltip="What happens, as the board's action line: printed under the board on the "
                                        "sheet (instead of the prompt) and in the timeline. Empty: the prompt."),
                io.String.Input("dialogue", default="", optional=True,
                                tooltip="Dialogue of this shot: printed under the board, burned into the animatic "
                                        "as its caption and written as a marker in the timeline."),
            ],
            outputs=[Shots.Output(display_name="shots")],
        )

    @classmethod
    def execute(cls, prompt, characters="", image=None, shots=None, character_masks=None,
                character_boxes="", negative_prompt="", shot_seed=-1, duration=DEFAULT_DURATION, shot_size="",
                camera=CAMERA_MOVES[0], action="", dialogue="") -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            if image is not None and image.shape[0] != 1:
                raise DreamShotInputError("image", f"got a batch of {image.shape[0]} images for one shot.",
                                          "pick one image (Image From Batch), one per Shot Script.")
            names = parse_character_names(characters)
            regions = list(parse_boxes(character_boxes or ""))
            if character_masks is not None:
                masks = character_masks if character_masks.ndim == 3 else character_masks.unsqueeze(0)
                if masks.shape[0] != len(names):
                    raise DreamShotInputError(
                        "character_masks", f"{masks.shape[0]} mask(s) for {len(names)} listed character(s).",
                        "give one mask per name in 'characters', in the same order.")
                regions += list(zip(names, masks))
            shot = Shot(prompt=prompt, characters=names, image=None if image is None else image[0, ..., :3],
                        regions=tuple(regions), negative_prompt=(negative_prompt or "").strip(),
                        seed=None if shot_seed is None or shot_seed < 0 else int(shot_seed),
                        duration=float(DEFAULT_DURATION if duration is None else duration),
                        shot_size=(shot_size or "").strip(), camera=parse_camera(camera),
                        action=(action or "").strip(), dialogue=(dialogue or "").strip())
            return io.NodeOutput(tuple(shots or ()) + (shot,))
