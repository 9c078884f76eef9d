"""Shot Sequence Pack: encode references and shots into one latent with per-shot prompts."""

import re

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.comfy_bridge.geometry import vae_geometry
from ..dreamshot.comfy_bridge.text_encode import encode_text
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.images import FIT_METHODS
from ..dreamshot.layout import DEFAULT_MAX_LATENT_FRAMES
from ..dreamshot.modes import Mode, parse_shot_list
from ..dreamshot.story import Character, Shot, encode_story, plan_story
from .errors import reported_as
from .types import CATEGORY, Characters, Sequence, Shots

DEFAULT_NEGATIVE = ("blurry, low quality, worst quality, jpeg artifacts, deformed, disfigured, extra fingers, "
                    "bad hands, bad face, watermark, text, subtitles")

NUMBERED_SOCKET = re.compile(r"^(shots|characters)_(\d+)$")
# What each socket family carries: (item type, what it is, the node whose output it takes).
CHAINS = {"shots": (Shot, "a shot chain", "Shot Script"),
          "characters": (Character, "a character chain", "Character Reference")}


def _what(value) -> str:
    """A user's name for what reached a socket."""
    if isinstance(value, tuple) and value:
        for item_type, what, _ in CHAINS.values():
            if all(isinstance(item, item_type) for item in value):
                return what
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {list(shape)}" if shape is not None else "")


def check_chain(name: str, base: str, value) -> None:
    """Refuse anything but ``base``'s chain on socket ``name``: the server type-checks only the
    declared sockets, not the numbered ones the frontend extension adds."""
    item_type, what, source = CHAINS[base]
    if value is None or (isinstance(value, tuple) and all(isinstance(item, item_type) for item in value)):
        return
    raise DreamShotInputError(
        name, f"receives {_what(value)}, not {what}.",
        f"connect only {source} nodes to '{base}' and '{base}_N' (if the workflow was opened in a newer ComfyUI "
        "frontend with an older DreamShot, its links may have moved to other sockets: reconnect them).")


def join_numbered(base: str, first, extra: dict) -> tuple:
    """``first`` + the chains on sockets base_2, base_3, ... in number order (None skipped)."""
    check_chain(base, base, first)
    numbered = []
    for key, value in extra.items():
        match = NUMBERED_SOCKET.match(key)
        if match is None:
            raise DreamShotInputError(key, "is not an input of this node.", "reload the workflow or remove the link.")
        if match.group(1) == base:
            check_chain(key, base, value)
            if value is not None:
                numbered.append((int(match.group(2)), value))
    joined = tuple(first or ())
    for _, chain in sorted(numbered, key=lambda kv: kv[0]):
        joined += tuple(chain)
    return joined


class ShotSequencePack(io.ComfyNode):
    DISPLAY = "Shot Sequence Pack"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotShotSequencePack",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/conditioning",
            description="Encodes each character reference alone as a leading latent frame, the shots (each "
                        "repeated T times) as one video, and every shot prompt separately, for DreamShot Sampler.",
            is_experimental=True,
            inputs=[
                io.Vae.Input("vae", tooltip="The model's VAE: wan_2.1_vae for Wan2.1 and the Wan2.2-A14B experts, "
                                            "wan2.2_vae for Wan2.2-TI2V-5B (its geometry sets the latent layout)."),
                io.Clip.Input("clip", tooltip="The Wan text encoder (umt5-xxl), loaded with Load CLIP type wan."),
                Shots.Input("shots", tooltip="The chained Shot Scripts, in story order."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Shot width, multiple of 16 (Wan2.1, A14B) or 32 (Wan2.2-TI2V-5B)."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Shot height, multiple of 16 (Wan2.1, A14B) or 32 (Wan2.2-TI2V-5B)."),
                io.Combo.Input("mode", options=[m.value for m in Mode], default=Mode.REFERENCE_TO_SHOT.value,
                               tooltip="reference_to_shot: characters clean, all shots generated. text_to_shot: no "
                                       "references. shot_to_shot: the first shots are given, the rest generated. "
                                       "edit: any given/locked shots are kept exactly, the rest regenerated."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE,
                                tooltip="Negative prompt, applied to every shot."),
                io.Int.Input("repeat", default=4, min=1, max=64, step=1,
                             tooltip="T: pixel frames per shot before VAE encoding. 4 = one latent frame per shot "
                                     "(the paper's setting); must be a multiple of 4."),
                io.Combo.Input("fit", options=list(FIT_METHODS), default="pad_white",
                               tooltip="How images of another size are fitted: pad_white keeps the aspect ratio "
                                       "(as the official code does for references), crop, stretch, or error."),
                io.Int.Input("max_latent_frames", default=DEFAULT_MAX_LATENT_FRAMES, min=1, max=512,
                             tooltip="Latent frames one sampling pass may hold (references + shots x T/4); the "
                                     "sampler checks every pass, so a long story with chunk_size fits. Wan2.1 was "
                                     "trained on 21 latent frames (81 video frames)."),
                Characters.Input("characters", optional=True,
                                 tooltip="The chained Character References (not used in text_to_shot)."),
                io.Image.Input("keyframes", optional=True,
                               tooltip="An earlier storyboard (DreamShot Sampler's images), for lock_shots."),
                io.String.Input("lock_shots", default="", optional=True,
                                tooltip='Shots to keep from keyframes, e.g. "1, 2, 4-6" (edit mode).'),
            ],
            outputs=[Sequence.Output(display_name="sequence")],
        )

    @classmethod
    def execute(cls, vae, clip, shots, width, height, mode, negative_prompt, repeat, fit, max_latent_frames,
                characters=None, keyframes=None, lock_shots="", **extra) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            # The frontend extension adds sockets shots_2, shots_3, ... / characters_2, ... as they
            # are connected; each carries a chain, joined in socket order.
            shots = join_numbered("shots", shots, extra)
            characters = join_numbered("characters", characters, extra)
            if clip is None:
                raise DreamShotInputError("clip", "no text encoder (the checkpoint has none).",
                                          "load umt5-xxl with Load CLIP (type wan).")
            lock = parse_shot_list(lock_shots or "", len(shots or ()))
            plan = plan_story(characters or (), shots or (), width, height, repeat=repeat, mode=mode,
                              keyframes=keyframes, lock_shots=lock, fit=fit, max_latent_frames=max_latent_frames,
                              check_budget=False, geometry=vae_geometry(vae))
            sequence = encode_story(plan, vae, lambda text: encode_text(clip, text), negative_prompt)
            return io.NodeOutput(sequence)
