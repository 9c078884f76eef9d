"""A board's timing and editing fields (issue 26): duration, shot size, camera move, action, dialogue on
the Shot, in story files (read, checked with the line, written back only when given, old files still
read) and on the Storyboard Sheet (notes after the shot number, dialogue under the caption, the total
running time in the header)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamshot.errors import DreamShotInputError
from dreamshot.sheet import SheetStyle, render_sheet
from dreamshot.shot_timing import (CAMERA_MOVES, board_notes, board_text, parse_camera, running_time, timecode)
from dreamshot.story import Shot
from dreamshot.story_file import Story, read_story, story_document, write_story


def test_shot_defaults_keep_old_code_working():
    shot = Shot("a prompt")
    assert (shot.duration, shot.shot_size, shot.camera, shot.action, shot.dialogue) == (2.0, "", "static", "", "")


@pytest.mark.parametrize("text, move", [("Push-In", "push in"), ("pan_right", "pan right"), ("  tilt   UP ", "tilt up"),
                                        ("", "static"), (None, "static")])
def test_camera_moves_are_read_in_any_spelling(text, move):
    assert parse_camera(text) == move and move in CAMERA_MOVES


def test_an_unknown_camera_move_is_refused_with_the_list():
    with pytest.raises(DreamShotInputError, match="unknown camera move 'dolly zoom'.*push in, pull out"):
        parse_camera("dolly zoom")


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (2.5, "0:02.5"), (84, "1:24"), (3725, "1:02:05"),
                                           (59.96, "1:00")])
def test_running_time(seconds, text):
    assert running_time(seconds) == text


@pytest.mark.parametrize("frame, fps, text", [(0, 24, "00:00:00:00"), (23, 24, "00:00:00:23"), (24, 24, "00:00:01:00"),
                                              (24 * 3661 + 5, 24, "01:01:01:05"), (30, 29.97, "00:00:01:00")])
def test_timecode(frame, fps, text):
    assert timecode(frame, fps) == text


def test_board_text_prints_action_else_prompt_and_the_total():
    shots = [Shot("prompt one", duration=1.5, shot_size="CU", camera="push in", dialogue="MIRA: Hi."),
             Shot("prompt two", action="Theo runs.", duration=0.5)]
    board = board_text(shots)
    assert board == {"captions": ["prompt one", "Theo runs."], "notes": ["CU \u00b7 push in \u00b7 1.5 s", "0.5 s"],
                     "dialogue": ["MIRA: Hi.", ""], "running_time": "2 shots, running time 0:02"}
    assert board_notes(Shot("x")) == "2 s"


# ----------------------------------------------------------------------------------- story files
YAML = """\
shots:
  - prompt: one
    duration: 3.5
    shot_size: EWS
    camera: Push-In
    action: The sea.
    dialogue: "MIRA: Look."
  - prompt: two
"""


def test_story_files_read_the_fields_and_old_files_keep_their_defaults(tmp_path):
    (tmp_path / "s.yaml").write_text(YAML)
    one, two = read_story(tmp_path / "s.yaml").shots
    assert (one.duration, one.shot_size, one.camera, one.action, one.dialogue) == \
        (3.5, "EWS", "push in", "The sea.", "MIRA: Look.")
    assert two == Shot("two")


@pytest.mark.parametrize("field, value, needle", [
    ("duration", "-1", "s.yaml:3: shots[0].duration: -1 s is not between 0 (excluded) and 3600 s"),
    ("duration", "two", "s.yaml:3: shots[0].duration: expected a number of seconds, got 'two'"),
    ("duration", "true", "shots[0].duration: expected a number of seconds, got True"),
    ("camera", "dolly", "s.yaml:5: shots[0].camera: unknown camera move 'dolly' (use one of: static, push in"),
    ("shot_size", "12", "s.yaml:4: shots[0].shot_size: expected a string, got int (put it in quotes)"),
])
def test_bad_fields_name_their_line(tmp_path, field, value, needle):
    text = {"duration": YAML.replace("duration: 3.5", f"duration: {value}"),
            "camera": YAML.replace("camera: Push-In", f"camera: {value}"),
            "shot_size": YAML.replace("shot_size: EWS", f"shot_size: {value}")}[field]
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(DreamShotInputError) as e:
        read_story(tmp_path / "s.yaml")
    assert needle in str(e.value)


def test_the_fields_round_trip_and_are_written_only_when_given(tmp_path):
    shots = (Shot("one", duration=0.75, shot_size="MCU", camera="pan left", action="She turns.",
                  dialogue='MIRA: "Now."'), Shot("two"))
    doc, _ = story_document(Story(characters=(), shots=shots), "img")
    assert doc["shots"][0] == {"prompt": "one", "duration": 0.75, "shot_size": "MCU", "camera": "pan left",
                               "action": "She turns.", "dialogue": 'MIRA: "Now."'}
    assert doc["shots"][1] == {"prompt": "two"}                 # defaults stay out of the file
    for name in ("s.yaml", "s.json"):
        assert read_story(write_story(tmp_path / name, Story(characters=(), shots=shots))).shots == shots


# ----------------------------------------------------------------------------------------- sheet
def test_the_sheet_prints_notes_dialogue_and_running_time():
    images = torch.rand(2, 48, 80, 3, generator=torch.Generator().manual_seed(0))
    style = SheetStyle(cell_width=160, font="default")
    shots = [Shot("p", duration=1.5, shot_size="CU", camera="push in", dialogue="MIRA: Hi."), Shot("q", duration=0.5)]
    board = board_text(shots)
    plain = render_sheet(images, board["captions"], title="T", style=style)
    full = render_sheet(images, board.pop("captions"), title="T", style=style, **board)
    line_h = round(max(12, round(160 / 30)) * 1.3)                 # sheet._measure: the font size, 1.3 lines
    assert full.width == plain.width and full.height == plain.height + line_h    # + the dialogue line
    a, b = np.asarray(plain), np.asarray(full)
    header = slice(0, 24 + round(24 * 1.3) + 12)                 # margin, title line, half a margin: the rule
    assert (a[header] != b[header]).any()                       # the running time, right of the title
    assert (a[header, :60] == b[header, :60]).all()             # the title itself untouched
    # a running time without a title still gets the header row; without either there is none
    assert render_sheet(images, style=style, running_time="0:02").height > render_sheet(images, style=style).height
    with pytest.raises(DreamShotInputError, match="1 notes for 2 keyframes"):
        render_sheet(images, notes=["x"], style=style)
