"""Patches that turn ComfyUI's stock Wan text-to-video model into a DreamShot model, on a clone only.

- Clean frames: three object patches on the WAN21 BaseModel (Wan2.1, the Wan2.2-A14B experts), the way
  ComfyUI's WAN22 (Wan2.2-TI2V-5B) does it natively (extra_conds forwards the denoise mask,
  process_timestep gives per-frame timesteps, scale_latent_inpaint hands the model the clean latent),
  so references and kept shots reach the DiT exactly clean at t = 0. WAN22 keeps its own.
- Per-shot cross-attention: transformer_options["optimized_attention_override"], reading the
  story's frame -> prompt-segment map from transformer_options["dreamshot"]. A folded story text
  (dreamshot.text_fold) adds its key bias (positive rows for the batch chunks ComfyUI marks 0 in
  transformer_options["cond_or_uncond"], negative rows for those marked 1), as repeated keys run
  unmasked through the attention backend, or, for a bias that hides rows, as an SDPA mask.
- DreamShot's override stays the one ComfyUI calls: a DIFFUSION_MODEL wrapper puts it back on top of
  any override installed during sampling (newer ComfyUI's Block Sparse Attention re-installs its own at
  every step) for each model call, with the other one beneath it as the backend of what DreamShot runs.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.model_base
import comfy.patcher_extension

from . import compat, role_patch, shot_lora
from .geometry import check_story_fits_model
from ..attention import per_shot_cross_attention
from ..clean_frames import per_frame_timestep
from ..guidance import self_attention_without_refs
from ..text_fold import StoryKeyBias, key_bias, padding_mask_bias

log = logging.getLogger("DreamShot")

STORY_KEY = "dreamshot"
SELF_ATTENTION_HOOKS_KEY = "dreamshot_self_attention"
# Set in a model pass's transformer_options: shots are blind to the references (reference CFG).
NO_REFS_KEY = "dreamshot_no_refs"
# Set by mask_text_padding(model): prompt padding rows are hidden from cross-attention (not Wan's way).
MASK_PADDING_KEY = "dreamshot_mask_text_padding"
OVERRIDE_KEY = "optimized_attention_override"
# Set (to "self" or "cross") in the transformer_options of every call DreamShot's override passes on: a
# DreamShot override further down (beneath another node's override) passes it on unchanged.
BELOW_KEY = "dreamshot_below"
WRAPPER_KEY = "dreamshot_story"   # the DIFFUSION_MODEL wrapper that keeps DreamShot's override on top
# ComfyUI's attention functions take these after heads (comfy/ldm/modules/attention.py): a caller that
# passes them positionally gets them by name here.
_POSITIONAL = ("mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def check_wan_t2v(model, node: str | None = None, input_name: str = "model") -> None:
    """Refuse anything but a Wan text-to-video model, with a message naming the fix: Wan2.1 T2V (1.3B,
    14B), either Wan2.2-T2V-A14B expert (ComfyUI loads them as WAN21) or Wan2.2-TI2V-5B (WAN22, its 48
    input channels are its latent: text-to-video with a clean first frame, no image channels)."""
    from ..errors import DreamShotInputError

    base = getattr(model, "model", None)
    if type(base) not in (comfy.model_base.WAN21, comfy.model_base.WAN22):
        name = type(base).__name__ if base is not None else type(model).__name__
        raise DreamShotInputError(
            input_name, f"DreamShot needs a Wan text-to-video model, got {name}.",
            "load wan2.1_t2v_14B / 1.3B, wan2.2_ti2v_5B or the wan2.2_t2v A14B high/low-noise experts with Load "
            "Diffusion Model (UNETLoader).", node=node)
    dm = base.diffusion_model
    if dm.patch_embedding.weight.shape[1] != dm.out_dim or getattr(dm, "img_emb", None) is not None:
        raise DreamShotInputError(
            input_name, "this Wan checkpoint is an image-to-video / Fun variant, not text-to-video.",
            "load a text-to-video checkpoint (wan2.1_t2v_14B / 1.3B, wan2.2_ti2v_5B, the wan2.2_t2v A14B experts).",
            node=node)


# The name before Wan2.2 (kept for callers on other branches).
check_wan21_t2v = check_wan_t2v


def native_clean_frames(model) -> bool:
    """True when the model already sees clean frames at t = 0 by itself: ComfyUI's WAN22 forwards the
    denoise mask and scales the timestep per frame exactly as ``_clean_frame_patches`` does
    (comfy/model_base.py WAN22: the mask's mean over channels and space times t, [B, F]; tested equal to
    dreamshot.clean_frames.per_frame_timestep)."""
    return type(getattr(model, "model", None)) is comfy.model_base.WAN22


def _clean_frame_patches(patcher):
    base_extra_conds = patcher.get_model_object("extra_conds")

    def extra_conds(**kwargs):
        out = base_extra_conds(**kwargs)
        denoise_mask = kwargs.get("denoise_mask", None)
        if denoise_mask is not None:
            out["denoise_mask"] = comfy.conds.CONDRegular(denoise_mask)
        return out

    def process_timestep(timestep, x=None, denoise_mask=None, **kwargs):
        if denoise_mask is None:
            return timestep
        return per_frame_timestep(timestep, denoise_mask)

    def scale_latent_inpaint(sigma=None, noise=None, latent_image=None, **kwargs):
        return latent_image

    return {"extra_conds": extra_conds, "process_timestep": process_timestep,
            "scale_latent_inpaint": scale_latent_inpaint}


def _attention_override(previous, diffusion_model=None):
    """ComfyUI attention hook: per-shot cross-attention; self-attention goes to DreamShot's
    self-attention hooks (role attention) when set, else through unchanged. Every attention it runs
    goes to the backend ComfyUI chose (``compat.attention_backend``: an earlier override such as the
    Model Attention Backend node, else the checkpoint's own choice on ``diffusion_model``'s layer
    (``compat.preferred_attention``), else ComfyUI's default). Calls it passes on are marked
    (BELOW_KEY), so that a DreamShot override reached again beneath another override passes them on."""
    previous = getattr(previous, "dreamshot_previous", previous)   # a story patch replaces, never stacks

    def override(func, q, k, v, heads=None, *args, transformer_options=None, **kwargs):
        # ``heads`` by keyword (ComfyUI) or positionally (Block Sparse Attention's dense fallback,
        # comfy_extras/nodes_sparse_attention.py @01dafad3); anything after it by name.
        if len(args) > len(_POSITIONAL):
            raise TypeError(f"attention got {4 + len(args)} positional arguments")
        kwargs.update(zip(_POSITIONAL, args))
        to = transformer_options or {}
        layer = to.get(BELOW_KEY) or ("self" if k.shape[1] == q.shape[1] else "cross")
        below = {**to, BELOW_KEY: layer}
        attention = compat.attention_backend(
            func, previous, compat.preferred_attention(diffusion_model, to, cross=layer == "cross"))

        def backend(qs, ks, vs, h):
            return attention(qs, ks, vs, h, transformer_options=below, **kwargs)

        story = to.get(STORY_KEY)
        if (story is None or BELOW_KEY in to or kwargs.get("mask") is not None or kwargs.get("skip_reshape")
                or kwargs.get("skip_output_reshape")):
            return backend(q, k, v, heads)
        _check_tokens(q.shape[1], story["num_tokens"])

        if layer == "self":   # (cross-attention keys never have the image tokens' length)
            if to.get(NO_REFS_KEY) and story.get("num_ref_tokens", 0) > 0:
                return self_attention_without_refs(q, k, v, heads, story["num_ref_tokens"], backend)
            hook = to.get(SELF_ATTENTION_HOOKS_KEY)
            if hook is not None:
                return hook(attention, q, k, v, heads=heads, transformer_options=below, **kwargs)
            return backend(q, k, v, heads)
        if k.shape[1] != story["context_length"]:
            return backend(q, k, v, heads)

        bias = story.get("key_bias")
        repeated = key_bias = None
        if bias is not None:   # repeated keys run unmasked through the backend; else an additive mask
            repeated = bias.repeated_for_batch(to.get("cond_or_uncond"), q.shape[0], q.device)
            if repeated is None:
                key_bias = bias.for_batch(to.get("cond_or_uncond"), q.shape[0], q.device, q.dtype)
        return per_shot_cross_attention(q, k, v, heads, story["frame_segments"], story["tokens_per_frame"],
                                         story["num_segments"], attention=backend, key_bias=key_bias,
                                         repeated=repeated)

    override.dreamshot_previous = previous
    return override


def _keep_outermost(diffusion_model):
    """A DIFFUSION_MODEL wrapper: each model call runs with a DreamShot override as the attention
    override ComfyUI calls.

    Newer ComfyUI's Block Sparse Attention puts its override on top of whatever is installed, at patch
    time and again at every step from ON_PREPARE_STATE (``install_override``,
    comfy_extras/nodes_sparse_attention.py @01dafad3); its sparse kernel then takes the self-attention
    calls it accepts before DreamShot sees them (role attention and the reference-CFG pass skipped). Any
    override found on top here gets a DreamShot override over it for this call (logged once per
    override): DreamShot sees every call, and the other override runs what DreamShot passes on, as one
    installed before the story patch does. The model_options are left as they are (re-wrapping there
    would stack again at every step). Should the override be replaced during the call itself, the run
    stops with an error naming what replaced it.
    """
    state = {"below": None, "top": None}

    def wrapper(executor, *args, **kwargs):
        at = 5 if len(args) > 5 else None   # WanModel.forward's execute(x, t, context, clip_fea, tdc, to)
        to = args[at] if at is not None else kwargs.get("transformer_options")
        if to is None:
            return executor(*args, **kwargs)
        top = to.get(OVERRIDE_KEY)
        if not hasattr(top, "dreamshot_previous"):   # another override (or none) on top of DreamShot's
            below = top
            if state["below"] is not below or state["top"] is None:
                log.info("DreamShot: %s was installed over DreamShot's attention during sampling; DreamShot runs "
                         "first and hands it the attention calls it passes on.",
                         "no attention override" if below is None else compat.override_name(below))
                state["below"], state["top"] = below, _attention_override(below, diffusion_model)
            top = state["top"]
            to = {**to, OVERRIDE_KEY: top}
            if at is not None:
                args = args[:at] + (to,) + args[at + 1:]
            else:
                kwargs["transformer_options"] = to
        out = executor(*args, **kwargs)
        if to.get(OVERRIDE_KEY) is not top:
            _refuse_override(to.get(OVERRIDE_KEY))
        return out

    return wrapper


def _refuse_override(override) -> None:
    from ..errors import DreamShotInputError

    raise DreamShotInputError(
        "model", f"{compat.override_name(override)} replaced DreamShot's attention in the middle of a model call, "
        "so attention calls of the story may have skipped DreamShot (per-shot prompts, role attention, "
        "reference CFG).", "connect the model to DreamShot Sampler without that node.")


def _check_tokens(got: int, packed: int) -> None:
    """The DiT must see exactly the story's tokens. Extra trailing tokens (newer ComfyUI appends
    in-context references from a ``context_latents`` cond, and ``time_dim_concat`` appends frames)
    are refused rather than left unconstrained: the per-frame timesteps of the clean-frame patch
    would be spread over them by Wan's modulation (repeat_e), shifting every frame's noise level."""
    from ..errors import DreamShotInputError

    if got == packed:
        return
    if got > packed:
        raise DreamShotInputError(
            "model", f"the DiT got {got - packed} image tokens beyond the story's {packed}: a model patch or "
            "conditioning appended tokens (for example ComfyUI's time_dim_concat or context_latents in-context "
            "references), and DreamShot's per-frame timesteps and per-shot prompts cannot place them.",
            "sample the story without that patch (connect the model to DreamShot Sampler without nodes that "
            "add reference or context latents).")
    raise DreamShotInputError(
        "sequence", f"the DiT got {got} image tokens but the story was packed for {packed}.",
        "sample the latent that Shot Sequence Pack produced.")


def story_options(sequence, mask_padding: bool = False) -> dict:
    """What the attention hook needs to know of a story (plain Python values, and the folded text's
    key bias when the story has one). ``mask_padding``: the key bias hides the prompts' zero rows
    instead (dreamshot.text_fold.padding_mask_bias)."""
    lay = sequence.layout
    options = {
        "frame_segments": list(sequence.plan.frame_segments),
        "tokens_per_frame": lay.tokens_per_frame,
        "num_tokens": lay.num_tokens,
        "num_ref_tokens": lay.num_refs * lay.tokens_per_frame,
        "num_segments": sequence.num_segments,
        "context_length": sequence.num_segments * sequence.segment_length,
    }
    positive_zero_rows = getattr(sequence, "positive_zero_rows", None)
    if mask_padding:
        n = sequence.num_segments
        options["key_bias"] = StoryKeyBias(padding_mask_bias(sequence.positive, n),
                                           padding_mask_bias(sequence.negative, n), n)
    elif positive_zero_rows is not None:
        options["key_bias"] = StoryKeyBias(key_bias(sequence.positive, positive_zero_rows),
                                           key_bias(sequence.negative, sequence.negative_zero_rows),
                                           sequence.num_segments)
    return options


def mask_text_padding(model):
    """A clone of ``model`` whose DreamShot sampling hides the prompts' zero padding rows from
    cross-attention, for a model trained with ``data.mask_text_padding`` (the shapes proof's)."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})[MASK_PADDING_KEY] = True
    return m


def patch_for_story(model, sequence, story_pass=None):
    """A clone of ``model`` that samples ``sequence`` the DreamShot way. The input is untouched.

    ``story_pass`` (dreamshot.shot_lora.StoryPass): when ``sequence`` is one pass of a longer story,
    which story shot each of its shots is (Shot LoRAs are given in story shots)."""
    check_wan_t2v(model)
    check_story_fits_model(sequence.layout, model)
    m = model.clone()
    if not native_clean_frames(m):
        for name, obj in _clean_frame_patches(m).items():
            m.add_object_patch(name, obj)
    to = m.model_options.setdefault("transformer_options", {})
    dm = m.get_model_object("diffusion_model")
    to[OVERRIDE_KEY] = _attention_override(to.get(OVERRIDE_KEY), dm)
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _keep_outermost(dm))
    to[STORY_KEY] = story_options(sequence, mask_padding=bool(to.get(MASK_PADDING_KEY)))
    role_config = to.get(role_patch.CONFIG_KEY)
    if role_config is not None:
        role_patch.install(m, sequence, role_config, SELF_ATTENTION_HOOKS_KEY)
    shot_lora.install(m, sequence, story_pass)
    return m


