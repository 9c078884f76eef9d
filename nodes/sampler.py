"""DreamShot Sampler: ComfyUI's samplers over a packed story; one keyframe per shot out."""

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..dreamshot.comfy_bridge.sampling import keyframes_from_latent, sample_story
from ..dreamshot.packing import shot_latent
from .errors import reported_as
from .types import CATEGORY, Sequence


class DreamShotSampler(io.ComfyNode):
    DISPLAY = "DreamShot Sampler"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotSampler",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/sampling",
            description="Samples the storyboard with ComfyUI's own samplers: per-shot cross-attention, references "
                        "and kept shots seen clean at t=0 and returned bit-exact; outputs one keyframe per shot.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1 T2V (from Load DreamShot Model)."),
                Sequence.Input("sequence", tooltip="From Shot Sequence Pack."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same storyboard."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale; 1.0 skips the negative pass."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Any ComfyUI sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Any ComfyUI scheduler."),
            ],
            outputs=[
                io.Image.Output(display_name="keyframes", tooltip="One image per shot, in story order."),
                io.Latent.Output(display_name="latent", tooltip="The shots' latent frames (references removed)."),
            ],
        )

    @classmethod
    def execute(cls, model, sequence, seed, steps, cfg, sampler_name, scheduler) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            latent = sample_story(model, sequence, seed, steps, cfg, sampler_name, scheduler)
            images = keyframes_from_latent(sequence, latent)
            return io.NodeOutput(images, {"samples": shot_latent(sequence.layout, latent)})
