"""One story file's storyboard with ComfyUI's Wan2.1 and the nodes' own code: the patch nodes' calls
(RACL Attention Patch, Shot LoRA: ``storyboard_model``), Shot Sequence Pack's encoding
(dreamshot.story.encode_story), DreamShot Sampler's chunked sampling and variants
(comfy_bridge.sampling.sample_long_story) and the Storyboard Sheet's layout and saving (dreamshot.sheet).
Models are loaded by dreamshot.vistory.runner.load_models. ComfyUI must be imported first
(comfy_bridge.headless.import_comfy).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..sheet import render_sheet, save_sheet_files
from ..shot_timing import board_text
from ..story import StoryPlan, encode_story
from ..atomic import atomic_write
from ..vistory.runner import RunSettings

log = logging.getLogger("DreamShot.generate")


@contextlib.contextmanager
def step_progress(desc: str):
    """One tqdm bar over every sampling step of every pass, fed by ComfyUI's ProgressBar (the hook
    the server uses), instead of k-diffusion's bar per pass."""
    import comfy.utils
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def hook(value, total, preview, node_id=None):
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(value - bar.n)

    old_hook, old_enabled = comfy.utils.PROGRESS_BAR_HOOK, comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.set_progress_bar_global_hook(hook)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    try:
        yield bar
    finally:
        comfy.utils.set_progress_bar_global_hook(old_hook)
        comfy.utils.PROGRESS_BAR_ENABLED = old_enabled
        bar.close()


def storyboard_model(model, racl=None, shot_loras=()):
    """``model`` patched as the graph's patch nodes patch it, with their own calls: the RACL Attention
    Patch for ``racl`` (story_file.RaclSettings, or None: off), then one Shot LoRA per entry of
    ``shot_loras`` [(story_file.ShotLoraSettings, path or None: a name in ComfyUI's models/loras)], in
    chain order. The input is untouched."""
    from ..comfy_bridge.loaders import model_file
    from ..comfy_bridge.role_patch import RoleAttentionConfig, parse_layers, with_role_attention
    from ..comfy_bridge.shot_lora import load_shot_lora, with_shot_lora
    from ..shot_lora import parse_shot_numbers

    if racl is not None and racl.enabled:
        num_blocks = len(model.get_model_object("diffusion_model").blocks)
        config = RoleAttentionConfig(strength=racl.strength, start_percent=racl.start_percent,
                                     end_percent=racl.end_percent, layers=parse_layers(racl.layers, num_blocks),
                                     auto_regions=racl.auto_regions)
        model = with_role_attention(model, config)
    for i, (lora, path) in enumerate(shot_loras):
        if lora.strength == 0:       # as the node: strength 0 leaves the model as it is
            continue
        path = path or model_file("loras", lora.lora, f"shot_loras[{i}].lora")
        loaded = load_shot_lora(model, path, lora.lora, lora.strength, parse_shot_numbers(lora.shots),
                                lora.character, lora.include_references)
        model = with_shot_lora(model, loaded)
    return model


def save_keyframe(path: Path, image: torch.Tensor) -> None:
    """Write ``image`` [H, W, 3] in 0..1 as an 8-bit PNG, atomically, with the pixels ComfyUI's SaveImage
    writes for it (nodes.py SaveImage.save_images: 255 * x, clipped, truncated to uint8), so a keyframe
    saved here is the graph's saved keyframe."""
    pixels = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", compress_level=4))


def keyframe_paths(out_dir: Path, num_shots: int, variants: int = 1) -> list[Path]:
    """Where the keyframes go, variant by variant: ``<out>/<N>.png`` for the first variant (so a later
    run's --keyframes is that folder), ``<out>/variant_<v>/<N>.png`` for variant v > 1."""
    folders = [out_dir] + [out_dir / f"variant_{v + 1}" for v in range(1, variants)]
    return [folder / f"{j + 1}.png" for folder in folders for j in range(num_shots)]


def generate_storyboard(plan: StoryPlan, title: str, model, vae, clip, settings: RunSettings, out_dir: Path,
                        pdf: bool = True, on_chunk=None, experts=None) -> dict:
    """Sample the planned story (``settings.variants`` storyboards); write the keyframes (keyframe_paths,
    atomically) and the storyboard sheet ``<out>/storyboard_<counter>_.png`` (+ .pdf; never overwritten;
    one row per variant, as the Storyboard Sheet node lays variants out). ``experts``
    (comfy_bridge.sampling.Experts): Wan2.2-A14B's low-noise model and switch, as DreamShot Sampler's
    model_low_noise. Returns a summary."""
    from ..comfy_bridge.sampling import sample_long_story
    from ..comfy_bridge.text_encode import encode_text

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clean = plan.layout.clean_shots
    # Kept shots: sample_long_story skips a pass whose shots are all kept; they serve as context.
    with torch.inference_mode():
        sequence = encode_story(plan, vae, lambda text: encode_text(clip, text), settings.negative_prompt)
        with step_progress("DreamShot storyboard"):
            images, _ = sample_long_story(model, sequence, settings.seed, settings.steps, settings.cfg,
                                          settings.sampler, settings.scheduler, ref_cfg=settings.ref_cfg,
                                          chunk_size=settings.target_frame, context_shots=settings.context_frame,
                                          on_chunk=on_chunk, variants=settings.variants, experts=experts)
    keyframes = keyframe_paths(out_dir, plan.layout.num_shots, settings.variants)
    for path, image in zip(keyframes, images):
        save_keyframe(path, image)
    # As the Storyboard Sheet node captions a sequence: board text, characters, kept/new tags, a row per variant.
    board = board_text(plan.shots)
    sheet = render_sheet(images, board.pop("captions"), [tuple(s.characters) for s in plan.shots], title=title,
                         tags=[("kept" if k else "new") for k in clean] if any(clean) else None,
                         variants=settings.variants, **board)
    sheet_png, sheet_pdf = save_sheet_files(sheet, str(out_dir), "storyboard", pdf=pdf, title=title or "Storyboard")
    return {"keyframes": keyframes, "sheet": Path(sheet_png), "pdf": Path(sheet_pdf) if sheet_pdf else None,
            "generated": len(plan.layout.generated_shots), "seconds": round(time.perf_counter() - start, 2)}
