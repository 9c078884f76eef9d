"""``python -m dreamshot.generate``: a story file's storyboard, headless, with the same ComfyUI code the
nodes run; or a ViStoryBench story imported as a story file.

Run from this pack's folder (ComfyUI/custom_nodes/ComfyUI-DreamShot), where ``dreamshot`` imports and
the ComfyUI around it is found; model paths are then under ../../models:

    python -m dreamshot.generate examples/story/lighthouse.yaml --out ../../output/lighthouse \\
        --dit ../../models/diffusion_models/wan2.1_t2v_14B_fp8_e4m3fn.safetensors \\
        --vae ../../models/vae/wan_2.1_vae.safetensors \\
        --text-encoder ../../models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors \\
        --lora ../../models/dreamshot/sft_lora_model.safetensors \\
        --lora ../../models/dreamshot/rl_lora_model.safetensors --racl

    python -m dreamshot.generate --import-vistory vistory_dreamshot_ch_v1.json --story 01 \\
        --data-root VistoryBench -o stories/vistory_01.yaml

Writes <out>/<N>.png (one keyframe per shot, 1-based; variant v > 1 in <out>/variant_<v>/) and
<out>/storyboard_<n>_.png/.pdf. Settings: a flag beats the story file's ``settings``, which beat the
official runner's defaults (1280x720, seed 42, 30 steps, cfg 3, reference cfg 2, 6 shots per pass;
with --distill-lora 4 steps, cfg 1, reference cfg 1.5). The model is built as the graph builds it:
Load Diffusion Model (--weight-dtype), Load DreamShot Model (--lora, --distill-lora), ModelSamplingSD3
(--shift), RACL Attention Patch (--racl, settings.racl), Shot LoRA (--shot-lora, settings.shot_loras).
Shots marked ``lock: true`` are kept from --keyframes (an earlier --out), as Shot Sequence Pack keeps
them. Wan2.2: --dit wan2.2_ti2v_5B with --vae wan2.2_vae (sizes in multiples of 32, e.g. --height 704);
the T2V-A14B experts as --dit (high noise) and --dit-low-noise with the Wan2.1 VAE (docs/backbones.md).
Format and details: docs/story-files.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    add_model_arguments(ap, required=False, dit_dtype_help="DEPRECATED (kept for saved commands): force the DiT's "
                        "dtype, which no Load Diffusion Model choice does; use --weight-dtype")
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
    run.add_argument("--variants", type=int, help="storyboards of seed, seed + 1, ... (DreamShot Sampler's variants; "
                     "default 1)")
    racl = ap.add_argument_group("RACL Attention Patch (each overrides settings.racl; a --racl-* flag turns it on)")
    racl.add_argument("--racl", action=argparse.BooleanOptionalAction, default=None,
                      help="role attention: a shot character reads identity only from its own reference")
    racl.add_argument("--racl-strength", type=float, help="0..1 (default 1)")
    racl.add_argument("--racl-start", type=float, dest="racl_start_percent", help="start percent (default 0)")
    racl.add_argument("--racl-end", type=float, dest="racl_end_percent", help="end percent (default 1)")
    racl.add_argument("--racl-layers", help='"all" (default) or DiT blocks like "0-9, 20"')
    racl.add_argument("--racl-auto-regions", action=argparse.BooleanOptionalAction, default=None,
                      help="regions from the attention for shots without boxes/masks (default on)")
    lora = ap.add_argument_group("Shot LoRAs (replace settings.shot_loras)")
    lora.add_argument("--shot-lora", action="append", nargs="+", metavar=("LORA", "KEY=VALUE"),
                      help="a LoRA on chosen shots only, as the Shot LoRA node: LORA is a file in ComfyUI's "
                           "models/loras or a path, then strength=1, shots=\"2, 4-5\" or all, character=NAME, "
                           "include_references=true; repeat for several, in chain order")
    lora.add_argument("--no-shot-loras", action="store_true", help="ignore the story file's shot_loras")
    wan22 = ap.add_argument_group("Wan2.2-T2V-A14B: two experts (--dit is the high-noise one)")
    wan22.add_argument("--dit-low-noise", metavar="PATH", help="the low-noise expert (as DreamShot Sampler's "
                       "model_low_noise; loaded as --dit, with the same --weight-dtype and --shift)")
    wan22.add_argument("--lora-low-noise", action="append", default=[], metavar="PATH",
                       help="a LoRA on the low-noise expert, strength 1 (repeat; --lora goes on --dit only)")
    wan22.add_argument("--switch-boundary", type=float, default=None,
                       help="steps at sigma >= this run on --dit (default 0.875, Wan2.2 T2V's)")
    wan22.add_argument("--switch-step", type=int, default=0,
                       help="the first step of the low-noise expert instead (0 = from --switch-boundary)")
    wan22.add_argument("--cfg-low-noise", type=float, default=None,
                       help="the CFG scale of the low-noise steps (default: --cfg; the official A14B: --cfg 4 "
                            "--cfg-low-noise 3)")
    ap.add_argument("--keyframes", help="folder with an earlier run's <N>.png (the whole storyboard): the shots marked "
                    "'lock: true' are kept from it")
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
        negative_prompt=pick(args.negative_prompt, file.negative_prompt, base.negative_prompt),
        variants=pick(getattr(args, "variants", None), file.variants, base.variants))


RACL_FLAGS = {"strength": "--racl-strength", "start_percent": "--racl-start", "end_percent": "--racl-end",
              "layers": "--racl-layers", "auto_regions": "--racl-auto-regions"}


def racl_settings(story, args):
    """The RACL Attention Patch of this run (story_file.RaclSettings), or None when it is off: the flags,
    then the story file's ``racl``; a --racl-* flag turns it on unless --no-racl is given."""
    from ..errors import DreamShotInputError
    from ..story_file import RaclSettings, parse_racl
    from ..field_checks import FieldChecker

    given = {key: getattr(args, f"racl_{key}") for key in RACL_FLAGS if getattr(args, f"racl_{key}") is not None}
    if args.racl is False:
        if given:
            raise DreamShotInputError("racl", f"--no-racl with {', '.join(RACL_FLAGS[k] for k in given)}.",
                                      "leave out --no-racl or the --racl-* flags.")
        return None
    base = story.settings.racl
    if not (args.racl or given or (base is not None and base.enabled)):
        return None
    base = base if base is not None and base.enabled else RaclSettings()
    merged = {key: given.get(key, getattr(base, key)) for key in RACL_FLAGS}
    chk = FieldChecker("flags", Path("."), False)
    settings = parse_racl(chk, "racl", merged)
    if chk.problems:
        raise DreamShotInputError("racl", "; ".join(chk.problems) + ".",
                                  "strength, start and end are 0..1 with start <= end; layers \"all\" or \"0-9, 20\".")
    return settings


