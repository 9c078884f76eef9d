"""The editorial timeline (dreamshot/timeline.py), pure: the .otio read back with OpenTimelineIO (clip names,
durations cut at the animatic's frames, media, metadata, markers, the animatic track), the .edl and
.xml parsed back where their adapters are installed, media paths relative and present, never
overwriting, and nothing left by a failed export."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest
import torch

otio = pytest.importorskip("opentimelineio")

from dreamshot.animatic import AnimaticSettings, boards_for, write_animatic  # noqa: E402
from dreamshot.errors import DreamShotInputError  # noqa: E402
from dreamshot.shot_timing import shot_starts  # noqa: E402
from dreamshot.story import Shot  # noqa: E402
from dreamshot.timeline import available_formats, export_timeline, timeline_shots  # noqa: E402

SHOTS = (Shot("Wide shot of the lighthouse", ("Lighthouse",), duration=2.0, shot_size="EWS", camera="push in"),
         Shot("Mira climbs", ("Mira", "Pip"), duration=1.3, action="Mira climbs the path."),
         Shot("Mira lights the lamp", ("Mira",), duration=0.75, dialogue="MIRA: Just in time,\nPip."))
FORMATS = available_formats()


def keys(n=3):
    return torch.rand(n, 32, 48, 3, generator=torch.Generator().manual_seed(n))


def export(folder, stem="storyboard", fps=24, animatic=False, **kw):
    entries = timeline_shots(keys(), SHOTS)

    def write(path):
        write_animatic(path, boards_for(keys(), SHOTS), AnimaticSettings(fps=fps))
        return False
    return export_timeline(folder, stem, "The Lighthouse", entries, Fraction(fps), write if animatic else None, **kw)


def test_the_otio_reads_back_with_names_durations_media_and_metadata(tmp_path):
    files = export(tmp_path, fps=25, animatic=True)
    starts = shot_starts([s.duration for s in SHOTS], 25)
    assert files.frames == starts[-1] == round(4.05 * 25)
    timeline = otio.adapters.read_from_file(str(files.timelines["otio"]))
    assert timeline.name == "The Lighthouse"
    boards, animatic = timeline.tracks
    assert (boards.name, animatic.name) == ("Boards", "Animatic")
    assert [c.name for c in boards] == [c.name for c in animatic] == ["Shot 1", "Shot 2", "Shot 3"]
    assert [c.duration() for c in boards] == [otio.opentime.RationalTime(b - a, 25) for a, b in zip(starts, starts[1:])]
    assert [c.source_range.start_time.value for c in animatic] == starts[:-1]       # cut from the animatic
    assert boards.duration().value == animatic.duration().value == files.frames
    for j, clip in enumerate(boards):      # media relative to the timeline's folder, and there
        assert not os.path.isabs(clip.media_reference.target_url)
        assert (tmp_path / clip.media_reference.target_url).is_file()
        assert clip.media_reference.target_url == f"storyboard_00001_/shot_{j + 1:02d}.png"
    assert (tmp_path / animatic[0].media_reference.target_url).is_file()
    meta = [c.metadata["dreamshot"] for c in boards]
    assert meta[0]["prompt"] == SHOTS[0].prompt and meta[0]["camera"] == "push in" and meta[0]["shot_size"] == "EWS"
    assert meta[2]["dialogue"] == SHOTS[2].dialogue and list(meta[1]["characters"]) == ["Mira", "Pip"]
    assert [[m.name for m in c.markers] for c in boards] == [[], ["Mira climbs the path."], ["MIRA: Just in time, Pip."]]
    assert sorted(os.listdir(files.media)) == ["animatic.mp4", "shot_01.png", "shot_02.png", "shot_03.png"]


@pytest.mark.skipif(not FORMATS["edl"], reason="otio-cmx3600-adapter is not installed: no .edl is written")
def test_the_edl_parses_back_with_the_boards(tmp_path):
    files = export(tmp_path, animatic=True)
    text = files.timelines["edl"].read_text()
    assert text.startswith("TITLE: The Lighthouse") and "* FROM CLIP NAME:  Shot 2" in text
    edl = otio.adapters.read_from_file(str(files.timelines["edl"]), rate=24)
    starts = shot_starts([s.duration for s in SHOTS], 24)
    assert [(c.name, c.duration().value) for c in edl.find_clips()] == \
        [(f"Shot {j + 1}", b - a) for j, (a, b) in enumerate(zip(starts, starts[1:]))]


@pytest.mark.skipif(not FORMATS["xml"], reason="otio-fcp-adapter is not installed: no .xml is written")
def test_the_fcp_xml_parses_back_with_both_tracks(tmp_path):
    files = export(tmp_path, animatic=True)
    root = ET.parse(files.timelines["xml"]).getroot()           # well-formed XML an NLE can read
    assert root.tag == "xmeml"
    assert [e.text for e in root.iter("pathurl")][:1] == ["storyboard_00001_/shot_01.png"]
    back = otio.adapters.read_from_file(str(files.timelines["xml"]))
    video = [t for t in back.tracks if t.kind == otio.schema.TrackKind.Video]
    assert len(video) == 2 and [c.name for c in video[0]] == ["Shot 1", "Shot 2", "Shot 3"]
    assert sum(c.duration().value for c in video[0]) == files.frames


def test_never_overwrites_and_counts_past_taken_names(tmp_path):
    (tmp_path / "storyboard_00001_.otio").write_text("mine")
    (tmp_path / "storyboard_00002_").mkdir()                    # a folder of that name is taken too
    files = export(tmp_path)
    assert files.timelines["otio"].name == "storyboard_00003_.otio"
    assert (tmp_path / "storyboard_00001_.otio").read_text() == "mine"
    assert export(tmp_path).timelines["otio"].name == "storyboard_00004_.otio"


def test_a_failed_export_leaves_nothing(tmp_path):
    def broken(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_timeline(tmp_path, "storyboard", "t", timeline_shots(keys(), SHOTS), 24, broken)
    assert os.listdir(tmp_path) == []


def test_paths_stay_inside_the_output_folder(tmp_path):
    out, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DreamShotInputError, match="outside the output folder"):
        export(out / "link", root=out)
    with pytest.raises(DreamShotInputError, match="not a safe file name"):
        export(out, stem="../x", root=out)
    assert os.listdir(elsewhere) == []


def test_without_opentimelineio_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentimelineio", None)       # import fails as if not installed
    assert available_formats() == {"otio": False, "edl": False, "xml": False}
    with pytest.raises(DreamShotInputError, match="pip install opentimelineio otio-cmx3600-adapter otio-fcp-adapter"):
        export(tmp_path)
    assert os.listdir(tmp_path) == []


def test_generate_editorial_writes_the_animatic_and_the_timeline_beside_the_keyframes(tmp_path):
    """python -m dreamshot.generate --animatic --timeline, after the keyframes <N>.png are written."""
    from PIL import Image

    from dreamshot.generate.__main__ import build_parser
    from dreamshot.generate.editorial import write_editorial

    args = build_parser().parse_args(["story.yaml", "--animatic", "--timeline", "--fps", "25"])
    assert (args.animatic, args.timeline, args.fps) == (True, True, 25.0)
    paths = []
    for j, key in enumerate(keys()):
        paths.append(tmp_path / f"{j + 1}.png")
        Image.fromarray(key.mul(255).round().byte().numpy()).save(paths[-1])
    first = write_editorial(SHOTS, paths, tmp_path, "The Lighthouse", fps=25)
    assert first == {"animatic": tmp_path / "animatic_00001_.mp4", "timeline": tmp_path / "timeline_00001_.otio"}
    with av_open(first["animatic"]) as c:
        assert sum(1 for _ in c.decode(video=0)) == round(4.05 * 25)
    timeline = otio.adapters.read_from_file(str(first["timeline"]))
    assert [c.name for c in timeline.tracks[0]] == ["Shot 1", "Shot 2", "Shot 3"] and len(timeline.tracks) == 2
    assert (tmp_path / "timeline_00001_" / "animatic.mp4").read_bytes() == first["animatic"].read_bytes()
    again = write_editorial(SHOTS, paths, tmp_path, "The Lighthouse", fps=25, timeline=False)
    assert again == {"animatic": tmp_path / "animatic_00002_.mp4"}       # never overwrites
    only = write_editorial(SHOTS, paths, tmp_path, "t", animatic=False)
    assert len(otio.adapters.read_from_file(str(only["timeline"])).tracks) == 1


def av_open(path):
    av = pytest.importorskip("av")
    return av.open(str(path))
