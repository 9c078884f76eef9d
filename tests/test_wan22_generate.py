"""``python -m dreamshot.generate`` on Wan2.2: the two A14B experts (--dit and --dit-low-noise) give the
keyframes the graph gives (DreamShot Sampler's model_low_noise, in the REAL server), byte for byte, with the
RACL patch of the story file on both experts; the TI2V-5B with its VAE plans the story on the VAE's
geometry (16x, 48 channels; sizes in multiples of 32). Both processes run with one thread count (CPU
kernels round differently with another; tests/test_generate_parity.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_UMT5_CONFIG = REPO / "tests" / "support" / "test_nodes_pack" / "tiny_umt5_config.json"
HIGH, LOW, VAE, UMT5 = "a14b_high.safetensors", "a14b_low.safetensors", "wan21_vae.safetensors", "umt5.safetensors"
DIT_5B, VAE_22 = "ti2v_5b.safetensors", "wan22_vae.safetensors"

STORY = """\
title: Two experts
settings:
  width: {w}
  height: {h}
  seed: 5
  steps: 4
  cfg: 2.0
  ref_cfg: 1.5
  chunk_size: 0
  negative_prompt: blurry
  racl: {{strength: 1.0, start_percent: 0.0, end_percent: 1.0, layers: all, auto_regions: true}}
characters:
  - name: Mira
    reference: refs/mira.png
  - name: Theo
    reference: refs/theo.png
shots:
  - prompt: Mira and Theo meet at the station.
    characters: [Mira, Theo]
    boxes: {{Mira: [0, 0, 0.5, 1], Theo: [0.5, 0, 1, 1]}}
  - prompt: Mira reads a letter.
    characters: [Mira]