def _flag_value(key: str, value: str):
    if key == "strength":
        return float(value)
    if key == "include_references":
        if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"include_references={value!r}: use true or false")
        return value.lower() in ("true", "yes", "1")
    return value


def shot_lora_settings(story, args) -> list:
    """[(story_file.ShotLoraSettings, path or None), ...]: --shot-lora flags (replacing the file's list),
    else the story file's shot_loras (unless --no-shot-loras). A path is given for a --shot-lora naming
    a file; None: the name is a file in ComfyUI's models/loras, resolved once ComfyUI is imported."""
    from ..errors import DreamShotInputError
    from ..field_checks import FieldChecker
    from ..story_file import StorySettings, check_shot_lora_scopes, parse_shot_lora

    if not args.shot_lora:
        return [] if args.no_shot_loras else [(lora, None) for lora in story.settings.shot_loras or ()]
    if args.no_shot_loras:
        raise DreamShotInputError("shot-lora", "--shot-lora with --no-shot-loras.", "leave out one of them.")
    out = []
    chk = FieldChecker("flags", Path("."), False)
    for i, (lora, *pairs) in enumerate(args.shot_lora):
        raw: dict = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            key = {"references": "include_references"}.get(key.strip(), key.strip())
            try:
                if not eq:
                    raise ValueError(f"{pair!r} is not KEY=VALUE")
                raw[key] = _flag_value(key, value.strip())
            except ValueError as e:
                raise DreamShotInputError("shot-lora", f"--shot-lora {lora} ...: {e}.",
                                          'write e.g. --shot-lora ink.safetensors strength=0.8 shots="2, 4-5".') from None
        path = Path(lora).expanduser()
        raw["lora"] = path.name if path.is_file() else lora
        settings = parse_shot_lora(chk, f"--shot-lora[{i}]", raw)
        if settings is not None:
            out.append((settings, str(path) if path.is_file() else None))
    if not chk.problems:
        check_shot_lora_scopes(chk, StorySettings(shot_loras=tuple(s for s, _ in out)),
                               [s.characters for s in story.shots], field="--shot-lora")
    if chk.problems:
        raise DreamShotInputError("shot-lora", "; ".join(p.removeprefix("flags: ") for p in chk.problems) + ".",
                                  "LORA is a file in models/loras or a path; keys strength, shots, character, "
                                  "include_references.")
    return out


