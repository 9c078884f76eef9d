"""Low VRAM: every DreamShot patch gives the same storyboard when ComfyUI loads the DiT partially, and
none of them makes ComfyUI materialise a copy of the weights.

The patches: LoRA slots of Load DreamShot Model (LoRA A/B on attention and FFN, .diff / .diff_b on norms
and biases: ModelPatcher weight patches; blocks' and head's modulation diffs: object patches), the
clean-frame object patches (extra_conds, process_timestep, scale_latent_inpaint), the attention
override (per-shot cross-attention with the folded text's key bias, reference-CFG pass), and the RACL
role patch (per-block "double_block" replacements + role-masked self-attention).

How the partial load is forced on a CPU (tests/support/lowvram.py): ComfyUI's load_models_gpu never
loads partially on a CPU; only the byte budget it hands to ``LoadedModel.model_load`` is replaced;
ModelPatcher.partially_load, LowVramPatch and comfy.ops' casts then run as on a GPU. What the CPU
cannot show: the transfer itself (load and offload device are both the CPU) and the CUDA offload
streams; ComfyUI's own byte accounting (``model_loaded_weight_memory``) is what is asserted.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from support.lowvram import NOVRAM, load_state, weight_budget
from support.official_loras import BLOCKS, DIM, distill_lora, released_lora
from support.precision import PRECISIONS, load_dit, story

pytestmark = pytest.mark.comfyui

STEPS = 2
SEED = 5
FULL = None   # ComfyUI's own CPU load: everything resident


@contextlib.contextmanager
def _budget(nbytes):
    if nbytes is FULL:
        import comfy.model_management as mm

        mm.unload_all_models()
        try:
            yield
        finally:
            mm.unload_all_models()
    else:
        with weight_budget(nbytes):
            yield


@pytest.fixture(scope="module")
def lora_names(comfy_headless, tmp_path_factory):
    """DreamShot LoRAs in models/dreamshot and a distillation LoRA in models/loras:
    - full: the released key names (DiffSynth A/B on q, k, v, o, ffn.0, ffn.2 of both attentions)
      plus .diff on norm3, .diff_b on self_attn.q and the modulation diffs of every block and the head;
    - modulation: only modulation diffs (bare parameters: applied as object patches)."""
    import folder_paths
    import safetensors.torch

    d = tmp_path_factory.mktemp("lowvram_loras")
    folder_paths.add_model_folder_path("dreamshot", str(d))
    folder_paths.add_model_folder_path("loras", str(d))
    g = torch.Generator().manual_seed(3)
    modulation = {f"blocks.{i}.diff_m": torch.randn(1, 6, DIM, generator=g) * 0.1 for i in range(BLOCKS)}
    modulation["head.modulation.diff"] = torch.randn(1, 2, DIM, generator=g) * 0.1
    full = dict(released_lora(1), **modulation)
    for i in range(BLOCKS):
        full[f"blocks.{i}.norm3.diff"] = torch.randn(DIM, generator=g) * 0.1
        full[f"blocks.{i}.self_attn.q.diff_b"] = torch.randn(DIM, generator=g) * 0.1
    names = {"full": "lowvram_full.safetensors", "modulation": "lowvram_modulation.safetensors",
             "distill": "lowvram_distill.safetensors"}
    safetensors.torch.save_file(full, str(d / names["full"]))
    safetensors.torch.save_file({k: v * 0.5 for k, v in modulation.items()}, str(d / names["modulation"]))
    safetensors.torch.save_file(distill_lora(4), str(d / names["distill"]))
    return names


@pytest.fixture(scope="module")
def dit(tiny_models_dir):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_dit(tiny_models_dir, PRECISIONS[name])
        return cache[name]
    yield get
    import comfy.model_management

    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def sampling(pack_module):
    return pack_module("comfy_bridge.sampling")


def _dreamshot(N, base, lora_names, module_loras=True):
    """Load DreamShot Model with all three LoRA slots, then the RACL Attention Patch."""
    if module_loras:
        (m,) = N.LoadDreamShotModel(model=base, lora_name=lora_names["full"], strength=1.0,
                                    lora_2_name=lora_names["modulation"], lora_2_strength=1.0,
                                    distill_lora_name=lora_names["distill"], distill_lora_strength=1.0)
    else:
        (m,) = N.LoadDreamShotModel(model=base, lora_name=lora_names["modulation"], strength=1.0)
    (m,) = N.DreamShotRACLAttentionPatch(model=m, strength=1.0, start_percent=0.0, end_percent=1.0, layers="all",
                                         auto_regions=True)
    return m


def _recorded(model):
    """A clone that records ComfyUI's load state (support.lowvram.load_state) at every DiT call."""
    import comfy.patcher_extension as pe

    states = []
    m = model.clone()

    def spy(executor, *args, **kwargs):
        states.append(load_state(m))
        return executor(*args, **kwargs)

    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "dreamshot-test-lowvram", spy)
    return m, states


