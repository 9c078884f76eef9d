"""Per-shot LoRA inside ComfyUI's Wan: the Shot LoRA node's record on a model clone, and the layer
patches DreamShot sampling installs for each pass (the math is dreamshot.shot_lora).

The node only stores a ShotLoRA in the clone's model_options (``with_shot_lora``): token rows exist
only once DreamShot Sampler patches the model for a story pass (``install``, called by
wan_patches.patch_for_story for every pass of a chunked story). Each affected linear layer then gets
an object patch on its ``forward`` that calls the layer's own forward, so ComfyUI's cast and lowvram
ops and the weight patches of merged LoRAs (Load DreamShot Model's slots) apply as usual, and adds
the low-rank change on the scoped rows. ComfyUI applies object patches when it loads the clone and
restores them when it loads another one. The weights are never patched: ModelPatcher backs none of
them up and no second copy of a weight exists. The LoRA's own tensors are moved to the compute
device once per sampling run and dropped when the run ends (CallbacksMP.ON_CLEANUP).
"""

from __future__ import annotations

import logging

import comfy.patcher_extension

from . import compat
from ..errors import DreamShotInputError
from ..shot_lora import (IMAGE_ROWS, NODE, TEXT_ROWS, LowRankDelta, ShotLoRA, StoryPass, add_scoped_delta,
                         pass_rows, row_kind, story_scope)
from .lora import check_lora_fits, read_lora

log = logging.getLogger("DreamShot")

OPTIONS_KEY = "dreamshot_shot_loras"
CALLBACK_KEY = "dreamshot_shot_lora"


def load_shot_lora(model, path: str, name: str, strength: float, shots: tuple[int, ...] | None,
                   character: str | None, include_references: bool) -> ShotLoRA:
    """Read a LoRA file, map it onto ``model`` as ComfyUI's loader does (check_lora_fits: ComfyUI,
    DiffSynth/PEFT, kohya and Fun key names; refuses keys that fit no weight) and keep its per-layer
    low-rank factors."""
    lora, _ = read_lora(path)
    patches = check_lora_fits(model, lora, name)
    return ShotLoRA(name=name, strength=strength, deltas=_deltas(patches, name), shots=shots,
                    character=character or None, include_references=include_references)


def _deltas(patches: dict, name: str) -> dict[str, LowRankDelta]:
    """{layer path: LowRankDelta} from comfy.lora.load_lora's patches; refuses what cannot be applied
    per token without a weight-sized tensor."""
    factors, biases, refused = {}, {}, []
    for key, adapter in patches.items():
        if not isinstance(key, str):   # (key, offset, ...) patches a slice of a fused weight
            refused.append(f"{key[0]} (a slice of a fused weight)")
            continue
        module, _, param = key.rpartition(".")
        kind = getattr(adapter, "name", None) or (adapter[0] if isinstance(adapter, tuple) else type(adapter).__name__)
        if row_kind(module) is None:
            refused.append(f"{key} (not a per-token linear layer)")
        elif param == "weight" and kind == "lora":
            up, down, alpha, mid, dora_scale, reshape = adapter.weights
            if mid is not None or dora_scale is not None or reshape is not None:
                refused.append(f"{key} ({'DoRA' if dora_scale is not None else 'LoCon/reshaped'} LoRA)")
                continue
            factors[module] = (up, down, 1.0 if alpha is None else float(alpha) / down.shape[0])
        elif param == "bias" and kind == "diff":
            biases[module] = adapter[1][0].flatten()
        else:
            refused.append(f"{key} ({kind}{' on a weight: weight-sized' if kind == 'diff' else ''})")
    if refused:
        shown = ", ".join(refused[:6]) + (f" ... ({len(refused)} in all)" if len(refused) > 6 else "")
        raise DreamShotInputError(
            "lora_name", f"{name}: {len(refused)} patch(es) cannot be applied to chosen shots only: {shown}.",
            "a Shot LoRA takes low-rank LoRAs (up/down + alpha, and diff_b biases) on the blocks' attention and "
            "feed-forward layers, text_embedding and head.head; load other LoRAs for every shot with ComfyUI's "
            "LoraLoaderModelOnly.", node=NODE)
    return {m: LowRankDelta(*(factors.get(m) or (None, None, 1.0)), bias=biases.get(m))
            for m in sorted(set(factors) | set(biases))}


