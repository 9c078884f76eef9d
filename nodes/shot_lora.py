"""Shot LoRA: a LoRA from models/loras that applies to chosen shots only, inside the one joint pass."""

import folder_paths

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.comfy_bridge.shot_lora import load_shot_lora, with_shot_lora
from ..dreamshot.comfy_bridge.wan_patches import check_wan_t2v
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.shot_lora import parse_shot_numbers
from .errors import reported_as
from .types import CATEGORY


class ShotLoRA(io.ComfyNode):
    DISPLAY = "Shot LoRA"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotShotLoRA",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/patches",
            description="Applies a LoRA to the tokens of chosen shots only (or of the shots that list a character), "
                        "in the same joint pass: those shots see the model with the LoRA, every other token the "
                        "model without it, exactly. Chain several for several LoRAs. No weight is copied or "
                        "changed; only DreamShot Sampler uses it. Returns a clone; the input model is untouched.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1 T2V (after Load DreamShot Model, or another Shot LoRA)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A Wan2.1 T2V LoRA (.safetensors) in ComfyUI/models/loras: ComfyUI, "
                                       "DiffSynth/PEFT or kohya key names, on attention/feed-forward layers."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA strength on the chosen shots (as LoraLoaderModelOnly's strength)."),
                io.String.Input("shots", default="",
                                tooltip='Story shots, numbered from 1 as in the story: "2, 4-5", or "all". Empty: '
                                        "the shots that list the character below."),
                io.String.Input("character", default="",
                                tooltip="Bind the LoRA to a character: it applies to the shots that list this name "
                                        "(only those among 'shots' when both are given). Empty: no binding."),
                io.Boolean.Input("include_references", default=False,
                                 tooltip="With a character: also apply the LoRA to that character's reference frames "
                                         "and caption. Off: references are read as the base model encodes them."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, shots="", character="", include_references=False) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            check_wan_t2v(model)
            picked = parse_shot_numbers(shots)
            character = character.strip()
            if picked is None and not character and shots.strip().lower() != "all":
                raise DreamShotInputError("shots", "no shots and no character are given.",
                                          'write shot numbers like "2, 4-5" (or "all"), or a character name.')
            if include_references and not character:
                raise DreamShotInputError("include_references", "references belong to characters; none is given.",
                                          "name the character, or turn include_references off.")
            if strength == 0:
                return io.NodeOutput(model)
            path = folder_paths.get_full_path_or_raise("loras", lora_name)
            lora = load_shot_lora(model, path, lora_name, strength, picked, character, include_references)
            return io.NodeOutput(with_shot_lora(model, lora))
