"""The trainer on Wan2.2: a LoRA for the TI2V-5B layout (cache with the Wan2.2 VAE, train the tiny 48-channel
DiT, the file loads in ComfyUI and predicts what the trainer predicted) and a LoRA for one Wan2.2-A14B expert
(sigmas drawn only from its range). The timestep restriction itself is checked without ComfyUI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_train_support import make_dataset, write_config

from dreamshot.train.objective import sample_sigmas, shift_sigma


# -- an expert's sigma range (no ComfyUI) -----------------------------------------------------------
@pytest.mark.parametrize("method", ["uniform", "logit_normal"])
@pytest.mark.parametrize("lo, hi", [(0.875, 1.0), (0.0, 0.875)])
def test_expert_range_draws_the_same_distribution_restricted(method, lo, hi):
    """Draws with a range follow the unrestricted distribution conditioned on the range (compared with
    rejection sampling from it, quantile by quantile), and never leave it."""
    shift = 5.0
    got = sample_sigmas(20000, torch.Generator().manual_seed(1), method, shift, 0.3, 1.2, sigma_min=1e-3,
                        sigma_range=(lo, hi))
    assert got.min() >= max(lo, 1e-3) and got.max() < hi + 1e-7 and got.dtype == torch.float32
    t = torch.rand(400000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if method == "logit_normal":
        t = torch.sigmoid(torch.randn(400000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
                          * 1.2 + 0.3)
    ref = shift_sigma(t, shift)
    ref = ref[(ref >= lo) & (ref < hi)].float()
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(torch.quantile(got, q), torch.quantile(ref, q), atol=0.01)


def test_no_range_is_the_draw_it_was():
    """Without an expert, sample_sigmas draws exactly what it did before (same generator use)."""
    for method in ("uniform", "logit_normal"):
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        a = sample_sigmas(64, g1, method, 3.0)
        t = torch.rand(64, generator=g2) if method == "uniform" else torch.sigmoid(torch.randn(64, generator=g2))
        assert torch.equal(a, shift_sigma(t, 3.0).clamp(1e-3, 1.0))


def test_expert_config_is_checked(tmp_path):
    from dreamshot.train.config import ConfigError, load_config

    path = tmp_path / "t.toml"
    path.write_text('[train]\nexpert = "high_noise"\n', encoding="utf-8")
    cfg = load_config(path)
    cfg.validate()
    assert cfg.train.sigma_range() == (0.875, 1.0)
    for override, needle in (("train.expert=middle", "train.expert = 'middle'"),
                             ("train.expert_boundary=1.5", "train.expert_boundary = 1.5")):
        with pytest.raises(ConfigError, match=needle):
            load_config(path, [override]).validate()


# -- ComfyUI -------------------------------------------------------------------------------------
def _config(models_dir, dataset, cache, out, dit, vae, **sections):
    from dreamshot.train.config import load_config

    path = write_config(out.parent / f"{out.name}.toml", models_dir, dataset, cache, out, **sections)
    cfg = load_config(path)
    cfg.model.dit, cfg.model.vae = str(models_dir / dit), str(models_dir / vae)
    return cfg


def _forward(patcher, x, sigma, context):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context,
                                         transformer_options=patcher.model_options.get("transformer_options", {})).float()


@pytest.mark.slow
def test_5b_cache_train_and_the_lora_loads_in_comfyui(wan22_models_dir, tmp_path, tiny_wan22_model):
    import safetensors

    from dreamshot.comfy_bridge.lora import apply_lora
    from dreamshot.train.cache import run_cache
    from dreamshot.train.trainer import Trainer

    dataset = make_dataset(tmp_path / "dataset")
    cfg = _config(wan22_models_dir, dataset, tmp_path / "cache", tmp_path / "out", "dit_wan22_5b.safetensors",
                  "vae_wan22.safetensors", train={"steps": 12}, optimizer={"lr": 3e-3}, checkpoint={"every": 0})
    cfg.validate(need=("model.vae", "model.text_encoder", "data.dataset", "data.cache_dir"))
    run_cache(cfg)
    with safetensors.safe_open(str(tmp_path / "cache" / "sequences" / "alley.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["dreamshot.sequence"])
        assert tuple(f.get_tensor("latent.shots").shape) == (48, 3, 4, 4)    # 64x64 / 16, one frame per shot
        assert tuple(f.get_tensor("latent.refs").shape) == (48, 2, 4, 4)
        assert tuple(f.get_tensor("mask.shot.1.1").shape) == (2, 2)          # the 5B's token grid
    assert (meta["geometry"]["latent_channels"], meta["geometry"]["spatial"]) == (48, 16)

    trainer = Trainer(cfg)
    trainer.setup()
    before = trainer.evaluate()
    result = trainer.train()
    after = trainer.evaluate()
    assert after < before, (before, after)
    with safetensors.safe_open(str(result.lora_path), framework="pt") as f:
        meta = f.metadata()
    assert meta["dreamshot.base_model"].startswith("wan2.2_ti2v_") and meta["ss_base_model_version"] == "wan2.2_ti2v"

    loaded = apply_lora(tiny_wan22_model, str(result.lora_path), 1.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 48, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.6])
    context = torch.randn(1, 40, 4096, generator=g)
    y_lora, y_base = _forward(loaded, x, sigma, context), _forward(tiny_wan22_model, x, sigma, context)
    y_trained = _forward(trainer.story_model.patcher, x, sigma, context)
    assert (y_lora - y_base).abs().max() > 1e-2 * y_base.abs().max()
    assert torch.allclose(y_lora, y_trained, atol=1e-4, rtol=1e-4), (y_lora - y_trained).abs().max()

    # a cache of the other backbone's latents is refused by name
    cfg21 = _config(wan22_models_dir, dataset, tmp_path / "cache", tmp_path / "out21", "dit.safetensors",
                    "vae_wan22.safetensors")
    with pytest.raises(ValueError, match=r"input 'model.dit': the story was packed with Wan2\.2's VAE \(48 latent "
                                         r"channels\) but this model samples 16-channel latents"):
        Trainer(cfg21).setup()


@pytest.mark.slow
def test_a14b_expert_lora_trains_only_its_sigmas(tiny_models_dir, wan22_models_dir, tmp_path):
    """A low-noise-expert LoRA: every drawn sigma is below the boundary, the file says which expert."""
    import safetensors

    from test_train_support import cached_dataset
    from dreamshot.train.trainer import Trainer

    data = cached_dataset(tiny_models_dir)      # the experts' VAE is Wan2.1's: the usual cache serves
    cache = tmp_path / "cache"
    shutil.copytree(data["cache"], cache)
    cfg = _config(tiny_models_dir, data["dataset"], cache, tmp_path / "out", "dit.safetensors", "vae.safetensors",
                  train={"steps": 2, "expert": "low_noise", "timestep_sampling": "logit_normal"},
                  checkpoint={"every": 0})
    cfg.model.dit = str(wan22_models_dir / "dit_low_noise.safetensors")
    trainer = Trainer(cfg)
    trainer.setup()
    sigmas = [float(trainer.prepare_batch(i % 2).sigma) for i in range(40)]
    assert max(sigmas) < 0.875 and min(sigmas) > 0
    result = trainer.train()
    with safetensors.safe_open(str(result.lora_path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["dreamshot.expert"]) == {"expert": "low_noise", "boundary": 0.875}
