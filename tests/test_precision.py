"""Half precision and fp8 weights: every mode, reference CFG, chunks and the RACL patch in the real
ComfyUI with bf16 / fp16 activations and fp8_e4m3fn weights, and the folded text attention in half
precision.

How the CPU is made to compute in half precision (tests/support/precision.py): the model is loaded
through UNETLoader with ComfyUI's dtype choice as on a GPU (fp16 for a Wan2.1 checkpoint, bf16 with
--bf16-unet, fp8 weights with fp16 manual cast), or with the core ModelComputeDtype node; on a CPU
ComfyUI itself always computes in float32. What the CPU cannot show: the GPU attention kernels. Here ComfyUI's own attention is
its sub-quadratic CPU attention and DreamShot's masked calls run PyTorch's CPU SDPA; flash / memory-
efficient SDPA, xformers and sage attention (what a GPU picks) are not exercised.
"""

from __future__ import annotations

import pytest
import torch

from dreamshot.attention import dense_masked_cross_attention, pad_segments, per_shot_cross_attention
from dreamshot.story import fold_story_text
from dreamshot.text_fold import StoryKeyBias, key_bias

from support.precision import PRECISIONS, compute_dtype, kept_frames, load_dit, stories

STEPS = 2
SEED = 5
# Spacing of representable numbers just below 1.0 (one "ulp" at 1): bf16 8 bits, fp16 11 bits.
ULP = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


# -- pure: the folded text attention in half precision ---------------------------------------------
def _text_to_kv(dim: int, text_dim: int, seed: int = 0):
    """Wan's path from text rows to cross-attention keys/values, row by row (text embedding Linear-GELU-
    Linear with biases, K with a per-token RMS norm, V): equal rows give equal keys in any dtype."""
    torch.manual_seed(seed)
    embed1, embed2 = torch.nn.Linear(text_dim, dim), torch.nn.Linear(dim, dim)
    k, v, norm_k = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim), torch.nn.RMSNorm(dim)
    with torch.no_grad():
        for lin in (embed1, embed2, k, v):
            lin.bias.normal_()

    def kv(context, dtype):
        with torch.no_grad():
            e1, e2, kk, vv, nk = (m.to(dtype) for m in (embed1, embed2, k, v, norm_k))
            e = e2(torch.nn.functional.gelu(e1(context.to(dtype)), approximate="tanh"))
            return nk(kk(e)), vv(e)
    return kv


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_folded_text_attention_within_tolerance_of_unfolded_in_half_precision(dtype):
    """At the real head size (128) with UMT5's 512-row prompts: the folded context with its key bias
    (rounded to the activation dtype) vs the 512-row padded one, both in ``dtype``.

    Stated tolerance: |folded - unfolded| <= 2 ulp(dtype) x max|v| (measured on this case: 1.13 ulp for
    bf16 and fp16), and the folded result is no further from the float64 attention of the same inputs
    than the unfolded one (measured max error folded vs unfolded: bf16 8.0e-3 vs 1.8e-2, fp16 1.1e-3
    vs 2.1e-3). The largest key bias here is ln(452) = 6.11, which bf16 rounds to 6.125."""
    heads, d, text_dim = 4, 128, 512   # Wan's text_dim is 4096: any width maps rows alike
    g = torch.Generator().manual_seed(0)

    def prompt(real):  # UMT5: real rows, then zero rows up to 512
        x = torch.zeros(1, 512, text_dim)
        x[:, :real] = torch.randn(1, real, text_dim, generator=g)
        return x

    positive = [prompt(r) for r in (20, 35, 60)]
    negative = [prompt(8)] * 3
    text = fold_story_text(positive, negative, num_tokens=10 ** 6)
    assert text.segment_length == 61 and max(text.positive_zero_rows) == 492
    kv = _text_to_kv(heads * d, text_dim)
    k_f, v_f = kv(torch.cat([text.positive, text.negative]), dtype)
    k_u, v_u = kv(torch.cat([pad_segments(positive, 512), pad_segments(negative, 512)]), dtype)
    bias = StoryKeyBias(key_bias(text.positive, text.positive_zero_rows),
                        key_bias(text.negative, text.negative_zero_rows)).for_batch([0, 1], 2, "cpu", dtype)
    frames, p = [0, 1, 2, 2], 64
    q = (torch.randn(2, len(frames) * p, heads * d, generator=g) * 2).to(dtype)
    with torch.no_grad():
        folded = per_shot_cross_attention(q, k_f, v_f, heads, frames, p, 3, key_bias=bias)
        unfolded = per_shot_cross_attention(q, k_u, v_u, heads, frames, p, 3)
        exact = dense_masked_cross_attention(q.double(), k_u.double(), v_u.double(), heads, frames, p, 3)
    assert folded.dtype == unfolded.dtype == dtype
    vmax = v_u.double().abs().max()
    diff = (folded.double() - unfolded.double()).abs().max()
    assert diff <= 2 * ULP[dtype] * vmax, f"folded vs unfolded: {float(diff / vmax / ULP[dtype]):.2f} ulp of max|v|"
    err_folded = (folded.double() - exact).abs().max()
    err_unfolded = (unfolded.double() - exact).abs().max()
    assert err_folded <= err_unfolded, (float(err_folded), float(err_unfolded))


