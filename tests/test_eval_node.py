"""Storyboard Metrics node inside the real pinned ComfyUI (loaded by ComfyUI's own custom-node loader;
its folder_paths, V3 io/ui and progress bar, no stubs).

The node's work (``measure_keyframes``) takes any FaceAnalyzer: it is run here with
``dreamshot.shapes.ShapeAnalyzer``, a STAND-IN for insightface (synthetic shape characters detected
by colour, one fixed-seed identity vector each). The node's own model loading is run for real:
folders listed from models/insightface and models/dreamshot_clip, clear errors for missing, empty
and escaping folders, and a full execute with a tiny random local CLIP."""

from __future__ import annotations

import importlib
import os
import re

import numpy as np
import pytest
import torch
from support.node_calls import comfy_folders, run_node

from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, render_scene

RUBY, MOSS = SHAPE_CAST[:2]
W, H = 160, 96
LEFT, RIGHT = (8, 16, 64, 80), (96, 16, 152, 80)


@pytest.fixture(scope="module")
def metrics_node(pack_nodes):
    cls = pack_nodes["DreamShotStoryMetrics"]
    return cls, importlib.import_module(cls.__module__)


@pytest.fixture
def model_dirs(metrics_node, tmp_path):
    """Fresh models/insightface and models/dreamshot_clip bases (restored afterwards)."""
    import folder_paths

    module = metrics_node[1]
    module.register_metric_folders()
    saved = {k: folder_paths.folder_names_and_paths[k] for k in (module.FACE_FOLDER, module.CLIP_FOLDER)}
    dirs = {}
    for key in saved:
        d = tmp_path / "models" / key
        d.mkdir(parents=True)
        folder_paths.folder_names_and_paths[key] = ([str(d)], saved[key][1])
        dirs[key] = d
    yield dirs
    folder_paths.folder_names_and_paths.update(saved)


def as_image(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def sequence(pack_module, boxes: bool = True):
    """A real StorySequence (plan_story from the pack's own module) with shape characters as the cast."""
    story = pack_module("story")
    refs = {who.name: as_image(render_scene(96, 96, [(who, (16, 16, 80, 80))], background_seed=s)[0])[None]
            for who, s in ((RUBY, 1), (MOSS, 2))}
    chars = [story.Character(name, img) for name, img in refs.items()]
    both = (("Ruby", (0.0, 0.0, 0.5, 1.0)), ("Moss", (0.5, 0.0, 1.0, 1.0))) if boxes else ()
    shots = [story.Shot("ruby waits", ("Ruby",)), story.Shot("moss arrives", ("Moss",)),
             story.Shot("they meet", ("Ruby", "Moss"), regions=both)]
    plan = story.plan_story(chars, shots, W, H, mode="reference_to_shot")
    return story.StorySequence(plan=plan, latent=torch.zeros(1), positive=torch.zeros(1), negative=torch.zeros(1),
                               segment_length=1)


def keyframes(*placements) -> torch.Tensor:
    return torch.stack([as_image(render_scene(W, H, p, background_seed=9 + j)[0]) for j, p in enumerate(placements)])


GOOD = ([(RUBY, LEFT)], [(MOSS, RIGHT)], [(RUBY, LEFT), (MOSS, RIGHT)])
SWAPPED = ([(MOSS, LEFT)], [(RUBY, RIGHT)], [(MOSS, LEFT), (RUBY, RIGHT)])


def summary(table: str) -> dict[str, str]:
    """The story summary row of the node's table, by header."""
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")]
    head, row = lines[-3], lines[-1]
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]   # noqa: E731
    return dict(zip(cells(head), cells(row)))


def test_schema(metrics_node):
    cls = metrics_node[0]
    schema = cls.GET_SCHEMA()
    assert schema.node_id == "DreamShotStoryMetrics" and schema.display_name == "Storyboard Metrics"
    assert schema.category == "DreamShot/output" and schema.is_output_node and schema.description
    assert [i.id for i in schema.inputs] == ["keyframes", "sequence", "face_model", "clip_model"]
    assert all(i.tooltip for i in schema.inputs)
    info = cls.GET_NODE_INFO_V1()
    assert info["input"]["required"]["sequence"][0] == "DREAMSHOT_SEQUENCE"
    assert info["input"]["required"]["face_model"][1]["options"][0] == "None"
    assert info["output"] == ["STRING"]


def test_measures_a_storyboard_with_the_stand_in(metrics_node, pack_module):
    module = metrics_node[1]
    table, result = module.measure_keyframes(keyframes(*GOOD), sequence(pack_module), ShapeAnalyzer(), None)
    m = result.identity
    assert (m.appearances, m.found, m.misses, m.confused) == (4, 4, 0, 0) and m.identity_similarity > 0.95
    s = summary(table)
    assert s["confusion"] == "0.000" and s["miss"] == "0.000" and float(s["ID sim"]) > 0.95 and s["CLIP"] == "–"
    assert table.count("| ok") == 3