def share_story_patches(source, target):
    """``target`` (a second model: Wan2.2-T2V-A14B's low-noise expert) with the DreamShot patches the
    nodes put on ``source`` that it lacks: the RACL Attention Patch, Shot LoRAs and masked text padding
    (a clone; a patch the target carries itself is kept). Shot LoRAs move only between DiTs of one
    shape (the A14B experts share one)."""
    from ..errors import DreamShotInputError

    check_wan_t2v(target, input_name="model_low_noise")
    src_to = source.model_options.get("transformer_options", {})
    tgt_to = target.model_options.get("transformer_options", {})
    shared = [key for key in (role_patch.CONFIG_KEY, MASK_PADDING_KEY) if key in src_to and key not in tgt_to]
    loras = source.model_options.get(shot_lora.OPTIONS_KEY) or ()
    share_loras = bool(loras) and not target.model_options.get(shot_lora.OPTIONS_KEY)
    if not shared and not share_loras:
        return target
    if share_loras:
        dims = [_dit_shape(m.get_model_object("diffusion_model")) for m in (source, target)]
        if dims[0] != dims[1]:
            raise DreamShotInputError(
                "model_low_noise", "the Shot LoRA on the first model does not fit the second (another DiT size).",
                "put a Shot LoRA made for the second model on it too, or use two experts of one size.")
    m = target.clone()
    to = m.model_options.setdefault("transformer_options", {})
    for key in shared:
        to[key] = src_to[key]
    if share_loras:
        m.model_options[shot_lora.OPTIONS_KEY] = tuple(loras)
    log.info("DreamShot: the second model gets the first one's %s", ", ".join(
        [{role_patch.CONFIG_KEY: "RACL Attention Patch", MASK_PADDING_KEY: "masked text padding"}[k] for k in shared]
        + (["Shot LoRA(s)"] if share_loras else [])))
    return m


def _dit_shape(dm) -> tuple:
    """(patch embedding shape, blocks, FFN width): equal for two DiTs a LoRA's layers fit alike."""
    return tuple(dm.patch_embedding.weight.shape), len(dm.blocks), tuple(dm.blocks[0].ffn[0].weight.shape)