# -- in ComfyUI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seqs(N, tiny_vae, tiny_clip):
    return stories(N, tiny_vae, tiny_clip)


@pytest.fixture(scope="module")
def sampling(pack_module):
    return pack_module("comfy_bridge.sampling")


@pytest.fixture(scope="module")
def dit(tiny_models_dir):
    """dit(precision name or Precision) -> a ModelPatcher of its own, loaded once per module."""
    cache = {}

    def get(p):
        p = PRECISIONS[p] if isinstance(p, str) else p
        if p not in cache:
            cache[p] = load_dit(tiny_models_dir, p)
        return cache[p]
    yield get
    import comfy.model_management

    comfy.model_management.unload_all_models()   # nothing of these models stays loaded for other modules


FP32 = PRECISIONS["fp32"]


def _racl(N, model):
    (m,) = N.DreamShotRACLAttentionPatch(model=model, strength=1.0, start_percent=0.0, end_percent=1.0,
                                         layers="all", auto_regions=True)
    return m


def _spied(model):
    """A clone whose DiT calls are recorded: (x, per-frame timesteps) as the DiT receives them."""
    import comfy.patcher_extension as pe

    calls = []

    def spy(executor, x, timestep, *args, **kwargs):
        calls.append((x.detach().clone(), timestep.detach().clone()))
        return executor(x, timestep, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-precision", spy)
    return m, calls


# Each mode as the user runs it: R2S with the RACL Attention Patch (boxes in shot 1, auto regions in
# the others) and reference CFG 2; S2S and edit with reference CFG 2; T2S (ref_cfg is ignored).
MODES = {"r2s": dict(racl=True, ref_cfg=2.0), "t2s": dict(racl=False, ref_cfg=2.0),
         "s2s": dict(racl=False, ref_cfg=2.0), "edit": dict(racl=True, ref_cfg=2.0)}


def _run_mode(N, sampling, model, seq, mode):
    spec = MODES[mode]
    model = _racl(N, model) if spec["racl"] else model
    with torch.inference_mode():
        return sampling.sample_story(model, seq, SEED, STEPS, 2.0, "euler", "simple", ref_cfg=spec["ref_cfg"])


@pytest.fixture(scope="module")
def fp32_out(N, sampling, dit, seqs):
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = _run_mode(N, sampling, dit(FP32), seqs[mode], mode)
        return cache[mode]
    return get


# Relative L2 error of the generated frames to the float32 run: each rounding source's unit roundoff
# u (half the spacing of the numbers at 1.0) times how much the tiny DiT (2 blocks), 2 Euler steps and
# CFG 2 grow it, the sources adding in quadrature (independent errors):
# - activations rounded to the compute dtype after every op, G_ACTIVATIONS = 9: some 50 roundings
#   along the DiT's path (2 blocks of about 24 ops: norms, modulation, q/k/v/o, attention, FFN,
#   residual adds), each a relative error of rms u/sqrt(3), add up like a random walk: sqrt(50/3) = 4;
#   CFG 2 returns 2 cond - uncond of two passes that round independently: x sqrt(2^2 + 1^2) = 2.2.
#   Measured 3.5 u (bf16), 4.1 u (fp16).
# - weights rounded once (fp16/bf16/fp8 storage), G_WEIGHTS = 1.6. Each linear's output errs by about
#   u/sqrt(3) relative (its rounding errors sum like its terms); the blocks add into the residual
#   stream, which dilutes them: measured 0.45 u for fp8 (fp8_e4m3fn_cpu, float32 compute). This is a
#   fixed function of the checkpoint's values (IEEE casts): kernels only add float32 rounding, so it
#   is the same on any CPU (0.0266-0.0283 under AVX-512, AVX2, no SIMD, 1 and 3 threads); 1.6 keeps 3.5x.
# - fp8 matmuls (fp8_e4m3fn_fast) also round the activations entering each linear to fp8: as the
#   weights do, but per pass, so CFG grows it like the activations: G_FP8_INPUTS = 2.2 x 1.6 = 3.6.
#   Measured 1.3 u (from 0.085 in all, fp8 weights' 0.028 taken out in quadrature).
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8,
                 torch.float8_e4m3fn: 2.0 ** -4}
