"""Load DreamShot Model: ComfyUI's own Wan2.1 T2V MODEL plus an optional DreamShot LoRA."""

import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..dreamshot.comfy_bridge.lora import apply_lora
from ..dreamshot.comfy_bridge.wan_patches import check_wan21_t2v
from .errors import reported_as
from .types import CATEGORY

LORA_FOLDER = "dreamshot"
NO_LORA = "None"


def register_model_folder() -> None:
    """models/dreamshot (and extra_model_paths.yaml entries named 'dreamshot'), .safetensors only."""
    default = os.path.join(folder_paths.models_dir, LORA_FOLDER)
    folder_paths.add_model_folder_path(LORA_FOLDER, default, is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[LORA_FOLDER]
    folder_paths.folder_names_and_paths[LORA_FOLDER] = (paths, {".safetensors"})


def lora_files() -> list[str]:
    if LORA_FOLDER not in folder_paths.folder_names_and_paths:
        register_model_folder()
    return folder_paths.get_filename_list(LORA_FOLDER)


class LoadDreamShotModel(io.ComfyNode):
    DISPLAY = "Load DreamShot Model"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadDreamShotModel",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/loaders",
            description="Checks that the model is Wan2.1 text-to-video (1.3B or 14B) and patches a DreamShot "
                        "LoRA from models/dreamshot onto it. The input model is not modified.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1 T2V model from ComfyUI's Load Diffusion Model."),
                io.Combo.Input("lora_name", options=[NO_LORA] + lora_files(),
                               default=NO_LORA,
                               tooltip="A DreamShot LoRA (.safetensors) in ComfyUI/models/dreamshot; None uses the "
                                       "base model as it is."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="LoRA strength; DreamShot LoRAs are trained for 1.0."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora_name=NO_LORA, strength=1.0) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            check_wan21_t2v(model)
            if lora_name == NO_LORA or strength == 0:
                return io.NodeOutput(model)
            path = folder_paths.get_full_path_or_raise(LORA_FOLDER, lora_name)
            return io.NodeOutput(apply_lora(model, path, strength, name=lora_name))
