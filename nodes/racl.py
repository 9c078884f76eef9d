"""RACL Attention Patch: shot tokens read identity only from their own character's reference."""

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.comfy_bridge.role_patch import RoleAttentionConfig, parse_layers, with_role_attention
from ..dreamshot.comfy_bridge.wan_patches import check_wan_t2v
from ..dreamshot.errors import DreamShotInputError
from .errors import reported_as
from .types import CATEGORY


class RACLAttentionPatch(io.ComfyNode):
    DISPLAY = "RACL Attention Patch"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotRACLAttentionPatch",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/patches",
            description="Role attention at inference (the RACL constraint as an exact attention mask): inside a "
                        "character's region of a shot, tokens may attend to that character's reference but not to "
                        "another character's. Regions come from the Shot Scripts' masks/boxes, else from where each "
                        "shot token already looks. Returns a patched clone; the input model is untouched.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1 T2V model (after Load DreamShot Model)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1 = forbidden reference tokens get exactly zero attention; 0 = no effect "
                                       "(bit-identical to the unpatched model)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which the constraint starts (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which it stops (1 = last step)."),
                io.String.Input("layers", default="all",
                                tooltip='DiT blocks to patch: "all" or numbers like "0-9, 20" (1.3B: 0-29, 14B: 0-39).'),
                io.Boolean.Input("auto_regions", default=True,
                                 tooltip="For shots without masks/boxes, give each shot token the character whose "
                                         "reference it already attends to most. Off: such shots are not constrained."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, strength, start_percent, end_percent, layers, auto_regions) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            check_wan_t2v(model)
            if start_percent > end_percent:
                raise DreamShotInputError("start_percent", f"start {start_percent} is after end {end_percent}.",
                                          "set start_percent <= end_percent.")
            num_blocks = len(model.get_model_object("diffusion_model").blocks)
            config = RoleAttentionConfig(strength=strength, start_percent=start_percent, end_percent=end_percent,
                                         layers=parse_layers(layers, num_blocks), auto_regions=auto_regions)
            return io.NodeOutput(with_role_attention(model, config))
