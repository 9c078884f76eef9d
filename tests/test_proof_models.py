"""The proof's tiny models in ComfyUI's own loaders: the block VAE (exact weights written into
ComfyUI's Wan2.1 VAE) and the tiny UMT5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamshot.proof import dataset as ds

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def block_vae(comfy_headless, tmp_path_factory):
    from dreamshot.proof.block_vae import write_block_vae

    stories = ds.make_stories(8, 0, 96, 48, "s")
    images = [ds.render_shot(s, j, 96, 48)[0] for s in stories for j in range(3)]
    path = tmp_path_factory.mktemp("proof_vae") / "vae.safetensors"
    return path, write_block_vae(path, images), images


def test_fast_path_equals_comfyui_vae_loaded_from_the_file(block_vae):
    import comfy.sd
    import comfy.utils

    from dreamshot.proof.assets import load_block_vae

    path, _, _ = block_vae
    comfy_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path), safe_load=True))
    fast = load_block_vae(path)
    stories = ds.make_stories(2, 9, 48, 32, "v")   # small frames: ComfyUI's full VAE is slow on a CPU
    a, b = ds.render_shot(stories[0], 0, 48, 32)[0], ds.render_shot(stories[1], 1, 48, 32)[0]
    frames = torch.from_numpy(np.stack([a, b, b, b, b])).float() / 255   # shot 1 once, shot 2 four times
    z_comfy, z_fast = comfy_vae.encode(frames), fast.encode(frames)
    assert z_comfy.shape == z_fast.shape == (1, 16, 2, 4, 6)
    torch.testing.assert_close(z_fast, z_comfy.float(), atol=1e-4, rtol=1e-4)
    # a repeated shot encodes to its single-image latent (frame-local time)
    torch.testing.assert_close(fast.encode(frames[1:2])[:, :, 0], z_fast[:, :, 1], atol=1e-5, rtol=1e-5)
    x_comfy, x_fast = comfy_vae.decode(z_comfy), fast.decode(z_fast)
    assert x_fast.shape[1] == 5
    torch.testing.assert_close(x_fast, x_comfy.float().reshape(x_fast.shape), atol=1e-4, rtol=1e-4)


def test_round_trip_keeps_identity_and_latent_is_normalised(block_vae):
    import comfy.latent_formats

    from dreamshot.proof.block_vae import BlockVAE
    from dreamshot.proof.report import Tally, score_story

    _, vae, images = block_vae
    fast = BlockVAE(vae)
    z = torch.cat([fast.encode(torch.from_numpy(im[None]).float() / 255) for im in images], dim=2)
    normed = comfy.latent_formats.Wan21().process_in(z)
    assert normed.mean().abs() < 0.05 and (normed.std(dim=(0, 2, 3, 4)) - 1).abs().max() < 0.05
    torch.testing.assert_close(normed[:, 3], normed[:, 0], atol=1e-4, rtol=1e-4)   # R again
    tally = Tally()
    for spec in ds.make_stories(16, 4, 96, 48, "h"):   # held-out scenes
        decoded = []
        for j in range(3):
            x = torch.from_numpy(ds.render_shot(spec, j, 96, 48)[0][None]).float() / 255
            decoded.append((fast.decode(fast.encode(x))[0, 0].numpy() * 255).round().astype(np.uint8))
        score_story(tally, decoded, spec)
    assert tally.counts["correct"] == tally.total >= 48


def test_tiny_text_encoder_keeps_words_and_encodes_without_padding(comfy_headless, tmp_path):
    from dreamshot.proof.assets import load_text_encoder, text_encoder
    from dreamshot.proof.tiny_models import write_text_encoder

    path = write_text_encoder(tmp_path / "umt5.safetensors", seed=0)
    clip = load_text_encoder(path)
    encode = text_encoder(clip, 32)
    a = encode("Mira at left, Theo at right.")
    b = encode("Theo at left, Mira at right.")
    c = encode("Mira")
    assert a.shape == b.shape == (1, 32, 4096)
    used = int((a[0].abs().sum(-1) > 0).sum())
    assert used == len(clip.tokenize("Mira at left, Theo at right.")["umt5xxl"][0]) and (a[0, used:] == 0).all()
    cos = torch.nn.functional.cosine_similarity
    # a name stays itself wherever it stands (a fully random 24-layer UMT5 gave ~0.2) ...
    assert cos(a[0, 0], b[0, 4], dim=0) > 0.9 and cos(a[0, 0], c[0, 0], dim=0) > 0.85
    # ... different names stay apart, and context still changes the encoding a little
    assert cos(a[0, 0], a[0, 4], dim=0).abs() < 0.3
    assert (a[0, 2] - b[0, 2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="text_length"):
        text_encoder(clip, 3)("Mira at left, Theo at centre, Bob at right.")


def test_tiny_dit_starts_as_a_velocity_model_that_passes_its_input_through(comfy_headless, tmp_path):
    """dreamshot.proof.tiny_models.identity_init: loaded by ComfyUI's loader, the untrained DiT's
    velocity is close to its input (v_hat ~ x_t), where the plain random DiT's is not."""
    from dreamshot.comfy_bridge import training as bridge
    from dreamshot.comfy_bridge.random_wan import random_wan_dit
    from dreamshot.proof.tiny_models import DIT_SIZE, write_dit
    from dreamshot.atomic import atomic_save_safetensors

    write_dit(tmp_path / "dit.safetensors", 0)
    plain = random_wan_dit(DIT_SIZE["dim"], DIT_SIZE["ffn_dim"], DIT_SIZE["num_layers"], 0)
    atomic_save_safetensors(tmp_path / "plain.safetensors", plain.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 3, 6, 12, generator=g)
    context = torch.randn(1, 32, 4096, generator=g)

    def velocity_error(name: str, sigma: float) -> float:
        m = bridge.load_dit(str(tmp_path / name), "fp32")
        with torch.no_grad():
            denoised = m.model.apply_model(x, torch.tensor([sigma]), c_crossattn=context)
        v = (x - denoised) / sigma
        return float((v - x).pow(2).mean() / x.pow(2).mean())

    for sigma in (1.0, 0.5):
        assert velocity_error("dit.safetensors", sigma) < 0.25
    assert velocity_error("plain.safetensors", 1.0) > 0.8