"""


def write_story(folder: Path, w: int, h: int) -> Path:
    rng = np.random.default_rng(7)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(folder / "refs/mira.png")
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(folder / "refs/theo.png")
    (folder / "story.yaml").write_text(STORY.format(w=w, h=h), encoding="utf-8")
    return folder / "story.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models_dir, wan22_models_dir, comfy_root):
    from support.server import ComfyServer, make_base_dir

    base = tmp_path_factory.mktemp("wan22_generate")
    make_base_dir(base, models={
        "diffusion_models": {HIGH: tiny_models_dir / "dit.safetensors",
                             LOW: wan22_models_dir / "dit_low_noise.safetensors",
                             DIT_5B: wan22_models_dir / "dit_wan22_5b.safetensors"},
        "vae": {VAE: tiny_models_dir / "vae.safetensors", VAE_22: wan22_models_dir / "vae_wan22.safetensors"},
        "text_encoders": {UMT5: tiny_models_dir / "umt5.safetensors"}})
    story = write_story(base / "input" / "two_experts", 32, 32)
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    with ComfyServer(base, root=comfy_root, env=env) as server:
        yield server, base, story, env, comfy_root


def graph(switch_step: int) -> dict:
    """The two-expert graph a user builds for the story file (its settings typed into the widgets)."""
    p = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": HIGH, "weight_dtype": "default"}},
         "2": {"class_type": "UNETLoader", "inputs": {"unet_name": LOW, "weight_dtype": "default"}}}
    for i, src in (("3", "1"), ("4", "2")):
        p[i] = {"class_type": "LoadDreamShotModel", "inputs": {
            "model": [src, 0], "lora_name": "None", "strength": 1.0, "lora_2_name": "None", "lora_2_strength": 1.0,
            "distill_lora_name": "None", "distill_lora_strength": 1.0}}
    p["5"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["3", 0], "shift": 1.0}}
    p["6"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 1.0}}
    p["7"] = {"class_type": "DreamShotRACLAttentionPatch", "inputs": {
        "model": ["5", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "layers": "all",
        "auto_regions": True}}
    p["8"] = {"class_type": "DreamShotTestTinyUMT5Loader", "inputs": {"clip_name": UMT5, "type": "wan",
                                                                      "device": "default"}}
    p["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}
    p["10"] = {"class_type": "DreamShotLoadStory", "inputs": {"story": "two_experts/story.yaml"}}
    p["11"] = {"class_type": "DreamShotShotSequencePack", "inputs": {
        "vae": ["9", 0], "clip": ["8", 0], "shots": ["10", 1], "characters": ["10", 0], "lock_shots": ["10", 2],
        "width": 32, "height": 32, "mode": "reference_to_shot", "negative_prompt": "blurry", "repeat": 4,
        "fit": "pad_white", "max_latent_frames": 21}}
    p["12"] = {"class_type": "DreamShotSampler", "inputs": {
        "model": ["7", 0], "sequence": ["11", 0], "seed": 5, "steps": 4, "cfg": 2.0, "sampler_name": "euler",
        "scheduler": "simple", "ref_cfg": 1.5, "chunk_size": 0, "context_shots": 0, "variants": 1,
        "model_low_noise": ["6", 0], "switch_boundary": 0.875, "switch_step": switch_step, "cfg_low_noise": 1.0}}
    p["13"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "two_experts/graph"}}
    return p


def run_headless(setup, story, out: Path, dit, vae, *flags) -> str:
    _, base, _, env, comfy_root = setup
    models = base / "models"
    argv = [sys.executable, "-m", "dreamshot.generate", str(story), "--out", str(out),
            "--dit", str(models / "diffusion_models" / dit), "--vae", str(models / "vae" / vae),
            "--text-encoder", str(models / "text_encoders" / UMT5), "--text-encoder-config", str(TINY_UMT5_CONFIG),
            "--comfyui", str(comfy_root), "--base-directory", str(base), "--cpu", "--log-level", "INFO", "--no-pdf",
            *flags]
    env = {**{k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}, **env, "PYTHONPATH": str(REPO)}
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr


def test_two_experts_headless_equal_the_graph(setup, tmp_path):
    server, _, story, _, _ = setup
    prompt = graph(switch_step=2)
    entry = server.wait(server.queue(prompt), timeout=900)
    [files] = [[server.base_dir / "output" / im["subfolder"] / im["filename"] for im in out["images"]]
               for node, out in entry["outputs"].items() if node == "13"]
    graph_images = [np.asarray(Image.open(p)) for p in files]
    log_text = run_headless(setup, story, tmp_path / "out", HIGH, VAE, "--dit-low-noise",
                            str(setup[1] / "models" / "diffusion_models" / LOW), "--switch-step", "2",
                            "--cfg-low-noise", "1")
    images = [np.asarray(Image.open(tmp_path / "out" / f"{j}.png")) for j in (1, 2)]
    assert len(graph_images) == len(images) == 2
    for j, (a, b) in enumerate(zip(graph_images, images)):
        assert np.array_equal(a, b), f"shot {j + 1} differs"
    assert "two experts, 2 step(s) with the high-noise model, 2 with the low-noise one" in log_text
    assert "cfg 2 then 1)" in log_text
    assert "the second model gets the first one's RACL Attention Patch" in log_text


def test_5b_headless_plans_on_the_wan22_vae(setup, tmp_path):
    _, base, _, _, _ = setup
    story = write_story(tmp_path / "story5b", 64, 32)
    run_headless(setup, story, tmp_path / "out", DIT_5B, VAE_22, "--steps", "2")
    images = [np.asarray(Image.open(tmp_path / "out" / f"{j}.png")) for j in (1, 2)]
    assert all(im.shape == (32, 64, 3) for im in images)


def test_low_noise_flags_without_a_second_expert_are_refused_before_loading(setup, tmp_path):
    _, base, story, env, comfy_root = setup
    argv = [sys.executable, "-m", "dreamshot.generate", str(story), "--out", str(tmp_path / "o"),
            "--dit", "missing.safetensors", "--vae", "missing.safetensors", "--text-encoder", "missing.safetensors",
            "--comfyui", str(comfy_root), "--cpu"]
    env = {**{k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}, **env, "PYTHONPATH": str(REPO)}
    for flag in (["--switch-step", "3"], ["--cfg-low-noise", "3"]):
        run = subprocess.run(argv + flag, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2
        assert ("input 'dit-low-noise': --lora-low-noise / --switch-* / --cfg-low-noise are given without a second "
                "expert.") in run.stderr
