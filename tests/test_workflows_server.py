"""Every bundled workflow, as saved for the frontend, executed by the REAL ComfyUI server on
127.0.0.1 with this pack installed in custom_nodes.

The workflows name real model files; the test server's models folder maps those names to tiny
random Wan2.1-format files (and the full-size random Wan VAE). ComfyUI's stock CLIPLoader cannot
build a tiny UMT5, so the test swaps CLIPLoader for a test-only loader node with the same output.
Width/height drop to 64x64 and steps to 2 to keep CI fast; nothing else in the graph changes.
The official-weights workflows get the tiny DiT under the 14B file name and synthetic LoRA files with
the released files' key names (tests/support/official_loras.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.build_workflows import (DISTILL_LORA, DIT, DIT_14B, INPUT_IMAGES, RL_LORA, SFT_LORA, STORY, TEXT_ENCODER,
                                     VAE, WORKFLOWS_BUILT)
from support.official_loras import distill_lora, released_lora
from support.server import ComfyServer, PromptFailed, PromptRejected, make_base_dir
from support.workflow_api import ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir, comfy_root):
    base = tmp_path_factory.mktemp("comfy_base")
    inputs = {}
    for i, name in enumerate(INPUT_IMAGES):
        path = base / f"src_{name}"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(path)
        inputs[name] = path
    import safetensors.torch

    loras = {}
    for name, sd in ((SFT_LORA, released_lora(1)), (RL_LORA, released_lora(2)), (DISTILL_LORA, distill_lora(3))):
        loras[name] = base / f"src_{name}"
        safetensors.torch.save_file(sd, str(loras[name]))
    make_base_dir(base, models={"diffusion_models": {DIT: tiny_models_dir / "dit.safetensors",
                                                     DIT_14B: tiny_models_dir / "dit.safetensors"},
                                "vae": {VAE: tiny_models_dir / "vae.safetensors"},
                                "text_encoders": {TEXT_ENCODER: tiny_models_dir / "umt5.safetensors"},
                                "dreamshot": {SFT_LORA: loras[SFT_LORA], RL_LORA: loras[RL_LORA]},
                                "loras": {DISTILL_LORA: loras[DISTILL_LORA]}},
                  inputs=inputs)
    with ComfyServer(base, root=comfy_root) as s:
        s.info = s.object_info()
        yield s


def _prompt(server, name, **overrides):
    wf = json.loads((WORKFLOWS / name).read_text())
    prompt = ui_to_api(wf, server.info)
    for node in prompt.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = "DreamShotTestTinyUMT5Loader"
        if node["class_type"] == "DreamShotShotSequencePack":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "DreamShotSampler":
            node["inputs"].update(steps=2)
    for node_id, inputs in overrides.items():
        prompt[node_id]["inputs"].update(inputs)
    return prompt


def _images(server, entry, node_type, prompt):
    out = {}
    for node_id, result in entry["outputs"].items():
        if prompt[node_id]["class_type"] != node_type:
            continue
        files = [server.base_dir / "output" / img["subfolder"] / img["filename"] for img in result.get("images", [])]
        out[node_id] = [np.asarray(Image.open(f)) for f in files]
    return out


def test_every_bundled_workflow_is_current():
    """workflows/ holds exactly what tests/support/build_workflows.py makes (re-run it after a
    node signature change); the content check is test_workflows_match_the_live_node_definitions."""
    assert sorted(p.name for p in WORKFLOWS.glob("*.json")) == sorted(WORKFLOWS_BUILT)


def test_workflows_match_the_live_node_definitions(server):
    from support.build_workflows import build_all, dump

    for name, wf in build_all(server.info).items():
        assert (WORKFLOWS / name).read_text() == dump(wf), f"{name} is stale: run python tests/support/build_workflows.py"


@pytest.mark.parametrize("name", sorted(WORKFLOWS_BUILT))
def test_bundled_workflow_runs_in_the_real_server(server, name):
    prompt = _prompt(server, name)
    entry = server.wait(server.queue(prompt), timeout=600)
    saved = _images(server, entry, "SaveImage", prompt)
    sheets = _images(server, entry, "DreamShotStoryboardSheet", prompt)
    assert saved or sheets
    for images in saved.values():
        assert len(images) == len(STORY) and all(im.shape == (64, 64, 3) for im in images)
    for images in sheets.values():
        assert len(images) == 1 and images[0].shape[0] > 64


def test_edit_workflow_keeps_locked_shots_identical(server):
    prompt = _prompt(server, "dreamshot_edit_one_shot.json")
    entry = server.wait(server.queue(prompt), timeout=600)
    before = next(iter(_images(server, entry, "SaveImage", prompt).values()))
    samplers = [i for i, n in prompt.items() if n["class_type"] == "DreamShotSampler"]
    assert len(samplers) == 2
    # The sheet shows the edited storyboard; read the edited keyframes through a SaveImage too.
    prompt2 = dict(prompt)
    prompt2["900"] = {"class_type": "SaveImage", "inputs": {"images": [samplers[1], 0], "filename_prefix": "edited"}}
    entry2 = server.wait(server.queue(prompt2), timeout=600)
    after = _images(server, entry2, "SaveImage", prompt2)["900"]
    for j in (0, 1, 3):
        assert np.array_equal(before[j], after[j]), f"locked shot {j + 1} changed"
    assert not np.array_equal(before[2], after[2])


def test_invalid_prompt_is_rejected_with_http_400(server):
    prompt = _prompt(server, "dreamshot_text_to_shot.json")
    pack = next(i for i, n in prompt.items() if n["class_type"] == "DreamShotShotSequencePack")
    del prompt[pack]["inputs"]["vae"]
    with pytest.raises(PromptRejected) as e:
        server.queue(prompt)
    assert e.value.status == 400


def test_bad_story_fails_with_the_nodes_message(server):
    prompt = _prompt(server, "dreamshot_reference_to_shot.json")
    shot = next(i for i, n in prompt.items() if n["class_type"] == "DreamShotShotScript")
    prompt[shot]["inputs"]["characters"] = "Mira, Bobb"
    with pytest.raises(PromptFailed, match=r"Shot Sequence Pack: input 'shots': shot 1 names unknown character"):
        server.wait(server.queue(prompt), timeout=300)


@pytest.mark.parametrize("socket, source_type, needle", [
    ("shots_2", "DreamShotCharacterReference", "receives a character chain, not a shot chain"),
    ("characters_2", "LoadImage", r"receives a Tensor of shape \[1, \d+, \d+, 3\], not a character chain"),
])
def test_pack_refuses_a_wrong_link_on_a_numbered_socket(server, socket, source_type, needle):
    """What frontends >= 1.53.6 sent with DreamShot's older extension (links moved onto other sockets):
    the server accepts it (numbered sockets are not type-checked) and the node refuses it by name."""
    prompt = _prompt(server, "dreamshot_reference_to_shot.json")
    pack = next(i for i, n in prompt.items() if n["class_type"] == "DreamShotShotSequencePack")
    source = next(i for i, n in prompt.items() if n["class_type"] == source_type)
    prompt[pack]["inputs"][socket] = [source, 0]
    with pytest.raises(PromptFailed, match=rf"Shot Sequence Pack: input '{socket}': {needle}\. Fix: connect only"):
        server.wait(server.queue(prompt), timeout=300)
