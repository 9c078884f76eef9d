"""Storyboard Animatic and Editorial Timeline inside the real, pinned ComfyUI (in-process): the animatic is
ComfyUI's own VIDEO (VideoFromFile over an MP4 in the temp folder) that ComfyUI's Save Video saves and
the Editorial Timeline cuts; timing, camera and dialogue come from the Shot Scripts through the
sequence; Cancel stops the writing and leaves nothing; every error names the node and the input."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from support.node_calls import comfy_folders, run_node

pytestmark = pytest.mark.comfyui

av = pytest.importorskip("av")
otio = pytest.importorskip("opentimelineio")

DURATIONS = (1.0, 0.5, 0.75)


@pytest.fixture
def folders(pack_nodes, tmp_path):
    out, temp = tmp_path / "output", tmp_path / "temp"
    with comfy_folders(output=out, temp=temp):
        yield out, temp


def keyframes(n=3, h=48, w=64):
    y = torch.linspace(0, 1, h)[:, None, None]
    x = torch.linspace(0, 1, w)[None, :, None]
    return torch.stack([(0.2 + 0.6 * (x * (j + 1) % 1) * y).expand(h, w, 3) * torch.tensor([1.0, 0.5 + j / 4, 1 - j / 3])
                        for j in range(n)])


@pytest.fixture
def sequence(N, pack_module):
    """A StorySequence whose plan comes from real Shot Scripts (plan_story needs no model)."""
    story = pack_module("story")
    shots = None
    for j, d in enumerate(DURATIONS):
        (shots,) = N.DreamShotShotScript(prompt=f"shot {j + 1}", characters="", shots=shots, duration=d,
                                         camera="push in" if j == 1 else "static",
                                         dialogue="MIRA: Here." if j == 2 else "")
    plan = story.plan_story([], shots, 64, 48, mode="text_to_shot")
    return story.StorySequence(plan=plan, latent=torch.zeros(1), positive=torch.zeros(1), negative=torch.zeros(1),
                               segment_length=1)


def animatic_inputs(**over):
    return {"fps": 24.0, "width": 0, "height": 0, "transition": "cut", "transition_seconds": 0.5,
            "shot_numbers": False, "captions": False, "timecode": False, "camera_moves": True, **over}


def test_schemas(pack_nodes):
    for node_id, output, saves in (("DreamShotStoryboardAnimatic", "VIDEO", False),
                                   ("DreamShotEditorialTimeline", "STRING", True)):
        info = pack_nodes[node_id].GET_NODE_INFO_V1()
        assert info["category"] == "DreamShot/output" and info["output"] == [output]
        assert info["output_node"] is saves and info["description"]
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert info["input"]["optional"]["sequence"][0] == "DREAMSHOT_SEQUENCE"
    optional = pack_nodes["DreamShotShotScript"].GET_NODE_INFO_V1()["input"]["optional"]
    assert list(optional)[-5:] == ["duration", "shot_size", "camera", "action", "dialogue"]   # last: old workflows load


def test_the_animatic_is_comfyuis_video_and_save_video_saves_it(pack_nodes, sequence, folders):
    import nodes
    from comfy_api.latest import InputImpl

    out, temp = folders
    keys = keyframes()
    video = run_node(pack_nodes["DreamShotStoryboardAnimatic"], keyframes=keys, sequence=sequence,
                     **animatic_inputs()).result[0]
    assert isinstance(video, InputImpl.VideoFromFile)
    source = video.get_stream_source()
    assert os.path.dirname(source) == str(temp / "dreamshot_animatic") and source.endswith(".mp4")
    assert video.get_dimensions() == (64, 48)
    saved = run_node(nodes.NODE_CLASS_MAPPINGS["SaveVideo"], video=video, filename_prefix="DreamShot/animatic",
                     format="auto", codec="auto")
    [entry] = saved.ui.as_dict()["images"]           # 0.3.64's PreviewVideo reports it under "images"
    path = out / entry["subfolder"] / entry["filename"]
    with av.open(str(path)) as c:
        assert Fraction(c.streams.video[0].average_rate) == 24
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    assert len(frames) == round(sum(DURATIONS) * 24) == 54
    for j, start in enumerate((0, 24, 36)):          # each shot opens on its own keyframe (push in starts there)
        err = [np.abs(frames[start] - k.mul(255).round().numpy()).mean() for k in keys]
        assert err[j] < 4 and min(e for i, e in enumerate(err) if i != j) > 4 * err[j], err
    assert np.abs(frames[24] - frames[35]).mean() > 1         # shot 2 pushes in; shot 1 holds its still
    assert np.abs(frames[0] - frames[23]).mean() < 0.5


def test_the_timeline_cuts_the_animatic_shot_by_shot(pack_nodes, sequence, folders):
    out, _ = folders
    keys = keyframes()
    video = run_node(pack_nodes["DreamShotStoryboardAnimatic"], keyframes=keys, sequence=sequence,
                     **animatic_inputs(fps=25.0)).result[0]
    node = pack_nodes["DreamShotEditorialTimeline"]
    kw = dict(keyframes=keys, title="Lighthouse", fps=24.0, filename_prefix="DreamShot/storyboard",
              sequence=sequence, animatic=video)
    result = run_node(node, **kw)
    assert result.result == ("DreamShot/storyboard_00001_.otio",)
    assert result.ui.as_dict()["text"][0].startswith("saved DreamShot/storyboard_00001_.otio")
    timeline = otio.adapters.read_from_file(str(out / result.result[0]))
    boards, cut = timeline.tracks[:2]
    # the animatic's 25 fps wins over the node's fps: the cuts match its frames
    assert [(c.name, c.duration().value, c.duration().rate) for c in boards] == \
        [("Shot 1", 25, 25), ("Shot 2", 13, 25), ("Shot 3", 18, 25)]     # cuts at round(37.5) = 38, round(56.25)
    assert [c.source_range.start_time.value for c in cut] == [0, 25, 38]
    assert [m.name for m in boards[2].markers] == ["MIRA: Here."]
    media = out / "DreamShot" / "storyboard_00001_"
    assert sorted(os.listdir(media)) == ["animatic.mp4", "shot_01.png", "shot_02.png", "shot_03.png"]
    with av.open(str(media / "animatic.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 56
    assert run_node(node, **kw).result == ("DreamShot/storyboard_00002_.otio",)      # never overwrites

    # an animatic of other shots (no sequence: 2 s each) is refused by name
    other = run_node(pack_nodes["DreamShotStoryboardAnimatic"], keyframes=keys, **animatic_inputs(fps=25.0)).result[0]
    with pytest.raises(ValueError, match=r"Editorial Timeline: input 'animatic': the animatic has 150 frames but these "
                                         r"shots last 56 frames"):
        run_node(node, **kw | {"animatic": other})


def test_errors_name_the_node_and_input(pack_nodes, sequence, folders):
    animatic = pack_nodes["DreamShotStoryboardAnimatic"]
    with pytest.raises(ValueError, match="Storyboard Animatic: input 'keyframes': 2 keyframe\\(s\\) but the sequence "
                                         "has 3 shot"):
        run_node(animatic, keyframes=keyframes(2), sequence=sequence, **animatic_inputs())
    with pytest.raises(ValueError, match="Storyboard Animatic: input 'width': 63 is not an even number"):
        run_node(animatic, keyframes=keyframes(), **animatic_inputs(width=63, height=48))
    with pytest.raises(ValueError, match="Storyboard Animatic: input 'variant': variant 3 of 2"):
        run_node(animatic, keyframes=keyframes(6), sequence=sequence, variant=3, **animatic_inputs())
    # 0.3.64's VideoFromComponents (Create Video) has no file to read: refused by name, not a crash
    import nodes

    frames_only = run_node(nodes.NODE_CLASS_MAPPINGS["CreateVideo"], images=keyframes(), fps=24.0).result[0]
    with pytest.raises(ValueError, match="Editorial Timeline: input 'animatic': cannot read this video"):
        run_node(pack_nodes["DreamShotEditorialTimeline"], keyframes=keyframes(), title="t", fps=24.0,
                 filename_prefix="x", sequence=sequence, animatic=frames_only)


def test_cancel_stops_the_writing_and_leaves_nothing(pack_nodes, folders):
    import comfy.model_management as mm

    _, temp = folders
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(pack_nodes["DreamShotStoryboardAnimatic"], keyframes=keyframes(), **animatic_inputs())
    finally:
        mm.interrupt_current_processing(False)
    assert os.listdir(temp / "dreamshot_animatic") == []