G_ACTIVATIONS, G_WEIGHTS, G_FP8_INPUTS = 9.0, 1.6, 3.6


def tolerance(activations: torch.dtype, weights: torch.dtype, fp8_matmul: bool) -> float:
    """fp16 0.0045, bf16 0.036, fp8 weights 0.10 (0.106 with bf16 activations), fp8 matmuls 0.246."""
    terms = [G_ACTIVATIONS * UNIT_ROUNDOFF[activations], G_WEIGHTS * UNIT_ROUNDOFF[weights],
             G_FP8_INPUTS * UNIT_ROUNDOFF[torch.float8_e4m3fn] * fp8_matmul]
    return sum(t * t for t in terms) ** 0.5


@pytest.mark.comfyui
@pytest.mark.parametrize("name", [name for name in PRECISIONS if name != "fp32"])
def test_every_mode_runs_in_half_precision_and_fp8(N, sampling, dit, seqs, fp32_out, name, monkeypatch):
    """R2S (+RACL, +reference CFG), T2S, S2S and edit at each precision: the DiT really runs in the
    precision asked for, sees clean frames exactly clean (cast to its dtype) at t = 0, the output is
    finite, kept frames come back bit-exact, and the generated frames stay near the float32 run."""
    precision = PRECISIONS[name]
    model = dit(precision)
    want_dtype = compute_dtype(model)
    assert want_dtype == precision.activations
    weights = model.model.diffusion_model.blocks[0].self_attn.q.weight.dtype
    assert (weights == torch.float8_e4m3fn) == name.startswith("fp8")
    tol = tolerance(want_dtype, weights, fp8_matmul=name.endswith("_fast"))
    scaled_mm = []
    if name == "fp8_e4m3fn_fast":
        real = torch._scaled_mm

        def counted(*args, **kwargs):
            scaled_mm.append(args[0].shape)
            return real(*args, **kwargs)
        monkeypatch.setattr(torch, "_scaled_mm", counted)
        # ComfyUI 0.3.64 leaves the DiT in training mode, and fp8_ops.Linear calls its fp8 matmul only
        # when not self.training: there fp8_e4m3fn_fast casts the weights exactly like fp8_e4m3fn.
        q = model.model.diffusion_model.blocks[0].self_attn.q
        assert model.model.diffusion_model.training
        with torch.inference_mode():
            q(torch.ones(1, 4, q.in_features, dtype=want_dtype))
        assert scaled_mm == []
        # Run the fp8 matmul anyway (eval mode, as a ComfyUI that uses it would): DreamShot's path on it.
        model.model.diffusion_model.eval()
    for mode, seq in seqs.items():
        spied, calls = _spied(model)
        out = _run_mode(N, sampling, spied, seq, mode)
        keep = kept_frames(seq)
        gen = [f for f in range(seq.layout.num_latent_frames) if f not in keep]
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), mode
        assert torch.equal(out[:, :, keep], seq.latent[:, :, keep]), mode
        assert calls and all(x.dtype == want_dtype for x, _ in calls), mode
        clean = model.model.process_latent_in(seq.latent[:, :, keep])
        for x, t in calls:
            assert torch.all(t[:, keep] == 0) and torch.all(t[:, gen] > 0), mode
            assert torch.equal(x[:, :, keep], clean.expand(x.shape[0], -1, -1, -1, -1).to(x)), mode
        ref = fp32_out(mode)[:, :, gen]
        rel = float((out[:, :, gen] - ref).norm() / ref.norm())
        print(f"{name} {mode}: relative L2 error to float32 {rel:.4f} (bound {tol:.4f})")
        assert rel < tol, f"{mode}: relative error to float32 {rel:.4f}, bound {tol:.4f}"
    if name == "fp8_e4m3fn_fast":
        assert scaled_mm, "ComfyUI's fp8 matmul path did not run"


