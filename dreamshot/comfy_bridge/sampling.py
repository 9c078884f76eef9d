"""Sampling a packed story with ComfyUI's own samplers (comfy.sample.sample, as KSampler does).

- Two-scale guidance (text cfg + reference cfg, dreamshot.guidance): a CFGGuider subclass that adds
  one model pass per step with the shots blind to the references, only when ref_cfg != 1 and the
  story has references; otherwise the stock sampler path runs unchanged.
- Long stories: the shots are generated in chunks, each chunk seeing only the characters of its
  own shots as references and the last N keyframes generated so far as clean context shots.
- Seeds: each shot's initial noise comes from its own seed (dreamshot.seeds), in whichever chunk it
  is generated; variants are whole storyboards sampled one after the other in one run.
- Preview: the previewer gets the pass's shots tiled into one frame (dreamshot.preview), not latent
  frame 0 (a reference).
- Two experts (Wan2.2-T2V-A14B): an ``Experts`` value gives the low-noise model and the switch; each
  pass samples its high-noise steps with the first model and the rest with the second, as ComfyUI's
  own Wan2.2 template chains two KSamplerAdvanced (the same seed, the second adding no noise, the
  first returning its leftover noise), within one pass and one progress bar; both get the story
  patches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..errors import DreamShotInputError
from ..guidance import two_scale_guidance
from ..modes import Mode
from ..packing import decode_keyframes, pack_latent, shot_latent
from ..shot_lora import StoryPass
from ..preview import shot_grid
from ..seeds import shot_seeds, story_noise, variant_seed
from ..story import Character, Shot, StorySequence, fold_chunk_text, plan_story, unfold_story
from ..text_fold import context_segments
from .role_patch import CONFIG_KEY as ROLE_CONFIG_KEY
from .geometry import check_story_fits_model
from .wan_patches import NO_REFS_KEY, patch_for_story, share_story_patches

log = logging.getLogger("DreamShot")


class TwoScaleGuider(comfy.samplers.CFGGuider):
    """Text CFG around reference CFG (formula in dreamshot.guidance): cond and uncond batched as
    usual, plus one pass of the positive prompt with the shots blind to the references."""

    def __init__(self, model_patcher, ref_cfg: float):
        super().__init__(model_patcher)
        self.ref_cfg = ref_cfg

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive = self.conds.get("positive", None)
        negative = self.conds.get("negative", None)
        use_uncond = not (math.isclose(self.cfg, 1.0)
                          and not model_options.get("disable_cfg1_optimization", False))
        out = comfy.samplers.calc_cond_batch(self.inner_model, [positive, negative if use_uncond else None],
                                             x, timestep, model_options)
        no_refs_options = dict(model_options)
        no_refs_options["transformer_options"] = {**model_options.get("transformer_options", {}),
                                                  NO_REFS_KEY: True}
        (cond_no_refs,) = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep,
                                                         no_refs_options)
        guided = two_scale_guidance(out[0], cond_no_refs, None, 1.0, self.ref_cfg)
        # Text CFG through ComfyUI's cfg_function, so sampler_cfg/post_cfg hooks still apply.
        uncond = out[1] if use_uncond else guided
        return comfy.samplers.cfg_function(self.inner_model, guided, uncond, self.cfg if use_uncond else 1.0,
                                           x, timestep, model_options=model_options, cond=positive,
                                           uncond=negative if use_uncond else None)


def _progress_callback(m, steps: int, offset: int = 0, total: int | None = None, progress=None, layout=None):
    """Progress (and Cancel) over ``total`` steps; the preview shows the shots of ``layout`` tiled
    (dreamshot.preview.shot_grid) instead of latent frame 0."""
    progress = progress or latent_preview.prepare_callback(m, total or steps)

    def callback(step, x0, x, total_steps):
        # The server's progress hook checks Cancel on every update; checking here too makes
        # Cancel work wherever the story is sampled.
        comfy.model_management.throw_exception_if_processing_interrupted()
        if layout is not None and x0 is not None and x0.ndim == 5:
            x0 = shot_grid(x0, layout)
        progress(offset + step, x0, x, total or total_steps)
    return callback


def initial_noise(sequence, seed: int, like: torch.Tensor) -> torch.Tensor:
    """The noise the sampler starts from: each shot's frames from its own seed (the shot's, else
    derived from ``seed`` and its number), zeros on the clean references; shaped and typed ``like``."""
    seeds = shot_seeds([shot.seed for shot in sequence.plan.shots], seed)
    return story_noise(sequence.layout, seeds, like.shape[1], like.dtype)


# Wan2.2-T2V-A14B's switch: steps at sigma >= 0.875 go to the high-noise expert (the official
# configs/wan_t2v_A14B.py ``boundary = 0.875``; the I2V experts use 0.900), sigma as ComfyUI's Wan
# model_sampling gives it (the official timestep / 1000).
WAN22_T2V_BOUNDARY = 0.875


@dataclass(frozen=True)
class Experts:
    """A second model for the low-noise steps (Wan2.2-T2V-A14B's low-noise expert) and where it takes
    over: at ``switch_step`` when > 0, else at the first step whose sigma is below ``boundary`` (the
    official rule: a step at sigma >= boundary is the high-noise expert's). ``cfg``: the low-noise steps'
    CFG scale, 0 = the sampler's (the official A14B guides the high-noise expert with 4, the low-noise one
    with 3; with a step-distilled LoRA on one expert only, that expert runs at 1)."""

    low_noise: object
    boundary: float = WAN22_T2V_BOUNDARY
    switch_step: int = 0
    cfg: float = 0.0

    def switch_index(self, sigmas: torch.Tensor) -> int:
        """The first step (0-based, into ``sigmas``' steps) that the low-noise model samples; the number
        of steps when the high-noise model samples them all."""
        steps = len(sigmas) - 1
        if self.switch_step > 0:
            return min(self.switch_step, steps)
        return next((i for i in range(steps) if float(sigmas[i]) < self.boundary), steps)


def _guided_sample(m, noise, latent_image, sigmas, positive, negative, cfg, sampler_name, ref_cfg, mask,
                   callback, disable_pbar, seed):
    """What comfy.sample.sample runs (a CFGGuider over ``sigmas``), or the two-scale guider."""
    guider = TwoScaleGuider(m, ref_cfg) if ref_cfg is not None else comfy.samplers.CFGGuider(m)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    out = guider.sample(noise, latent_image, comfy.samplers.sampler_object(sampler_name), sigmas,
                        denoise_mask=mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return out.to(comfy.model_management.intermediate_device())


def _two_experts(m, m_low, experts, noise, latent_image, keep, steps, scheduler, denoise, sampler_name,
                 positive, negative, cfg, ref_cfg, mask, callback, disable_pbar, seed):
    """The high-noise steps with ``m``, the rest with ``m_low``: two KSamplerAdvanced as ComfyUI's Wan2.2
    template chains them (the schedule is the first model's; the first stops with its leftover noise,
    the second starts from it adding none), with the clean frames put back exactly in between."""
    sigmas = comfy.samplers.KSampler(m, steps=steps, device=m.load_device, sampler=sampler_name,
                                     scheduler=scheduler, denoise=denoise, model_options=m.model_options).sigmas
    low_sigmas = comfy.samplers.KSampler(m_low, steps=steps, device=m_low.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise,
                                         model_options=m_low.model_options).sigmas
    if low_sigmas.shape != sigmas.shape or not torch.allclose(low_sigmas.cpu(), sigmas.cpu()):
        log.warning("DreamShot: the two experts have different sigma schedules (another shift on each?); both "
                    "follow the first model's, as the official Wan2.2 sampler runs one schedule.")
    switch = experts.switch_index(sigmas)
    cfg_low = experts.cfg if experts.cfg > 0 else cfg
    log.info("DreamShot: two experts, %d step(s) with the high-noise model, %d with the low-noise one (switch at "
             "step %d, sigma %.4f; cfg %g then %g)", switch, len(sigmas) - 1 - switch, switch, float(sigmas[switch]),
             cfg, cfg_low)
    total = len(sigmas) - 1

    def at(offset):   # one progress count over both stages
        return lambda step, x0, x, total_steps: callback(offset + step, x0, x, total)

    out = latent_image
    if switch > 0:
        out = _guided_sample(m, noise, latent_image, sigmas[:switch + 1], positive, negative, cfg, sampler_name,
                             ref_cfg, mask, at(0), disable_pbar, seed)
        out = out.to(latent_image.device, latent_image.dtype)
        out[:, :, keep] = latent_image[:, :, keep]   # the low-noise model sees the clean frames exactly
        noise = torch.zeros_like(noise)               # KSamplerAdvanced's add_noise disabled
    if switch < total:
        out = _guided_sample(m_low, noise, out, sigmas[switch:], positive, negative, cfg_low, sampler_name, ref_cfg,
                             mask, at(switch), disable_pbar, seed)
    return out


def sample_story(model, sequence, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                 denoise: float = 1.0, ref_cfg: float = 1.0, callback=None,
                 story_pass: StoryPass | None = None, experts: Experts | None = None) -> torch.Tensor:
    """Denoise the generated frames of ``sequence``; returns the full packed latent [1, C, F, h, w].

    Clean frames (references, kept shots) are copied back from the input afterwards: the sampler
    keeps them to ~1e-6, DreamShot promises them bit-exact. ``ref_cfg`` is ignored (1) when the
    story has no references. ``seed`` seeds the shots without a seed of their own (initial_noise)
    and the sampler's own noise (ancestral / SDE samplers). ``story_pass``: when ``sequence`` is one
    chunk of a story, its shots' story indices (for Shot LoRAs). ``experts``: a low-noise model and the
    switch (Wan2.2-T2V-A14B); it gets ``model``'s story patches (RACL, Shot LoRAs) it lacks.
    """
    m = patch_for_story(model, sequence, story_pass)
    latent = sequence.latent
    latent_image = comfy.sample.fix_empty_latent_channels(m, latent)
    noise = initial_noise(sequence, seed, latent_image)
    mask = sequence.denoise_mask()
    positive = [[sequence.positive, {}]]
    negative = [[sequence.negative, {}]]
    callback = callback or _progress_callback(m, steps, layout=sequence.layout)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    keep = torch.tensor([not g for g in sequence.layout.denoise_mask_values()], device=latent.device)
    keep = keep.nonzero().flatten()
    two_scale = not (ref_cfg == 1.0 or sequence.layout.num_refs == 0)
    if experts is not None:
        low = share_story_patches(model, experts.low_noise)   # refuses what is not a Wan T2V model
        check_story_fits_model(sequence.layout, low, input_name="model_low_noise")
        m_low = patch_for_story(low, sequence, story_pass)
        out = _two_experts(m, m_low, experts, noise, latent_image, keep, steps, scheduler, denoise, sampler_name,
                           positive, negative, cfg, ref_cfg if two_scale else None, mask, callback, disable_pbar,
                           seed)
    elif not two_scale:
        out = comfy.sample.sample(
            m, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, noise_mask=mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
    else:
        ks = comfy.samplers.KSampler(m, steps=steps, device=m.load_device, sampler=sampler_name,
                                     scheduler=scheduler, denoise=denoise, model_options=m.model_options)
        guider = TwoScaleGuider(m, ref_cfg)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        out = guider.sample(noise, latent_image, comfy.samplers.sampler_object(sampler_name), ks.sigmas,
                            denoise_mask=mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
        out = out.to(comfy.model_management.intermediate_device())
    out = out.to(latent.device, latent.dtype)
    out[:, :, keep] = latent[:, :, keep]
    return out


def keyframes_from_latent(sequence, latent: torch.Tensor) -> torch.Tensor:
    """Decode one keyframe per shot [S, H, W, 3]; kept shots come back as the given pixels."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    images = decode_keyframes(sequence.vae, sequence.layout, latent).float().cpu()
    for j, image in enumerate(sequence.plan.shot_images):
        if image is not None and sequence.layout.clean_shots[j]:
            images[j] = image.to(images)
    return images


# -- long stories ----------------------------------------------------------------------------------
def plan_chunks(num_shots: int, chunk_size: int, context_shots: int) -> list[tuple[list[int], list[int]]]:
    """[(context shot indices, target shot indices), ...]; chunk_size 0 = one chunk of all shots.

    As the official runner: targets in consecutive runs of chunk_size; the context of a chunk is the
    last ``context_shots`` shots before it (already generated).
    """
    if chunk_size <= 0 or chunk_size >= num_shots:
        return [([], list(range(num_shots)))]
    chunks = []
    for start in range(0, num_shots, chunk_size):
        targets = list(range(start, min(start + chunk_size, num_shots)))
        context = list(range(max(0, start - context_shots), start))
        chunks.append((context, targets))
    return chunks


def pass_frame_counts(plan, chunks) -> list[int]:
    """Latent frames of each sampling pass: the chunk's references (its characters' images) + shots."""
    lay = plan.layout
    if len(chunks) == 1:
        return [lay.num_latent_frames]
    counts = []
    for context, targets in chunks:
        cast = {c for j in targets for c in plan.shot_characters[j]} if plan.mode.uses_references else set()
        refs = sum(1 for rc in lay.ref_characters if rc in cast)
        counts.append(refs + (len(context) + len(targets)) * lay.frames_per_shot)
    return counts


def check_pass_budget(plan, chunks, kept=()) -> None:
    """Refuse a pass longer than the pack's max_latent_frames, before anything is sampled. A chunk
    whose shots are all in ``kept`` is never sampled, so it is not checked."""
    limit = plan.max_latent_frames
    for n, ((context, targets), frames) in enumerate(zip(chunks, pass_frame_counts(plan, chunks))):
        if frames <= limit or all(j in kept for j in targets):
            continue
        if len(chunks) == 1:
            raise DreamShotInputError(
                "chunk_size", f"the whole story is one pass of {frames} latent frames ({plan.layout.num_refs} "
                f"reference frame(s) + {plan.layout.num_shots} shot(s) x {plan.layout.frames_per_shot}), more than "
                f"the pack's max_latent_frames {limit} (Wan2.1 was trained on 21).",
                "set chunk_size (the official runner uses 6) to generate the story in passes, or raise "
                "max_latent_frames on Shot Sequence Pack if you accept the quality and memory cost.")
        raise DreamShotInputError(
            "chunk_size", f"pass {n + 1} (shots {targets[0] + 1}-{targets[-1] + 1}, {len(context)} context shot(s)) "
            f"is {frames} latent frames with its references, more than the pack's max_latent_frames {limit}.",
            "lower chunk_size or context_shots, or raise max_latent_frames on Shot Sequence Pack.")


def chunk_sequence(sequence: StorySequence, context: list[int], targets: list[int],
                   keyframes: dict[int, torch.Tensor], seeds: list[int] | None = None) -> StorySequence:
    """The story restricted to ``context`` (kept clean, as ``keyframes[j]``) + ``targets``.

    References: only the characters that appear in the target shots (story order). Prompt encodings
    are the sequence's own segments, so no text encoder is needed. ``seeds``: the story's shot seeds
    (dreamshot.seeds.shot_seeds), so each shot keeps its initial noise in whichever chunk it is.
    """
    plan, lay = sequence.plan, sequence.layout
    n_shots = lay.num_shots
    cast = sorted({c for j in targets for c in plan.shot_characters[j]}) if plan.mode.uses_references \
        and lay.num_refs else []
    cast_names = {plan.characters[c].name for c in cast}
    characters = []
    for c in cast:
        refs = [i for i, rc in enumerate(lay.ref_characters) if rc == c]
        masks = [plan.ref_masks[i] for i in refs]
        characters.append(Character(
            name=plan.characters[c].name, images=torch.stack([plan.ref_images[i] for i in refs]),
            masks=None if any(mk is None for mk in masks) else torch.stack(masks),
            description=plan.characters[c].description, kind=plan.characters[c].kind))

    def shot(j, image):
        names = tuple(plan.characters[c].name for c in plan.shot_characters[j]
                      if plan.characters[c].name in cast_names)
        regions = tuple((plan.characters[c].name, spec) for c, spec in plan.shot_regions[j].items()
                        if plan.characters[c].name in cast_names)
        return Shot(prompt=plan.shots[j].prompt, characters=names, image=image, regions=regions,
                    negative_prompt=plan.shots[j].negative_prompt,
                    seed=seeds[j] if seeds is not None else plan.shots[j].seed)

    shots = [shot(j, keyframes[j]) for j in context]
    shots += [shot(j, plan.shot_images[j] if lay.clean_shots[j] else None) for j in targets]
    any_clean = bool(context) or any(lay.clean_shots[j] for j in targets)
    if any_clean:
        mode = Mode.EDIT
    else:
        mode = Mode.REFERENCE_TO_SHOT if characters else Mode.TEXT_TO_SHOT
    sub = plan_story(characters, shots, lay.width, lay.height, repeat=lay.repeat, mode=mode,
                     fit="stretch", max_latent_frames=10 ** 6, geometry=lay.geometry)
    if plan.encode_images is not None:   # edit with the earlier storyboard: encode it whole (see StoryPlan)
        sub.encode_images = [keyframes[j] for j in context] + [plan.encode_images[j] for j in targets]

    # Text: the sequence's segments, re-used (shots by index, captions by text).
    caption_index = {plan.prompts[i]: i for i in range(n_shots, len(plan.prompts))}
    ids = context + targets + [caption_index[text] for text in sub.prompts[len(context + targets):]]
    n = sequence.num_segments
    all_pos = context_segments(sequence.positive, n, sequence.positive_zero_rows)
    all_neg = context_segments(sequence.negative, n, sequence.negative_zero_rows)
    pos = [all_pos[i] for i in ids]
    neg = [all_neg[i] if i < n_shots else all_pos[i] for i in ids]
    latent = pack_latent(sequence.vae, sub.layout, sub.ref_images, sub.images_to_encode())
    text = fold_chunk_text(pos, neg, sequence.segment_length, sub.layout.num_tokens)
    chunk = StorySequence(plan=sub, latent=latent, positive=text.positive, negative=text.negative,
                          segment_length=text.segment_length, vae=sequence.vae,
                          positive_zero_rows=text.positive_zero_rows, negative_zero_rows=text.negative_zero_rows)
    return chunk if sequence.positive_zero_rows is not None else unfold_story(chunk)


def unused_story_fields(model, plan, cfg: float) -> list[str]:
    """What of the story this model, mode and cfg do not read, each as a sentence saying how to use it:
    a story field is never dropped silently (the graph and python -m dreamshot.generate alike)."""
    unused = []
    if not plan.mode.uses_references and plan.characters:
        unused.append(f"mode {plan.mode.value} packs no references, so the characters "
                      f"({', '.join(c.name for c in plan.characters)}) are only names in the prompts; use "
                      "reference_to_shot or edit to show them")
    if model.model_options.get("transformer_options", {}).get(ROLE_CONFIG_KEY) is None:
        regioned = [str(j + 1) for j, regions in enumerate(plan.shot_regions) if regions]
        masked = list(dict.fromkeys(plan.characters[c].name for c, mask in zip(plan.layout.ref_characters,
                                                                                  plan.ref_masks) if mask is not None))
        parts = ([f"the boxes/masks of shot(s) {', '.join(regioned)}"] if regioned else []) + \
                ([f"the reference mask(s) of {', '.join(masked)}"] if masked else [])
        if parts:
            unused.append(f"{' and '.join(parts)} are read only by the RACL Attention Patch, which this model does "
                          "not have; add the patch (python -m dreamshot.generate: --racl or settings.racl)")
    own_negative = [str(j + 1) for j, shot in enumerate(plan.shots) if shot.negative_prompt.strip()]
    if math.isclose(cfg, 1.0) and own_negative:
        unused.append(f"cfg 1 runs no negative pass, so the negative prompt of shot(s) {', '.join(own_negative)} has "
                      "no effect; raise cfg to use it")
    return unused


def sample_long_story(model, sequence, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                      ref_cfg: float = 1.0, chunk_size: int = 0, context_shots: int = 0,
                      on_chunk=None, done: dict[int, torch.Tensor] | None = None,
                      on_keyframes=None, variants: int = 1,
                      experts: Experts | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keyframes [V*S, H, W, 3] (variant-major) and the shots' latents [V, C, S*T/4, h, w] of the story.

    One chunk (chunk_size 0 or >= shots) is exactly ``sample_story`` on the sequence. Every chunk
    uses the same seed, as the official runner does, and every shot its own initial noise
    (dreamshot.seeds); one progress bar runs over all chunks of all variants. Variant v is exactly
    the run with seed + v (dreamshot.seeds.variant_seed). ``on_chunk(chunk_sequence)`` is called
    before each chunk is sampled (tests, logging).

    Kept shots (edit / shot_to_shot) count as done: a chunk whose shots are all kept is skipped and
    its shots serve as context. Resuming (the ViStoryBench runner): ``done`` holds keyframes already
    generated (shot index -> [H, W, 3]), treated the same way. ``on_keyframes(targets, images)`` gets
    each chunk's new keyframes as soon as they exist and may return replacements used from then on
    (e.g. the images as saved to 8-bit PNG, so that a resumed run continues from exactly what an
    uninterrupted one would). A chunk skipped because of ``done`` has no latent: then the latent is
    None. ``experts``: each pass samples its low-noise steps with the second model (``sample_story``).
    """
    if variants < 1:
        raise DreamShotInputError("variants", f"variants must be at least 1, got {variants}.", "use 1 or more.")
    plan, lay = sequence.plan, sequence.layout
    for sentence in unused_story_fields(model, plan, cfg):
        log.warning("DreamShot: %s.", sentence)
    chunks = plan_chunks(lay.num_shots, chunk_size, context_shots)
    kept = {j: plan.shot_images[j] for j, clean in enumerate(lay.clean_shots) if clean}
    given = {**kept, **(done or {})}
    check_pass_budget(plan, chunks, given)
    todo = [(context, targets) for context, targets in chunks if not all(j in given for j in targets)]
    own = [shot.seed for shot in plan.shots]
    if variants > 1 and all(own[j] is not None for j in lay.generated_shots):
        log.warning("DreamShot: every generated shot has its own seed, so the %d variants start from the same "
                    "noise (clear a Shot Script's seed to let variants differ).", variants)
    total = max(1, steps * len(todo) * variants)
    progress = latent_preview.prepare_callback(model, total)
    images_out, latents_out = [], []
    for v in range(variants):
        run_seed = variant_seed(seed, v)
        seeds = shot_seeds(own, run_seed)
        keyframes: dict[int, torch.Tensor] = dict(given)
        latents: list[torch.Tensor | None] = []
        n = 0
        for context, targets in chunks:
            if all(j in given for j in targets):
                # Skipped: its shots are kept (their latent is the sequence's) or done (no latent).
                frames = [f - lay.num_refs for j in targets for f in lay.shot_frames(j)]
                latents.append(shot_latent(lay, sequence.latent)[:, :, frames] if all(j in kept for j in targets)
                               else None)
                continue
            missing = [j for j in context if j not in keyframes]
            if missing:  # only possible when a chunk before it was skipped as done but is incomplete
                raise RuntimeError(f"context shots {missing} are neither done nor generated")
            sub = chunk_sequence(sequence, context, targets, keyframes, seeds) if len(chunks) > 1 else sequence
            if len(chunks) > 1:
                log.info("DreamShot: variant %d/%d, pass %d/%d: shots %d-%d, %d context shot(s), references: %s "
                         "(%d latent frames)", v + 1, variants, n + 1, len(todo), targets[0] + 1, targets[-1] + 1,
                         len(context), ", ".join(c.name for c in sub.plan.characters) or "none",
                         sub.layout.num_latent_frames)
            if on_chunk:
                on_chunk(sub)
            step0 = (v * len(todo) + n) * steps
            n += 1
            callback = _progress_callback(model, steps, offset=step0, total=total, progress=progress, layout=sub.layout)
            latent = sample_story(model, sub, run_seed, steps, cfg, sampler_name, scheduler, ref_cfg=ref_cfg,
                                  callback=callback, story_pass=StoryPass(plan, tuple(context + targets)),
                                  experts=experts)
            images = keyframes_from_latent(sub, latent)[len(context):]
            if on_keyframes is not None:
                replaced = on_keyframes(targets, images)
                images = images if replaced is None else replaced
            for i, j in enumerate(targets):
                keyframes[j] = images[i]
            latents.append(shot_latent(sub.layout, latent)[:, :, len(context) * sub.layout.frames_per_shot:])
        images_out.append(torch.stack([keyframes[j] for j in range(lay.num_shots)]))
        latents_out.append(None if any(x is None for x in latents) else torch.cat(latents, dim=2))
    images = torch.cat(images_out, dim=0)
    # A chunk skipped as done has no latent: then there is no whole-story latent either.
    return images, None if any(x is None for x in latents_out) else torch.cat(latents_out, dim=0)
