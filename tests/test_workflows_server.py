"""Every bundled workflow, as saved for the frontend, executed by the REAL ComfyUI server on
127.0.0.1 with this pack installed in custom_nodes.

The workflows name real model files; the test server's models folder maps those names to tiny
random Wan-format files (the full-size random Wan2.1 and Wan2.2 VAEs: neither can shrink). ComfyUI's stock CLIPLoader cannot
build a tiny UMT5, so the test swaps CLIPLoader for a test-only loader node with the same output.
Width/height drop to 64x64 and steps to 2 to keep CI fast; nothing else in the graph changes.
The official-weights workflows get the tiny DiT under the 14B file name and synthetic LoRA files with
the released files' key names (tests/support/official_loras.py).
"""

from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.build_workflows import (BOARDS, DISTILL_LORA, DIT, DIT_14B, DIT_5B, DIT_A14B_HIGH, DIT_A14B_LOW,
                                     FLF2V, INPUT_IMAGES, RL_LORA, SFT_LORA, SHOT_LORA, STORY, STORY_DIR,
                                     STORY_FILE, TEXT_ENCODER, VAE, VAE_22, WORKFLOWS_BUILT)
from support.official_loras import distill_lora, released_lora
from support.server import ComfyServer, PromptFailed, PromptRejected, make_base_dir
from support.workflow_api import ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir, wan22_models_dir, comfy_root, comfy_headless):
    from support.tiny_flf2v import write_tiny_flf2v

    base = tmp_path_factory.mktemp("comfy_base")
    flf2v = write_tiny_flf2v(base / "src_flf2v.safetensors")
    inputs = {}
    for i, name in enumerate(INPUT_IMAGES):
        path = base / f"src_{name}"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(path)
        inputs[name] = path
    import safetensors.torch

    loras = {}
    for name, sd in ((SFT_LORA, released_lora(1)), (RL_LORA, released_lora(2)), (DISTILL_LORA, distill_lora(3)),
                     (SHOT_LORA, distill_lora(4))):
        loras[name] = base / f"src_{name}"
        safetensors.torch.save_file(sd, str(loras[name]))
    make_base_dir(base, models={"diffusion_models": {DIT: tiny_models_dir / "dit.safetensors",
                                                     DIT_14B: tiny_models_dir / "dit.safetensors",
                                                     DIT_5B: wan22_models_dir / "dit_wan22_5b.safetensors",
                                                     DIT_A14B_HIGH: tiny_models_dir / "dit.safetensors",
                                                     DIT_A14B_LOW: wan22_models_dir / "dit_low_noise.safetensors",
                                                     FLF2V: flf2v},
                                "vae": {VAE: tiny_models_dir / "vae.safetensors",
                                        VAE_22: wan22_models_dir / "vae_wan22.safetensors"},
                                "text_encoders": {TEXT_ENCODER: tiny_models_dir / "umt5.safetensors"},
                                "dreamshot": {SFT_LORA: loras[SFT_LORA], RL_LORA: loras[RL_LORA]},
                                "loras": {DISTILL_LORA: loras[DISTILL_LORA], SHOT_LORA: loras[SHOT_LORA]}},
                  inputs=inputs)
    # the example story, as a user copies it into ComfyUI/input for Load Story
    shutil.copyfile(STORY_DIR / STORY_FILE, base / "input" / STORY_FILE)
    shutil.copytree(STORY_DIR / Path(STORY_FILE).stem, base / "input" / Path(STORY_FILE).stem)
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
        if node["class_type"] in ("DreamShotSampler", "KSampler"):
            node["inputs"].update(steps=2)
        if node["class_type"] == "WanFirstLastFrameToVideo":
            node["inputs"].update(width=64, height=64, length=5)
        if node["class_type"] == "ImageFromBatch":
            node["inputs"].update(length=4)          # drops the last of 5 frames, as 32 of 33 in the file
    if any(n["class_type"] == "VAELoader" and n["inputs"]["vae_name"] == VAE_22 for n in prompt.values()):
        for node in prompt.values():   # the full-size random Wan2.2 VAE is 705M parameters: 64x32
            if node["class_type"] == "DreamShotShotSequencePack":
                node["inputs"].update(height=32)
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
    videos = [r for i, r in entry["outputs"].items() if prompt[i]["class_type"] == "SaveVideo"]
    assert saved or sheets or videos
    size = (32, 64, 3) if name.startswith("dreamshot_wan22_5b") else (64, 64, 3)
    for images in saved.values():
        assert len(images) == len(STORY) and all(im.shape == size for im in images)
    for images in sheets.values():
        assert len(images) == 1 and images[0].shape[0] > size[0]


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


