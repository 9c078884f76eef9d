"""Generating ViStoryBench storyboards with ComfyUI's Wan2.1 and the DreamShot sampler code.

The same pieces the nodes use: ComfyUI's loaders (comfy.sd), LoadDreamShotModel's LoRA mapping
(dreamshot.comfy_bridge.lora), ModelSamplingSD3 for the shift, and DreamShot Sampler's chunked
sampling (dreamshot.comfy_bridge.sampling.sample_long_story). Output: ``<out>/<story>/<N>.png``
(1-based), the layout the official runner writes and ViStoryBench's evaluator reads per method.

Resumable like the official runner: a story's existing PNGs are read back; chunks whose shots all
exist are skipped and the saved images are the context of the next chunk. Each PNG is written
atomically, and the context is always the image as saved (8-bit), so a resumed run writes the same
files an uninterrupted one does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write
from ..comfy_bridge.loaders import FORCED_DTYPES, WEIGHT_DTYPES
from .stories import VistoryStory, load_image, story_cast

log = logging.getLogger("DreamShot.vistory")

RESOLUTIONS = {720: (1280, 720), 480: (832, 480), 360: (640, 352)}
# The official runner's negative prompt (the English one it uses).
OFFICIAL_NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
                     "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
                     "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
                     "fused fingers, still picture, messy background, three legs, many people in the background, "
                     "walking backwards")


@dataclass
class RunSettings:
    width: int = 1280
    height: int = 720
    steps: int = 30
    cfg: float = 3.0
    ref_cfg: float = 2.0
    shift: float = 1.0
    seed: int = 42
    target_frame: int = 6
    context_frame: int = 0
    sampler: str = "euler"
    scheduler: str = "simple"
    with_references: bool = True          # shot_mode ref2shot (else text2shot)
    negative_prompt: str = OFFICIAL_NEGATIVE
    max_latent_frames: int = 21
    variants: int = 1                     # storyboards of seed, seed + 1, ... (DreamShot Sampler's variants)


def official_sampling(distill: bool) -> tuple[int, float, float]:
    """(steps, cfg, ref_cfg) of the released runner, without or with the LightX2V 4-step LoRA."""
    return (4, 1.0, 1.5) if distill else (30, 3.0, 2.0)


def add_model_arguments(ap, required: bool = True, dit_dtype_help: str = "") -> None:
    """The model files and loading options shared by the headless generators (dreamshot.vistory,
    dreamshot.generate), and ComfyUI's own options (comfy_bridge.headless.add_comfy_arguments).
    ``dit_dtype_help``: what --dit-dtype means to the tool (deprecated in generate, the official
    runner's bf16 in vistory)."""
    from ..comfy_bridge.headless import add_comfy_arguments

    ap.add_argument("--dit", required=required, help="Wan2.1 T2V diffusion model (.safetensors, ComfyUI format)")
    ap.add_argument("--vae", required=required, help="wan_2.1_vae.safetensors")
    ap.add_argument("--text-encoder", required=required, help="umt5_xxl (ComfyUI format)")
    ap.add_argument("--lora", action="append", default=[], metavar="PATH",
                    help="DreamShot LoRA, strength 1 (repeat: SFT then RL, as released)")
    ap.add_argument("--distill-lora", help="LightX2V 4-step LoRA (switches to the official 4-step settings)")
    ap.add_argument("--shift", type=float, default=1.0, help="sigma shift (official: 1.0)")
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    dtype = ap.add_mutually_exclusive_group()
    dtype.add_argument("--weight-dtype", choices=WEIGHT_DTYPES,
                       help="as Load Diffusion Model's (UNETLoader's) weight_dtype: default lets ComfyUI choose from "
                            "the file and the GPU (an fp8 file stays fp8), fp8_* store the weights in fp8")
    dtype.add_argument("--dit-dtype", choices=tuple(FORCED_DTYPES), help=dit_dtype_help or "force the DiT's dtype")
    ap.add_argument("--text-encoder-config", help="JSON overriding UMT5 config keys (tiny test encoders only)")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_comfy_arguments(ap)


def model_loras(args) -> list[tuple[str, float]]:
    """The LoRAs of add_model_arguments' options, in the order they are applied (SFT, RL, distill)."""
    return [(p, 1.0) for p in args.lora] + ([(args.distill_lora, 1.0)] if args.distill_lora else [])


def text_encoder_config(args) -> dict | None:
    """--text-encoder-config's JSON file (tiny test encoders only), or None."""
    return json.loads(Path(args.text_encoder_config).read_text()) if args.text_encoder_config else None


def load_models(dit: str, vae: str, text_encoder: str, loras: list[tuple[str, float]], shift: float,
                weight_dtype: str = "default", text_encoder_config: dict | None = None, dit_dtype: str | None = None):
    """(model, vae, clip) as a graph loads them: the DiT as UNETLoader does (``weight_dtype``; ``dit_dtype``
    forces bf16/fp16/fp32 instead, deprecated), LoRAs stacked in order as Load DreamShot Model applies
    them, the shift as ModelSamplingSD3, the VAE and UMT5 through comfy.sd as VAELoader / CLIPLoader."""
    from ..comfy_bridge.training import load_text_encoder, load_vae

    model = load_dit(dit, loras, shift, weight_dtype, dit_dtype)
    return model, load_vae(vae), load_text_encoder(text_encoder, text_encoder_config)


def load_dit(dit: str, loras: list[tuple[str, float]], shift: float, weight_dtype: str = "default",
             dit_dtype: str | None = None):
    """The DiT as load_models builds it (UNETLoader, the LoRAs in order, ModelSamplingSD3): also a
    Wan2.2-A14B low-noise expert beside the first model."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from ..comfy_bridge.loaders import load_diffusion_model
    from ..comfy_bridge.lora import apply_lora

    model = load_diffusion_model(dit, weight_dtype, dit_dtype)
    for path, strength in loras:
        model = apply_lora(model, path, strength, Path(path).name)
    return ModelSamplingSD3().patch(model, shift)[0]


def existing_shots(folder: Path, num_shots: int) -> dict[int, Path]:
    """Saved keyframes 1.png..N.png (0-based shot index -> path)."""
    return {j: folder / f"{j + 1}.png" for j in range(num_shots) if (folder / f"{j + 1}.png").is_file()}


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).mul(255).round().to(torch.uint8)).cpu().numpy()


def save_png(path: Path, image: torch.Tensor) -> torch.Tensor:
    """Write atomically; returns the image as saved (8-bit), for use as context."""
    pixels = _to_uint8(image)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def generate_story(story: VistoryStory, model, vae, clip, settings: RunSettings, out_dir: Path,
                   on_chunk=None) -> dict:
    """Generate (or finish) one story; returns a summary row."""
    from ..comfy_bridge.sampling import sample_long_story
    from ..comfy_bridge.geometry import vae_geometry
    from ..comfy_bridge.text_encode import encode_text
    from ..modes import Mode
    from ..story import encode_story, plan_story

    folder = out_dir / story.key
    done_paths = existing_shots(folder, story.num_shots)
    if len(done_paths) == story.num_shots:
        return {"story": story.key, "shots": story.num_shots, "generated": 0, "seconds": 0.0, "status": "done"}
    characters, shots = story_cast(story, settings.with_references)
    mode = Mode.REFERENCE_TO_SHOT if characters else Mode.TEXT_TO_SHOT
    plan = plan_story(characters, shots, settings.width, settings.height, mode=mode, fit="pad_white",
                      max_latent_frames=settings.max_latent_frames, check_budget=False, geometry=vae_geometry(vae))
    sequence = encode_story(plan, vae, lambda text: encode_text(clip, text), settings.negative_prompt)
    done = {j: load_image(p) for j, p in done_paths.items()}
    for j, image in done.items():
        if tuple(image.shape[:2]) != (settings.height, settings.width):
            raise RuntimeError(f"{done_paths[j]} is {image.shape[1]}x{image.shape[0]}, not {settings.width}x"
                               f"{settings.height}: it was made with other settings; move it away to regenerate.")
    generated = []

    def save(targets, images):
        saved = [save_png(folder / f"{j + 1}.png", images[i]) for i, j in enumerate(targets)]
        generated.extend(targets)
        return torch.stack(saved)

    start = time.perf_counter()
    with torch.inference_mode():
        sample_long_story(model, sequence, settings.seed, settings.steps, settings.cfg, settings.sampler,
                          settings.scheduler, ref_cfg=settings.ref_cfg, chunk_size=settings.target_frame,
                          context_shots=settings.context_frame, on_chunk=on_chunk, done=done, on_keyframes=save)
    seconds = time.perf_counter() - start
    return {"story": story.key, "shots": story.num_shots, "generated": len(generated), "seconds": round(seconds, 2),
            "status": "resumed" if done else "new"}
