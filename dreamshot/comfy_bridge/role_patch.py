"""Role-masked self-attention inside ComfyUI's Wan DiT (the inference side of RACL).

The RACL Attention Patch node only stores a ``RoleAttentionConfig`` on a model clone; the story's
token roles are known only when DreamShot Sampler patches the model for a sequence, so the hook
is built there (``install``). Block indices come from per-block "double_block" replacements that
add the index to transformer_options before calling the original block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import DreamShotInputError
from ..role_attention import auto_regions, build_role_map, role_masked_self_attention, sigma_in_range
from ..scene_roles import location_backgrounds

log = logging.getLogger("DreamShot")

CONFIG_KEY = "dreamshot_role_config"
BLOCK_KEY = "dreamshot_block"


@dataclass(frozen=True)
class RoleAttentionConfig:
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    layers: tuple[int, ...] | None = None   # None: every block
    auto_regions: bool = True               # shots without masks/boxes: regions from attention


def with_role_attention(model, config: RoleAttentionConfig):
    """A clone of ``model`` that DreamShot sampling will run with role attention (installed per story
    by ``install`` when the story is patched). The input is untouched."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})[CONFIG_KEY] = config
    return m


def parse_layers(text: str, num_blocks: int | None = None) -> tuple[int, ...] | None:
    """ "all" -> None; "0-9, 20" -> (0, ..., 9, 20). Checked against num_blocks when given."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    picked: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            lo_i = int(lo)
            hi_i = int(hi) if hi else lo_i
        except ValueError:
            raise DreamShotInputError("layers", f"{part!r} is not a block number or range.",
                                      'write "all" or block numbers like "0-9, 20".') from None
        picked.update(range(min(lo_i, hi_i), max(lo_i, hi_i) + 1))
    if num_blocks is not None and any(not 0 <= i < num_blocks for i in picked):
        raise DreamShotInputError("layers", f"the model has blocks 0..{num_blocks - 1}, got {sorted(picked)}.",
                                  f"use block numbers below {num_blocks} (Wan2.1 1.3B has 30, 14B has 40).")
    return tuple(sorted(picked))


def _indexing_block(index: int, previous):
    def block(args, extra):
        args = dict(args)
        args["transformer_options"] = {**args["transformer_options"], BLOCK_KEY: index}
        if previous is not None:
            return previous(args, extra)
        return extra["original_block"](args)
    return block


_NEGATIVE_ONLY = object()


def _positive_rows(cond_or_uncond, batch: int):
    """The positive prompt's rows of a model call's batch (ComfyUI stacks equal chunks, one per entry of
    transformer_options["cond_or_uncond"]: 0 positive, 1 negative): a slice; None (all rows) when the
    call does not say or its positive chunks are not contiguous; _NEGATIVE_ONLY when it has none."""
    chunks = list(cond_or_uncond or ())
    if not chunks or batch % len(chunks):
        return None
    positive = [i for i, c in enumerate(chunks) if c == 0]
    if not positive:
        return _NEGATIVE_ONLY
    if positive != list(range(positive[0], positive[-1] + 1)):
        return None
    size = batch // len(chunks)
    return slice(positive[0] * size, (positive[-1] + 1) * size)


def install(m, sequence, config: RoleAttentionConfig, hooks_key: str) -> None:
    """Add the role-masked self-attention hook for ``sequence`` to the sampling clone ``m``."""
    plan = sequence.plan
    layout = plan.layout
    if layout.num_refs == 0:
        log.info("DreamShot role attention: the story has no references; nothing to constrain.")
        return
    blocks = m.get_model_object("diffusion_model").blocks
    layers = config.layers if config.layers is not None else tuple(range(len(blocks)))
    if any(i >= len(blocks) for i in layers):
        raise DreamShotInputError("layers", f"the model has blocks 0..{len(blocks) - 1}, got {list(layers)}.",
                                  "use smaller block numbers.", node="RACL Attention Patch")
    role_map = build_role_map(layout, plan.ref_masks, plan.shot_regions)
    groups_base = role_map.group_of_query()
    auto_shots = role_map.unregioned_shots() if config.auto_regions else []
    auto_spans = [role_map.shot_spans[j] for j in auto_shots]
    auto_tokens = [torch.arange(a, b) for a, b in auto_spans]
    auto_casts = [plan.shot_characters[j] for j in auto_shots]   # each shot's own cast only
    ref_tokens = role_map.ref_hard_tokens
    ms = m.get_model_object("model_sampling")
    sigma_start = float(ms.percent_to_sigma(config.start_percent))
    sigma_end = float(ms.percent_to_sigma(config.end_percent))
    # A location is a role of its own: its shots' background tokens read its reference (scene_roles).
    groups_base = location_backgrounds(groups_base, role_map.shot_spans, plan.shot_characters,
                                       [c.kind for c in plan.characters], plan.shot_regions)
    active_layers = frozenset(layers)
    positive_regions: dict = {}   # block -> (sigma, groups) of the last call holding positive rows

    def groups_for(q, k, heads, block, sigma, transformer_options):
        """Group ids [N] for this call: the given regions, plus auto regions of the other shots.

        Cond and uncond get the same auto regions, decided by the positive prompt's rows. Regions say
        which character a token of the picture is; both predictions of a CFG step see the same latent,
        and the positive prompt is the one that describes the story's characters (the negative one
        names nobody). With one set of regions the two predictions differ by their text only, which is
        what CFG extrapolates; regions of their own would put a masking difference into cond - uncond
        too, and averaging the two batches would let the negative text move a token to another
        character. When ComfyUI runs uncond in a call of its own (little free VRAM), that call reuses
        the regions the positive call (run first) found in the same block at the same sigma; a call
        with no positive rows and nothing to reuse uses its own rows.
        """
        groups = groups_base.to(q.device)
        if not auto_tokens:
            return groups
        rows = _positive_rows(transformer_options.get("cond_or_uncond"), q.shape[0])
        cached = positive_regions.get(block)
        if rows is _NEGATIVE_ONLY and cached is not None and cached[0] == sigma:
            return cached[1]
        dev_tokens = [t.to(q.device) for t in ref_tokens]
        auto = auto_regions(q, k, heads, auto_tokens, auto_casts, dev_tokens,
                            batch=None if rows is _NEGATIVE_ONLY else rows)
        groups = groups.clone()
        for (a, b), part in zip(auto_spans, auto):
            groups[a:b] = part
        if rows is not _NEGATIVE_ONLY:
            positive_regions[block] = (sigma, groups)
        return groups

    def hook(func, q, k, v, heads=None, transformer_options=None, **kwargs):
        block = transformer_options.get(BLOCK_KEY)
        sigmas = transformer_options.get("sigmas")
        sigma = float(sigmas.max()) if sigmas is not None else sigma_start
        if block not in active_layers or not sigma_in_range(sigma, sigma_start, sigma_end):
            return func(q, k, v, heads=heads, transformer_options=transformer_options, **kwargs)
        groups = groups_for(q, k, heads, block, sigma, transformer_options)
        dev_tokens = [t.to(q.device) for t in ref_tokens]

        def backend(qs, ks, vs, h):
            return func(qs, ks, vs, h, transformer_options=transformer_options, **kwargs)

        return role_masked_self_attention(q, k, v, heads, groups, dev_tokens, config.strength, attention=backend)

    to = m.model_options.setdefault("transformer_options", {})
    to[hooks_key] = hook
    replace = to.get("patches_replace", {}).get("dit", {})
    for i in layers:
        m.set_model_patch_replace(_indexing_block(i, replace.get(("double_block", i))), "dit", "double_block", i)