def test_merged_prior_predicts_what_the_base_with_its_trained_file_predicts(comfy_headless, tmp_path):
    """tiny_models.merge_deltas: the video prior as a plain DiT file equals the base DiT with the
    prior's trained file applied by ComfyUI's LoRA loading (what fine-tuning from it starts from)."""
    import safetensors.torch

    from dreamshot.comfy_bridge import training as bridge
    from dreamshot.comfy_bridge.lora import apply_lora
    from dreamshot.proof.tiny_models import merge_deltas, write_dit
    from dreamshot.atomic import atomic_save_safetensors

    write_dit(tmp_path / "dit.safetensors", 0)
    base = safetensors.torch.load_file(str(tmp_path / "dit.safetensors"))
    g = torch.Generator().manual_seed(2)
    deltas = {f"diffusion_model.{k[:-len('.weight')]}.diff": torch.randn(base[k].shape, generator=g) * 0.05
              for k in ("blocks.0.self_attn.q.weight", "blocks.3.ffn.2.weight", "head.head.weight",
                        "text_embedding.0.weight", "blocks.1.norm3.weight")}
    deltas["diffusion_model.blocks.2.cross_attn.o.diff_b"] = torch.randn(base["blocks.2.cross_attn.o.bias"].shape,
                                                                         generator=g) * 0.05
    atomic_save_safetensors(tmp_path / "trained.safetensors", deltas)
    merge_deltas(tmp_path / "dit.safetensors", tmp_path / "trained.safetensors", tmp_path / "prior.safetensors")
    merged = safetensors.torch.load_file(str(tmp_path / "prior.safetensors"))
    assert set(merged) == set(base)
    assert not torch.equal(merged["head.head.weight"], base["head.head.weight"])
    torch.testing.assert_close(merged["blocks.2.cross_attn.o.bias"],
                               base["blocks.2.cross_attn.o.bias"] + deltas["diffusion_model.blocks.2.cross_attn.o.diff_b"])

    x = torch.randn(1, 16, 3, 6, 12, generator=g)
    context = torch.randn(1, 12, 4096, generator=g)

    def predict(m):
        import comfy.model_management

        comfy.model_management.load_models_gpu([m], force_full_load=True)
        with torch.no_grad():
            return m.model.apply_model(x, torch.tensor([0.7]), c_crossattn=context)

    with_file = predict(apply_lora(bridge.load_dit(str(tmp_path / "dit.safetensors"), "fp32"),
                                   str(tmp_path / "trained.safetensors"), 1.0))
    plain = predict(bridge.load_dit(str(tmp_path / "dit.safetensors"), "fp32"))
    prior = predict(bridge.load_dit(str(tmp_path / "prior.safetensors"), "fp32"))
    torch.testing.assert_close(prior, with_file, atol=1e-5, rtol=1e-5)
    assert (prior - plain).abs().max() > 1e-2
    atomic_save_safetensors(tmp_path / "lora.safetensors", {"diffusion_model.blocks.0.self_attn.q.lora_up.weight":
                                                            torch.zeros(256, 4)})
    with pytest.raises(ValueError, match="not a full fine-tune delta"):
        merge_deltas(tmp_path / "dit.safetensors", tmp_path / "lora.safetensors", tmp_path / "x.safetensors")