def _on_wan22_5b(prompt):
    """The same graph on Wan2.2-TI2V-5B: its DiT and its VAE (48 channels, 16x), 64x32 (multiples of 32)."""
    for node in prompt.values():
        if node["class_type"] == "UNETLoader":
            node["inputs"]["unet_name"] = DIT_5B
        if node["class_type"] == "VAELoader":
            node["inputs"]["vae_name"] = VAE_22
        if node["class_type"] == "DreamShotShotSequencePack":
            node["inputs"].update(width=64, height=32)
    return prompt


@pytest.mark.parametrize("name", ["dreamshot_text_to_shot.json", "dreamshot_shot_to_shot.json"])
def test_modes_run_on_wan22_5b_in_the_real_server(server, name):
    """T2S and S2S on the 5B (R2S with the RACL patch is its bundled workflow, edit below; the kept
    frames' exactness on the 5B: tests/test_wan22.py)."""
    prompt = _on_wan22_5b(_prompt(server, name))
    entry = server.wait(server.queue(prompt), timeout=900)
    [images] = _images(server, entry, "SaveImage", prompt).values()
    assert len(images) == len(STORY) and all(im.shape == (32, 64, 3) for im in images)


def test_edit_on_wan22_5b_keeps_locked_shots_identical(server):
    prompt = _on_wan22_5b(_prompt(server, "dreamshot_edit_one_shot.json"))
    samplers = [i for i, n in prompt.items() if n["class_type"] == "DreamShotSampler"]
    prompt["900"] = {"class_type": "SaveImage", "inputs": {"images": [samplers[0], 0], "filename_prefix": "before"}}
    prompt["901"] = {"class_type": "SaveImage", "inputs": {"images": [samplers[1], 0], "filename_prefix": "after"}}
    entry = server.wait(server.queue(prompt), timeout=900)
    saved = _images(server, entry, "SaveImage", prompt)
    before, after = saved["900"], saved["901"]
    for j in (0, 1, 3):
        assert np.array_equal(before[j], after[j]), f"locked shot {j + 1} changed"
    assert not np.array_equal(before[2], after[2])


