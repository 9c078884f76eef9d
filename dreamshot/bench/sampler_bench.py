"""DreamShot Sampler against ComfyUI's stock sampling, and keyframes against dense video, on one
random Wan2.1-format DiT loaded through ComfyUI (tiny on CPU; 1.3B-size with --size on a GPU)."""

from __future__ import annotations

import torch

from ..layout import StoryLayout
from ..story import Character, Shot, StorySequence, fold_story_text, plan_story
from .measure import measure

TEXT_LEN = 512
DENSE_CLIP_FRAMES = 81  # Wan2.1's clip length: 21 latent frames
NEGATIVE_SEED = 1000


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


def bench_variants(model, shots: int, refs: int, width: int, height: int, steps: int, device, repeats=2,
                   warmup=1) -> list[dict]:
    """Stock sampling (comfy.sample.sample, what KSampler runs; one prompt, the same latent frames)
    against DreamShot Sampler, DreamShot Sampler with reference CFG 2, and DreamShot Sampler on a model
    through the RACL Attention Patch (default settings: strength 1, every block, auto regions): time
    per step and peak memory (on a GPU torch.cuda.max_memory_allocated, also as a total)."""
    import comfy.sample

    from ..comfy_bridge.role_patch import RoleAttentionConfig, with_role_attention
    from ..comfy_bridge.sampling import sample_story

    seq = _sequence(shots, refs, width, height)
    latent = seq.latent
    stock_pos, stock_neg = [[_prompt(2), {}]], [[_prompt(NEGATIVE_SEED), {}]]
    noise = comfy.sample.prepare_noise(latent, 0)
    racl_model = with_role_attention(model, RoleAttentionConfig())

    def stock():
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "simple", stock_pos, stock_neg, latent,
                            disable_pbar=True, seed=0)

    def story(m, ref_cfg=1.0):
        return lambda: sample_story(m, seq, 0, steps, 5.0, "euler", "simple", ref_cfg=ref_cfg)

    cases = [("stock KSampler", stock), ("DreamShot Sampler", story(model)),
             ("DreamShot Sampler + reference CFG 2", story(model, 2.0)),
             ("DreamShot Sampler + RACL Attention Patch", story(racl_model))]
    rows = []
    with torch.inference_mode():
        for name, fn in cases:
            m = measure(fn, device, repeats, warmup)
            rows.append({"variant": name, "shots": shots, "refs": refs, "latent_frames": latent.shape[2],
                         "step_s": m.seconds / steps, "peak_mib": m.peak_bytes / 2 ** 20,
                         "total_mib": m.total_bytes / 2 ** 20})
    for r in rows:
        r["time_ratio"] = r["step_s"] / rows[0]["step_s"]
        r["mem_ratio"] = r["peak_mib"] / rows[0]["peak_mib"]
        r["total_ratio"] = r["total_mib"] / rows[0]["total_mib"]
    return rows


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
