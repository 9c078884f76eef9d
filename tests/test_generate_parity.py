"""``python -m dreamshot.generate`` means what the nodes mean (issue 23).

The parity test runs one story file with two characters, boxes and a region mask, the RACL patch, two
Shot LoRAs and two variants, through Load Story and the nodes in the REAL ComfyUI server (main.py
--cpu) and through ``python -m dreamshot.generate`` in a fresh process, and asks for the same
keyframes, byte for byte; then again with fp8 weights and no RACL patch on both sides (where both
must say that the boxes and masks have no effect). Both processes run with the same thread count
(CPU kernels round differently with another one; see tests/test_vistory.py).

The graph is the one a user builds for the file: UNETLoader (weight_dtype) -> Load DreamShot Model ->
ModelSamplingSD3 (shift 1, the headless default) -> RACL Attention Patch -> Shot LoRA x 2 -> DreamShot
Sampler, with Load Story feeding Shot Sequence Pack. As in tests/test_workflows_server.py, the test-only
DreamShotTestTinyUMT5Loader stands in for CLIPLoader (which cannot build the tiny UMT5).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.story_file import RaclSettings, ShotLoraSettings, read_story

REPO = Path(__file__).resolve().parents[1]
TINY_UMT5_CONFIG = REPO / "tests" / "support" / "test_nodes_pack" / "tiny_umt5_config.json"
DIT, VAE, UMT5, LORA_A, LORA_B = ("parity_dit.safetensors", "parity_vae.safetensors", "parity_umt5.safetensors",
                                  "ink_style.safetensors", "theo_face.safetensors")
SIZE = 32        # 2 x 2 tokens per frame: enough for two boxes; the full-size random VAE is most of the cost

STORY = f"""\
title: Parity
settings:
  width: {SIZE}
  height: {SIZE}
  seed: 5
  steps: 2
  cfg: 2.0
  ref_cfg: 1.5
  chunk_size: 0
  negative_prompt: blurry
  variants: 2
  racl: {{strength: 1.0, start_percent: 0.0, end_percent: 1.0, layers: all, auto_regions: true}}
  shot_loras:
    - {{lora: {LORA_A}, strength: 0.8, shots: "2, 3"}}
    - {{lora: {LORA_B}, strength: 1.5, character: Theo, include_references: true}}
characters:
  - name: Mira
    reference: refs/mira.png
    mask: refs/mira_mask.png
    description: a girl in a red coat
  - name: Theo
    reference: refs/theo.png
    description: a man in a green hat
shots:
  - prompt: Mira and Theo meet at the station.
    characters: [Mira, Theo]
    boxes: {{Mira: [0, 0, 0.5, 1], Theo: [0.5, 0, 1, 1]}}
  - prompt: Mira reads a letter.
    characters: [Mira]
    masks: {{Mira: refs/shot2_mira.png}}
    negative_prompt: rain
  - prompt: Theo waves goodbye.
    characters: [Theo]
    seed: 11
