"""python -m dreamshot.vistory: the ViStoryBench story format and the shard split (pure), then the
runner on a generated two-story sample through ComfyUI's loaders and the tiny Wan models: one
process, then two shards (one killed and resumed, one a torchrun rank) that must write the same bytes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.vistory.shards import Shard, resolve_shard, use_rank_device
from dreamshot.vistory.stories import read_stories, story_cast

SUPPORT = Path(__file__).resolve().parent / "support"
REPO = SUPPORT.parents[1]


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


def test_shards_split_the_stories_deterministically():
    keys = [f"{k:02d}" for k in range(1, 81)]
    shards = [Shard(i, 3).select(keys) for i in range(3)]
    assert shards[1][:3] == ["02", "05", "08"] and [len(s) for s in shards] == [27, 27, 26]
    assert sorted(k for s in shards for k in s) == keys            # every story exactly once
    assert Shard().select(keys) == keys
    assert Shard(4, 100).select(keys) == ["05"] and Shard(90, 100).select(keys) == []


def test_shard_comes_from_the_option_or_torchrun():
    assert resolve_shard("1/4", {}) == Shard(1, 4)
    assert resolve_shard(" 0 / 2 ", {"LOCAL_RANK": "0"}) == Shard(0, 2, local_rank=0)
    assert resolve_shard(None, {}) == Shard()
    assert resolve_shard(None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Shard(3, 8, local_rank=1)
    assert resolve_shard("2/3", {"RANK": "0", "WORLD_SIZE": "1"}) == Shard(2, 3)   # torchrun with one process
    assert str(Shard(3, 8)) == "3/8"
    # torchrun ranks run on cuda:LOCAL_RANK; without CUDA (or torchrun) ComfyUI picks the device.
    assert use_rank_device(Shard(3, 8, local_rank=1), True, 2) == 1
    assert use_rank_device(Shard(3, 8, local_rank=1), False, 0) is None
    assert use_rank_device(Shard(1, 4), True, 2) is None


@pytest.mark.parametrize("option, environ, needle", [
    ("4/4", {}, "input 'shard': --shard 4/4: the index must be below the number of shards"),
    ("1/0", {}, "--shard 1/0: the index must be below"),
    ("2", {}, "--shard '2' is not of the form i/n"),
    ("-1/2", {}, "--shard '-1/2' is not of the form i/n"),
    ("0/2", {"RANK": "1", "WORLD_SIZE": "2"}, "--shard 0/2 was given to a torchrun rank (RANK=1, WORLD_SIZE=2)"),
    (None, {"RANK": "2", "WORLD_SIZE": "2"}, "input 'RANK': RANK=2 with WORLD_SIZE=2"),
    (None, {"WORLD_SIZE": "2"}, "RANK=None with WORLD_SIZE=2"),
    (None, {"RANK": "x", "WORLD_SIZE": "2"}, "input 'RANK': the environment variable RANK='x'"),
])
def test_bad_shards_are_named(option, environ, needle):
    with pytest.raises(DreamShotInputError) as e:
        resolve_shard(option, environ)
    assert needle in str(e.value) and "Fix:" in str(e.value)


def test_a_rank_without_its_own_gpu_is_refused():
    with pytest.raises(DreamShotInputError, match="LOCAL_RANK=2, but only 2 CUDA device") as e:
        use_rank_device(Shard(2, 3, local_rank=2), True, 2)
    assert "--nproc-per-node 2 or fewer" in str(e.value)


# -- the runner, in the real ComfyUI ---------------------------------------------------------------
def _args(tmp_path, models, out, *extra):
    return ["--stories", str(tmp_path / "vistory_sample.json"), "--data-root", str(tmp_path / "VistoryBench"),
            "--out", str(out), "--dit", str(models / "dit.safetensors"), "--vae", str(models / "vae.safetensors"),
            "--text-encoder", str(models / "umt5.safetensors"),
            "--text-encoder-config", str(SUPPORT / "test_nodes_pack" / "tiny_umt5_config.json"),
            "--width", "64", "--height", "64", "--steps", "2", "--target-frame", "2", "--context-frame", "1",
            "--dit-dtype", "fp32", "--log-level", "WARNING", *extra]


class Killed(Exception):
    """Stands for a process killed between two passes."""


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_models_dir):
    """The two-story sample generated by one process: (sample folder, output folder, chunks sampled)."""
    from dreamshot.vistory.__main__ import main

    root = tmp_path_factory.mktemp("vistory")
    write_sample(root)
    chunks = []
    assert main(_args(root, tiny_models_dir, root / "out"), on_chunk=chunks.append) == 0
    return root, root / "out", chunks


@pytest.mark.slow
def test_runner_writes_the_evaluator_layout(one_process_run):
    _, out, chunks = one_process_run
    assert sorted(_files(out)) == ["01/1.png", "01/2.png", "01/3.png", "02/1.png", "02/2.png"]
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


@pytest.mark.slow
def test_shards_write_the_one_process_files_and_resume(one_process_run, tiny_models_dir, comfy_root, caplog):
    """Shard 0/2 (story 01) killed after its first pass, then resumed; shard 1/2 (story 02) as a torchrun
    rank in a fresh process (RANK/WORLD_SIZE): the same bytes as one process that ran 01 then 02, so
    story 02 does not depend on 01 having run before it."""
    from dreamshot.vistory.__main__ import main

    root, reference, _ = one_process_run
    out = root / "sharded"
    args = _args(root, tiny_models_dir, out)

    seen = []

    def kill_at_second_pass(chunk):
        seen.append(chunk)
        if len(seen) == 2:
            raise Killed
    with pytest.raises(Killed):
        main([*args, "--shard", "0/2"], on_chunk=kill_at_second_pass)
    assert sorted(_files(out)) == ["01/1.png", "01/2.png"]

    chunks = []
    caplog.set_level(logging.INFO, logger="DreamShot.vistory")
    assert main([*args, "--shard", "0/2", "--log-level", "INFO"], on_chunk=chunks.append) == 0
    assert [(c.layout.num_shots, c.layout.clean_shots) for c in chunks] == [(2, (True, False))]  # the last pass only
    assert "shard 0/2: 1 of 2 stories (01), 1 to do" in caplog.text
    assert "shard 0/2 done: 1 stories (0 new, 1 resumed, 0 already done), 1 shots generated, 2 already there" \
        in caplog.text
    assert sorted(_files(out)) == ["01/1.png", "01/2.png", "01/3.png"]   # nothing of shard 1's story

    # This process's thread count: CPU kernels round differently with another one (seen here: story
    # 02 off by 1/255 in 3 values under OMP_NUM_THREADS=1, which torchrun sets; identical with 2).
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "dreamshot.vistory", *args, "--comfyui", str(comfy_root),
                          "--log-level", "INFO"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard 1/2: 1 of 2 stories (02), 1 to do" in run.stderr
    assert "shard 1/2 done: 1 stories (1 new, 0 resumed, 0 already done), 2 shots generated" in run.stderr

    assert _files(out) == _files(reference)          # same names, same bytes; no temp files left
    chunks.clear()
    assert main(args, on_chunk=chunks.append) == 0   # one process over the sharded output: all done
    assert chunks == []


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
    assert main(_args(tmp_path, tiny_models_dir, tmp_path / "out", "--shard", "2/2")) == 2
    assert "input 'shard': --shard 2/2: the index must be below" in caplog.text
