"""Units of dreamshot.data: captions, keyframes and fitting, segmenter loaders, plugins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamshot.data.captions import load_sidecar
from dreamshot.data.cuts import Shot
from dreamshot.data.keyframes import Fit, candidate_frames, is_black, near_duplicate, pick_keyframe, thumbnail
from dreamshot.data.masks import body_box, character_mask, load_segmenter
from dreamshot.data.plugins import build_plugin, import_object
from dreamshot.errors import DreamShotInputError
from dreamshot.shapes import SHAPE_CAST, render_scene
from support.synthetic_videos import saturation_onnx


def test_sidecar_json_by_shot_and_by_time(tmp_path):
    video = tmp_path / "clip.mp4"
    shot = Shot(index=2, start=24, end=48, fps=12.0)
    assert load_sidecar(video).caption(shot, 30) is None
    (tmp_path / "clip.captions.json").write_text(json.dumps({"shots": {"2": " By index. "}}))
    assert load_sidecar(video).caption(shot, 30) == "By index."
    (tmp_path / "clip.captions.json").write_text(json.dumps({"segments": [
        {"start": 0, "end": 2.1, "caption": "first"}, {"start": 2.1, "end": 9, "caption": "second"}]}))
    assert load_sidecar(video).caption(shot, 24) == "first"    # keyframe at 2.04 s
    assert load_sidecar(video).caption(shot, 30) == "second"   # keyframe at 2.54 s
    (tmp_path / "clip.captions.json").write_text('{"segments": [{"start": 3, "end": 1, "caption": "x"}]}')
    with pytest.raises(DreamShotInputError, match="not after start"):
        load_sidecar(video)
    (tmp_path / "clip.captions.json").write_text("[1, 2]")
    with pytest.raises(DreamShotInputError, match="clip.captions.json"):
        load_sidecar(video)


def test_sidecar_srt(tmp_path):
    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nHello\nthere\n\n"
                                       "2\n00:00:02,000 --> 00:00:04,500\nSecond cue\n")
    caps = load_sidecar(tmp_path / "clip.mp4")
    assert caps.caption(Shot(0, 0, 20, 10.0), 5) == "Hello there"
    assert caps.caption(Shot(1, 20, 40, 10.0), 30) == "Second cue"
    assert caps.caption(Shot(2, 40, 60, 10.0), 50) is None


def test_keyframe_is_the_sharpest_central_candidate():
    shot = Shot(0, 100, 140, 24.0)
    cands = candidate_frames(shot, 5)
    assert cands[0] >= 110 and cands[-1] <= 129 and len(cands) == 5
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 3), 128, np.uint8)
    frames = {i: flat for i in cands}
    sharp = cands[1]
    frames[sharp] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert pick_keyframe(shot, frames) == sharp
    assert pick_keyframe(shot, {i: flat for i in cands}) == cands[2]   # all equal: the most central
    assert is_black(np.zeros((8, 8, 3), np.uint8)) and not is_black(flat)
    assert near_duplicate(thumbnail(flat), thumbnail(flat + 2)) and not near_duplicate(thumbnail(flat),
                                                                                       thumbnail(flat // 2))


def test_fit_moves_images_masks_and_boxes_alike():
    image, (mask,) = render_scene(160, 90, [(SHAPE_CAST[0], (100, 30, 140, 70))], background_seed=3)
    fit = Fit.cover(160, 90, 64, 64)
    img, m = fit.image(image), fit.mask(mask.astype(np.float32)) > 0.5
    assert img.shape == (64, 64, 3) and m.shape == (64, 64)
    x0, y0, x1, y1 = fit.box((100, 30, 140, 70))
    ys, xs = np.nonzero(m)
    assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5 and abs(ys.min() - y0) <= 1.5
    assert fit.box((0, 0, 10, 10)) is None  # cropped away


def test_body_box_grows_downwards_and_stays_inside():
    b = body_box((40, 10, 60, 30), 100, 80)
    assert b[0] < 40 and b[2] > 60 and b[1] < 10 and b[3] == 80


def test_torch_segmenter_from_safetensors(tmp_path):
    import safetensors.torch

    from support.synthetic_videos import SaturationSegmenter

    weights = tmp_path / "seg.safetensors"
    safetensors.torch.save_file({"threshold": torch.tensor(0.25), "gain": torch.tensor(40.0)}, str(weights))
    seg = load_segmenter(weights, "support.synthetic_videos:SaturationSegmenter")
    image, masks = render_scene(96, 64, [(SHAPE_CAST[1], (10, 10, 40, 40)), (SHAPE_CAST[2], (50, 10, 80, 40))])
    mask, source = character_mask(image, (8, 8, 42, 42), seg)
    assert source == "segmenter"
    got = mask > 0.5
    assert (got & masks[0]).sum() / (got | masks[0]).sum() > 0.9 and not (got & masks[1]).any()
    assert isinstance(SaturationSegmenter(), torch.nn.Module)
    with pytest.raises(DreamShotInputError, match="no model class"):
        load_segmenter(weights)
    safetensors.torch.save_file({"other": torch.tensor(1.0)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DreamShotInputError, match="does not fit"):
        load_segmenter(tmp_path / "bad.safetensors", "support.synthetic_videos:SaturationSegmenter")


def test_onnx_segmenter_runs_through_onnxruntime(tmp_path):
    pytest.importorskip("onnx", reason="pip install -r tests/requirements-ci.txt")
    pytest.importorskip("onnxruntime", reason="pip install -r tests/requirements-ci.txt")
    seg = load_segmenter(saturation_onnx(tmp_path / "s.onnx"))
    image, (m,) = render_scene(96, 64, [(SHAPE_CAST[3], (20, 10, 60, 50))])
    out = seg(image)
    assert out.shape == (64, 96) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    got = out > 0.5
    assert (got & m).sum() / (got | m).sum() > 0.9
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DreamShotInputError, match="onnxruntime cannot load"):
        load_segmenter(tmp_path / "junk.onnx")
    (tmp_path / "s.pt").write_bytes(b"x")
    with pytest.raises(DreamShotInputError, match="neither .onnx nor .safetensors"):
        load_segmenter(tmp_path / "s.pt")


def test_plugins_import_without_eval():
    assert import_object("dreamshot.shapes:SHAPE_CAST", "x") is SHAPE_CAST
    assert build_plugin("dreamshot.shapes:ShapeAnalyzer", "faces").name.startswith("shape-stand-in")
    for spec, msg in (("dreamshot.shapes", "package.module:attribute"), ("no_such_mod:x", "cannot import"),
                      ("dreamshot.shapes:Nope", "no attribute"), ("dreamshot.shapes:SHADE", "not callable")):
        with pytest.raises(DreamShotInputError, match=msg):
            build_plugin(spec, "faces")