def _sample(sampling, model, seq):
    with torch.inference_mode():
        return sampling.sample_story(model, seq, SEED, STEPS, 2.0, "euler", "simple", ref_cfg=2.0)


def _stock(model, seq):
    """ComfyUI's own sampling (comfy.sample.sample, as KSampler) of the packed latent, no DreamShot patch."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(seq.latent, SEED)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, STEPS, 2.0, "euler", "simple", [[seq.positive, {}]],
                                   [[seq.negative, {}]], seq.latent, seed=SEED, disable_pbar=True)


@pytest.fixture(scope="module")
def seqs(N, tiny_vae, tiny_clip):
    return {mode: story(N, tiny_vae, tiny_clip, mode) for mode in ("r2s", "edit")}


def test_every_patch_same_output_when_loaded_partially_fp32(N, sampling, dit, seqs, lora_names):
    """float32 weights: R2S with every patch gives bit-identical latents fully loaded, half loaded (the
    other half streamed, LoRA applied on the fly) and with nothing resident, and so does edit (kept
    shots) half loaded; sampling again with the model already partially loaded (ComfyUI's reload path,
    as for the next chunk) too."""
    base = dit("fp32")
    half = base.model_size() // 2
    model, states = _recorded(_dreamshot(N, base, lora_names))
    out = {}
    for budget in (FULL, half, NOVRAM):
        states.clear()
        with _budget(budget):
            out[budget] = {mode: _sample(sampling, model, seq) for mode, seq in seqs.items()
                           if mode == "r2s" or budget != NOVRAM}
            if budget == half:
                again = _sample(sampling, model, seqs["r2s"])
        state = states[0]
        if budget is FULL:
            assert not state["lowvram"] and state["resident_bytes"] == state["model_bytes"]
        else:
            assert state["lowvram"] and state["resident_bytes"] <= budget and state["streamed_modules"] > 0
            assert state["lowvram_patches"] > 0   # LoRA patches applied to streamed weights on the fly
        if budget == NOVRAM:
            assert state["resident_bytes"] == 0 and state["backup_bytes"] == 0
    assert torch.equal(again, out[half]["r2s"])
    for budget in (half, NOVRAM):
        for mode in out[budget]:
            assert torch.equal(out[budget][mode], out[FULL][mode]), (budget, mode)


def test_fp8_patches_same_output_when_loaded_partially(N, sampling, dit, seqs, lora_names):
    """fp8_e4m3fn weights with fp16 compute (UNETLoader fp8 on a GPU): every DreamShot patch but the
    LoRA's module patches (modulation diffs as object patches, clean frames, attention override,
    reference CFG, RACL) gives bit-identical latents fully, half and not at all resident.

    With LoRA patches on fp8 module weights the outputs differ, and ComfyUI's own sampler differs
    just as much: a resident weight is patched in float32 and stochastically rounded back to fp8,
    a streamed one is patched after its cast to the compute dtype (comfy/model_patcher.py
    patch_weight_to_device vs LowVramPatch)."""
    base = dit("fp8_e4m3fn")
    assert base.model.manual_cast_dtype == torch.float16 and not base.force_cast_weights
    half = base.model_size() // 2
    seq = seqs["r2s"]
    plain = _dreamshot(N, base, lora_names, module_loras=False)
    lora = _dreamshot(N, base, lora_names)
    out, with_lora, stock = {}, {}, {}
    for budget in (FULL, half, NOVRAM):
        with _budget(budget):
            out[budget] = _sample(sampling, plain, seq)
        if budget != half:
            with _budget(budget):
                with_lora[budget] = _sample(sampling, lora, seq)
            with _budget(budget):
                stock[budget] = _stock(lora, seq)
    for budget in (half, NOVRAM):
        assert torch.equal(out[budget], out[FULL]), budget
    k = seq.layout.num_refs
    ours = float((with_lora[NOVRAM] - with_lora[FULL])[:, :, k:].abs().max())
    comfy = float((stock[NOVRAM] - stock[FULL])[:, :, k:].abs().max())
    print(f"fp8 LoRA, streamed vs resident: DreamShot {ours:.3e}, ComfyUI's own sampler {comfy:.3e}")
    assert torch.isfinite(with_lora[NOVRAM]).all() and comfy > 0
    assert ours <= 3 * comfy


def test_no_patch_materialises_a_copy_of_the_weights(N, sampling, dit, seqs, lora_names, monkeypatch):
    """Half loaded, DreamShot sampling leaves ComfyUI's load exactly as ComfyUI's own sampler of the same
    LoRA'd model does: the same bytes resident, the same weights backed up to patch them in place, the
    same LoRA patches applied on the fly. The only tensors DreamShot adds are the modulation diffs'
    object patches (the size of the modulation tables); an on-the-fly LoRA patch materialises one
    module's weight at a time."""
    import comfy.model_patcher as mp

    base = dit("fp32")
    half = base.model_size() // 2
    seq = seqs["r2s"]
    ours, ours_states = _recorded(_dreamshot(N, base, lora_names))
    (lora_only,) = N.LoadDreamShotModel(model=base, lora_name=lora_names["full"], strength=1.0,
                                        lora_2_name=lora_names["modulation"], lora_2_strength=1.0,
                                        distill_lora_name=lora_names["distill"], distill_lora_strength=1.0)
    stock, stock_states = _recorded(lora_only)
    biggest = []
    real_call = mp.LowVramPatch.__call__

    def call(self, weight):
        out = real_call(self, weight)
        biggest.append(out.numel() * out.element_size())
        return out
    monkeypatch.setattr(mp.LowVramPatch, "__call__", call)
    with _budget(half):
        _sample(sampling, ours, seq)
    with _budget(half):
        _stock(stock, seq)
    a, b = ours_states[0], stock_states[0]
    for key in ("resident_bytes", "backup_keys", "backup_bytes", "streamed_modules", "lowvram_patches"):
        assert a[key] == b[key], key
    assert a["resident_bytes"] <= half and a["backup_bytes"] <= a["resident_bytes"]
    mod = [p for n, p in base.model.named_parameters() if n.endswith("modulation")]
    assert a["object_patch_bytes"] == sum(p.numel() * p.element_size() for p in mod)
    assert a["object_patch_bytes"] < 0.005 * a["model_bytes"]
    largest_module = max(m.weight.numel() * m.weight.element_size() for m in base.model.modules()
                         if isinstance(getattr(m, "weight", None), torch.Tensor))
    assert biggest and max(biggest) <= largest_module


