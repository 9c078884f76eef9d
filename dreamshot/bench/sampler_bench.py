"""DreamShot Sampler against ComfyUI's stock sampling, and keyframes against dense video, on one
random Wan2.1-format DiT built with ComfyUI's own classes (tiny on CPU; 1.3B-size with --size; 14B in
the GPU check, dreamshot/bench/check.py)."""

from __future__ import annotations

import logging
import math

import torch

from ..layout import StoryLayout
from ..story import Character, Shot, StorySequence, fold_story_text, plan_story
from .measure import measure

TEXT_LEN = 512
DENSE_CLIP_FRAMES = 81  # Wan2.1's clip length: 21 latent frames
NEGATIVE_SEED = 1000

log = logging.getLogger("DreamShot")


def _prompt(seed: int) -> torch.Tensor:
    """[1, 512, 4096] shaped like ComfyUI's Wan UMT5 output: 20-60 real token rows, then rows of exact
    zeros up to 512 (zero_out_masked)."""
    g = torch.Generator().manual_seed(seed)
    real = int(torch.randint(20, 61, (1,), generator=g))
    out = torch.zeros(1, TEXT_LEN, 4096)
    out[:, :real] = torch.randn(1, real, 4096, generator=g) * 0.1
    return out


def _sequence(shots: int, refs: int, width: int, height: int) -> StorySequence:
    """S shots that each list every character (K characters, one reference each): the RACL patch's
    auto regions then choose among K characters in every shot, its most expensive case."""
    chars = [Character(f"c{i}", torch.rand(1, height, width, 3)) for i in range(refs)]
    cast = tuple(c.name for c in chars)
    plan = plan_story(chars, [Shot(f"shot {j}", characters=cast) for j in range(shots)], width, height,
                      mode="reference_to_shot" if refs else "text_to_shot")
    lay = plan.layout
    latent = torch.randn(1, 16, lay.num_latent_frames, lay.latent_height, lay.latent_width,
                         generator=torch.Generator().manual_seed(1))
    # As encode_story: one prompt per segment, the negative prompt in every shot segment, folded.
    n = len(plan.prompts)
    text = fold_story_text([_prompt(2 + i) for i in range(n)], [_prompt(NEGATIVE_SEED)] * n, lay.num_tokens)
    return StorySequence(plan=plan, latent=latent, positive=text.positive, negative=text.negative,
                         segment_length=text.segment_length, positive_zero_rows=text.positive_zero_rows,
                         negative_zero_rows=text.negative_zero_rows)


# The sampler cases, by key: (what the row is called, what runs).
CASES = {
    "stock": "stock KSampler",
    "dreamshot": "DreamShot Sampler",
    "ref_cfg": "DreamShot Sampler + reference CFG {ref_cfg:g}",
    "racl": "DreamShot Sampler + RACL Attention Patch",
    "shot_lora": "DreamShot Sampler + Shot LoRA on shots 1-2",
    "full": "DreamShot Sampler + reference CFG {ref_cfg:g} + RACL Attention Patch + Shot LoRA on shots 1-2",
}
SHOT_LORA_RANK = 32
SHOT_LORA_SHOTS = (0, 1)


def random_shot_lora(model, rank: int = SHOT_LORA_RANK, shots=SHOT_LORA_SHOTS, seed: int = 3):
    """A Shot LoRA of random low-rank factors (bf16, as a saved LoRA file holds them) on the ten layers
    a DreamShot LoRA trains (dreamshot.train.config.DEFAULT_LORA_TARGETS) of every block, on ``shots``:
    what Load Shot LoRA makes of a file, built in host memory."""
    from ..shot_lora import LowRankDelta, ShotLoRA
    from ..train.config import DEFAULT_LORA_TARGETS

    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for i, block in enumerate(model.model.diffusion_model.blocks):
        for target in DEFAULT_LORA_TARGETS:
            layer = block.get_submodule(target)
            out_f, in_f = layer.weight.shape
            up = (torch.randn(out_f, rank, generator=g) * 0.01).to(torch.bfloat16)
            down = (torch.randn(rank, in_f, generator=g) / in_f ** 0.5).to(torch.bfloat16)
            deltas[f"diffusion_model.blocks.{i}.{target}"] = LowRankDelta(up, down, 1.0)
    return ShotLoRA(name="bench_shot_lora", strength=1.0, deltas=deltas, shots=tuple(shots))