"""


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_story(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    _png(folder / "refs/mira.png", rng.integers(0, 256, (40, 24, 3), dtype=np.uint8))
    _png(folder / "refs/theo.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = np.zeros((40, 24), np.uint8)
    mask[8:36, 4:20] = 255
    _png(folder / "refs/mira_mask.png", mask)
    region = np.zeros((SIZE, SIZE), np.uint8)
    region[:, : SIZE // 2] = 255
    _png(folder / "refs/shot2_mira.png", region)
    (folder / "story.yaml").write_text(STORY, encoding="utf-8")
    return folder / "story.yaml"


def write_lora(path: Path, dit: Path, layers, seed: int) -> Path:
    """A LoRA in ComfyUI-native keys for the tiny DiT (shapes read from its file), with a bias diff."""
    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(dit), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers:
        out_f, in_f = shapes[f"{layer}.weight"]
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.3
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, in_f, generator=g) / in_f ** 0.5
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(2.0)
    tensors["diffusion_model.blocks.0.ffn.0.diff_b"] = torch.randn(shapes["blocks.0.ffn.0.bias"], generator=g) * 0.1
    safetensors.torch.save_file(tensors, str(path))
    return path


# -- the flags and the file's settings, without models ---------------------------------------------
def _args(*argv):
    from dreamshot.generate.__main__ import build_parser

    return build_parser().parse_args(["story.yaml", *argv])


def test_flags_override_the_files_racl_shot_loras_and_variants(tmp_path):
    from dreamshot.generate.__main__ import racl_settings, run_settings, shot_lora_settings

    story = read_story(write_story(tmp_path))
    assert story.settings.racl == RaclSettings()
    assert story.settings.shot_loras == (ShotLoraSettings(LORA_A, 0.8, "2, 3"),
                                         ShotLoraSettings(LORA_B, 1.5, "", "Theo", True))
    assert run_settings(story, _args()).variants == 2 and run_settings(story, _args("--variants", "3")).variants == 3
    assert racl_settings(story, _args()) == RaclSettings()
    assert racl_settings(story, _args("--no-racl")) is None
    assert racl_settings(story, _args("--racl-end", "0.5", "--racl-layers", "0")) == RaclSettings(end_percent=0.5,
                                                                                                  layers="0")
    plain = SimpleNamespace(settings=SimpleNamespace(racl=None))
    assert racl_settings(plain, _args()) is None
    assert racl_settings(plain, _args("--racl-strength", "0.5")) == RaclSettings(strength=0.5)   # a flag turns it on
    with pytest.raises(DreamShotInputError, match="--no-racl with --racl-strength"):
        racl_settings(story, _args("--no-racl", "--racl-strength", "0.5"))
    with pytest.raises(DreamShotInputError, match=r"racl.start_percent: start 0.9 is after end 0.5"):
        racl_settings(story, _args("--racl-start", "0.9", "--racl-end", "0.5"))

    assert [lora for lora, _ in shot_lora_settings(story, _args())] == list(story.settings.shot_loras)
    assert shot_lora_settings(story, _args("--no-shot-loras")) == []
    file = tmp_path / "mine.safetensors"
    file.touch()
    assert shot_lora_settings(story, _args("--shot-lora", str(file), "shots=all", "strength=0.5")) == [
        (ShotLoraSettings("mine.safetensors", 0.5, "all"), str(file))]          # a path, or a models/loras name
    assert shot_lora_settings(story, _args("--shot-lora", "x.safetensors", "character=Mira", "references=yes")) == [
        (ShotLoraSettings("x.safetensors", 1.0, "", "Mira", True), None)]
    for flags, needle in ((["x.safetensors", "shots=4"], "the story has 3 shot(s), got shot(s) [4]"),
                          (["x.safetensors", "character=Pip"], "no shot of the story lists 'Pip'"),
                          (["x.safetensors"], "no shots and no character"),
                          (["x.safetensors", "shots"], "'shots' is not KEY=VALUE"),
                          (["x.safetensors", "shots=all", "colour=red"], "colour: unknown field")):
        with pytest.raises(DreamShotInputError, match=re.escape(needle)):
            shot_lora_settings(story, _args("--shot-lora", *flags))


def test_a_shot_lora_outside_the_story_is_refused_with_its_line(tmp_path):
    path = write_story(tmp_path)
    path.write_text(STORY.replace('shots: "2, 3"', 'shots: "3-4"'), encoding="utf-8")
    with pytest.raises(DreamShotInputError, match=r"story.yaml:14: settings.shot_loras\[0\].shots: "
                                                  r"ink_style.safetensors: the story has 3 shot\(s\), got shot\(s\) \[4\]"):
        read_story(path)


@pytest.mark.comfyui
def test_weight_dtypes_are_unetloaders(pack_nodes, monkeypatch):
    """--weight-dtype offers exactly UNETLoader's choices and builds its model_options (captured from
    ComfyUI's own UNETLoader.load_unet)."""
    import comfy.sd
    import folder_paths
    import nodes

    from dreamshot.comfy_bridge.loaders import WEIGHT_DTYPES, unet_model_options
    from dreamshot.generate.__main__ import build_parser

    assert tuple(nodes.UNETLoader.INPUT_TYPES()["required"]["weight_dtype"][0]) == WEIGHT_DTYPES
    choices = next(a for a in build_parser()._actions if a.dest == "weight_dtype").choices
    assert tuple(choices) == WEIGHT_DTYPES
    seen = []
    monkeypatch.setattr(folder_paths, "get_full_path_or_raise", lambda folder, name: name)
    monkeypatch.setattr(comfy.sd, "load_diffusion_model", lambda path, model_options: seen.append(model_options))
    for choice in WEIGHT_DTYPES:
        nodes.UNETLoader().load_unet("x.safetensors", choice)
        assert seen[-1] == unet_model_options(choice), choice
    assert seen[1] == {"dtype": torch.float8_e4m3fn}


