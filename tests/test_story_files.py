"""Story files: the format (YAML and JSON), errors that name the line and field, path escapes, writing
(never overwriting), the ViStoryBench importer; then Save Story -> Load Story in the real ComfyUI, and
``python -m dreamshot.generate`` on the shipped example with the tiny models."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.node_calls import comfy_folders, run_node
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.modes import Mode
from dreamshot.story import Character, Shot
from dreamshot.story_file import (RaclSettings, ShotLoraSettings, Story, StorySettings, list_story_files,
                                  parse_settings_text, read_story, story_files_used, write_story)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "story" / "lighthouse.yaml"
SUPPORT = REPO / "tests" / "support"


def pixels(h, w, seed, channels=3):
    """An image whose values survive 8-bit PNG exactly (k / 255)."""
    g = torch.Generator().manual_seed(seed)
    shape = (h, w, channels) if channels else (h, w)
    return torch.randint(0, 256, shape, generator=g).float() / 255


def write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)


STORY_YAML = """\
title: Rain
characters:
  - name: Mira
    reference: refs/mira.png
    mask: refs/mira_mask.png
    description: a girl in a red coat
  - name: Station
    kind: location
    reference: [refs/station.png, refs/station_2.png]
shots:
  - prompt: Mira waits at the station.
    characters: [Mira, Station]
    boxes: {Mira: [0.1, 0.2, 0.5, 1]}
    seed: 7
  - prompt: The train arrives.
    characters: [Station]
    negative_prompt: people
    image: refs/train.png
    lock: true