def test_swapped_and_missing_characters_show_in_the_table(metrics_node, pack_module):
    module = metrics_node[1]
    table, result = module.measure_keyframes(keyframes(*SWAPPED), sequence(pack_module), ShapeAnalyzer(), None)
    # The Shot Script's boxes put Ruby left and Moss right in shot 3, so the swap there counts too.
    assert result.identity.confusion_rate == 1.0
    assert "Ruby: confused" in table and "Moss: confused" in table
    table, result = module.measure_keyframes(keyframes([(RUBY, LEFT)], [], [(RUBY, LEFT)]), sequence(pack_module),
                                             ShapeAnalyzer(), None)
    assert result.identity.misses == 2 and summary(table)["miss"] == "0.500"
    assert re.search(r"^\|\s+2 \| Moss .*Moss: missed", table, re.M)


def test_mask_regions_become_boxes(metrics_node, pack_module):
    module = metrics_node[1]
    seq = sequence(pack_module, boxes=False)
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1
    story = pack_module("story")
    shot = seq.plan.shots[2]
    seq.plan.shots = seq.plan.shots[:2] + (story.Shot(shot.prompt, shot.characters,
                                                      regions=(("Ruby", left), ("Moss", 1 - left))),)
    measured = module.story_from_sequence(seq)
    assert measured.shot_boxes[2] == {0: (0.0, 0.0, 0.5, 1.0), 1: (0.5, 0.0, 1.0, 1.0)}
    assert measured.shot_boxes[0] == {} and measured.names == ("Ruby", "Moss")


def test_errors_name_the_node_and_the_input(metrics_node, pack_module, model_dirs):
    cls, module = metrics_node
    frames, seq = keyframes(*GOOD), sequence(pack_module)
    with pytest.raises(Exception, match="Storyboard Metrics: input 'face_model': neither a face model nor a CLIP"):
        run_node(cls, keyframes=frames, sequence=seq, face_model="None", clip_model="None")
    with pytest.raises(Exception, match="^input 'keyframes': story 'storyboard': 2 image\\(s\\) for 3 shot"):
        module.measure_keyframes(frames[:2], seq, ShapeAnalyzer(), None)


def test_face_model_folders_are_listed_and_bad_ones_refused(metrics_node, pack_module, model_dirs, tmp_path):
    cls, module = metrics_node
    base = model_dirs[module.FACE_FOLDER]
    (base / "buffalo_l").mkdir()
    (base / "buffalo_l" / "det_10g.onnx").write_bytes(b"x")
    (base / "models" / "antelopev2").mkdir(parents=True)
    (base / "models" / "antelopev2" / "scrfd.onnx").write_bytes(b"x")
    (base / "empty").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.onnx").write_bytes(b"x")
    (base / "linked").symlink_to(outside, target_is_directory=True)
    assert module.face_folders() == ["buffalo_l", "models/antelopev2"]
    frames, seq = keyframes(*GOOD), sequence(pack_module)
    cases = {"empty": "holds no .onnx model files", "absent": "no folder 'absent' in models/insightface",
             "../outside": "is not a folder name inside models/insightface",
             "linked": "leads out of models/insightface"}
    for name, needle in cases.items():
        with pytest.raises(Exception, match=f"Storyboard Metrics: input 'face_model': .*{re.escape(needle)}"):
            run_node(cls, keyframes=frames, sequence=seq, face_model=name, clip_model="None")


def test_full_run_with_a_tiny_local_clip_shows_the_table(metrics_node, pack_module, model_dirs, tmp_path):
    from test_eval_clip import write_tiny_clip

    cls, module = metrics_node
    write_tiny_clip(model_dirs[module.CLIP_FOLDER] / "tiny-clip")
    (model_dirs[module.CLIP_FOLDER] / "no-config").mkdir()
    assert module.clip_folders() == ["tiny-clip"]
    temp = tmp_path / "temp"
    with comfy_folders(temp=temp):
        out = run_node(cls, keyframes=keyframes(*GOOD), sequence=sequence(pack_module), face_model="None",
                       clip_model="tiny-clip")
    (table,) = out.result
    s = summary(table)
    assert s["ID sim"] == "–" and 0.0 <= float(s["CLIP"]) <= 100.0
    ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    assert ui["text"] == (table,)
    [preview] = ui["images"]
    assert preview["type"] == "temp" and os.path.isfile(temp / preview["subfolder"] / preview["filename"])
    with pytest.raises(Exception, match="Storyboard Metrics: input 'clip_model': .*no-config' lacks config.json, model.safetensors"):
        run_node(cls, keyframes=keyframes(*GOOD), sequence=sequence(pack_module), face_model="None",
                 clip_model="no-config")
