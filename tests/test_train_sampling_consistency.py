"""Train/sample consistency: after a few `dreamshot.train` steps, the prediction ComfyUI's sampling
path makes (dreamshot.comfy_bridge.sampling.sample_story: DreamShot patches, denoise mask, the
trained file loaded with apply_lora, KSamplerX0Inpaint) equals the trainer's StoryModel.predict
for the same noisy latent, sigma, context and clean frames, in every mode. A mismatch here would
mean users train one model and sample another."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_train_support import cached_dataset, write_config

pytestmark = pytest.mark.comfyui

MODULES = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")
SIGMA = 0.37   # off the sampler's own sigma grid, so the probe's sigma is what the model sees


@pytest.fixture(scope="module")
def trained(tiny_models_dir, tmp_path_factory):
    """A short run that moves LoRA and full-block weights (high lr), then a fresh trainer holding them."""
    import safetensors.torch

    from dreamshot.train.config import load_config
    from dreamshot.train.trainer import Trainer

    data = cached_dataset(tiny_models_dir)
    tmp = tmp_path_factory.mktemp("consistency")
    cfg = load_config(write_config(tmp / "train.toml", data["models"], data["dataset"], data["cache"], tmp / "out",
                                   train={"steps": 3, "gradient_checkpointing": False, "timestep_shift": 3.0},
                                   lora={"full_finetune_blocks": [1], "full_finetune_modules": list(MODULES)}, optimizer={"lr": 2e-2},
                                   checkpoint={"every": 0}))
    result = Trainer(cfg).train()
    trainer = Trainer(cfg)
    trainer.load_models()
    trainer.load_data()
    saved = safetensors.torch.load_file(str(result.lora_path))
    for name in MODULES:   # lora.full_finetune_modules: trained and saved as ComfyUI .diff patches
        diffs = [k for k in saved if k.startswith(f"diffusion_model.{name}.") and k.endswith(".diff")]
        assert diffs and all(saved[k].abs().max() > 0 for k in diffs), name
    trainer.adapters.load_comfy_state_dict(saved)
    return trainer, result.lora_path


def test_full_finetune_modules_are_checked(tmp_path):
    from dreamshot.train.config import ConfigError, load_config

    path = tmp_path / "bad.toml"
    path.write_text('[lora]\nfull_finetune_modules = ["head", "blocks"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"full_finetune_modules \['blocks'\].*patch_embedding"):
        load_config(path).validate()


def _unseeded_shots(layout):
    """Shots with no seed of their own: every shot's noise is derived from the sampler seed."""
    return [SimpleNamespace(seed=None)] * layout.num_shots


def test_masked_text_padding_same_in_training_and_sampling(trained):
    """data.mask_text_padding (the proof's setting) and wan_patches.mask_text_padding on the sampled
    model give the same prediction, and a different one from attending to the padding."""
    from dataclasses import replace

    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from dreamshot.comfy_bridge import training as bridge
    from dreamshot.comfy_bridge.lora import apply_lora
    from dreamshot.comfy_bridge.wan_patches import mask_text_padding
    from dreamshot.train.objective import noise_frames

    trainer, lora_path = trained
    index = next(i for i, modes in enumerate(trainer.feasible) if "reference_to_shot" in modes)
    sigma = torch.tensor([SIGMA])
    data = trainer.cfg.data
    try:
        trainer.cfg.data = replace(data, mask_text_padding=True)
        batch = trainer.prepare_batch(index, torch.Generator().manual_seed(5), "reference_to_shot")
    finally:
        trainer.cfg.data = data
    assert "key_bias" in batch.story
    assert (batch.sample.context[0] == 0).all(-1).any()     # there is padding to hide
    x_t = noise_frames(batch.x0, batch.noise, sigma, batch.sample.noised)
    unmasked = dict(batch.story)
    del unmasked["key_bias"]
    with torch.no_grad():
        want, _ = trainer.story_model.predict(x_t, sigma, batch.sample.context, batch.mask, batch.story, None)
        attends, _ = trainer.story_model.predict(x_t, sigma, batch.sample.context, batch.mask, unmasked, None)
    model = apply_lora(ModelSamplingSD3().patch(bridge.load_dit(trainer.cfg.model.dit, "fp32"), 3.0)[0],
                       str(lora_path), 1.0)
    got = _sampler_prediction(mask_text_padding(model), batch.sample, batch.mask, x_t, SIGMA, 11)
    noised = batch.sample.noised
    torch.testing.assert_close(got["denoised"][:, :, noised], want[:, :, noised], rtol=1e-5, atol=1e-5)
    assert (attends[:, :, noised] - want[:, :, noised]).abs().max() > 1e-4


