"""``python -m dreamshot.generate``: a story file's storyboard, headless, with the same ComfyUI code the
nodes run; or a ViStoryBench story imported as a story file.

    python -m dreamshot.generate examples/story/lighthouse.yaml --out output/lighthouse \\
        --dit ComfyUI/models/diffusion_models/wan2.1_t2v_14B_bf16.safetensors \\
        --vae ComfyUI/models/vae/wan_2.1_vae.safetensors \\
        --text-encoder ComfyUI/models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors \\
        --lora ComfyUI/models/dreamshot/sft_lora_model.safetensors \\
        --lora ComfyUI/models/dreamshot/rl_lora_model.safetensors

    python -m dreamshot.generate --import-vistory vistory_dreamshot_ch_v1.json --story 01 \\
        --data-root VistoryBench -o stories/vistory_01.yaml

Writes <out>/<N>.png (one keyframe per shot, 1-based) and <out>/storyboard_<n>_.png/.pdf. Settings:
a flag beats the story file's ``settings``, which beat the official runner's defaults (1280x720,
seed 42, 30 steps, cfg 3, reference cfg 2, 6 shots per pass; with --distill-lora 4 steps, cfg 1,
reference cfg 1.5). Shots marked ``lock: true`` are taken from --keyframes (an earlier --out).
Format and details: docs/story-files.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import editorial

log = logging.getLogger("DreamShot.generate")


def build_parser() -> argparse.ArgumentParser:
    from ..modes import Mode
    from ..vistory.runner import add_model_arguments
    from ..vistory.stories import PROMPT_FIELD, REF_PROMPT_FIELD

    ap = argparse.ArgumentParser(prog="python -m dreamshot.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("story", nargs="?", help="the story file (.yaml, .yml or .json)")
    ap.add_argument("--out", help="output folder: <out>/<N>.png and <out>/storyboard_<n>_.png/.pdf")
    add_model_arguments(ap, required=False)
    run = ap.add_argument_group("settings (each overrides the story file's settings)")
    run.add_argument("--width", type=int, help="multiple of 16 (default 1280)")
    run.add_argument("--height", type=int, help="multiple of 16 (default 720)")
    run.add_argument("--mode", choices=[m.value for m in Mode],
                     help="default: edit with fixed or locked shots, else reference_to_shot (text_to_shot without "
                          "characters)")
    run.add_argument("--seed", type=int, help="default 42")
    run.add_argument("--steps", type=int)
    run.add_argument("--cfg", type=float, help="text guidance")
    run.add_argument("--ref-cfg", type=float, help="reference-image guidance")
    run.add_argument("--chunk-size", type=int, help="shots per pass (default 6; 0 = all in one pass)")
    run.add_argument("--context-shots", type=int, help="earlier shots given clean to each later pass (default 0)")
    run.add_argument("--negative-prompt", help="for shots without their own (default: the official runner's)")
    ap.add_argument("--keyframes", help="folder with an earlier run's <N>.png: the shots marked 'lock: true' are "
                    "kept from it")
    ap.add_argument("--input-dir", help="folder the story's images must stay inside (default: the story file's "
                    "folder)")
    ap.add_argument("--overwrite", action="store_true", help="replace keyframes <N>.png already in --out")
    ap.add_argument("--no-pdf", action="store_true", help="save the storyboard sheet as PNG only")
    editorial.add_arguments(ap)
    imp = ap.add_argument_group("import a ViStoryBench story (instead of generating)")
    imp.add_argument("--import-vistory", metavar="JSON", help="the ViStoryBench JSON (vistory_dreamshot_ch_v1.json)")
    imp.add_argument("--story", dest="story_key", metavar="KEY", help="the story key to import, e.g. 01")
    imp.add_argument("--data-root", help="folder the JSON's fg_url_list paths are relative to")
    imp.add_argument("-o", "--output", help="the story file to write (.yaml or .json); its images go into the "
                     "folder of the same name beside it")
    imp.add_argument("--prompt-field", default=PROMPT_FIELD)
    imp.add_argument("--ref-prompt-field", default=REF_PROMPT_FIELD)
    return ap


def run_settings(story, args):
    """Flags, then the story file's settings, then the official runner's defaults."""
    from ..vistory.runner import RunSettings, official_sampling

    base, file = RunSettings(), story.settings
    steps, cfg, ref_cfg = official_sampling(bool(args.distill_lora))

    def pick(flag, given, default):
        return flag if flag is not None else given if given is not None else default

    return RunSettings(
        width=pick(args.width, file.width, base.width), height=pick(args.height, file.height, base.height),
        steps=pick(args.steps, file.steps, steps), cfg=pick(args.cfg, file.cfg, cfg),
        ref_cfg=pick(args.ref_cfg, file.ref_cfg, ref_cfg), shift=args.shift, seed=pick(args.seed, file.seed, base.seed),
        target_frame=pick(args.chunk_size, file.chunk_size, base.target_frame),
        context_frame=pick(args.context_shots, file.context_shots, base.context_frame),
        sampler=args.sampler, scheduler=args.scheduler,
        negative_prompt=pick(args.negative_prompt, file.negative_prompt, base.negative_prompt))


def with_locked_keyframes(story, keyframes: str | None):
    """The story with each locked shot's image read from ``keyframes``/<N>.png."""
    from ..errors import DreamShotInputError
    from ..images import load_image

    if not story.locked:
        if keyframes:
            log.warning("--keyframes is ignored: no shot of the story is marked 'lock: true'")
        return story
    if not keyframes:
        raise DreamShotInputError("keyframes", f"shot(s) {story.lock_text} are locked but no earlier storyboard "
                                  "was given.", "pass --keyframes with the --out folder of the run that made them, "
                                  "or remove 'lock: true' from those shots.")
    shots = list(story.shots)
    for j in story.locked:
        path = Path(keyframes) / f"{j + 1}.png"
        if not path.is_file():
            raise DreamShotInputError("keyframes", f"shot {j + 1} is locked but {path} does not exist.",
                                      "point --keyframes at the --out folder of the earlier run, or unlock the shot.")
        shots[j] = replace(shots[j], image=load_image(path))
    return replace(story, shots=tuple(shots))