@pytest.mark.comfyui
def test_text_encoder_is_loaded_as_load_clip_loads_it(pack_nodes, monkeypatch, tmp_path):
    """The headless text encoder gets the arguments ComfyUI's own Load CLIP (type wan) gives
    comfy.sd.load_clip, the embeddings folders included (captured from CLIPLoader.load_clip)."""
    import comfy.sd
    import folder_paths
    import nodes

    from dreamshot.comfy_bridge.training import load_text_encoder

    te = tmp_path / "umt5.safetensors"
    te.write_bytes(b"")
    seen = []
    monkeypatch.setattr(folder_paths, "get_full_path_or_raise", lambda folder, name: str(te))
    monkeypatch.setattr(comfy.sd, "load_clip", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "embeddings",
                        ([str(tmp_path / "embeddings")], folder_paths.supported_pt_extensions))
    nodes.CLIPLoader().load_clip("umt5.safetensors", "wan")
    load_text_encoder(str(te))
    assert seen[0]["embedding_directory"] == [str(tmp_path / "embeddings")]
    assert seen[1] == seen[0]


@pytest.mark.comfyui
def test_memory_flags_reach_comfyui_before_it_starts(comfy_root, tmp_path):
    """In a fresh process: the flags are on comfy.cli_args when comfy.model_management reads them at
    import; a flag this ComfyUI lacks is refused by name; no change once ComfyUI is imported."""
    script = (
        "import sys, json\n"
        "from dreamshot.comfy_bridge.headless import import_comfy\n"
        "try:\n"
        f"    import_comfy({str(comfy_root)!r}, options={{'nonsense': 1}})\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
        f"root = import_comfy({str(comfy_root)!r}, options={{'cpu': True, 'lowvram': True, 'reserve_vram': 1.5, "
        "'disable_smart_memory': True}, base_directory=sys.argv[1])\n"
        "import comfy.model_management as mm, folder_paths\n"
        "from comfy.cli_args import args\n"
        "try:\n"
        "    import_comfy(options={'lowvram': False})\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
        "print(json.dumps({'cpu': args.cpu, 'lowvram': args.lowvram, 'reserve': args.reserve_vram,\n"
        "                  'smart': mm.DISABLE_SMART_MEMORY, 'models': folder_paths.models_dir}))\n")
    base = tmp_path / "base"
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    run = subprocess.run([sys.executable, "-c", script, str(base)], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert "refused: this ComfyUI" in lines[0] and "has no nonsense option" in lines[0]
    assert "refused: ComfyUI is already imported in this process, so its options can no longer change " \
           "(lowvram=False)" in lines[1]
    import json

    assert json.loads(lines[-1]) == {"cpu": True, "lowvram": True, "reserve": 1.5, "smart": True,
                                     "models": str(base.resolve() / "models")}


@pytest.mark.comfyui
def test_fields_a_model_does_not_read_are_named(pack_module):
    """What sample_long_story warns about (both paths call it): boxes/masks without the RACL patch,
    characters in text_to_shot, per-shot negatives at cfg 1."""
    from dreamshot.story import Character, Shot, plan_story

    sampling = pack_module("comfy_bridge.sampling")
    mira = Character("Mira", torch.rand(1, 16, 16, 3), masks=torch.ones(1, 16, 16))
    shots = [Shot("a", ("Mira",), regions=(("Mira", (0, 0, 0.5, 1)),), negative_prompt="rain"), Shot("b", ("Mira",))]
    bare = SimpleNamespace(model_options={})
    plan = plan_story([mira], shots, 32, 32)
    assert sampling.unused_story_fields(bare, plan, 3.0) == [
        "the boxes/masks of shot(s) 1 and the reference mask(s) of Mira are read only by the RACL Attention Patch, "
        "which this model does not have; add the patch (python -m dreamshot.generate: --racl or settings.racl)"]
    patched = SimpleNamespace(model_options={"transformer_options": {sampling.ROLE_CONFIG_KEY: object()}})
    assert sampling.unused_story_fields(patched, plan, 3.0) == []
    assert sampling.unused_story_fields(patched, plan, 1.0) == [
        "cfg 1 runs no negative pass, so the negative prompt of shot(s) 1 has no effect; raise cfg to use it"]
    t2s = plan_story([mira], shots, 32, 32, mode="text_to_shot")
    assert sampling.unused_story_fields(bare, t2s, 3.0)[0].startswith(
        "mode text_to_shot packs no references, so the characters (Mira) are only names in the prompts")


# -- the same story through the real server and through python -m dreamshot.generate ---------------
@pytest.fixture(scope="module")
def parity(tmp_path_factory, tiny_models_dir, comfy_root):
    from support.server import ComfyServer, make_base_dir

    base = tmp_path_factory.mktemp("parity_base")
    loras = tmp_path_factory.mktemp("parity_loras")
    dit = tiny_models_dir / "dit.safetensors"
    write_lora(loras / LORA_A, dit, [f"blocks.{i}.{m}" for i in (0, 1) for m in ("self_attn.q", "cross_attn.o",
                                                                                  "ffn.2")], seed=1)
    write_lora(loras / LORA_B, dit, ["blocks.0.self_attn.v", "blocks.1.ffn.0", "blocks.0.cross_attn.k"], seed=2)
    make_base_dir(base, models={"diffusion_models": {DIT: dit}, "vae": {VAE: tiny_models_dir / "vae.safetensors"},
                                "text_encoders": {UMT5: tiny_models_dir / "umt5.safetensors"},
                                "loras": {LORA_A: loras / LORA_A, LORA_B: loras / LORA_B}})
    story = write_story(base / "input" / "parity")
    # One thread count for both processes (CPU kernels round differently with another).
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    with ComfyServer(base, root=comfy_root, env=env) as server:
        yield SimpleNamespace(server=server, base=base, story=story, env=env, comfy_root=comfy_root)


def graph(weight_dtype: str, racl: bool, variants: int = 2) -> dict:
    """The API prompt a user builds for the parity story (its settings typed into the widgets)."""
    p = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": weight_dtype}},
         "2": {"class_type": "LoadDreamShotModel", "inputs": {
             "model": ["1", 0], "lora_name": "None", "strength": 1.0, "lora_2_name": "None", "lora_2_strength": 1.0,
             "distill_lora_name": "None", "distill_lora_strength": 1.0}},
         "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["2", 0], "shift": 1.0}},
         "4": {"class_type": "DreamShotRACLAttentionPatch", "inputs": {
             "model": ["3", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "layers": "all",
             "auto_regions": True}},
         "5": {"class_type": "DreamShotShotLoRA", "inputs": {
             "model": ["4", 0] if racl else ["3", 0], "lora_name": LORA_A, "strength": 0.8, "shots": "2, 3",
             "character": "", "include_references": False}},
         "6": {"class_type": "DreamShotShotLoRA", "inputs": {
             "model": ["5", 0], "lora_name": LORA_B, "strength": 1.5, "shots": "", "character": "Theo",
             "include_references": True}},
         "7": {"class_type": "DreamShotTestTinyUMT5Loader", "inputs": {"clip_name": UMT5, "type": "wan",
                                                                      "device": "default"}},
         "8": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
         "9": {"class_type": "DreamShotLoadStory", "inputs": {"story": "parity/story.yaml"}},
         "10": {"class_type": "DreamShotShotSequencePack", "inputs": {
             "vae": ["8", 0], "clip": ["7", 0], "shots": ["9", 1], "characters": ["9", 0], "lock_shots": ["9", 2],
             "width": SIZE, "height": SIZE, "mode": "reference_to_shot", "negative_prompt": "blurry", "repeat": 4,
             "fit": "pad_white", "max_latent_frames": 21}},
         "11": {"class_type": "DreamShotSampler", "inputs": {
             "model": ["6", 0], "sequence": ["10", 0], "seed": 5, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
             "scheduler": "simple", "ref_cfg": 1.5, "chunk_size": 0, "context_shots": 0, "variants": variants}},
         "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"parity/{weight_dtype}"}}}
    if not racl:
        del p["4"]
    return p


def run_graph(parity, weight_dtype: str, racl: bool, variants: int = 2) -> tuple[list[np.ndarray], str]:
    server = parity.server
    start = server.log_path.stat().st_size
    prompt = graph(weight_dtype, racl, variants)
    entry = server.wait(server.queue(prompt), timeout=900)
    [files] = [[server.base_dir / "output" / im["subfolder"] / im["filename"] for im in out["images"]]
               for node, out in entry["outputs"].items() if node == "12"]
    with open(server.log_path, "rb") as f:
        f.seek(start)
        log_text = f.read().decode(errors="replace")
    return [np.asarray(Image.open(p)) for p in files], log_text


def run_headless(parity, out: Path, *flags) -> tuple[list[np.ndarray], str]:
    models = parity.base / "models"
    argv = [sys.executable, "-m", "dreamshot.generate", str(parity.story), "--out", str(out),
            "--dit", str(models / "diffusion_models" / DIT), "--vae", str(models / "vae" / VAE),
            "--text-encoder", str(models / "text_encoders" / UMT5), "--text-encoder-config", str(TINY_UMT5_CONFIG),
            "--comfyui", str(parity.comfy_root), "--base-directory", str(parity.base), "--cpu", "--log-level", "INFO",
            *flags]
    env = {**{k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}, **parity.env, "PYTHONPATH": str(REPO)}
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    paths = [out / f"{j}.png" for j in (1, 2, 3)]
    if (out / "variant_2").exists():
        paths += [out / "variant_2" / f"{j}.png" for j in (1, 2, 3)]
    return [np.asarray(Image.open(p)) for p in paths], run.stderr


LORA_LINES = ("DreamShot Shot LoRA ink_style.safetensors (strength 0.80): story shot(s) [2, 3] of this pass",
              "DreamShot Shot LoRA theo_face.safetensors (strength 1.50): story shot(s) [1, 3] of this pass")
UNREAD = "read only by the RACL Attention Patch, which this model does not have"


@pytest.mark.slow
def test_the_story_file_gives_the_graphs_keyframes_byte_for_byte(parity, tmp_path):
    """Default weights, the file's RACL patch and Shot LoRAs, two variants."""
    graph_images, graph_log = run_graph(parity, "default", racl=True)
    images, log_text = run_headless(parity, tmp_path / "out")
    assert len(graph_images) == len(images) == 6 and images[0].shape == (SIZE, SIZE, 3)
    for k, (a, b) in enumerate(zip(graph_images, images)):
        assert np.array_equal(a, b), f"variant {k // 3 + 1}, shot {k % 3 + 1} differs"
    assert not all(np.array_equal(a, b) for a, b in zip(images[:3], images[3:]))     # variants differ
    for text in (graph_log, log_text):
        assert all(line in text for line in LORA_LINES) and UNREAD not in text
    assert "RACL on, 2 Shot LoRA(s)" in log_text and "2 variant(s)" in log_text
    assert "Load Story: parity/story.yaml: its settings (width, height, seed, steps, cfg, ref_cfg, chunk_size, " \
           "negative_prompt, variants, racl, shot_loras) are read by python -m dreamshot.generate only" in graph_log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "1.png", "2.png", "3.png", "storyboard_00001_.pdf", "storyboard_00001_.png", "variant_2"]


@pytest.mark.slow
def test_fp8_weights_without_the_racl_patch_match_too(parity, tmp_path):
    """fp8_e4m3fn weights on both sides (UNETLoader's weight_dtype, --weight-dtype), the RACL patch off
    (left out of the graph, --no-racl), one variant (the sampler's widget, --variants over the file's 2):
    the same keyframes, and both say the boxes and masks go unused."""
    graph_images, graph_log = run_graph(parity, "fp8_e4m3fn", racl=False, variants=1)
    images, log_text = run_headless(parity, tmp_path / "out", "--weight-dtype", "fp8_e4m3fn", "--no-racl",
                                    "--variants", "1", "--no-pdf")
    assert len(graph_images) == len(images) == 3
    for k, (a, b) in enumerate(zip(graph_images, images)):
        assert np.array_equal(a, b), f"variant {k // 3 + 1}, shot {k % 3 + 1} differs"
    for text in (graph_log, log_text):
        assert "the boxes/masks of shot(s) 1, 2 and the reference mask(s) of Mira are " + UNREAD in text
        assert all(line in text for line in LORA_LINES)
    assert "model weight dtype torch.float8_e4m3fn" in graph_log and "model weight dtype torch.float8_e4m3fn" in log_text