@pytest.mark.comfyui
def test_sampler_node_in_chunks_with_racl_and_reference_cfg_bf16(N, dit, seqs):
    """The node end to end in bf16: chunks of 2 shots with 1 context shot, reference CFG 2, RACL patch:
    finite keyframes; every chunk samples with the reference pass."""
    model, calls = _spied(_racl(N, dit("bf16")))
    images, latent = N.DreamShotSampler(model=model, sequence=seqs["r2s"], seed=SEED, steps=STEPS, cfg=2.0,
                                        sampler_name="euler", scheduler="simple", ref_cfg=2.0, chunk_size=2,
                                        context_shots=1)
    assert images.shape == (3, 32, 32, 3) and torch.isfinite(images).all()
    assert latent["samples"].shape == (1, 16, 3, 4, 4) and torch.isfinite(latent["samples"]).all()
    assert len(calls) == 2 * STEPS * 2 and all(x.dtype == torch.bfloat16 for x, _ in calls)


@pytest.mark.comfyui
@pytest.mark.parametrize("name", ["fp16", "fp8_e4m3fn"])
def test_context_chunk_with_racl_and_reference_cfg(N, sampling, dit, seqs, name):
    """A later chunk (shot 2 given clean as context, shot 3 generated with Theo's reference, reference
    CFG 2, RACL patch) at fp16 and fp8: the first chunk is resumed as done, so only this chunk runs
    (each chunk decodes its keyframes: the bf16 test above runs both)."""
    done = {j: torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(20 + j)) for j in (0, 1)}
    chunks = []
    model, calls = _spied(_racl(N, dit(name)))
    with torch.inference_mode():
        images, latent = sampling.sample_long_story(model, seqs["r2s"], SEED, STEPS, 2.0, "euler", "simple",
                                                    ref_cfg=2.0, chunk_size=2, context_shots=1, done=done,
                                                    on_chunk=chunks.append)
    (chunk,) = chunks
    assert chunk.layout.clean_shots == (True, False) and chunk.layout.num_refs == 1
    assert images.shape == (3, 32, 32, 3) and torch.isfinite(images).all() and latent is None
    assert torch.equal(images[0], done[0]) and torch.equal(images[1], done[1])
    assert len(calls) == STEPS * 2 and all(x.dtype == compute_dtype(dit(name)) for x, _ in calls)
    keep = kept_frames(chunk)
    for x, t in calls:
        assert torch.all(t[:, keep] == 0)


