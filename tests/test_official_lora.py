"""The released DreamShot LoRAs (DiffSynth/PEFT key naming) and a LightX2V-style distillation LoRA
on ComfyUI's Wan2.1: pure key conversion, then the node in real ComfyUI with synthetic files that
have the released key names and shapes scaled to the tiny DiT (dim 256, ffn 512, 2 blocks)."""

from __future__ import annotations

import pytest
import torch

from support.official_loras import BLOCKS, DIM, RANK, TARGETS, distill_lora, released_lora

from dreamshot.lora_keys import comfy_key, diffsynth_to_comfy

# -- pure key conversion -------------------------------------------------------------------------
@pytest.mark.parametrize("src, want", [
    ("blocks.3.self_attn.q.lora_A.default.weight", "diffusion_model.blocks.3.self_attn.q.lora_A.weight"),
    ("blocks.3.self_attn.q.lora_B.default.weight", "diffusion_model.blocks.3.self_attn.q.lora_B.weight"),
    ("blocks.0.cross_attn.o.lora_A.weight", "diffusion_model.blocks.0.cross_attn.o.lora_A.weight"),
    ("dit.blocks.1.ffn.0.lora_B.default.weight", "diffusion_model.blocks.1.ffn.0.lora_B.weight"),
    ("pipe.dit.blocks.1.ffn.2.lora_A.weight", "diffusion_model.blocks.1.ffn.2.lora_A.weight"),
    ("model.blocks.0.self_attn.k.lora_down.weight", "diffusion_model.blocks.0.self_attn.k.lora_A.weight"),
    ("diffusion_model.blocks.0.self_attn.k.lora_up.weight", "diffusion_model.blocks.0.self_attn.k.lora_B.weight"),
    ("model.diffusion_model.blocks.0.self_attn.k.alpha", "diffusion_model.blocks.0.self_attn.k.alpha"),
    ("diffusion_model.blocks.0.norm3.diff", "diffusion_model.blocks.0.norm3.diff"),
    ("diffusion_model.blocks.0.self_attn.q.diff_b", "diffusion_model.blocks.0.self_attn.q.diff_b"),
    ("head.head.lora_A.default.weight", "diffusion_model.head.head.lora_A.weight"),
    ("text_embedding.0.lora_B.weight", "diffusion_model.text_embedding.0.lora_B.weight"),
    ("diffusion_model.blocks.0.diff_m", "diffusion_model.blocks.0.modulation.diff"),
    ("head.modulation.diff", "diffusion_model.head.modulation.diff"),
])
def test_comfy_key(src, want):
    assert comfy_key(src) == want


@pytest.mark.parametrize("src", [
    "blocks.0.self_attn.q.weight",                 # a full weight, not a LoRA tensor
    "unet.down.0.lora_A.weight",                   # not a Wan module
    "lora_unet_blocks_0_self_attn_q.lora_up.weight",  # kohya underscore names: left to ComfyUI
    "diffusion_model.diff_m",                      # a modulation diff of no block
])
def test_unknown_keys_are_not_converted(src):
    assert comfy_key(src) is None
    assert diffsynth_to_comfy({src: 1}) == {src: 1}


def test_conversion_keeps_values_and_refuses_collisions():
    sd = {"blocks.0.self_attn.q.lora_A.default.weight": torch.ones(1), "other": torch.zeros(1)}
    out = diffsynth_to_comfy(sd)
    assert set(out) == {"diffusion_model.blocks.0.self_attn.q.lora_A.weight", "other"}
    assert out["other"] is sd["other"]
    with pytest.raises(ValueError, match="both map to"):
        diffsynth_to_comfy({"blocks.0.ffn.0.lora_A.weight": 1, "dit.blocks.0.ffn.0.lora_A.default.weight": 2})


# -- synthetic released-format files ---------------------------------------------------------------
EXPECTED_WEIGHTS = {f"diffusion_model.blocks.{i}.{mod}.weight" for i in range(BLOCKS) for mod in TARGETS}


