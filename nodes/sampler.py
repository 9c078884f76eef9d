"""DreamShot Sampler: ComfyUI's samplers over a packed story; one keyframe per shot out."""

import comfy.samplers

from ..dreamshot.comfy_bridge.compat import io
from ..dreamshot.comfy_bridge.sampling import WAN22_T2V_BOUNDARY, Experts, sample_long_story
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
                        "and kept shots seen clean at t=0 and returned bit-exact; text and reference guidance; "
                        "long stories in chunks; outputs one keyframe per shot.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1 T2V, Wan2.2-TI2V-5B or the Wan2.2-T2V-A14B high-noise expert "
                                                "(from Load DreamShot Model)."),
                Sequence.Input("sequence", tooltip="From Shot Sequence Pack."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same storyboard. Each shot's initial noise "
                                     "comes from a seed derived from this one and the shot's number, unless its Shot "
                                     "Script sets a seed of its own (re-roll one shot: change only that one)."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale (official: 3, or 1 with the 4-step LoRA); 1.0 skips "
                                       "the negative pass."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Any ComfyUI sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Any ComfyUI scheduler."),
                io.Float.Input("ref_cfg", default=2.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Reference-image guidance scale (official: 2, or 1.5 with the 4-step "
                                       "LoRA). 1.0 = off, no extra model pass; otherwise one extra pass per step "
                                       "with the shots blind to the references. Ignored without references."),
                io.Int.Input("chunk_size", default=0, min=0, max=512,
                             tooltip="Shots generated per pass for long stories (official: 6); 0 = all shots "
                                     "in one pass. Each chunk uses only its own shots' characters as references."),
                io.Int.Input("context_shots", default=0, min=0, max=64,
                             tooltip="With chunks: the last N shots generated so far are given clean to the next "
                                     "chunk as context (Shot-to-Shot)."),
                io.Int.Input("variants", default=1, min=1, max=64, optional=True,
                             tooltip="Storyboards made in this run, one after the other (one progress bar); variant v "
                                     "is exactly the storyboard of seed + v. The keyframes come out variant by "
                                     "variant (N x shots images); the Storyboard Sheet shows each variant as a row."),
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="Wan2.2-T2V-A14B: the low-noise expert (connect the high-noise one to 'model'). "
                                       "Each pass samples the high-noise steps with 'model' and the rest with this "
                                       "one; the RACL patch and Shot LoRAs on 'model' apply to it too."),
                io.Float.Input("switch_boundary", default=WAN22_T2V_BOUNDARY, min=0.0, max=1.0, step=0.005,
                               round=0.0001, optional=True,
                               tooltip="With model_low_noise: steps at sigma >= this go to 'model' (Wan2.2 T2V: "
                                       "0.875, the official value; I2V used 0.9). Used when switch_step is 0."),
                io.Int.Input("switch_step", default=0, min=0, max=10000, optional=True,
                             tooltip="With model_low_noise: the first step of the low-noise expert (as ComfyUI's "
                                     "Wan2.2 template's KSamplerAdvanced end/start step); 0 = from switch_boundary."),
                io.Float.Input("cfg_low_noise", default=0.0, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="With model_low_noise: the CFG scale of the low-noise steps; 0 = the same as "
                                       "cfg. The official A14B: cfg 4, cfg_low_noise 3. A step-distilled LoRA on the "
                                       "low-noise expert only: cfg_low_noise 1."),
            ],
            outputs=[
                io.Image.Output(display_name="keyframes", tooltip="One image per shot, in story order (with "
                                                                  "variants: all shots of variant 1, then of 2, ...)."),
                io.Latent.Output(display_name="latent", tooltip="The shots' latent frames (references removed), one "
                                                                "batch entry per variant."),
            ],
        )

    @classmethod
    def execute(cls, model, sequence, seed, steps, cfg, sampler_name, scheduler, ref_cfg=2.0, chunk_size=0,
                context_shots=0, variants=1, model_low_noise=None, switch_boundary=WAN22_T2V_BOUNDARY,
                switch_step=0, cfg_low_noise=0.0) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            experts = (None if model_low_noise is None
                       else Experts(model_low_noise, switch_boundary, switch_step, cfg_low_noise))
            images, latent = sample_long_story(model, sequence, seed, steps, cfg, sampler_name, scheduler,
                                               ref_cfg=ref_cfg, chunk_size=chunk_size, context_shots=context_shots,
                                               variants=variants, experts=experts)
            return io.NodeOutput(images, {"samples": latent})