def _sampler_prediction(model, sample, mask, x_t, sigma: float, seed: int):
    """The denoised latent that sample_story's sampler sees at ``sigma`` for ``x_t`` (the stock
    euler swapped for a probe that calls the inpainting-wrapped model once), plus what the
    sampler itself handed the probe: its first x and its sigmas."""
    import comfy.k_diffusion.sampling as kds

    from dreamshot.comfy_bridge.sampling import sample_story

    lay = sample.layout
    seq = SimpleNamespace(layout=lay, plan=SimpleNamespace(frame_segments=list(sample.frame_segments),
                                                           shots=_unseeded_shots(lay)),
                          num_segments=sample.num_segments, segment_length=sample.segment_length,
                          latent=sample.latent, positive=sample.context, negative=sample.context,
                          denoise_mask=lambda: mask.clone())
    got = {}

    def probe(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        got["x"], got["sigmas"] = x.clone(), sigmas.clone()
        got["denoised"] = model_k(x_t, torch.full((x.shape[0],), sigma), **extra_args)
        return x

    original = kds.sample_euler
    kds.sample_euler = probe
    try:
        sample_story(model, seq, seed, 4, 1.0, "euler", "simple")
    finally:
        kds.sample_euler = original
    return got


@pytest.mark.parametrize("mode", ["reference_to_shot", "text_to_shot", "shot_to_shot"])
def test_sampler_prediction_equals_trainer_prediction(trained, mode):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from dreamshot.comfy_bridge import training as bridge
    from dreamshot.comfy_bridge.lora import apply_lora
    from dreamshot.train.objective import noise_frames

    trainer, lora_path = trained
    index = next(i for i, modes in enumerate(trainer.feasible) if mode in modes)
    batch = trainer.prepare_batch(index, torch.Generator().manual_seed(5), mode)
    sigma = torch.tensor([SIGMA])
    x_t = noise_frames(batch.x0, batch.noise, sigma, batch.sample.noised)
    with torch.no_grad():
        want, _ = trainer.story_model.predict(x_t, sigma, batch.sample.context, batch.mask, batch.story, None)

    base = bridge.load_dit(trainer.cfg.model.dit, "fp32")
    shift = 3.0
    sampler_model = apply_lora(ModelSamplingSD3().patch(base, shift)[0], str(lora_path), 1.0)
    seed = 11
    got = _sampler_prediction(sampler_model, batch.sample, batch.mask, x_t, SIGMA, seed)
    noised = batch.sample.noised
    assert noised.any()
    torch.testing.assert_close(got["denoised"][:, :, noised], want[:, :, noised], rtol=1e-5, atol=1e-5)
    # clean frames come back exactly as the clean latent (in the model's latent space)
    torch.testing.assert_close(got["denoised"][:, :, ~noised], batch.x0[:, :, ~noised])

    # The sampler's own start: clean frames are the clean latent and noised frames follow the
    # trainer's x_sigma = sigma * noise + (1 - sigma) * x0 at its first sigma.
    s0 = float(got["sigmas"][0])
    from dreamshot.comfy_bridge.sampling import initial_noise

    lay = batch.sample.layout
    noise = initial_noise(SimpleNamespace(layout=lay, plan=SimpleNamespace(shots=_unseeded_shots(lay))), seed,
                          batch.sample.latent)
    torch.testing.assert_close(got["x"][:, :, noised],
                               noise_frames(batch.x0, noise, torch.tensor([s0]), noised)[:, :, noised])

    # The trained weights matter (a LoRA that failed to load would make the above vacuous).
    base_got = _sampler_prediction(ModelSamplingSD3().patch(base, shift)[0], batch.sample, batch.mask, x_t, SIGMA, seed)
    assert (base_got["denoised"][:, :, noised] - want[:, :, noised]).abs().max() > 1e-3