def bench_variants(model, shots: int, refs: int, width: int, height: int, steps: int, device, repeats=2,
                   warmup=1, cfg: float = 5.0, ref_cfg: float = 2.0, cases=("stock", "dreamshot", "ref_cfg", "racl"),
                   exclude_bytes: int = 0, on_row=None, cpu_memory: bool = True) -> list[dict]:
    """Stock sampling (comfy.sample.sample, what KSampler runs; one prompt, the same latent frames)
    against the DreamShot cases named in ``cases`` (keys of CASES): DreamShot Sampler, with reference
    CFG, on a model through the RACL Attention Patch (default settings: strength 1, every block, auto
    regions), with a random Shot LoRA on two shots, or all of them: time per step and peak memory (on
    a GPU torch.cuda.max_memory_allocated, also as a total less ``exclude_bytes``, e.g. a VRAM cap's
    ballast).

    ``warmup`` calls of one step of stock sampling run first (model load, kernel set-up). A case that
    fails (a CUDA out-of-memory error on a capped card, say) is a row with its ``error``; the others
    still run. ``on_row(rows)`` is called after every case (the GPU check writes its results then).
    ``cpu_memory`` False: on a CPU, no profiled call per case for memory (measure.measure)."""
    import comfy.model_management
    import comfy.sample

    from ..comfy_bridge.role_patch import RoleAttentionConfig, with_role_attention
    from ..comfy_bridge.sampling import sample_story
    from ..comfy_bridge.shot_lora import with_shot_lora

    seq = _sequence(shots, refs, width, height)
    latent = seq.latent
    stock_pos, stock_neg = [[_prompt(2), {}]], [[_prompt(NEGATIVE_SEED), {}]]
    noise = comfy.sample.prepare_noise(latent, 0)
    racl_model = with_role_attention(model, RoleAttentionConfig()) if {"racl", "full"} & set(cases) else None
    lora = random_shot_lora(model) if {"shot_lora", "full"} & set(cases) else None

    def stock(n=steps):
        return lambda: comfy.sample.sample(model, noise, n, cfg, "euler", "simple", stock_pos, stock_neg, latent,
                                           disable_pbar=True, seed=0)

    def story(m, guidance=1.0):
        return lambda: sample_story(m, seq, 0, steps, cfg, "euler", "simple", ref_cfg=guidance)

    runs = {"stock": stock(), "dreamshot": story(model), "ref_cfg": story(model, ref_cfg),
            "racl": lambda: story(racl_model)(),
            "shot_lora": lambda: story(with_shot_lora(model, lora))(),
            "full": lambda: story(with_shot_lora(racl_model, lora), ref_cfg)()}
    rows = []
    with torch.inference_mode():
        for _ in range(warmup):
            try:
                stock(1)()
            except torch.OutOfMemoryError:   # the cases below then record their own
                log.exception("sampler warm-up ran out of memory")
                comfy.model_management.soft_empty_cache()
        for key in cases:
            row = {"case": key, "variant": CASES[key].format(ref_cfg=ref_cfg), "shots": shots, "refs": refs,
                   "latent_frames": latent.shape[2], "error": ""}
            try:
                m = measure(runs[key], device, repeats, warmup=0, exclude_bytes=exclude_bytes, cpu_memory=cpu_memory)
            except Exception as e:  # noqa: BLE001  (a failed case is a result; the others still run)
                log.exception("sampler case %s failed", row["variant"])
                oom = isinstance(e, torch.OutOfMemoryError)
                row["error"] = "CUDA out of memory" if oom else f"{type(e).__name__}: {e}"
                if device.type == "cuda":
                    row["total_mib"] = (torch.cuda.max_memory_allocated(device) - exclude_bytes) / 2 ** 20
                comfy.model_management.soft_empty_cache()
            else:
                row.update(step_s=m.seconds / steps, peak_mib=m.peak_bytes / 2 ** 20, total_mib=m.total_bytes / 2 ** 20)
            row.update(_load_state(model))
            rows.append(row)
            _ratios(rows)
            if on_row is not None:
                on_row(rows)
    return rows


def _load_state(model) -> dict:
    """How much of the DiT ComfyUI keeps on the compute device after a call (MiB), and of how much."""
    return {"loaded_mib": model.loaded_size() / 2 ** 20, "model_mib": model.model_size() / 2 ** 20}


def _ratios(rows: list[dict]) -> None:
    """Each row's time and memory against the stock row (when both ran)."""
    base = next((r for r in rows if r["case"] == "stock" and not r["error"]), None)
    for r in rows:
        if base is None or r["error"]:
            continue
        r["time_ratio"] = r["step_s"] / base["step_s"]
        r["mem_ratio"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] else math.nan
        r["total_ratio"] = r["total_mib"] / base["total_mib"] if base["total_mib"] else math.nan


def bench_keyframes_vs_dense(model, shots: int, refs: int, width: int, height: int, steps: int, device,
                             repeats=1) -> dict:
    """One DreamShot pass (refs + one latent frame per shot) against the dense-video way: every shot
    sampled as its own 81-frame clip (21 latent frames), keyframes taken afterwards."""
    import comfy.sample

    from ..comfy_bridge.sampling import sample_story

    seq = _sequence(shots, refs, width, height)
    lay = StoryLayout(0, 1, width, height)
    dense_frames = (DENSE_CLIP_FRAMES - 1) // 4 + 1
    clip = torch.randn(1, 16, dense_frames, lay.latent_height, lay.latent_width)
    pos, neg = [[_prompt(2), {}]], [[_prompt(NEGATIVE_SEED), {}]]
    noise = comfy.sample.prepare_noise(clip, 0)

    def dense_one_clip():
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "simple", pos, neg, clip, disable_pbar=True, seed=0)

    with torch.inference_mode():
        d = measure(lambda: sample_story(model, seq, 0, steps, 5.0, "euler", "simple"), device, repeats)
        one = measure(dense_one_clip, device, repeats)
    dense_s = one.seconds * shots  # S independent clips
    return {"shots": shots, "refs": refs, "dreamshot_s": d.seconds, "dense_s": dense_s,
            "time_ratio": d.seconds / dense_s, "mem_ratio": d.peak_bytes / one.peak_bytes}