@pytest.fixture(scope="module")
def lora_dirs(comfy_headless, tmp_path_factory):
    import folder_paths
    import safetensors.torch

    ds = tmp_path_factory.mktemp("official_dreamshot")
    lo = tmp_path_factory.mktemp("official_loras")
    folder_paths.add_model_folder_path("dreamshot", str(ds))
    folder_paths.add_model_folder_path("loras", str(lo))
    files = {"sft": released_lora(1), "rl": released_lora(2), "distill": distill_lora(3)}
    safetensors.torch.save_file(files["sft"], str(ds / "sft_lora_model.safetensors"))
    safetensors.torch.save_file(files["rl"], str(ds / "rl_lora_model.safetensors"))
    safetensors.torch.save_file(files["distill"], str(lo / "lightx2v_4step_test.safetensors"))
    bad = dict(files["sft"])
    bad["blocks.0.self_attn.q.lora_magic.weight"] = torch.zeros(1)
    bad["blocks.9.self_attn.q.lora_A.default.weight"] = torch.zeros(RANK, DIM)
    bad["blocks.9.self_attn.q.lora_B.default.weight"] = torch.zeros(DIM, RANK)
    safetensors.torch.save_file(bad, str(ds / "bad_official.safetensors"))
    return files


def _load(pack_nodes, model, **kw):
    with torch.inference_mode():
        return pack_nodes["LoadDreamShotModel"].execute(model=model, **kw).args[0]


@pytest.mark.comfyui
def test_released_lora_every_key_lands(pack_nodes, lora_dirs, tiny_wan_model):
    m = _load(pack_nodes, tiny_wan_model, lora_name="sft_lora_model.safetensors", strength=1.0)
    assert set(m.patches) == EXPECTED_WEIGHTS
    assert not tiny_wan_model.patches
    sd = lora_dirs["sft"]
    for weight_key, entries in m.patches.items():
        assert len(entries) == 1
        strength, adapter = entries[0][0], entries[0][1]
        bare = weight_key[len("diffusion_model."):-len(".weight")]
        assert strength == 1.0
        assert torch.equal(adapter.weights[0], sd[f"{bare}.lora_B.default.weight"])   # up
        assert torch.equal(adapter.weights[1], sd[f"{bare}.lora_A.default.weight"])   # down
        assert adapter.weights[2] is None                                            # no alpha: scale 1


@pytest.mark.comfyui
def test_sft_rl_and_distill_stack_in_order_with_their_strengths(pack_nodes, lora_dirs, tiny_wan_model):
    import comfy.lora

    m = _load(pack_nodes, tiny_wan_model, lora_name="sft_lora_model.safetensors", strength=1.0,
              lora_2_name="rl_lora_model.safetensors", lora_2_strength=0.5,
              distill_lora_name="lightx2v_4step_test.safetensors", distill_lora_strength=0.75)
    assert set(m.patches) == EXPECTED_WEIGHTS
    base = tiny_wan_model.model.state_dict()
    sft, rl, dis = lora_dirs["sft"], lora_dirs["rl"], lora_dirs["distill"]
    for weight_key, entries in m.patches.items():
        assert [e[0] for e in entries] == [1.0, 0.5, 0.75]
        bare = weight_key[len("diffusion_model."):-len(".weight")]
        w = base[weight_key].float().clone()
        merged = comfy.lora.calculate_weight(entries, w.clone(), weight_key)
        want = (w + sft[f"{bare}.lora_B.default.weight"] @ sft[f"{bare}.lora_A.default.weight"]
                + 0.5 * rl[f"{bare}.lora_B.default.weight"] @ rl[f"{bare}.lora_A.default.weight"]
                + 0.75 * (4.0 / 8) * dis[f"diffusion_model.{bare}.lora_up.weight"]
                @ dis[f"diffusion_model.{bare}.lora_down.weight"])
        torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-5)