def earlier_keyframes(story, keyframes: str | None):
    """The earlier storyboard for the locked shots, as Shot Sequence Pack's ``keyframes`` input takes it:
    [S, H, W, 3], one image per shot, read from ``keyframes``/<N>.png; None when no shot is locked."""
    import torch

    from ..errors import DreamShotInputError
    from ..images import load_image

    if not story.locked:
        if keyframes:
            log.warning("--keyframes is ignored: no shot of the story is marked 'lock: true'")
        return None
    if not keyframes:
        raise DreamShotInputError("keyframes", f"shot(s) {story.lock_text} are locked but no earlier storyboard "
                                  "was given.", "pass --keyframes with the --out folder of the run that made them, "
                                  "or remove 'lock: true' from those shots.")
    paths = [Path(keyframes) / f"{j + 1}.png" for j in range(len(story.shots))]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DreamShotInputError("keyframes", f"shot(s) {story.lock_text} are locked but {keyframes} lacks "
                                  f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}: the earlier "
                                  "storyboard is taken whole, one keyframe per shot (as Shot Sequence Pack's "
                                  "keyframes).", "point --keyframes at the --out folder of the earlier run, or "
                                  "unlock the shots.")
    images = [load_image(p) for p in paths]
    sizes = {tuple(im.shape[:2]) for im in images}
    if len(sizes) > 1:
        raise DreamShotInputError("keyframes", f"the keyframes in {keyframes} differ in size ({sorted(sizes)}).",
                                  "use the folder of one earlier run.")
    return torch.stack(images)


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
    from ..story_file import MAX_VARIANTS, read_story
    from ..vistory.runner import text_encoder_config
    from .runner import keyframe_paths

    out = Path(args.out)
    try:
        story = read_story(args.story, args.input_dir)
        settings = run_settings(story, args)
        if not 1 <= settings.variants <= MAX_VARIANTS:
            raise DreamShotInputError("variants", f"{settings.variants} variants.", f"use 1 to {MAX_VARIANTS}.")
        mode = Mode(args.mode) if args.mode else story.default_mode()
        existing = [str(path.relative_to(out)) for path in keyframe_paths(out, len(story.shots), settings.variants)
                    if path.exists()]
        if existing and not args.overwrite:
            raise DreamShotInputError("out", f"{out} already holds keyframes ({', '.join(existing[:4])}"
                                      f"{', ...' if len(existing) > 4 else ''}).",
                                      "pick another --out (lock shots with --keyframes <that folder>), or pass "
                                      "--overwrite.")
        keyframes = earlier_keyframes(story, args.keyframes)
        racl = racl_settings(story, args)
        shot_loras = shot_lora_settings(story, args)
        # Everything that needs no model is checked before the models load. The plan is Shot Sequence
        # Pack's (repeat 4, fit pad_white, the earlier storyboard on keyframes with the locked shots).
        def make_plan(geometry=None):
            return plan_story(story.characters, story.shots, settings.width, settings.height, mode=mode,
                              keyframes=keyframes, lock_shots=story.locked, fit="pad_white",
                              max_latent_frames=settings.max_latent_frames, check_budget=False, geometry=geometry)

        plan = make_plan()
        if not args.dit_low_noise and (args.lora_low_noise or args.switch_step or args.switch_boundary is not None
                                       or args.cfg_low_noise is not None):
            raise DreamShotInputError("dit-low-noise", "--lora-low-noise / --switch-* / --cfg-low-noise are given "
                                      "without a second expert.",
                                      "pass --dit-low-noise with the low-noise expert, or leave them out.")
        if args.cfg_low_noise is not None and args.cfg_low_noise <= 0:
            raise DreamShotInputError("cfg-low-noise", f"{args.cfg_low_noise} is not a CFG scale.",
                                      "give a scale > 0 (1 = no guidance), or leave it out to use --cfg.")
        te_config = text_encoder_config(args)
    except (DreamShotInputError, OSError, json.JSONDecodeError) as e:
        log.error("%s", e)
        return 2
    from ..comfy_bridge.headless import import_comfy_for_cli

    if not import_comfy_for_cli(args, log):
        return 2
    from ..comfy_bridge.geometry import vae_geometry
    from ..comfy_bridge.loaders import WEIGHT_DTYPES
    from ..comfy_bridge.sampling import WAN22_T2V_BOUNDARY, Experts
    from ..vistory.runner import load_dit, load_models, model_loras
    from .runner import generate_storyboard, storyboard_model

    try:
        if args.dit_dtype:
            log.warning("--dit-dtype is deprecated: it forces the DiT to %s, which no Load Diffusion Model choice "
                        "does; use --weight-dtype (%s) to load it as the graph does.", args.dit_dtype,
                        ", ".join(WEIGHT_DTYPES))
        model, vae, clip = load_models(args.dit, args.vae, args.text_encoder, model_loras(args), settings.shift,
                                       args.weight_dtype or "default", te_config, dit_dtype=args.dit_dtype)
        model = storyboard_model(model, racl, shot_loras)
        experts = None
        if args.dit_low_noise:   # the sampler gives it the RACL patch and Shot LoRAs of the first model
            low = load_dit(args.dit_low_noise, [(p, 1.0) for p in args.lora_low_noise], settings.shift,
                           args.weight_dtype or "default", args.dit_dtype)
            experts = Experts(low, WAN22_T2V_BOUNDARY if args.switch_boundary is None else args.switch_boundary,
                              args.switch_step, args.cfg_low_noise or 0.0)
        if vae_geometry(vae) != plan.layout.geometry:   # Wan2.2-TI2V-5B: its VAE's 16x latent, 48 channels
            plan = make_plan(vae_geometry(vae))
    except (DreamShotInputError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    log.info("%s: %d shot(s), %d character(s), %s, %dx%d, %d steps, cfg %.2f, ref_cfg %.2f, seed %d, %d variant(s), "
             "%d shots per pass, %d context shots, RACL %s, %d Shot LoRA(s)", args.story, len(story.shots),
             len(story.characters), mode.value, settings.width, settings.height, settings.steps, settings.cfg,
             settings.ref_cfg, settings.seed, settings.variants, settings.target_frame, settings.context_frame,
             "on" if racl else "off", len(shot_loras))
    try:
        result = generate_storyboard(plan, story.title, model, vae, clip, settings, out, pdf=not args.no_pdf,
                                     on_chunk=on_chunk, experts=experts)
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
