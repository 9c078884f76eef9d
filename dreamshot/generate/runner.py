"""One story file's storyboard with ComfyUI's Wan2.1 and the nodes' own code: Shot Sequence Pack's
encoding (dreamshot.story.encode_story), DreamShot Sampler's chunked sampling
(comfy_bridge.sampling.sample_long_story) and the Storyboard Sheet's layout and saving
(dreamshot.sheet). Models are loaded by dreamshot.vistory.runner.load_models. ComfyUI must be
imported first (comfy_bridge.headless.import_comfy).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import torch

from ..sheet import render_sheet, save_sheet_files
from ..shot_timing import board_text
from ..story import StoryPlan, encode_story
from ..vistory.runner import RunSettings, save_png

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


def generate_storyboard(plan: StoryPlan, title: str, model, vae, clip, settings: RunSettings, out_dir: Path,
                        pdf: bool = True, on_chunk=None) -> dict:
    """Sample the planned story; write ``<out>/<N>.png`` (1-based, atomically) and the storyboard
    sheet ``<out>/storyboard_<counter>_.png`` (+ .pdf; never overwritten). Returns a summary."""
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
                                          on_chunk=on_chunk)
    keyframes = [out_dir / f"{j + 1}.png" for j in range(images.shape[0])]
    for path, image in zip(keyframes, images):
        save_png(path, image)
    # As the Storyboard Sheet node captions a sequence: board text, characters, kept/new tags.
    board = board_text(plan.shots)
    sheet = render_sheet(images, board.pop("captions"), [tuple(s.characters) for s in plan.shots], title=title,
                         tags=[("kept" if k else "new") for k in clean] if any(clean) else None, **board)
    sheet_png, sheet_pdf = save_sheet_files(sheet, str(out_dir), "storyboard", pdf=pdf, title=title or "Storyboard")
    return {"keyframes": keyframes, "sheet": Path(sheet_png), "pdf": Path(sheet_pdf) if sheet_pdf else None,
            "generated": len(plan.layout.generated_shots), "seconds": round(time.perf_counter() - start, 2)}