@pytest.mark.comfyui
def test_folded_text_in_bf16_sampling_is_within_bf16_error(N, sampling, dit, seqs, fp32_out, pack_module):
    """Every mode with bf16 activations, the folded story text vs the 512-row padded text, errors as
    relative L2 over the generated frames of all four modes together (each side is bf16 rounding noise:
    pooling four stories steadies the ratios below; per mode folded / padded scattered 0.93-1.08 over
    AVX-512, AVX2 and no-SIMD kernels, pooled 0.99-1.03).

    - folded vs padded <= 1.5 x bf16's own error (padded bf16 vs float32): two runs that each carry an
      independent error of size E differ by about sqrt(2) E = 1.41 E; sharing most of their roundings,
      they differ by less. Measured 0.93-0.97 E.
    - the folded run is no further from float32 than the padded one, x 1.25: an error of its own s,
      independent of bf16's, would give sqrt(E^2 + s^2); 1.25 E admits s <= 0.75 E, i.e. folding may
      not add an error of bf16's size. Measured 0.99-1.03."""
    unfold_story = pack_module("story").unfold_story
    sq = {"folded": 0.0, "unfolded": 0.0, "between": 0.0, "ref": 0.0}
    for mode, seq in seqs.items():
        unfolded = unfold_story(seq)
        assert unfolded.segment_length == 512 and seq.segment_length < 512, mode
        gen = [f for f in range(seq.layout.num_latent_frames) if f not in kept_frames(seq)]
        folded_bf16 = _run_mode(N, sampling, dit("bf16"), seq, mode)[:, :, gen]
        unfolded_bf16 = _run_mode(N, sampling, dit("bf16"), unfolded, mode)[:, :, gen]
        fp32 = fp32_out(mode)[:, :, gen]
        sq["folded"] += float((folded_bf16 - fp32).square().sum())
        sq["unfolded"] += float((unfolded_bf16 - fp32).square().sum())
        sq["between"] += float((folded_bf16 - unfolded_bf16).square().sum())
        sq["ref"] += float(fp32.square().sum())
        print(f"{mode}: bf16 vs float32 folded / padded {float((folded_bf16 - fp32).norm() / (unfolded_bf16 - fp32).norm()):.3f}")
    fold, err_folded, err_unfolded = ((sq[k] / sq["ref"]) ** 0.5 for k in ("between", "folded", "unfolded"))
    print(f"folded vs padded {fold:.4f}; bf16 vs float32: folded {err_folded:.4f}, padded {err_unfolded:.4f}")
    assert 0 < fold <= 1.5 * err_unfolded
    assert err_folded <= 1.25 * err_unfolded


@pytest.mark.comfyui
@pytest.mark.parametrize("name", ["fp32", "bf16", "fp8_e4m3fn"])
def test_modulation_diffs_keep_their_precision(dit, name, tmp_path):
    """A LoRA's modulation diffs (object patches, dreamshot/comfy_bridge/lora.py) on each weight dtype:
    float32 and bf16 tables keep their dtype (value rounded as before), an fp8 table becomes float32
    so that a small diff is not rounded away (with the old fp8 rounding ~26% of these entries stayed
    unchanged)."""
    import safetensors.torch

    from dreamshot.comfy_bridge.lora import apply_lora

    base = dit(name)
    keys = [f"diffusion_model.blocks.{i}.modulation" for i in range(2)] + ["diffusion_model.head.modulation"]
    g = torch.Generator().manual_seed(0)
    diffs = {k: torch.randn(base.get_model_object(k).shape, generator=g) * 0.01 for k in keys}
    path = tmp_path / "modulation.safetensors"
    safetensors.torch.save_file({f"{k}.diff": v for k, v in diffs.items()}, str(path))
    m = apply_lora(base, str(path), 0.5)
    for k in keys:
        current = base.get_model_object(k)
        patched = m.object_patches[k]
        exact = current.detach().float() + 0.5 * diffs[k]
        if name == "fp8_e4m3fn":
            assert current.dtype == torch.float8_e4m3fn and patched.dtype == torch.float32
            assert torch.equal(patched, exact)
            assert torch.count_nonzero(exact.to(current.dtype).float() == current.float()) > 0   # what fp8 lost
        else:
            assert patched.dtype == current.dtype and torch.equal(patched, exact.to(current.dtype))
