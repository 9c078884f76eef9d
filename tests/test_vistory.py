"""python -m dreamshot.vistory: the ViStoryBench story format (pure), then the runner on a generated
two-story sample through ComfyUI's loaders and the tiny Wan models (resume included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.vistory.stories import read_stories, story_cast

SUPPORT = Path(__file__).resolve().parent / "support"


def write_sample(root: Path) -> Path:
    """Two stories in the released JSON's format; references of odd sizes (padded white to the shot)."""
    data = root / "VistoryBench"
    for rel, size, colour in (("01/image/role0/00.png", (40, 64), (200, 30, 30)),
                              ("01/image/role1/00.jpg", (64, 32), (30, 30, 200)),
                              ("02/image/role0/00.png", (48, 48), (30, 160, 30))):
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, colour).save(p)
    stories = {
        "02": {"prompt_cn": ["<角色0>在森林里散步。", "一条空荡荡的小路。"],
               "role_indices": {"0": [0], "1": []},
               "ref_prompt_cn_format": ["<角色0>：一个穿绿衣服的男孩。"],
               "fg_url_list": ["02/image/role0/00.png"]},
        "01": {"prompt_cn": ["<角色0>和<角色1>在车站。", "<角色0>独自在雨中。", "<角色1>读信。"],
               "role_indices": {"0": [0, 1], "1": [0], "2": [1]},
               "ref_prompt_cn_format": ["<角色0>：红衣女子。", "<角色1>：蓝衣男子。"],
               "fg_url_list": ["01/image/role0/00.png", "01/image/role1/00.jpg"]},
    }
    path = root / "vistory_sample.json"
    path.write_text(json.dumps(stories, ensure_ascii=False), encoding="utf-8")
    return path


def test_stories_are_read_as_the_official_runner_reads_them(tmp_path):
    path = write_sample(tmp_path)
    stories = read_stories(path, tmp_path / "VistoryBench")
    assert [s.key for s in stories] == ["01", "02"]          # sorted by key
    s1, s2 = stories
    assert s1.roles == ((0, 1), (0,), (1,)) and s2.roles == ((0,), ())
    assert s1.prompts[0] == "<角色0>和<角色1>在车站。"          # verbatim, role tags kept
    chars, shots = story_cast(s1, with_references=True)
    assert [c.name for c in chars] == ["role0", "role1"]
    assert chars[0].description == "<角色0>：红衣女子。" and tuple(chars[1].images.shape) == (1, 32, 64, 3)
    assert [s.characters for s in shots] == [("role0", "role1"), ("role0",), ("role1",)]
    chars, shots = story_cast(s2, with_references=False)
    assert chars == [] and shots[1].characters == ()
    assert [s.key for s in read_stories(path, tmp_path / "VistoryBench", only=["02"])] == ["02"]


@pytest.mark.parametrize("patch, needle", [
    (lambda s: s["01"].pop("prompt_cn"), "story '01': has no 'prompt_cn' field"),
    (lambda s: s["01"]["role_indices"].update({"7": [0]}), "names shot '7', but the story has 3 shot"),
    (lambda s: s["01"]["role_indices"].update({"1": [2]}), "roles [2] must be ids 0..1"),
    (lambda s: s["01"]["fg_url_list"].__setitem__(0, "../../etc/passwd"), "leaves --data-root"),
    (lambda s: s["01"]["fg_url_list"].__setitem__(0, "/etc/passwd"), "must be a relative path"),
    (lambda s: s["01"]["fg_url_list"].__setitem__(0, "01/missing.png"), "reference image of role 0 not found"),
    (lambda s: s["01"]["ref_prompt_cn_format"].pop(), "must be lists of one entry per role"),
])
def test_bad_story_files_are_named(tmp_path, patch, needle):
    path = write_sample(tmp_path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    patch(raw)
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DreamShotInputError, match="input 'stories'") as e:
        read_stories(path, tmp_path / "VistoryBench")
    assert needle in str(e.value) and "Fix:" in str(e.value)


# -- the runner, in the real ComfyUI ---------------------------------------------------------------
def _args(tmp_path, models, out, *extra):
    return ["--stories", str(tmp_path / "vistory_sample.json"), "--data-root", str(tmp_path / "VistoryBench"),
            "--out", str(out), "--dit", str(models / "dit.safetensors"), "--vae", str(models / "vae.safetensors"),
            "--text-encoder", str(models / "umt5.safetensors"),
            "--text-encoder-config", str(SUPPORT / "test_nodes_pack" / "tiny_umt5_config.json"),
            "--width", "64", "--height", "64", "--steps", "2", "--target-frame", "2", "--context-frame", "1",
            "--dit-dtype", "fp32", "--log-level", "WARNING", *extra]


@pytest.mark.comfyui
@pytest.mark.slow
def test_runner_writes_the_evaluator_layout_and_resumes(tmp_path, tiny_models_dir):
    from dreamshot.vistory.__main__ import main

    write_sample(tmp_path)
    out = tmp_path / "out"
    chunks = []
    assert main(_args(tmp_path, tiny_models_dir, out), on_chunk=chunks.append) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["01/1.png", "01/2.png", "01/3.png", "02/1.png", "02/2.png"]
    for p in out.rglob("*.png"):
        assert Image.open(p).size == (64, 64)
    # Story 01 in passes of 2 with 1 context shot: (shots 1-2, refs of roles 0+1), (shot 2 as context +
    # shot 3, only role 1's reference); story 02 in one pass with role 0 only.
    assert [c.layout.num_refs for c in chunks] == [2, 1, 1]
    assert [c.layout.num_shots for c in chunks] == [2, 2, 2]
    assert [c.layout.clean_shots for c in chunks] == [(False, False), (True, False), (False, False)]
    assert [c.plan.characters[0].description for c in chunks] == ["<角色0>：红衣女子。", "<角色1>：蓝衣男子。",
                                                                   "<角色0>：一个穿绿衣服的男孩。"]
    # The context shot is the saved PNG of shot 2, exactly.
    saved = np.asarray(Image.open(out / "01" / "2.png"), dtype=np.float32) / 255
    assert np.array_equal(chunks[1].plan.shot_images[0].numpy(), saved)
    before = {p.name: p.read_bytes() for p in (out / "01").glob("*.png")}

    # Resume: a run killed after shot 2 of story 01 left 1.png and 2.png; the rerun makes only the
    # missing pass, from the saved context, and writes the same file an uninterrupted run wrote.
    (out / "01" / "3.png").unlink()
    chunks.clear()
    assert main(_args(tmp_path, tiny_models_dir, out), on_chunk=chunks.append) == 0
    assert [c.layout.num_shots for c in chunks] == [2]          # only story 01's last pass
    assert {p.name: p.read_bytes() for p in (out / "01").glob("*.png")} == before
    assert not list(out.rglob("*.tmp"))
    chunks.clear()
    assert main(_args(tmp_path, tiny_models_dir, out), on_chunk=chunks.append) == 0
    assert chunks == []                                           # everything done: nothing sampled


@pytest.mark.comfyui
def test_runner_refuses_bad_input_before_loading_models(tmp_path, tiny_models_dir, caplog):
    from dreamshot.vistory.__main__ import main

    write_sample(tmp_path)
    assert main(_args(tmp_path, tiny_models_dir, tmp_path / "out", "--only", "99")) == 2
    assert "unknown story key(s) ['99']" in caplog.text
    bad = _args(tmp_path, tiny_models_dir, tmp_path / "out")
    bad[bad.index("--dit") + 1] = str(tmp_path / "missing.safetensors")
    assert main(bad) == 2
    assert "model.dit: file" in caplog.text
