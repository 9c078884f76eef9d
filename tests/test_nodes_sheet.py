"""Storyboard Sheet: the layout (pure), safe file names and saving, and the node inside the real
pinned ComfyUI (in-process: its folder_paths, V3 io and ui helpers, no stubs)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from support.node_calls import comfy_folders, run_node
from PIL import Image

from dreamshot import sheet as sheet_mod
from dreamshot.errors import DreamShotInputError
from dreamshot.sheet import SheetStyle, auto_columns, render_sheet, safe_stem, save_sheet_files, wrap_text
from dreamshot.shot_timing import board_text

REPO = Path(__file__).resolve().parents[1]
WHITE = (255, 255, 255)


def keyframes(n=3, h=48, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


# ------------------------------------------------------------------------------------------ layout

@pytest.mark.parametrize("n, cols", [(1, 1), (3, 3), (4, 4), (5, 3), (6, 3), (7, 4), (8, 4), (9, 3), (12, 4)])
def test_auto_columns(n, cols):
    assert auto_columns(n) == cols


def test_keyframes_are_pasted_unchanged_in_a_grid():
    imgs = keyframes(5, 48, 96)
    style = SheetStyle(cell_width=96, margin=10, gutter=6, font_size=12, font="default")
    out = render_sheet(imgs, title="", columns=2, style=style)
    assert out.mode == "RGB"
    # 2 columns x 3 rows; no title row, no caption lines: only the "Shot n" line under each cell.
    assert out.width == 2 * 10 + 2 * 96 + 6
    px = torch.from_numpy(__import__("numpy").array(out)).float() / 255
    line_h = round(12 * 1.3)
    text_h = round(line_h * 1.25) + line_h // 2
    for j in range(5):
        r, c = divmod(j, 2)
        x, y = 10 + c * (96 + 6), 10 + r * (48 + text_h + 6)
        cell = px[y:y + 48, x:x + 96]
        # Below the shot-number badge the pixels are the keyframe's, to 8-bit rounding.
        assert (cell[24:] - imgs[j][24:]).abs().max() <= 0.5 / 255 + 1e-6
        # The badge is drawn top-left (dark box).
        assert cell[:4, :4].mean() < 0.2
    # The sixth cell of the grid is empty paper.
    x, y = 10 + 1 * (96 + 6), 10 + 2 * (48 + text_h + 6)
    assert (px[y:y + 48, x:x + 96] == 1.0).all()


def test_title_captions_and_names_take_room_and_ink():
    imgs = keyframes(2)
    style = SheetStyle(cell_width=200, font="default")
    bare = render_sheet(imgs, style=style)
    full = render_sheet(imgs, ["a rainy street at night, wide shot", "close-up"], [("Mira",), ("Mira", "Theo")],
                        title="Rain", style=style)
    assert full.width == bare.width and full.height > bare.height
    # The title band has ink; the bare sheet's top margin is paper.
    top = full.crop((0, 0, full.width, 40))
    assert top.getextrema() != ((255, 255),) * 3
    assert bare.crop((0, 0, bare.width, 10)).getextrema() == ((255, 255),) * 3


def test_rows_line_up_whatever_the_caption_lengths():
    imgs = keyframes(2)
    style = SheetStyle(cell_width=160, font="default", max_caption_lines=3)
    short = render_sheet(imgs, ["a", "b"], style=style)
    long = render_sheet(imgs, ["a", "word " * 200], style=style)
    one_line = render_sheet(imgs, ["a", "b " * 3], style=style)
    assert short.size == one_line.size
    line_h = round(12 * 1.3)          # font size max(12, 160 / 30) = 12
    assert long.height == short.height + 2 * line_h     # capped at 3 caption lines


def test_wrap_text_fits_keeps_words_and_ellipsizes():
    font = sheet_mod._font(14, "default")
    text = "Mira and Theo walk away together down the glowing street, seen from behind"
    lines = wrap_text(text, font, 120, max_lines=10)
    assert all(font.getlength(line) <= 120 for line in lines)
    assert " ".join(lines) == text
    cut = wrap_text(text, font, 120, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith("\u2026") and font.getlength(cut[-1]) <= 120
    long_word = wrap_text("x" * 200, font, 60, max_lines=50)
    assert "".join(long_word) == "x" * 200 and all(font.getlength(line) <= 60 for line in long_word)
    assert wrap_text("  line\none\ttwo\x00 ", font, 500, 3) == ["line one two"]


def test_bundled_font_folds_accents_and_dashes():
    font = sheet_mod._font(14, "default")
    assert sheet_mod._clean_text("Café \u2014 Zoë", font) == "Cafe - Zoe"
    assert sheet_mod._clean_text("Café \u2014 Zoë") == "Café \u2014 Zoë"     # no font: unchanged


@pytest.mark.parametrize("bad, needle", [
    (torch.rand(48, 80, 3), "IMAGE batch"),
    (torch.rand(0, 48, 80, 3), "IMAGE batch"),
    (torch.rand(2, 48, 80, 5), "IMAGE batch"),
])
def test_render_refuses_non_images(bad, needle):
    with pytest.raises(DreamShotInputError, match=needle):
        render_sheet(bad)


def test_render_refuses_mismatched_captions_and_negative_columns():
    with pytest.raises(DreamShotInputError, match="2 captions for 3 keyframes"):
        render_sheet(keyframes(3), ["a", "b"])
    with pytest.raises(DreamShotInputError, match="columns"):
        render_sheet(keyframes(3), columns=-1)


def test_grey_and_rgba_keyframes():
    assert render_sheet(torch.rand(2, 32, 32, 1), style=SheetStyle(font="default")).mode == "RGB"
    assert render_sheet(torch.rand(2, 32, 32, 4), style=SheetStyle(font="default")).mode == "RGB"


# ------------------------------------------------------------------------------------- file names

@pytest.mark.parametrize("text, expected", [
    ("storyboard", "storyboard"),
    ("../../etc/passwd", "etc_passwd"),
    ("a/b\\c", "a_b_c"),
    ("..", "storyboard"),
    (".hidden", "hidden"),
    ("x\x00y\n\tz", "x_y_z"),
    ("CON", "_CON"),
    ("lpt1.txt", "_lpt1.txt"),
    ("my story: part 1?", "my_story_part_1"),
    ("", "storyboard"),
    ("日本語 ストーリー", "日本語_ストーリー"),
    ("a..b...c", "a.b.c"),
])
def test_safe_stem_examples(text, expected):
    assert safe_stem(text) == expected


def test_safe_stem_properties_on_random_text():
    rng = random.Random(7)
    alphabet = "ab./\\:*?\"<>|\x00\x1f\x7f \t\n..é日-_" + "".join(chr(c) for c in range(0x2000, 0x2010))
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        stem = safe_stem(text)
        assert stem and len(stem.encode()) <= sheet_mod.MAX_STEM_BYTES
        assert "/" not in stem and "\\" not in stem and ".." not in stem
        assert not stem.startswith(".") and not stem.endswith(".")
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in stem)
        assert os.path.basename(stem) == stem and stem not in (".", "..")
        assert safe_stem(stem) == stem   # idempotent


def test_safe_stem_caps_bytes_without_splitting_characters():
    stem = safe_stem("日" * 100)
    assert len(stem.encode()) <= 100 and stem == "日" * 33


# ------------------------------------------------------------------------------------------ saving

def small_sheet(color=(10, 20, 30)):
    return Image.new("RGB", (64, 40), color)


def test_saves_png_and_pdf_with_counters(tmp_path):
    png, pdf = save_sheet_files(small_sheet(), str(tmp_path), "story", title="Rain \u2014 night")
    assert Path(png).name == "story_00001_.png" and Path(pdf).name == "story_00001_.pdf"
    with Image.open(png) as im:
        assert im.size == (64, 40) and im.getpixel((0, 0)) == (10, 20, 30)
    data = Path(pdf).read_bytes()
    assert data.startswith(b"%PDF") and b"/Title" in data
    png2, pdf2 = save_sheet_files(small_sheet(), str(tmp_path), "story")
    assert Path(png2).name == "story_00002_.png" and Path(pdf2).name == "story_00002_.pdf"
    png3, pdf3 = save_sheet_files(small_sheet(), str(tmp_path), "story", pdf=False)
    assert Path(png3).name == "story_00003_.png" and pdf3 is None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_never_overwrites_existing_files(tmp_path):
    # Someone else's files: a PDF with counter 1 and a PNG with counter 2 (and an unrelated name).
    (tmp_path / "story_00001_.pdf").write_bytes(b"theirs-1")
    (tmp_path / "story_00002_.png").write_bytes(b"theirs-2")
    (tmp_path / "other_00009_.png").write_bytes(b"other")
    png, pdf = save_sheet_files(small_sheet(), str(tmp_path), "story")
    assert Path(png).name == "story_00003_.png" and Path(pdf).name == "story_00003_.pdf"
    assert (tmp_path / "story_00001_.pdf").read_bytes() == b"theirs-1"
    assert (tmp_path / "story_00002_.png").read_bytes() == b"theirs-2"


def test_a_name_taken_during_the_save_is_skipped(tmp_path, monkeypatch):
    real_link = os.link
    calls = []

    def racing_link(src, dst, *a, **k):
        calls.append(os.path.basename(dst))
        if os.path.basename(dst) == "story_00001_.pdf":
            Path(dst).write_bytes(b"raced")        # another process wins this name just now
            raise FileExistsError(dst)
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(sheet_mod.os, "link", racing_link)
    png, pdf = save_sheet_files(small_sheet(), str(tmp_path), "story")
    assert Path(png).name == "story_00002_.png" and Path(pdf).name == "story_00002_.pdf"
    assert (tmp_path / "story_00001_.pdf").read_bytes() == b"raced"
    assert not (tmp_path / "story_00001_.png").exists()     # our half-claimed pair was released
    assert calls[:2] == ["story_00001_.png", "story_00001_.pdf"]


def test_without_hard_links_names_are_claimed_exclusively(tmp_path, monkeypatch):
    def no_links(*_a, **_k):
        raise PermissionError("links not supported here")

    monkeypatch.setattr(sheet_mod.os, "link", no_links)
    (tmp_path / "story_00001_.png").write_bytes(b"theirs")
    png, pdf = save_sheet_files(small_sheet(), str(tmp_path), "story")
    assert Path(png).name == "story_00002_.png"
    with Image.open(png) as im:
        assert im.size == (64, 40)
    assert Path(pdf).read_bytes().startswith(b"%PDF")
    assert (tmp_path / "story_00001_.png").read_bytes() == b"theirs"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_concurrent_saves_get_distinct_files(tmp_path):
    results, errors = [], []

    def worker(i):
        try:
            results.append(save_sheet_files(small_sheet((i, i, i)), str(tmp_path), "story"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pngs = {r[0] for r in results}
    assert len(pngs) == 8 and len({r[1] for r in results}) == 8
    colors = set()
    for png in pngs:
        with Image.open(png) as im:
            colors.add(im.getpixel((0, 0))[0])
    assert colors == set(range(8))     # nobody's file was overwritten


@pytest.mark.parametrize("stem", ["../story", "a/b", "..", ".x", "", "a\x00b", "a b"])
def test_refuses_unsafe_stems(tmp_path, stem):
    with pytest.raises(DreamShotInputError, match="safe file name"):
        save_sheet_files(small_sheet(), str(tmp_path), stem)
    assert os.listdir(tmp_path) == []


def test_refuses_folders_outside_the_root_even_through_links(tmp_path):
    root, outside = tmp_path / "output", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DreamShotInputError, match="outside the output folder"):
        save_sheet_files(small_sheet(), str(outside), "story", root=str(root))
    with pytest.raises(DreamShotInputError, match="outside the output folder"):
        save_sheet_files(small_sheet(), str(root / "link"), "story", root=str(root))
    with pytest.raises(DreamShotInputError, match="outside the output folder"):
        save_sheet_files(small_sheet(), str(root / ".." / "elsewhere"), "story", root=str(root))
    assert os.listdir(outside) == []
    (root / "sub").mkdir()
    png, _ = save_sheet_files(small_sheet(), str(root / "sub"), "story", root=str(root))
    assert Path(png).parent == root / "sub"


# --------------------------------------------------------------------- the node in the real ComfyUI

def find_comfyui() -> Path | None:
    """$COMFYUI_PATH, the ComfyUI this pack is installed in, or ~/ComfyUI."""
    candidates = [os.environ.get("COMFYUI_PATH"), REPO.parent.parent, Path.home() / "ComfyUI"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file() and (Path(candidate) / "comfy").is_dir():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="module")
def comfy_pack():
    """The pinned ComfyUI imported headless (CPU) and this pack imported as ComfyUI imports it: a
    package under a path-derived name, so its relative imports and comfy imports are the real ones."""
    root = find_comfyui()
    if root is None:
        pytest.skip("COMFYUI NOT FOUND (set COMFYUI_PATH): the Storyboard Sheet node was NOT tested in ComfyUI")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True
    name = "dreamshot_pack_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    sheet_node = importlib.import_module(f"{name}.nodes.sheet")
    story = importlib.import_module(f"{name}.dreamshot.story")
    errors = importlib.import_module(f"{name}.dreamshot.errors")
    import folder_paths
    return sheet_node, story, errors, folder_paths


@pytest.fixture
def output_dir(comfy_pack, tmp_path):
    out = tmp_path / "output"
    with comfy_folders(output=out):
        yield out


def fake_sequence(story, mode="text_to_shot", lock=()):
    """A StorySequence carrying a real plan (plan_story needs no model); tensors are placeholders."""
    Shot = story.Shot
    shots = [Shot("Mira waits at the <b>bus stop</b>", ("Mira",)), Shot("Theo arrives", ("Theo", "Mira")),
             Shot("they leave together", ("Mira", "Theo"))]
    chars = [story.Character("Mira", torch.rand(1, 32, 32, 3)), story.Character("Theo", torch.rand(1, 32, 32, 3))]
    keyframes_in = torch.rand(3, 32, 32, 3) if lock else None
    plan = story.plan_story(chars, shots, 32, 32, mode=mode, keyframes=keyframes_in, lock_shots=lock)
    return story.StorySequence(plan=plan, latent=torch.zeros(1), positive=torch.zeros(1), negative=torch.zeros(1),
                               segment_length=1)


@pytest.mark.comfyui
def test_schema(comfy_pack):
    node = comfy_pack[0].StoryboardSheet
    schema = node.GET_SCHEMA()
    assert schema.node_id == "DreamShotStoryboardSheet"
    assert schema.display_name == "Storyboard Sheet"
    assert schema.category == "DreamShot/output"
    assert schema.is_output_node and schema.description
    names = [i.id for i in schema.inputs]
    assert names == ["keyframes", "sequence", "title", "columns", "filename_prefix", "save_pdf"]
    assert all(i.tooltip for i in schema.inputs)
    info = node.GET_NODE_INFO_V1()
    assert info["input"]["optional"]["sequence"][0] == "DREAMSHOT_SEQUENCE"
    assert info["input"]["required"]["filename_prefix"][1]["default"] == "DreamShot/storyboard"
    assert info["output"] == ["IMAGE"] and info["output_node"] is True


@pytest.mark.comfyui
def test_node_previews_and_saves_into_the_output_folder(comfy_pack, output_dir):
    sheet_node, story = comfy_pack[0], comfy_pack[1]
    seq = fake_sequence(story, mode="edit", lock=[0, 2])
    hidden = {"PROMPT": {"1": {"class_type": "DreamShotStoryboardSheet"}},
              "EXTRA_PNGINFO": {"workflow": {"nodes": []}}}
    out = run_node(sheet_node.StoryboardSheet, hidden, keyframes=torch.rand(3, 32, 32, 3), sequence=seq,
                   title="Rain", columns=0, filename_prefix="DreamShot/storyboard", save_pdf=True)
    sheet = out.result[0]
    assert sheet.shape[0] == 1 and sheet.shape[-1] == 3 and sheet.dtype == torch.float32
    ui = out.ui.as_dict()
    [saved] = ui["images"]
    assert saved == {"filename": "storyboard_00001_.png", "subfolder": "DreamShot", "type": "output"}
    folder = output_dir / "DreamShot"
    assert sorted(os.listdir(folder)) == ["storyboard_00001_.pdf", "storyboard_00001_.png"]
    with Image.open(folder / "storyboard_00001_.png") as im:
        assert im.size == (sheet.shape[2], sheet.shape[1])
        assert "prompt" in im.info and "workflow" in im.info      # drag the PNG back in to get the workflow
    # A second run never overwrites: counter 2.
    out2 = run_node(sheet_node.StoryboardSheet, keyframes=torch.rand(3, 32, 32, 3), sequence=None, title="",
                    columns=3, filename_prefix="DreamShot/storyboard", save_pdf=False)
    assert out2.ui.as_dict()["images"][0]["filename"] == "storyboard_00002_.png"
    assert sorted(os.listdir(folder)) == ["storyboard_00001_.pdf", "storyboard_00001_.png", "storyboard_00002_.png"]


@pytest.mark.comfyui
@pytest.mark.parametrize("prefix", ["../escape/sheet", "DreamShot/../../escape", "/tmp/abs_sheet"])
def test_node_refuses_prefixes_outside_the_output_folder(comfy_pack, output_dir, prefix):
    errors = comfy_pack[2]
    with pytest.raises(errors.DreamShotInputError, match="Storyboard Sheet: input 'filename_prefix'"):
        run_node(comfy_pack[0].StoryboardSheet, keyframes=torch.rand(2, 32, 32, 3), title="t", columns=0,
                 filename_prefix=prefix, save_pdf=True)
    assert not (output_dir.parent / "escape").exists() and not Path("/tmp/abs_sheet_00001_.png").exists()


@pytest.mark.comfyui
def test_node_refuses_a_subfolder_linking_out(comfy_pack, output_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (output_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    errors = comfy_pack[2]
    with pytest.raises(errors.DreamShotInputError, match="leads out of the output folder"):
        run_node(comfy_pack[0].StoryboardSheet, keyframes=torch.rand(2, 32, 32, 3), title="t", columns=0,
                 filename_prefix="linked/sheet", save_pdf=True)
    assert os.listdir(elsewhere) == []


@pytest.mark.comfyui
def test_node_sanitises_the_file_name_and_checks_the_shot_count(comfy_pack, output_dir):
    sheet_node, story, errors = comfy_pack[0], comfy_pack[1], comfy_pack[2]
    out = run_node(sheet_node.StoryboardSheet, keyframes=torch.rand(2, 32, 32, 3), title="t", columns=0,
                   filename_prefix="boards/my story: *draft*", save_pdf=False)
    assert out.ui.as_dict()["images"][0] == {"filename": "my_story_draft_00001_.png", "subfolder": "boards",
                                             "type": "output"}
    with pytest.raises(errors.DreamShotInputError, match="2 keyframe\\(s\\) but the sequence has 3 shot"):
        run_node(sheet_node.StoryboardSheet, keyframes=torch.rand(2, 32, 32, 3), sequence=fake_sequence(story),
                 title="t", columns=0, filename_prefix="x", save_pdf=False)


@pytest.mark.comfyui
def test_node_lays_variants_out_as_rows(comfy_pack, output_dir):
    """Two variants of a 3-shot story (DreamShot Sampler's variants: 6 keyframes, variant by variant)."""
    sheet_node, story = comfy_pack[0], comfy_pack[1]
    seq = fake_sequence(story)
    keys = keyframes(6, 32, 32)
    out = run_node(sheet_node.StoryboardSheet, keyframes=keys, sequence=seq, title="t", columns=0,
                   filename_prefix="variants", save_pdf=False)
    board = board_text(seq.plan.shots)
    captions = board.pop("captions")
    want = render_sheet(keys, captions, [s.characters for s in seq.plan.shots], title="t", variants=2, **board)
    assert tuple(out.args[0].shape[1:3]) == (want.height, want.width)
    assert np.array_equal(out.args[0][0].mul(255).round().byte().numpy(), np.asarray(want))
    one_row = render_sheet(keys[:3], captions, [s.characters for s in seq.plan.shots], title="t", **board)
    assert want.width > one_row.width and want.height < 2 * one_row.height
