"""Load DreamShot Model: ComfyUI's own Wan text-to-video MODEL (Wan2.1, Wan2.2-TI2V-5B, or one
Wan2.2-T2V-A14B expert: one node per expert, each with its own LoRAs) plus up to two DreamShot LoRAs
(the released SFT then RL LoRA) and an optional step-distillation LoRA (LightX2V 4-step), applied in
that order."""

import os

import folder_paths

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.comfy_bridge.lora import apply_lora
from ..dreamshot.comfy_bridge.wan_patches import check_wan_t2v
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


def distill_lora_files() -> list[str]:
    """Step-distillation LoRAs live with ordinary LoRAs (models/loras)."""
    return folder_paths.get_filename_list("loras")


class LoadDreamShotModel(io.ComfyNode):
    DISPLAY = "Load DreamShot Model"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadDreamShotModel",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/loaders",
            description="Checks that the model is Wan text-to-video (Wan2.1 1.3B/14B, Wan2.2-TI2V-5B or one "
                        "Wan2.2-T2V-A14B expert: use one Load DreamShot Model per expert) and patches a DreamShot "
                        "LoRA from models/dreamshot onto it. The input model is not modified.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="A Wan text-to-video model (Wan2.1 T2V, Wan2.2-TI2V-5B or one A14B "
                                                "expert) from ComfyUI's Load Diffusion Model."),
                io.Combo.Input("lora_name", options=[NO_LORA] + lora_files(),
                               default=NO_LORA,
                               tooltip="A DreamShot LoRA (.safetensors) in ComfyUI/models/dreamshot; None uses the "
                                       "base model as it is."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="LoRA strength; DreamShot LoRAs are trained for 1.0."),
                io.Combo.Input("lora_2_name", options=[NO_LORA] + lora_files(), default=NO_LORA,
                               tooltip="A second DreamShot LoRA from models/dreamshot, applied after the first "
                                       "(the released weights: sft_lora_model first, rl_lora_model here)."),
                io.Float.Input("lora_2_strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Second LoRA strength; the released RL LoRA is applied at 1.0."),
                io.Combo.Input("distill_lora_name", options=[NO_LORA] + distill_lora_files(), default=NO_LORA,
                               tooltip="Optional step-distillation LoRA from models/loras, applied last (e.g. "
                                       "wan2.1_t2v_14b_lora_rank64_lightx2v_4step: 4 steps, cfg 1, ref_cfg 1.5, "
                                       "shift 1.0)."),
                io.Float.Input("distill_lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Distillation LoRA strength; the official pipeline uses 1.0."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora_name=NO_LORA, strength=1.0, lora_2_name=NO_LORA, lora_2_strength=1.0,
                distill_lora_name=NO_LORA, distill_lora_strength=1.0) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            check_wan_t2v(model)
            # Order as the official pipeline fuses them: SFT, RL, then the distillation LoRA.
            for folder, name, weight in ((LORA_FOLDER, lora_name, strength),
                                         (LORA_FOLDER, lora_2_name, lora_2_strength),
                                         ("loras", distill_lora_name, distill_lora_strength)):
                if name in (None, NO_LORA) or weight == 0:
                    continue
                path = folder_paths.get_full_path_or_raise(folder, name)
                model = apply_lora(model, path, weight, name=name)
            return io.NodeOutput(model)