@pytest.mark.comfyui
def test_unknown_released_keys_are_listed(pack_nodes, lora_dirs, tiny_wan_model):
    with pytest.raises(ValueError, match=r"bad_official\.safetensors: 3 key\(s\) match no weight.*"
                                         r"blocks\.0\.self_attn\.q\.lora_magic\.weight.*blocks\.9"):
        _load(pack_nodes, tiny_wan_model, lora_name="bad_official.safetensors", strength=1.0)


@pytest.mark.comfyui
def test_no_loras_returns_the_model_itself(pack_nodes, lora_dirs, tiny_wan_model):
    assert _load(pack_nodes, tiny_wan_model, lora_name="None", strength=1.0) is tiny_wan_model


@pytest.mark.comfyui
def test_distill_diffs_land_on_norms_biases_and_modulation(comfy_headless, tiny_models_dir, tmp_path):
    """Kijai/LightX2V-style extractions also carry full diffs: norm weights (.diff), biases (.diff_b) and
    each block's modulation table (blocks.N.diff_m). ComfyUI's stock loader logs diff_m as "not loaded"
    and its ModelPatcher never changes bare parameters; here every one of them must change the model."""
    import comfy.sd
    import safetensors.torch

    from dreamshot.comfy_bridge.lora import apply_lora

    # A model of its own: the session's shared one may be loaded (patched) by another test's patcher.
    tiny_wan_model = comfy.sd.load_diffusion_model(str(tiny_models_dir / "dit.safetensors"))
    base = {k: v.clone() for k, v in tiny_wan_model.model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    sd = {}
    for i in range(BLOCKS):
        sd[f"diffusion_model.blocks.{i}.diff_m"] = torch.randn(base[f"diffusion_model.blocks.{i}.modulation"].shape,
                                                              generator=g)
        sd[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.randn(DIM, generator=g)
        sd[f"diffusion_model.blocks.{i}.self_attn.q.diff_b"] = torch.randn(DIM, generator=g)
    sd["diffusion_model.head.modulation.diff"] = torch.randn(base["diffusion_model.head.modulation"].shape, generator=g)
    path = tmp_path / "distill_with_diffs.safetensors"
    safetensors.torch.save_file(sd, str(path))

    m = apply_lora(tiny_wan_model, str(path), 0.5, "distill")
    m2 = apply_lora(m, str(path), 1.0, "again")     # stacking: diffs add up on bare parameters too
    m2.patch_model(device_to=torch.device("cpu"))
    try:
        after = {k: v.clone() for k, v in m2.model.state_dict().items()}
    finally:
        m2.unpatch_model()
    want = {}
    for i in range(BLOCKS):
        want[f"diffusion_model.blocks.{i}.modulation"] = sd[f"diffusion_model.blocks.{i}.diff_m"]
        want[f"diffusion_model.blocks.{i}.norm3.weight"] = sd[f"diffusion_model.blocks.{i}.norm3.diff"]
        want[f"diffusion_model.blocks.{i}.self_attn.q.bias"] = sd[f"diffusion_model.blocks.{i}.self_attn.q.diff_b"]
    want["diffusion_model.head.modulation"] = sd["diffusion_model.head.modulation.diff"]
    for key, diff in want.items():
        torch.testing.assert_close(after[key].float(), base[key].float() + 1.5 * diff, rtol=1e-5, atol=1e-5,
                                   msg=key)
    untouched = [k for k in base if k not in want and not torch.equal(after[k], base[k])]
    assert untouched == []
    # The input models are not changed.
    assert not tiny_wan_model.object_patches and not tiny_wan_model.patches
    restored = tiny_wan_model.model.state_dict()
    assert torch.equal(restored["diffusion_model.blocks.0.modulation"], base["diffusion_model.blocks.0.modulation"])