"""


@pytest.fixture
def story_dir(tmp_path):
    d = tmp_path / "input"
    write_png(d / "refs/mira.png", pixels(40, 24, 1))
    write_png(d / "refs/mira_mask.png", (pixels(40, 24, 2, channels=0) > 0.5).float())
    write_png(d / "refs/station.png", pixels(32, 48, 3))
    write_png(d / "refs/station_2.png", pixels(32, 48, 4))
    write_png(d / "refs/train.png", pixels(32, 32, 5))
    (d / "rain.yaml").write_text(STORY_YAML, encoding="utf-8")
    return d


# -- the format -------------------------------------------------------------------------------------
def test_a_story_file_gives_the_chains_objects(story_dir):
    story = read_story(story_dir / "rain.yaml")
    assert story.title == "Rain" and story.locked == (1,) and story.lock_text == "2"
    mira, station = story.characters
    assert (mira.name, mira.kind, mira.description) == ("Mira", "character", "a girl in a red coat")
    assert torch.equal(mira.images[0], pixels(40, 24, 1)) and mira.images.shape == (1, 40, 24, 3)
    assert torch.equal(mira.masks[0], (pixels(40, 24, 2, channels=0) > 0.5).float())
    assert station.kind == "location" and station.images.shape == (2, 32, 48, 3) and station.masks is None
    first, second = story.shots
    assert first.characters == ("Mira", "Station") and first.regions == (("Mira", (0.1, 0.2, 0.5, 1.0)),)
    assert first.seed == 7 and first.negative_prompt == "" and first.image is None
    assert second.negative_prompt == "people" and second.seed is None
    assert torch.equal(second.image, pixels(32, 32, 5))
    assert story.default_mode() is Mode.EDIT          # a fixed image and a lock: edit


def test_json_reads_like_yaml(story_dir):
    import yaml

    (story_dir / "rain.json").write_text(json.dumps(yaml.safe_load(STORY_YAML)), encoding="utf-8")
    a, b = read_story(story_dir / "rain.yaml"), read_story(story_dir / "rain.json")
    assert_same_story(a, b)


def test_the_shipped_example_reads(tmp_path):
    story = read_story(EXAMPLE)
    assert [(c.name, c.kind) for c in story.characters] == [("Mira", "character"), ("Pip", "character"),
                                                            ("Lighthouse", "location")]
    assert story.characters[0].masks is not None and len(story.shots) == 4
    assert story.default_mode() is Mode.REFERENCE_TO_SHOT and story.settings.width == 832
    assert len(story_files_used(EXAMPLE)) == 1 + 4            # the file + 3 references + 1 mask


def test_settings_are_checked_and_read(story_dir):
    text = STORY_YAML.replace("title: Rain\n", "title: Rain\nsettings:\n  width: 832\n  cfg: 3\n  mode: edit\n")
    (story_dir / "s.yaml").write_text(text, encoding="utf-8")
    settings = read_story(story_dir / "s.yaml").settings
    assert settings.given() == {"width": 832, "mode": "edit", "cfg": 3.0}
    assert parse_settings_text("height: 480\nchunk_size: 6") == StorySettings(height=480, chunk_size=6)
    with pytest.raises(DreamShotInputError, match=r"input 'settings': settings:2: settings.steps: expected a whole "
                                                   r"number >= 1, got 0"):
        parse_settings_text("width: 64\nsteps: 0")
    # The patch nodes' inputs and the sampler's variants, checked as the nodes check them.
    assert parse_settings_text("racl: true").racl == RaclSettings()
    assert parse_settings_text("racl: false").given() == {"racl": False}
    assert parse_settings_text("racl: {end_percent: 0.5, layers: [0, 1]}").racl == RaclSettings(end_percent=0.5,
                                                                                                 layers="0, 1")
    assert parse_settings_text("variants: 3\nshot_loras:\n  - {lora: a/b.safetensors, shots: [1, 2]}\n") == \
        StorySettings(variants=3, shot_loras=(ShotLoraSettings("a/b.safetensors", shots="1, 2"),))
    for text, needle in (("racl: {strength: 1.5}", "settings.racl.strength: expected a number from 0 to 1"),
                         ("racl: {start_percent: 0.6, end_percent: 0.5}", "start 0.6 is after end 0.5"),
                         ("racl: {layers: first}", 'settings.racl.layers: expected "all" or block numbers'),
                         ("variants: 65", "settings.variants: expected a whole number from 1 to 64"),
                         ("shot_loras: [{lora: /abs/x.safetensors, shots: all}]", "not a path"),
                         ("shot_loras: [{lora: x.pt, shots: all}]", "give a .safetensors file name"),
                         ("shot_loras: [{lora: x.safetensors, shots: all, strength: 11}]", "from -10 to 10"),
                         ("shot_loras: [{lora: x.safetensors}]", "no shots and no character"),
                         ("shot_loras: [{lora: x.safetensors, shots: 1, include_references: true}]",
                          "references belong to characters")):
        with pytest.raises(DreamShotInputError, match=re.escape(needle)):
            parse_settings_text(text)


def errors_of(folder: Path, text: str, name: str = "bad.yaml") -> str:
    (folder / name).write_text(text, encoding="utf-8")
    with pytest.raises(DreamShotInputError) as e:
        read_story(folder / name)
    message = str(e.value)
    assert message.startswith("input 'story': ") and "Fix: correct the listed fields" in message
    assert "docs/story-files.md" in message
    return message


@pytest.mark.parametrize("edit, expected", [
    # a field error names the file, the line and the field path
    (lambda t: t.replace("{Mira: [0.1, 0.2, 0.5, 1]}", "{Mira: [0.5, 0.2, 0.1, 1]}"),
     "bad.yaml:13: shots[0].boxes.Mira: expected [x0, y0, x1, y1] with x1 > x0"),
    (lambda t: t.replace("characters: [Station]", "characters: [Station, Theo]"),
     "bad.yaml:16: shots[1].characters: unknown character(s) 'Theo' (known: Mira, Station)"),
    (lambda t: t.replace("    seed: 7\n", "    seed: -7\n    colour: red\n"),
     "bad.yaml:15: shots[0].colour: unknown field (allowed: action, boxes, camera, characters"),
    (lambda t: t.replace("kind: location", "kind: building"),
     "bad.yaml:8: characters[1].kind: expected one of character, location, prop, got 'building'"),
    (lambda t: t.replace("    lock: true\n", "    lock: yes please\n"),
     "bad.yaml:19: shots[1].lock: expected true or false, got 'yes please'"),
    (lambda t: t.replace("  - name: Mira\n", "  - name: Mira\n    name: Mara\n"),
     "bad.yaml:4: characters[0].name: given twice"),
    (lambda t: t.replace("    mask: refs/mira_mask.png\n", "    mask: [refs/mira_mask.png, null]\n"),
     "bad.yaml:5: characters[0].mask: 2 mask(s) for 1 reference(s)"),
    (lambda t: t.replace("  - prompt: The train arrives.\n", "  - prompt: 12\n"),
     "bad.yaml:15: shots[1].prompt: expected a string, got int (put it in quotes)"),
    (lambda t: t.replace("refs/train.png", "refs/missing.png"), "bad.yaml:18: shots[1].image: file 'refs/missing.png' not found"),
    # syntax errors: line and column from the YAML marks
    (lambda t: t.replace("[Mira, Station]", "[Mira, Station"), "bad.yaml:13:10: not valid YAML: expected ',' or ']'"),
    (lambda t: "", "bad.yaml: (top): expected a mapping with 'shots' (and title, settings, characters), but the file is empty"),
])
def test_bad_yaml_names_line_and_field(story_dir, edit, expected):
    assert expected in errors_of(story_dir, edit(STORY_YAML))


def test_bad_json_names_line_and_column_or_field(story_dir):
    good = json.dumps({"shots": [{"prompt": "a", "characters": ["Mira"]}],
                       "characters": [{"name": "Mira", "reference": "refs/mira.png"}]}, indent=1)
    assert "bad.json:2:12: not valid JSON: Expecting value" in errors_of(
        story_dir, good.replace('"shots": [', '"shots": [,', 1), "bad.json")
    bad = json.dumps({"shots": [{"prompt": "a", "characters": ["Mira"], "boxes": {"Mira": [0, 0, 2]}}],
                      "characters": [{"name": "Mira", "reference": "refs/mira.png"}]}, indent=1)
    message = errors_of(story_dir, bad, "bad.json")
    assert "shots[0].boxes.Mira: expected [x0, y0, x1, y1]" in message
    assert "bad.json:9: shots[0].boxes.Mira" in message       # JSON field errors carry a line too


def test_every_problem_is_listed_at_once(story_dir):
    text = STORY_YAML.replace("kind: location", "kind: house").replace("seed: 7", "seed: x")
    message = errors_of(story_dir, text)
    assert "2 problem(s) in the story file bad.yaml" in message
    assert "characters[1].kind" in message and "shots[0].seed" in message


# -- hostile files: read or refused with FILE:LINE before anything large is built (issue 23) --------
def alias_bomb(levels: int) -> str:
    """The file of issue 23: shots[0].characters is ``levels`` levels of nine aliases, 9**levels
    names once expanded (9 levels: ~500 bytes here; it took the old parser 86 s and 6.4 GB)."""
    anchors = ["&a0 [" + ", ".join(["Mira"] * 9) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels - 1)]
    return ("characters:\n  - name: Mira\n    reference: refs/mira.png\n    description: [" + ", ".join(anchors)
            + "]\nshots:\n  - prompt: a\n    characters: [" + ", ".join([f"*a{levels - 2}"] * 9) + "]\n")


def merge_bomb(levels: int) -> str:
    """The same through YAML merge keys (<<), which the loader itself copies."""
    maps = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(9)) + "}"]
    maps += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}" for i in range(1, levels)]
    return "title: x\nsettings:\n  " + "\n  ".join(maps) + "\nshots: [{prompt: a}]\n"


def shots_yaml(n: int) -> str:
    return "shots:\n" + "".join(f"  - prompt: shot {j}\n" for j in range(n))


HOSTILE = [
    ("bomb9.yaml", alias_bomb(9), "bomb9.yaml:4: this value expands to"),
    ("bomb12.yaml", alias_bomb(12), "bomb12.yaml:4: this value expands to"),
    ("merge.yaml", merge_bomb(9), "merge.yaml:7: this value expands to"),
    ("loop.yaml", "shots: &s [{prompt: a}, *s]\n", "loop.yaml:1: the alias *s is used inside the value it names"),
    ("flow.yaml", "shots: " + "[" * 100_000 + "\n", "flow.yaml:1: values nested more than 32 deep"),
    ("block.yaml", "shots:\n" + "".join("  " * i + "- \n" for i in range(100)),
     "block.yaml:33: values nested more than 32 deep"),
    ("deep.json", '{"shots": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.json:1: values nested more than 32 deep"),
    ("deep500.json", '{"shots":\n' + "[" * 500 + "]" * 500 + "}", "deep500.json:2: values nested more than 32 deep"),
    ("number.yaml", "shots:\n  - prompt: a\n    seed: " + "9" * 150 + "\n", "number.yaml:3: a number of 150 characters"),
    ("number.json", '{"shots": [\n{"prompt": "a", "seed": ' + "9" * 5000 + "}]}",
     "number.json:2: a number of 5000 characters"),
    ("text.yaml", "shots:\n  - prompt: " + "x" * 30_000 + "\n", "text.yaml:2: a text of 30000 characters"),
    ("date.yaml", "shots:\n  - prompt: a\n    seed: 2024-02-30\n",
     "date.yaml:3:11: not valid YAML: cannot read '2024-02-30' as timestamp"),
    ("latin1.yaml", "title: x\nshots:\n  - prompt: caf\xe9\n".encode("latin-1"),
     "latin1.yaml:3:16: not UTF-8 text"),
    ("control.yaml", "title: x\nshots: [{prompt: \"a\x07\"}]\n", "control.yaml:2: not valid YAML: special characters"),
    ("large.yaml", shots_yaml(15_000), "large.yaml: the file is larger than 256 KiB"),
    ("values.yaml", "shots: [" + ", ".join(["1"] * 20_000) + "]\n", "values.yaml:1: more than 16000 values"),
    ("shots.yaml", shots_yaml(501), "shots.yaml:1: shots: 501 shots; at most 500"),
    ("refs.yaml", "characters:\n  - name: A\n    reference: [" + ", ".join(["a.png"] * 65) + "]\nshots: [{prompt: a}]\n",
     "refs.yaml:3: characters[0].reference: 65 images; at most 64"),
    ("top.yaml", "[1, 2]\n", "top.yaml:1: (top): expected a mapping"),
    # JSON that YAML cannot read for line numbers (a key over 1024 characters): bounded all the same
    ("longkey.json", '{"' + "k" * 2000 + '": 1,\n "shots": ' + "[" * 40 + "]" * 40 + "}",
     "longkey.json:2: values nested more than 32 deep"),
]


@pytest.mark.parametrize("name, content, expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_with_file_line_in_bounded_memory(tmp_path, name, content, expected):
    from support.guards import hang_guard, traced_peak

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with hang_guard(30, 300, f"reading {name}"):
        peak, outcome = traced_peak(read_story, path)
    assert isinstance(outcome, DreamShotInputError), outcome
    assert expected in str(outcome), str(outcome)[:600]
    assert peak < 32 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB of Python heap to refuse {name}"


def test_json_yaml_cannot_read_still_names_fields(story_dir):
    text = '{"' + "k" * 2000 + '": 1,\n "shots": [{"prompt": "a", "seed": -1}]}'
    message = errors_of(story_dir, text, "bad.json")
    assert "\n  bad.json: shots[0].seed: expected a whole number" in message   # the field, no line


def test_limits_leave_room_for_large_real_stories(story_dir):
    """A 400-shot story with three characters each, boxes and aliases (one box list reused) reads."""
    shot = "  - prompt: Mira and Station, shot {j}, a long prompt " + "word " * 60 + "\n" \
           "    characters: [Mira, Station]\n    boxes: {{Mira: *box}}\n"
    text = STORY_YAML.split("shots:")[0] + "shots:\n  - prompt: first\n    characters: [Mira]\n" \
        "    boxes: {Mira: &box [0.1, 0.2, 0.5, 1]}\n" + "".join(shot.format(j=j) for j in range(400))
    (story_dir / "long.yaml").write_text(text, encoding="utf-8")
    story = read_story(story_dir / "long.yaml")
    assert len(story.shots) == 401 and story.shots[400].regions == (("Mira", (0.1, 0.2, 0.5, 1.0)),)


def test_settings_text_is_bounded_too():
    with pytest.raises(DreamShotInputError, match=r"input 'settings': settings:1: values nested more than 32 deep"):
        parse_settings_text("width: " + "[" * 10_000)
    levels = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9))
    with pytest.raises(DreamShotInputError, match=r"input 'settings': settings:5: this value expands to 66430 "):
        parse_settings_text("l0: &l0 [a, a, a, a, a, a, a, a, a]\n" + levels)   # l4 (line 5): ~9^5 values


def test_the_images_are_counted_and_measured_before_any_is_decoded(story_dir, monkeypatch):
    import dreamshot.story_file as story_file

    # 40x24 + 32x48 + 32x48 + 32x32 + the mask 40x24 pixels: a budget just below them all
    monkeypatch.setattr(story_file, "MAX_STORY_PIXELS", 40 * 24 * 2 + 32 * 48 * 2 + 32 * 32 - 1)
    decoded = []
    monkeypatch.setattr(story_file, "load_image", lambda *a, **k: decoded.append(a) or pixels(8, 8, 0))
    monkeypatch.setattr(story_file, "load_mask", lambda *a, **k: decoded.append(a) or pixels(8, 8, 0, channels=0))
    message = errors_of(story_dir, STORY_YAML)
    assert "bad.yaml:18: shots[1].image: the story's images add up to more than" in message
    monkeypatch.setattr(story_file, "MAX_IMAGES", 4)
    assert "bad.yaml:18: shots[1].image: the story names 5 images; at most 4" in errors_of(story_dir, STORY_YAML)
    assert decoded == []


@pytest.mark.parametrize("path, needle", [
    ("/etc/passwd", "'/etc/passwd' must be relative to the story file's folder, without '..'"),
    ("../outside.png", "'../outside.png' must be relative to the story file's folder, without '..'"),
    ("C:/x.png", "must be relative"),
    ("link/outside.png", "leads out of"),
])
def test_paths_cannot_leave_the_allowed_folder(story_dir, tmp_path, path, needle):
    elsewhere = tmp_path / "elsewhere"
    write_png(elsewhere / "outside.png", pixels(8, 8, 0))
    (story_dir / "link").symlink_to(elsewhere, target_is_directory=True)
    assert needle in errors_of(story_dir, STORY_YAML.replace("refs/train.png", path))


def test_the_confining_folder_and_links_inside_it(story_dir, tmp_path):
    # A story in a subfolder of the input folder may use links that stay inside the input folder...
    sub = story_dir / "stories"
    sub.mkdir()
    (sub / "refs").symlink_to(story_dir / "refs", target_is_directory=True)
    (sub / "rain.yaml").write_text(STORY_YAML, encoding="utf-8")
    assert read_story(sub / "rain.yaml", confine=story_dir).title == "Rain"
    # ... but not a story file that is itself a link out of it.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(story_dir / "rain.yaml", outside / "rain.yaml")
    (story_dir / "linked.yaml").symlink_to(outside / "rain.yaml")
    with pytest.raises(DreamShotInputError, match="linked.yaml leads out of"):
        read_story(story_dir / "linked.yaml", confine=story_dir)
    assert list_story_files(story_dir) == ["linked.yaml", "rain.yaml", "stories/rain.yaml"]


# -- writing ----------------------------------------------------------------------------------------
def sample_story() -> Story:
    mira = Character("Mira", pixels(40, 24, 1)[None], masks=(pixels(40, 24, 2, channels=0) > 0.5).float()[None],
                     description="a girl: red coat", kind="character")
    duo = Character("Duo/Twin", torch.stack([pixels(16, 16, 6), pixels(16, 16, 7)]))
    place = Character("Station", pixels(32, 48, 3)[None], kind="location")
    shots = (Shot("Mira waits.", ("Mira", "Station"), regions=(("Mira", (0.1, 0.2, 0.5, 1.0)),), seed=2 ** 63),
             Shot("Both: 'hello'\nthen silence", ("Mira", "Duo/Twin"),
                  regions=(("Mira", (0.0, 0.0, 0.5, 1.0)), ("Duo/Twin", pixels(32, 32, 8, channels=0))),
                  negative_prompt="blur", image=pixels(32, 32, 9), duration=0.75, shot_size="ECU",
                  camera="pan left", action="They turn.", dialogue="MIRA: 'Hello'\nTHEO: \"Hi\""),
             Shot("", ()))
    return Story(characters=(mira, duo, place), shots=shots, title="Über Rain", locked=(0, 2),
                 settings=StorySettings(width=64, height=48, steps=3, cfg=2.5, variants=2,
                                        racl=RaclSettings(strength=0.5, layers="0-1", auto_regions=False),
                                        shot_loras=(ShotLoraSettings("ink.safetensors", 0.8, "1, 3"),
                                                    ShotLoraSettings("mira.safetensors", character="Mira",
                                                                     include_references=True))))


def assert_same_story(a: Story, b: Story) -> None:
    assert (a.title, a.locked, a.settings) == (b.title, b.locked, b.settings)
    assert len(a.characters) == len(b.characters) and len(a.shots) == len(b.shots)
    for x, y in zip(a.characters, b.characters):
        assert (x.name, x.description, x.kind) == (y.name, y.description, y.kind)
        assert torch.equal(x.images, y.images)
        assert (x.masks is None) == (y.masks is None) and (x.masks is None or torch.equal(x.masks, y.masks))
    for x, y in zip(a.shots, b.shots):
        assert (x.prompt, x.characters, x.negative_prompt, x.seed) == (y.prompt, y.characters, y.negative_prompt,
                                                                         y.seed)
        assert (x.duration, x.shot_size, x.camera, x.action, x.dialogue) == \
            (y.duration, y.shot_size, y.camera, y.action, y.dialogue)
        assert (x.image is None) == (y.image is None) and (x.image is None or torch.equal(x.image, y.image))
        assert [n for n, _ in x.regions] == [n for n, _ in y.regions]
        for (_, p), (_, q) in zip(x.regions, y.regions):
            assert torch.equal(p, q) if isinstance(p, torch.Tensor) else tuple(p) == tuple(q)


@pytest.mark.parametrize("name", ["story.yaml", "story.json"])
def test_write_then_read_gives_the_same_story(tmp_path, name):
    story = sample_story()
    path = write_story(tmp_path / name, story)
    assert sorted(os.listdir(tmp_path)) == ["story", name]       # the file and its image folder, no temp files
    assert sorted(os.listdir(tmp_path / "story")) == ["Duo_Twin_1.png", "Duo_Twin_2.png", "Mira.png", "Mira_mask.png",
                                                     "Station.png", "shot_02.png", "shot_02_Duo_Twin_mask.png"]
    assert_same_story(read_story(path), story)
    # Never overwrites, and a refused write changes nothing.
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        write_story(tmp_path / name, story)
    (tmp_path / "other.yaml").touch()
    with pytest.raises(FileExistsError):
        write_story(tmp_path / "other.yaml", story)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "other.yaml"} == before


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import dreamshot.story_file as story_file

    def broken(tmp, target):
        raise OSError("disk full")
    monkeypatch.setattr(story_file, "publish_new", broken)
    with pytest.raises(OSError, match="disk full"):
        write_story(tmp_path / "story.yaml", sample_story())
    assert os.listdir(tmp_path) == []


def test_vistory_stories_import_as_story_files(tmp_path):
    from dreamshot.generate.__main__ import main

    data = tmp_path / "VistoryBench"
    write_png(data / "07/image/role0/00.png", pixels(40, 32, 11))
    write_png(data / "07/image/role1/00.png", pixels(40, 32, 12))
    raw = {"07": {"prompt_cn": ["<角色0>在车站。", "一条小路。", "<角色1>读信。"],
                  "role_indices": {"0": [0], "2": [1]},
                  "ref_prompt_cn_format": ["<角色0>：红衣女子。", "<角色1>：蓝衣男子。"],
                  "fg_url_list": ["07/image/role0/00.png", "07/image/role1/00.png"]}}
    (tmp_path / "v.json").write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    args = ["--import-vistory", str(tmp_path / "v.json"), "--story", "07", "--data-root", str(data),
            "-o", str(tmp_path / "out" / "v07.yaml")]
    (tmp_path / "out").mkdir()
    assert main(args) == 0
    story = read_story(tmp_path / "out" / "v07.yaml")
    assert story.title == "ViStoryBench 07" and [c.name for c in story.characters] == ["role0", "role1"]
    assert story.characters[1].description == "<角色1>：蓝衣男子。"
    assert torch.equal(story.characters[0].images[0], pixels(40, 32, 11))
    assert [(s.prompt, s.characters) for s in story.shots] == [("<角色0>在车站。", ("role0",)), ("一条小路。", ()),
                                                               ("<角色1>读信。", ("role1",))]
    assert story.default_mode() is Mode.REFERENCE_TO_SHOT
    assert main(args) == 2                     # never overwrites


# -- the nodes in the real ComfyUI -----------------------------------------------------------------
@pytest.fixture
def folders(pack_nodes, tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    with comfy_folders(input=inp, output=out):
        yield inp, out


def test_nodes_are_registered(pack_nodes, folders):
    load, save = pack_nodes["DreamShotLoadStory"], pack_nodes["DreamShotSaveStory"]
    info = load.GET_NODE_INFO_V1()
    assert info["category"] == "DreamShot/conditioning"
    assert info["output"] == ["DREAMSHOT_CHARACTERS", "DREAMSHOT_SHOTS", "STRING", "STRING"]
    assert info["output_name"] == ["characters", "shots", "lock_shots", "title"]
    info = save.GET_NODE_INFO_V1()
    assert info["category"] == "DreamShot/output" and info["output_node"] is True
    assert info["input"]["required"]["shots"][0] == "DREAMSHOT_SHOTS"
    assert info["input"]["optional"]["characters"][0] == "DREAMSHOT_CHARACTERS"


def test_save_story_then_load_story_gives_the_same_cast_and_shots(pack_nodes, N, folders):
    inp, out = folders
    image, mask = pixels(40, 24, 1)[None], (pixels(40, 24, 2, channels=0) > 0.5).float()[None]
    (chars,) = N.DreamShotCharacterReference(image=image, name="Mira", description="a girl", mask=mask)
    (chars,) = N.DreamShotCharacterReference(image=pixels(32, 48, 3)[None], name="Theo", characters=chars)
    (shots,) = N.DreamShotShotScript(prompt="Mira waits.", characters="Mira, Theo",
                                     character_boxes="Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1")
    (shots,) = N.DreamShotShotScript(prompt="Theo leaves.", characters="Theo", image=pixels(32, 32, 9)[None],
                                     shots=shots, character_masks=pixels(32, 32, 4, channels=0)[None], duration=3.5,
                                     shot_size="WS", camera="tilt up", action="Theo walks off.", dialogue="THEO: Bye.")
    assert (shots[1].duration, shots[1].camera, shots[0].duration, shots[0].camera) == (3.5, "tilt up", 2.0, "static")
    save = pack_nodes["DreamShotSaveStory"]
    kwargs = dict(shots=shots, characters=chars, title="Rain", lock_shots="2", settings="width: 64\nheight: 48",
                  filename_prefix="stories/rain")
    result = run_node(save, **kwargs)
    assert result.result == ("stories/rain_00001_.yaml",)
    assert result.ui.as_dict() == {"text": ("saved stories/rain_00001_.yaml",)}
    again = run_node(save, **kwargs)
    assert again.result == ("stories/rain_00002_.yaml",)             # never overwrites: the next number
    assert sorted(os.listdir(out / "stories")) == ["rain_00001_", "rain_00001_.yaml", "rain_00002_", "rain_00002_.yaml"]

    # Copied into the input folder, Load Story reads it back.
    shutil.copytree(out / "stories", inp / "stories")
    load = pack_nodes["DreamShotLoadStory"]
    assert "stories/rain_00001_.yaml" in load.GET_NODE_INFO_V1()["input"]["required"]["story"][1]["options"]
    characters, loaded_shots, lock, title = run_node(load, story="stories/rain_00001_.yaml").result
    assert (lock, title) == ("2", "Rain")
    assert_same_story(Story(characters, loaded_shots), Story(chars, shots))
    assert read_story(inp / "stories/rain_00001_.yaml").settings == StorySettings(width=64, height=48)

    # The fingerprint follows the file and the images it names.
    first = load.fingerprint_inputs(story="stories/rain_00001_.yaml")
    assert first == load.fingerprint_inputs(story="stories/rain_00001_.yaml")
    write_png(inp / "stories/rain_00001_/Theo.png", pixels(32, 48, 5))
    assert load.fingerprint_inputs(story="stories/rain_00001_.yaml") != first


def test_the_nodes_name_themselves_in_errors(pack_nodes, N, folders):
    inp, out = folders
    errors = __import__(pack_nodes["DreamShotSampler"].__module__.rsplit(".nodes.", 1)[0] + ".dreamshot.errors",
                        fromlist=["x"])
    (shots,) = N.DreamShotShotScript(prompt="a")
    save = pack_nodes["DreamShotSaveStory"]
    for prefix in ("../escape/story", "/tmp/abs_story"):
        with pytest.raises(errors.DreamShotInputError, match="Save Story: input 'filename_prefix'"):
            run_node(save, shots=shots, title="", filename_prefix=prefix)
    with pytest.raises(errors.DreamShotInputError, match="Save Story: input 'settings': settings:1: settings.width"):
        run_node(save, shots=shots, title="", settings="width: 50", filename_prefix="x")
    with pytest.raises(errors.DreamShotInputError, match="Save Story: input 'lock_shots': '3' is outside shots 1..1"):
        run_node(save, shots=shots, title="", lock_shots="3", filename_prefix="x")
    assert os.listdir(out) == [] and not (out.parent / "escape").exists()
    (inp / "bad.yaml").write_text("shots:\n  - prompt: a\n    seed: no\n", encoding="utf-8")
    with pytest.raises(errors.DreamShotInputError, match=r"Load Story: input 'story': 1 problem\(s\) in the story "
                                                         r"file bad.yaml:\n  bad.yaml:3: shots\[0\].seed"):
        run_node(pack_nodes["DreamShotLoadStory"], story="bad.yaml")


def test_load_story_refuses_the_alias_bomb_at_once(pack_nodes, folders):
    """Issue 23: this file held ComfyUI's server for 147 s (9 levels; 10 would exhaust the memory).
    Load Story now refuses it, naming itself, the file and the line, before building anything large:
    measured as Python heap (tracemalloc), not time; the wall guard only detects a hang."""
    from support.guards import hang_guard, traced_peak

    inp, _ = folders
    errors = __import__(pack_nodes["DreamShotSampler"].__module__.rsplit(".nodes.", 1)[0] + ".dreamshot.errors",
                        fromlist=["x"])
    load = pack_nodes["DreamShotLoadStory"]
    for levels in (9, 10):
        (inp / f"bomb{levels}.yaml").write_text(alias_bomb(levels), encoding="utf-8")
        assert f"bomb{levels}.yaml" in load.GET_NODE_INFO_V1()["input"]["required"]["story"][1]["options"]
        with hang_guard(30, 300, "Load Story on the alias bomb"):
            peak, outcome = traced_peak(run_node, load, story=f"bomb{levels}.yaml")
            fingerprint = load.fingerprint_inputs(story=f"bomb{levels}.yaml")
        assert isinstance(outcome, errors.DreamShotInputError), outcome
        assert str(outcome).startswith(f"Load Story: input 'story': 1 problem(s) in the story file bomb{levels}.yaml:\n"
                                       f"  bomb{levels}.yaml:4: this value expands to "), str(outcome)[:300]
        assert peak < 16 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB of Python heap"
        assert fingerprint.startswith("error: ") and "this value expands to" in fingerprint


# -- python -m dreamshot.generate on the shipped example --------------------------------------------
def generate_args(models: Path, out: Path, *extra) -> list[str]:
    return [str(EXAMPLE), "--out", str(out), "--dit", str(models / "dit.safetensors"),
            "--vae", str(models / "vae.safetensors"), "--text-encoder", str(models / "umt5.safetensors"),
            "--text-encoder-config", str(SUPPORT / "test_nodes_pack" / "tiny_umt5_config.json"),
            "--steps", "1", "--width", "64", "--height", "64", "--log-level", "WARNING", *extra]


def test_generate_refuses_before_loading_models(tmp_path, caplog):
    from dreamshot.generate.__main__ import main

    fake = tmp_path / "models"          # never opened: every refusal comes first
    out = tmp_path / "out"
    write_png(out / "2.png", pixels(8, 8, 0))
    assert main(generate_args(fake, out)) == 2
    assert "input 'out': " in caplog.text and "already holds keyframes (2.png)" in caplog.text
    story = tmp_path / "locked.yaml"
    shutil.copytree(EXAMPLE.parent / "lighthouse", tmp_path / "lighthouse")
    story.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "    characters: [Lighthouse]\n", "    characters: [Lighthouse]\n    lock: true\n"), encoding="utf-8")
    args = [str(story), *generate_args(fake, tmp_path / "new")[1:]]
    assert main(args) == 2
    assert "input 'keyframes': shot(s) 1 are locked but no earlier storyboard was given." in caplog.text
    assert main([*args, "--keyframes", str(tmp_path / "empty")]) == 2
    assert "empty lacks 1.png, 2.png, 3.png, 4.png: the earlier storyboard is taken whole" in caplog.text
    write_png(tmp_path / "kept" / "1.png", pixels(8, 8, 0))
    assert main([*args, "--keyframes", str(tmp_path / "kept")]) == 2      # as Shot Sequence Pack: one per shot
    assert "kept lacks 2.png, 3.png, 4.png" in caplog.text
    for j in range(1, 4):
        write_png(tmp_path / "kept" / f"{j + 1}.png", pixels(8, 8, j))
    assert main([*args, "--mode", "reference_to_shot", "--keyframes", str(tmp_path / "kept")]) == 2
    assert "reference_to_shot generates every shot, but 1 shot(s) carry an image" in caplog.text
    with pytest.raises(SystemExit):
        main([str(story), "--out", str(out)])                       # no model files named


@pytest.mark.slow
def test_generate_runs_the_example_story(tiny_models_dir, tmp_path, capsys):
    from dreamshot.generate.__main__ import main

    out = tmp_path / "lighthouse"
    chunks = []
    assert main(generate_args(tiny_models_dir, out, "--log-level", "INFO", "--animatic", "--timeline"),
                on_chunk=chunks.append) == 0
    # One pass (4 shots, at most 6 per pass by default) with the three references and the file's text.
    example = read_story(EXAMPLE)
    [chunk] = chunks
    assert chunk.layout.num_refs == 3 and chunk.layout.num_shots == 4 and not any(chunk.layout.clean_shots)
    assert chunk.plan.prompts == [s.prompt for s in example.shots] + [c.description for c in example.characters]
    files = sorted(os.listdir(out))
    assert files == ["1.png", "2.png", "3.png", "4.png", "animatic_00001_.mp4", "storyboard_00001_.pdf",
                     "storyboard_00001_.png", "timeline_00001_", "timeline_00001_.edl", "timeline_00001_.otio",
                     "timeline_00001_.xml"]
    # the example's durations (3 + 2.5 + 2 + 3.5 s) at 24 fps, cut the same way in the timeline
    import av
    import opentimelineio as otio

    with av.open(str(out / "animatic_00001_.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 11 * 24
    boards = otio.adapters.read_from_file(str(out / "timeline_00001_.otio")).tracks[0]
    assert [(c.name, c.duration().value) for c in boards] == [("Shot 1", 72), ("Shot 2", 60), ("Shot 3", 48),
                                                               ("Shot 4", 84)]
    for name in files[:4]:
        with Image.open(out / name) as im:
            assert im.size == (64, 64)
    with Image.open(out / "storyboard_00001_.png") as im:
        assert im.width > 4 * 64
    assert "DreamShot storyboard: 100%" in capsys.readouterr().err      # the one progress bar, to the end


@pytest.mark.slow
def test_locked_shots_are_kept_and_skipped_passes_serve_as_context(tiny_wan_model, tiny_vae, tiny_clip, tmp_path):
    """Re-rolling: shots 1-2 locked from an earlier storyboard, two shots per pass, one context shot
    (what main does after loading the models, on the session's tiny models)."""
    from types import SimpleNamespace

    from dreamshot.generate.__main__ import earlier_keyframes, run_settings
    from dreamshot.generate.runner import generate_storyboard
    from dreamshot.story import plan_story

    earlier = tmp_path / "earlier"
    for j in range(3):
        write_png(earlier / f"{j + 1}.png", pixels(64, 64, 20 + j))
    (tmp_path / "s.yaml").write_text("shots:\n  - {prompt: a, lock: true}\n  - {prompt: b, lock: true}\n"
                                     "  - {prompt: c}\nsettings: {negative_prompt: ''}\n", encoding="utf-8")
    story = read_story(tmp_path / "s.yaml")
    keyframes = earlier_keyframes(story, str(earlier))
    flags = dict.fromkeys(["width", "height", "steps", "cfg", "ref_cfg", "seed", "chunk_size", "context_shots",
                           "negative_prompt", "distill_lora"])
    args = SimpleNamespace(**{**flags, "width": 64, "height": 64, "steps": 1, "chunk_size": 2, "context_shots": 1,
                              "shift": 1.0, "sampler": "euler", "scheduler": "simple"})
    settings = run_settings(story, args)
    assert story.default_mode() is Mode.EDIT and settings.negative_prompt == ""
    plan = plan_story(story.characters, story.shots, 64, 64, mode=story.default_mode(), keyframes=keyframes,
                      lock_shots=story.locked)
    chunks = []
    out = tmp_path / "again"
    result = generate_storyboard(plan, "", tiny_wan_model, tiny_vae, tiny_clip, settings, out, pdf=False,
                                 on_chunk=chunks.append)
    # The pass of shots 1-2 is all kept, so it is skipped; shot 2 is the next pass's context.
    [chunk] = chunks
    assert chunk.layout.clean_shots == (True, False) and result["generated"] == 1
    for j in range(2):
        assert np.array_equal(np.asarray(Image.open(out / f"{j + 1}.png")), np.asarray(Image.open(earlier / f"{j + 1}.png")))
    assert sorted(os.listdir(out)) == ["1.png", "2.png", "3.png", "storyboard_00001_.png"]