def import_vistory(args) -> int:
    from ..errors import DreamShotInputError
    from ..story_file import write_story
    from ..vistory.stories import read_stories, to_story

    try:
        [vistory] = read_stories(args.import_vistory, args.data_root, [args.story_key], args.prompt_field,
                                 args.ref_prompt_field)
        story = to_story(vistory)
        path = write_story(args.output, story)
    except FileExistsError:
        log.error("%s or its image folder %s exists already: pick another -o (files are never overwritten)",
                  args.output, Path(args.output).with_suffix(""))
        return 2
    except (DreamShotInputError, OSError) as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s: %d character(s), %d shot(s)", path, len(story.characters), len(story.shots))
    return 0


def main(argv: list[str] | None = None, on_chunk=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.import_vistory:
        if args.story or not (args.story_key and args.data_root and args.output):
            ap.error("--import-vistory needs --story KEY, --data-root DIR and -o FILE, and no story file")
        return import_vistory(args)
    missing = [name for name, value in (("the story file", args.story), ("--out", args.out), ("--dit", args.dit),
                                        ("--vae", args.vae), ("--text-encoder", args.text_encoder)) if not value]
    if missing:
        ap.error(f"missing {', '.join(missing)}")

    from ..errors import DreamShotInputError
    from ..modes import Mode
    from ..story import plan_story
    from ..story_file import read_story
    from ..vistory.runner import text_encoder_config

    out = Path(args.out)
    try:
        story = read_story(args.story, args.input_dir)
        settings = run_settings(story, args)
        mode = Mode(args.mode) if args.mode else story.default_mode()
        existing = [f"{j + 1}.png" for j in range(len(story.shots)) if (out / f"{j + 1}.png").exists()]
        if existing and not args.overwrite:
            raise DreamShotInputError("out", f"{out} already holds keyframes ({', '.join(existing[:4])}"
                                      f"{', ...' if len(existing) > 4 else ''}).",
                                      "pick another --out (lock shots with --keyframes <that folder>), or pass "
                                      "--overwrite.")
        story = with_locked_keyframes(story, args.keyframes)
        # Everything that needs no model is checked before the models load.
        plan = plan_story(story.characters, story.shots, settings.width, settings.height, mode=mode,
                          fit="pad_white", max_latent_frames=settings.max_latent_frames, check_budget=False)
        te_config = text_encoder_config(args)
    except (DreamShotInputError, OSError, json.JSONDecodeError) as e:
        log.error("%s", e)
        return 2
    from ..comfy_bridge.headless import import_comfy_for_cli

    if not import_comfy_for_cli(args.comfyui, log):
        return 2
    from ..vistory.runner import load_models, model_loras
    from .runner import generate_storyboard

    try:
        model, vae, clip = load_models(args.dit, args.vae, args.text_encoder, model_loras(args), settings.shift,
                                       args.dit_dtype, te_config)
    except (DreamShotInputError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    log.info("%s: %d shot(s), %d character(s), %s, %dx%d, %d steps, cfg %.2f, ref_cfg %.2f, seed %d, %d shots per "
             "pass, %d context shots", args.story, len(story.shots), len(story.characters), mode.value, settings.width,
             settings.height, settings.steps, settings.cfg, settings.ref_cfg, settings.seed, settings.target_frame,
             settings.context_frame)
    try:
        result = generate_storyboard(plan, story.title, model, vae, clip, settings, out, pdf=not args.no_pdf,
                                     on_chunk=on_chunk)
    except DreamShotInputError as e:
        log.error("%s", e)
        return 2
    log.info("wrote %d keyframes (%d generated) and %s to %s in %.1f s", len(result["keyframes"]),
             result["generated"], result["sheet"].name, out, result["seconds"])
    if args.animatic or args.timeline:
        try:
            for kind, path in editorial.write_editorial(plan.shots, result["keyframes"], out, story.title, args.fps,
                                                        args.animatic, args.timeline).items():
                log.info("wrote the %s %s", kind, path)
        except (DreamShotInputError, OSError) as e:
            log.error("%s", e)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