def test_two_experts_switch_at_the_boundary_in_the_real_server(server, tiny_wan_model):
    """The A14B workflow at 8 steps: the server's sampler logs the split; it is where ComfyUI's own
    schedule for the workflow's shift crosses sigma 0.875."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    prompt = _prompt(server, "dreamshot_wan22_a14b_two_experts.json")
    sampler = next(n for n in prompt.values() if n["class_type"] == "DreamShotSampler")
    sampler["inputs"].update(steps=8)
    shift = next(n for n in prompt.values() if n["class_type"] == "ModelSamplingSD3")["inputs"]["shift"]
    sigmas = comfy.samplers.KSampler(ModelSamplingSD3().patch(tiny_wan_model, shift)[0], steps=8, device="cpu",
                                     sampler="euler", scheduler="simple").sigmas
    switch = next(i for i in range(8) if float(sigmas[i]) < 0.875)
    assert 0 < switch < 8
    start = server.log_path.stat().st_size
    entry = server.wait(server.queue(prompt), timeout=900)
    [images] = _images(server, entry, "DreamShotStoryboardSheet", prompt).values()
    assert len(images) == 1
    with open(server.log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    assert f"two experts, {switch} step(s) with the high-noise model, {8 - switch} with the low-noise one " \
           f"(switch at step {switch}," in text


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


CAST6 = ("Ayla", "Ben", "Cora", "Dev", "Eli", "Fay")
SHOTS12 = [("Ayla and Ben meet at the market", "Ayla, Ben", "Ayla: 0, 0, 0.5, 1; Ben: 0.5, 0, 1, 1"),
           ("Ayla buys bread", "Ayla", ""), ("Ben shows Cora a map", "Ben, Cora", ""), ("Cora studies the map", "Cora", ""),
           ("Ayla and Cora walk to the gate", "Ayla, Cora", "Ayla: 0, 0, 0.5, 1; Cora: 0.5, 0, 1, 1"),
           ("Ben alone on the bridge", "Ben", ""),
           ("Dev and Eli load a cart", "Dev, Eli", "Dev: 0, 0, 0.5, 1; Eli: 0.5, 0, 1, 1"), ("Eli waves", "Eli", ""),
           ("Fay stops Dev on the road", "Fay, Dev", ""), ("everyone gathers at the inn", ", ".join(CAST6), ""),
           ("Dev and Fay dance", "Dev, Fay", ""), ("Eli alone at the window", "Eli", "")]


def test_six_characters_twelve_shots_in_chunks_with_the_racl_patch(server):
    """More characters than one pass needs: 6 characters, 12 shots, 6 shots per pass (the official
    chunk) with 1 context shot, the RACL patch on every block; each pass packs only its own shots'
    cast (the sampler logs every pass with its references). 32x32, one step: the full-size random VAE
    is most of the cost."""
    p = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
         "2": {"class_type": "LoadDreamShotModel", "inputs": {
             "model": ["1", 0], "lora_name": "None", "strength": 1.0, "lora_2_name": "None", "lora_2_strength": 1.0,
             "distill_lora_name": "None", "distill_lora_strength": 1.0}},
         "3": {"class_type": "DreamShotRACLAttentionPatch", "inputs": {
             "model": ["2", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "layers": "all",
             "auto_regions": True}},
         "4": {"class_type": "DreamShotTestTinyUMT5Loader", "inputs": {"clip_name": TEXT_ENCODER, "type": "wan",
                                                                      "device": "default"}},
         "5": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}}
    images = []
    for i, name in enumerate(INPUT_IMAGES):
        p[f"1{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        images.append([f"1{i}", 0])
    for i in range(2):      # six different pictures from the four files
        p[f"2{i}"] = {"class_type": "ImageInvert", "inputs": {"image": images[i]}}
        images.append([f"2{i}", 0])
    prev = None
    for i, name in enumerate(CAST6):
        p[f"3{i}"] = {"class_type": "DreamShotCharacterReference", "inputs": {
            "image": images[i], "name": name, "description": f"{name}, a traveller", **({"characters": prev} if prev else {})}}
        prev = [f"3{i}", 0]
    cast, prev = prev, None
    for j, (prompt, who, boxes) in enumerate(SHOTS12):
        p[f"4{j:02d}"] = {"class_type": "DreamShotShotScript", "inputs": {
            "prompt": prompt, "characters": who, "character_boxes": boxes, **({"shots": prev} if prev else {})}}
        prev = [f"4{j:02d}", 0]
    p["50"] = {"class_type": "DreamShotShotSequencePack", "inputs": {
        "vae": ["5", 0], "clip": ["4", 0], "shots": prev, "characters": cast, "width": 32, "height": 32,
        "mode": "reference_to_shot", "negative_prompt": "", "repeat": 4, "fit": "pad_white", "max_latent_frames": 21}}
    p["51"] = {"class_type": "DreamShotSampler", "inputs": {
        "model": ["3", 0], "sequence": ["50", 0], "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "ref_cfg": 1.0, "chunk_size": 6, "context_shots": 1}}
    p["52"] = {"class_type": "SaveImage", "inputs": {"images": ["51", 0], "filename_prefix": "DreamShot/six"}}
    start = server.log_path.stat().st_size
    entry = server.wait(server.queue(p), timeout=900)
    saved = _images(server, entry, "SaveImage", p)["52"]
    assert len(saved) == 12 and all(im.shape == (32, 32, 3) for im in saved)
    with open(server.log_path, "rb") as f:
        f.seek(start)
        passes = re.findall(r"pass (\d)/2: shots (\d+)-(\d+), (\d) context shot\(s\), references: ([^(]+) \((\d+) latent",
                            f.read().decode(errors="replace"))
    assert [(int(a), int(b), int(c), int(d), refs.strip(), int(n)) for a, b, c, d, refs, n in passes] == [
        (1, 1, 6, 0, "Ayla, Ben, Cora", 3 + 6),              # the first pass packs only its own three
        (2, 7, 12, 1, ", ".join(CAST6), 6 + 1 + 6)]


def yuv420(picture) -> np.ndarray:
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[..., :3]), format="rgb24")
    return frame.reformat(format="yuv420p").reformat(format="rgb24").to_ndarray().astype(float)


def test_story_workflow_makes_sheet_animatic_timeline_and_story(server):
    """Load Story (the timed example) -> sampler -> Storyboard Sheet + Storyboard Animatic -> Save Video +
    Editorial Timeline, Save Story beside: the MP4 decodes with PyAV with round(11 s x 24) frames and
    each shot opening on its keyframe; the .otio reads back with the shots' names and durations, the
    .edl and .xml parse; the saved story keeps the timing."""
    import av
    import opentimelineio as otio

    from dreamshot.story_file import read_story
    from dreamshot.timeline import available_formats

    prompt = _prompt(server, "dreamshot_story_animatic_timeline.json")
    animatic = next(i for i, n in prompt.items() if n["class_type"] == "DreamShotStoryboardAnimatic")
    # burned-in text and camera moves off: each shot's first frame is then its keyframe
    prompt[animatic]["inputs"].update(shot_numbers=False, timecode=False, captions=False, camera_moves=False)
    sampler = next(i for i, n in prompt.items() if n["class_type"] == "DreamShotSampler")
    prompt["900"] = {"class_type": "SaveImage", "inputs": {"images": [sampler, 0], "filename_prefix": "keys"}}
    entry = server.wait(server.queue(prompt), timeout=900)
    out = server.base_dir / "output"
    keys = _images(server, entry, "SaveImage", prompt)["900"]
    story = read_story(STORY_DIR / STORY_FILE)
    durations = [s.duration for s in story.shots]
    assert durations == [3.0, 2.5, 2.0, 3.5]

    video = next(r for i, r in entry["outputs"].items() if prompt[i]["class_type"] == "SaveVideo")
    [saved] = video["images"]                    # 0.3.64's PreviewVideo reports under "images"
    with av.open(str(out / saved["subfolder"] / saved["filename"])) as c:
        assert Fraction(c.streams.video[0].average_rate) == 24
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    assert len(frames) == round(sum(durations) * 24) == 264
    for j, start in enumerate((0, 72, 132, 180)):
        # H.264 4:2:0: the best a decoded frame can be is the keyframe's own round trip through yuv420p
        # (the tiny random model draws noise, the hardest case for the encoder)
        err = [np.abs(frames[start] - yuv420(k)).mean() for k in keys]
        assert err[j] < 4 and err[j] < min(e for i, e in enumerate(err) if i != j) / 3, (j, err)

    [timeline_node] = [i for i, n in prompt.items() if n["class_type"] == "DreamShotEditorialTimeline"]
    text = entry["outputs"][timeline_node]["text"][0]
    rel = re.match(r"saved (\S+\.otio)", text).group(1)
    timeline = otio.adapters.read_from_file(str(out / rel))
    assert timeline.name == "The Lighthouse"
    boards, cut = timeline.tracks[:2]
    assert [(c.name, c.duration().value) for c in boards] == [("Shot 1", 72), ("Shot 2", 60), ("Shot 3", 48),
                                                               ("Shot 4", 84)]
    assert [c.source_range.start_time.value for c in cut] == [0, 72, 132, 180]
    assert [m.name for m in boards[2].markers] == ["MIRA: Just in time, Pip."]
    for clip in list(boards) + list(cut):
        assert (out / rel).parent.joinpath(clip.media_reference.target_url).is_file()
    formats = available_formats()
    if formats["edl"]:
        edl = otio.adapters.read_from_file(str(out / rel.replace(".otio", ".edl")), rate=24)
        assert [(c.name, c.duration().value) for c in edl.find_clips()] == [(c.name, c.duration().value) for c in boards]
    if formats["xml"]:
        xml = otio.adapters.read_from_file(str(out / rel.replace(".otio", ".xml")))
        assert [c.name for c in xml.tracks[0]] == ["Shot 1", "Shot 2", "Shot 3", "Shot 4"]

    [save_node] = [i for i, n in prompt.items() if n["class_type"] == "DreamShotSaveStory"]
    saved_story = read_story(out / entry["outputs"][save_node]["text"][0].removeprefix("saved "))
    assert [(s.duration, s.shot_size, s.camera, s.dialogue) for s in saved_story.shots] == \
        [(s.duration, s.shot_size, s.camera, s.dialogue) for s in story.shots]


def test_animate_between_boards_joins_one_clip_per_pair(server):
    """ComfyUI's native Wan2.1 first-last-frame nodes on a tiny random FLF2V checkpoint (the 14B FLF2V's
    format: i2v, 36 input channels, FLF position embedding), one clip per pair of consecutive boards,
    joined without repeating the shared boards: 4 + 4 + 5 frames at 16 fps for length 5."""
    import av

    prompt = _prompt(server, "dreamshot_animate_between_boards.json")
    assert sorted(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage") == list(BOARDS)
    flf = [n for n in prompt.values() if n["class_type"] == "WanFirstLastFrameToVideo"]
    assert len(flf) == len(BOARDS) - 1
    # each pair's start and end images are consecutive boards
    board_of = {i: n["inputs"]["image"] for i, n in prompt.items() if n["class_type"] == "LoadImage"}
    pairs = sorted((board_of[n["inputs"]["start_image"][0]], board_of[n["inputs"]["end_image"][0]]) for n in flf)
    assert pairs == list(zip(BOARDS, BOARDS[1:]))
    entry = server.wait(server.queue(prompt), timeout=900)
    [video] = [r for i, r in entry["outputs"].items() if prompt[i]["class_type"] == "SaveVideo"]
    [saved] = video["images"]
    with av.open(str(server.base_dir / "output" / saved["subfolder"] / saved["filename"])) as c:
        assert Fraction(c.streams.video[0].average_rate) == 16
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4 + 4 + 5 and frames[0].shape == (64, 64, 3)