def with_shot_lora(model, lora: ShotLoRA):
    """A clone of ``model`` that DreamShot sampling runs with ``lora`` added to any Shot LoRAs it
    already carries. The input is untouched."""
    m = model.clone()
    m.model_options[OPTIONS_KEY] = tuple(m.model_options.get(OPTIONS_KEY, ())) + (lora,)
    return m


class _RunState:
    """Per sampling clone: the LoRA tensors on the compute device, and which patched layers ran."""

    def __init__(self, paths):
        self.paths = frozenset(paths)
        self.cache: dict = {}
        self.called: set[str] = set()

    def delta(self, key, delta: LowRankDelta, device, dtype) -> LowRankDelta:
        key = (key, device, dtype)
        if key not in self.cache:
            self.cache[key] = delta.on(device, dtype)
        return self.cache[key]

    def end_of_run(self, patcher=None):
        self.cache.clear()
        missed = sorted(self.paths - self.called)
        if self.called and missed:
            log.warning("DreamShot Shot LoRA: %d layer(s) ran without calling their forward (%s ...), so the "
                        "LoRA did not reach them; a model patch or a fused kernel bypassed them.",
                        len(missed), ", ".join(missed[:3]))
        self.called.clear()


def _scoped_forward(base_forward, path: str, entries, expected_rows: int, state: _RunState):
    """``base_forward`` (the layer's own forward) plus each (delta, strength, spans) of ``entries``."""

    def forward(x, *args, **kwargs):
        state.called.add(path)
        if x.ndim != 3 or x.shape[1] != expected_rows:
            raise DreamShotInputError(
                "model", f"layer {path} got input {tuple(x.shape)}, but this story pass has {expected_rows} rows for "
                "it: a model patch changed how the layer is called (for example a chunked feed-forward), and the "
                "Shot LoRA cannot tell which rows belong to which shot.",
                "sample without that patch, or without the Shot LoRA.", node=NODE)
        out = base_forward(x, *args, **kwargs)
        for i, (delta, strength, spans) in enumerate(entries):
            add_scoped_delta(out, x, spans, state.delta((path, i), delta, out.device, out.dtype), strength)
        return out

    forward.dreamshot_shot_lora = state
    return forward


def install(m, sequence, story_pass: StoryPass | None = None) -> None:
    """Patch the layers of the sampling clone ``m`` for the Shot LoRAs it carries, for ``sequence``
    (one pass; ``story_pass`` maps its shots to the story's, None = the sequence is the story)."""
    loras = m.model_options.get(OPTIONS_KEY) or ()
    if not loras:
        return
    plan = sequence.plan
    story_pass = story_pass or StoryPass(plan, tuple(range(plan.layout.num_shots)))
    names = [shot.characters for shot in story_pass.story.shots]
    rows_for = {IMAGE_ROWS: plan.layout.num_tokens, TEXT_ROWS: sequence.num_segments * sequence.segment_length}

    by_layer: dict[str, list] = {}
    for lora in loras:
        scope = story_scope(lora, names)
        spans = pass_rows(lora, scope, plan, story_pass.shots, sequence.segment_length)
        log.info("DreamShot Shot LoRA %s (strength %.2f): story shot(s) %s of this pass, %d token span(s)",
                 lora.name, lora.strength, [j + 1 for j in story_pass.shots if j in scope] or "none",
                 len(spans[IMAGE_ROWS]))
        for path, delta in lora.deltas.items():
            layer_spans = spans[row_kind(path)]
            if layer_spans and lora.strength != 0:
                by_layer.setdefault(path, []).append((delta, lora.strength, layer_spans))
    if not by_layer:
        return
    state = _RunState(by_layer)
    for path, entries in by_layer.items():
        base = m.get_model_object(f"{path}.forward")
        m.add_object_patch(f"{path}.forward", _scoped_forward(base, path, entries, rows_for[row_kind(path)], state))
        if path.endswith(".ffn.2"):
            ffn = path[: -len(".2")]
            if f"{ffn}.forward" not in m.object_patches:
                m.add_object_patch(f"{ffn}.forward", compat.feed_forward_as_module_calls(m.get_model_object(ffn)))
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, CALLBACK_KEY, state.end_of_run)