def test_counted_figures_in_gpu_recipes_are_comfyuis(comfy_headless):
    """docs/gpu-recipes.md's "count" figures: ComfyUI's own Wan2.1 14B / 1.3B and UMT5-XXL modules, built
    on the meta device (no memory), have those parameter counts, modulation tables and largest weights."""
    from pathlib import Path

    import comfy.ldm.wan.model as wan
    import comfy.ops

    doc = (Path(__file__).resolve().parents[1] / "docs" / "gpu-recipes.md").read_text()
    for dim, ffn, layers, total in ((5120, 13824, 40, "14,288,491,584"), (1536, 8960, 30, "1,418,996,800")):
        m = wan.WanModel(model_type="t2v", dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers,
                         text_dim=4096, in_dim=16, out_dim=16, device="meta", dtype=torch.float16,
                         operations=comfy.ops.disable_weight_init)
        assert f"{sum(p.numel() for p in m.parameters()):,}" == total and total in doc
        if dim == 5120:
            modulation = sum(p.numel() for n, p in m.named_parameters() if n.endswith("modulation"))
            assert modulation == 1_239_040 and "1.24M values" in doc
            largest = max((mod.weight.numel(), n) for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear))
            assert largest == (157_286_400, "time_projection.1") and "`time_projection.1`, 157M values" in doc
            assert m.blocks[0].ffn[0].weight.numel() == 70_778_880 and "70.8M values" in doc
    import json

    import comfy.text_encoders.t5 as t5

    config = json.loads((comfy_headless / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    umt5 = t5.T5(config, dtype=torch.float16, device="meta", operations=comfy.ops.manual_cast)
    assert f"{sum(p.numel() for p in umt5.parameters()):,}" == "5,680,910,336" and "5,680,910,336" in doc
