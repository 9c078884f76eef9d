"""``python -m dreamshot.vistory``: the released DreamShot weights on ViStoryBench, in ComfyUI's Wan.

    python -m dreamshot.vistory --stories checkpoints/vistory_dreamshot_ch_v1.json \\
        --data-root checkpoints/VistoryBench --out output/vistory_bench \\
        --dit ComfyUI/models/diffusion_models/wan2.1_t2v_14B_bf16.safetensors \\
        --vae ComfyUI/models/vae/wan_2.1_vae.safetensors \\
        --text-encoder ComfyUI/models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors \\
        --lora checkpoints/sft_lora_model.safetensors --lora checkpoints/rl_lora_model.safetensors \\
        [--distill-lora checkpoints/wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors]

Defaults are the official runner's: 720p, seed 42, 6 shots per pass, no context shots, 30 steps,
text cfg 3, reference cfg 2, shift 1; with --distill-lora: 4 steps, cfg 1, reference cfg 1.5.
Writes <out>/<story>/<N>.png (1-based); rerun the same command to resume.

Several GPUs / processes: launch with torchrun (each rank takes every WORLD_SIZE-th story, on
cuda:LOCAL_RANK), or start one process per ``--shard i/n``. Files are the same as one process's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("DreamShot.vistory")


def build_parser() -> argparse.ArgumentParser:
    from .runner import add_model_arguments

    ap = argparse.ArgumentParser(prog="python -m dreamshot.vistory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stories", required=True, help="the ViStoryBench JSON (vistory_dreamshot_ch_v1.json)")
    ap.add_argument("--data-root", required=True, help="folder the JSON's fg_url_list paths are relative to")
    ap.add_argument("--out", required=True, help="output folder: <out>/<story>/<N>.png")
    add_model_arguments(ap, dit_dtype_help="force the DiT's dtype (default bf16, as the official runner, unless "
                        "--weight-dtype is given)")
    ap.add_argument("--resolution", type=int, choices=(720, 480, 360), default=720)
    ap.add_argument("--width", type=int, help="override the resolution's width (multiple of 16)")
    ap.add_argument("--height", type=int, help="override the resolution's height (multiple of 16)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float, help="text guidance")
    ap.add_argument("--ref-cfg", type=float, help="reference-image guidance")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--target-frame", type=int, default=6, help="shots per pass")
    ap.add_argument("--context-frame", type=int, default=0, help="earlier shots given clean to each later pass")
    ap.add_argument("--shot-mode", choices=("ref2shot", "text2shot"), default="ref2shot")
    ap.add_argument("--only", help="comma-separated story keys (default: all)")
    ap.add_argument("--shard", metavar="I/N", help="run only every N-th story, starting at the I-th (0-based), "
                    "to split the stories over N processes; under torchrun, RANK/WORLD_SIZE do this")
    ap.add_argument("--prompt-field", default="prompt_cn")
    ap.add_argument("--ref-prompt-field", default="ref_prompt_cn_format")
    return ap


def settings_from_args(args):
    from .runner import RESOLUTIONS, RunSettings, official_sampling

    width, height = RESOLUTIONS[args.resolution]
    steps, cfg, ref_cfg = official_sampling(bool(args.distill_lora))
    return RunSettings(
        width=args.width or width, height=args.height or height,
        steps=args.steps if args.steps is not None else steps,
        cfg=args.cfg if args.cfg is not None else cfg,
        ref_cfg=args.ref_cfg if args.ref_cfg is not None else ref_cfg,
        shift=args.shift, seed=args.seed, target_frame=args.target_frame, context_frame=args.context_frame,
        sampler=args.sampler, scheduler=args.scheduler, with_references=args.shot_mode == "ref2shot",
        max_latent_frames=10 ** 6)   # the pass size is target_frame: the official runner sets no limit


def main(argv: list[str] | None = None, on_chunk=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from ..errors import DreamShotInputError
    from .runner import existing_shots, text_encoder_config
    from .shards import resolve_shard, use_rank_device
    from .stories import read_stories

    try:
        shard = resolve_shard(args.shard)
        only = [k.strip() for k in args.only.split(",") if k.strip()] if args.only else None
        all_stories = read_stories(args.stories, args.data_root, only, args.prompt_field, args.ref_prompt_field)
        settings = settings_from_args(args)
        te_config = text_encoder_config(args)
        device = use_rank_device(shard, torch.cuda.is_available(), torch.cuda.device_count())
    except (DreamShotInputError, OSError, json.JSONDecodeError) as e:
        log.error("%s", e)
        return 2
    stories = shard.select(all_stories)
    out = Path(args.out)
    todo = [s for s in stories if len(existing_shots(out / s.key, s.num_shots)) < s.num_shots]
    log.info("shard %s: %d of %d stories (%s), %d to do%s", shard, len(stories), len(all_stories),
             ", ".join(s.key for s in stories) or "none", len(todo),
             f", on cuda:{device}" if device is not None else "")
    if not todo:    # nothing to generate: do not load the models
        log.info("shard %s done: %d stories already there, nothing generated", shard, len(stories))
        return 0
    if device is not None:
        torch.cuda.set_device(device)     # before ComfyUI picks its device
    from ..comfy_bridge.headless import import_comfy_for_cli

    if not import_comfy_for_cli(args, log):
        return 2
    from tqdm import tqdm

    from .runner import generate_story, load_models, model_loras

    loras = model_loras(args)
    try:
        # The official runner's bf16 unless a dtype is asked for.
        dit_dtype = args.dit_dtype or (None if args.weight_dtype else "bf16")
        model, vae, clip = load_models(args.dit, args.vae, args.text_encoder, loras, settings.shift,
                                       args.weight_dtype or "default", te_config, dit_dtype=dit_dtype)
    except (DreamShotInputError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log.info("%d stories, %dx%d, %d steps, cfg %.2f, ref_cfg %.2f, shift %.2f, seed %d, %d shots per pass, "
             "%d context shots", len(stories), settings.width, settings.height, settings.steps, settings.cfg,
             settings.ref_cfg, settings.shift, settings.seed, settings.target_frame, settings.context_frame)
    rows = []
    start = time.perf_counter()
    desc = "ViStoryBench stories" + (f" (shard {shard})" if shard.count > 1 else "")
    for story in tqdm(stories, desc=desc, unit="story", file=sys.stderr):
        row = generate_story(story, model, vae, clip, settings, out, on_chunk=on_chunk)
        log.info("story %s: %s, %d of %d shots generated in %.1f s", row["story"], row["status"], row["generated"],
                 row["shots"], row["seconds"])
        rows.append(row)
    made = sum(r["generated"] for r in rows)
    status = {k: sum(r["status"] == k for r in rows) for k in ("new", "resumed", "done")}
    log.info("shard %s done: %d stories (%d new, %d resumed, %d already done), %d shots generated, %d already "
             "there, %.1f s", shard, len(rows), status["new"], status["resumed"], status["done"], made,
             sum(r["shots"] for r in rows) - made, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
