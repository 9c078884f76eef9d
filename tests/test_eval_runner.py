"""The benchmark file, the runner over the ViStoryBench outputs layout, the reports and the CLI.

Identity is measured with ``dreamshot.shapes.ShapeAnalyzer``, a STAND-IN for insightface (synthetic
shape characters detected by colour, one fixed-seed identity vector each); the CLI's real
insightface path is only checked for its refusal of folders without models."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from dreamshot.errors import DreamShotInputError
from dreamshot.eval.__main__ import main
from dreamshot.eval.benchmark import read_benchmark
from dreamshot.eval.report import write_reports
from dreamshot.eval.runner import direct_run, evaluate_runs, find_runs, shot_files
from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, render_scene

RUBY, MOSS = SHAPE_CAST[:2]
LEFT, RIGHT = (8, 16, 64, 80), (96, 16, 152, 80)


def save(path: Path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_benchmark(root: Path, **overrides) -> Path:
    for name, who, seed in (("ruby.png", RUBY, 1), ("moss.png", MOSS, 2)):
        save(root / "refs" / name, render_scene(96, 96, [(who, (16, 16, 80, 80))], background_seed=seed)[0])
    bench = {"format": "dreamshot-eval-benchmark", "version": 1, "stories": [
        {"id": "01",
         "characters": {"ruby": {"name": "Ruby", "reference": "refs/ruby.png"},
                        "moss": {"name": "Moss", "reference": ["refs/moss.png"]}},
         "shots": [{"prompt": "ruby waits", "characters": ["ruby"]},
                   {"prompt": "moss arrives", "characters": ["moss"]},
                   {"prompt": "they meet", "characters": ["ruby", "moss"],
                    "boxes": {"ruby": [0, 0, 0.5, 1], "moss": [0.5, 0, 1, 1]}}]},
        {"id": "02",
         "characters": {"ruby": {"reference": "refs/ruby.png"}},
         "shots": [{"prompt": "ruby alone", "characters": ["ruby"]}, {"prompt": "an empty street"}]}]}
    bench.update(overrides)
    path = root / "bench.json"
    path.write_text(json.dumps(bench), encoding="utf-8")
    return path


def write_run(run: Path, stories: dict[str, list[list]], names="{n}.png") -> None:
    for sid, shots in stories.items():
        for j, placements in enumerate(shots):
            if placements is None:
                continue
            save(run / sid / "shots" / names.format(n=j + 1, z=j), render_scene(160, 96, placements, j + 7)[0])


GOOD = {"01": [[(RUBY, LEFT)], [(MOSS, RIGHT)], [(RUBY, LEFT), (MOSS, RIGHT)]], "02": [[(RUBY, RIGHT)], []]}
SWAPPED = {"01": [[(MOSS, LEFT)], [(RUBY, RIGHT)], [(MOSS, LEFT), (RUBY, RIGHT)]], "02": [[(MOSS, RIGHT)], []]}


# ------------------------------------------------------------------------------------ benchmark

def test_benchmark_reads_stories_characters_shots_and_boxes(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path))
    assert [s.id for s in bench.stories] == ["01", "02"]
    s1 = bench.stories[0]
    assert [c.name for c in s1.characters] == ["Ruby", "Moss"]
    assert s1.characters[1].references == ("refs/moss.png",)
    assert s1.shots[2].characters == ("ruby", "moss")
    assert dict(s1.shots[2].boxes) == {"ruby": (0.0, 0.0, 0.5, 1.0), "moss": (0.5, 0.0, 1.0, 1.0)}
    assert bench.stories[1].characters[0].name == "ruby"        # name defaults to the id
    assert bench.stories[1].shots[1].characters == ()


def test_benchmark_lists_every_problem_at_once(tmp_path):
    path = write_benchmark(tmp_path, stories=[
        {"id": "a/b", "characters": {"x": {"reference": "../x.png", "age": 3}},
         "shots": [{"prompt": "p", "characters": ["x", "y"], "boxes": {"x": [0, 0, 1, 1]}},
                   {"prompt": 5, "boxes": {"x": [1, 0, 0, 1]}}]},
        {"id": "ok", "characters": {"z": {"reference": "refs/nope.png"}}, "shots": []},
        {"id": "ok", "shots": [{"prompt": ""}]}], extra=1)
    with pytest.raises(DreamShotInputError) as e:
        read_benchmark(path)
    msg = str(e.value)
    for needle in ("bench.json: extra: unknown field", "stories[0].id: expected an id", "'../x.png' must be relative",
                   "characters.x.age: unknown field", "unknown character 'y'", "give a box for every character",
                   "stories[0].shots[1].prompt: expected a string",
                   "stories[0].shots[1].boxes.x: gives a box for a character not listed",
                   "stories[0].shots[1].boxes.x: expected [x0, y0, x1, y1]", "file 'refs/nope.png' not found",
                   "stories[1].shots: expected a non-empty list", "story id 'ok' is used more than once"):
        assert needle in msg, needle
    assert "input 'benchmark'" in msg and "Fix:" in msg


def test_benchmark_refuses_other_formats_and_broken_json(tmp_path):
    with pytest.raises(DreamShotInputError, match="version: this DreamShot reads version 1, got 2"):
        read_benchmark(write_benchmark(tmp_path, version=2))
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(DreamShotInputError, match="not valid JSON"):
        read_benchmark(tmp_path / "bad.json")
    with pytest.raises(DreamShotInputError, match="is not a file"):
        read_benchmark(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------ runner

def make_outputs(tmp_path: Path) -> tuple[Path, Path]:
    bench = write_benchmark(tmp_path / "bench")
    out = tmp_path / "outputs"
    write_run(out / "dreamshot" / "base" / "en" / "20260101-000000", SWAPPED)   # older: not measured by default
    write_run(out / "dreamshot" / "base" / "en" / "20260102_120000", GOOD)
    write_run(out / "swapper" / "base" / "en" / "20260101-000000", SWAPPED)
    partial = {"01": [[(RUBY, LEFT)], None, [(RUBY, LEFT)]]}                 # story 02 missing entirely
    write_run(out / "partial" / "base" / "en" / "20260101-000000", partial)
    return bench, out


def test_runs_are_found_newest_timestamp_by_default(tmp_path):
    _, out = make_outputs(tmp_path)
    runs = find_runs(out)
    assert [(r.method, r.timestamp) for r in runs] == [("dreamshot", "20260102_120000"), ("partial", "20260101-000000"),
                                                       ("swapper", "20260101-000000")]
    assert len(find_runs(out, methods=["dreamshot"], all_timestamps=True)) == 2
    assert [r.timestamp for r in find_runs(out, methods=["dreamshot"], timestamps=["20260101-000000"])] == \
        ["20260101-000000"]
    with pytest.raises(DreamShotInputError, match="no run folders"):
        find_runs(out, langs=["zh"])
    with pytest.raises(DreamShotInputError, match="is not a folder"):
        find_runs(tmp_path / "nowhere")


def test_shot_files_numbering_and_duplicates(tmp_path):
    story = tmp_path / "01"
    for name in ("1.png", "02.jpg", "shot_3.png", "notes.txt", "7.png"):
        save(story / "shots" / name, render_scene(16, 16, [], 0)[0]) if name.endswith(("png", "jpg")) else \
            (story / "shots" / name).write_text("x")
    files = shot_files(story, 4)
    assert [f.name if f else None for f in files] == ["1.png", "02.jpg", "shot_3.png", None]   # 7 is out of range
    zero = shot_files(story, 4, numbering=0)
    assert [f.name if f else None for f in zero] == [None, "1.png", "02.jpg", "shot_3.png"]
    save(story / "shots" / "01.png", render_scene(16, 16, [], 0)[0])
    with pytest.raises(DreamShotInputError, match="two images for shot 1"):
        shot_files(story, 4)
    assert shot_files(tmp_path / "absent", 2) == [None, None]


def test_runner_measures_every_run_and_writes_csv_and_markdown(tmp_path):
    bench_path, out = make_outputs(tmp_path)
    bench = read_benchmark(bench_path)
    story_rows, run_rows = evaluate_runs(bench, find_runs(out), ShapeAnalyzer())
    by = {(r["method"], r["story"]): r for r in story_rows}
    good, swapped = by[("dreamshot", "01")], by[("swapper", "01")]
    assert (good["appearances"], good["misses"], good["confused"]) == (4, 0, 0)
    assert good["identity_similarity"] > 0.95 and good["consistency"] > 0.95
    assert swapped["confusion_rate"] == 1.0          # story 01 has boxes, so the both-shot swap counts too
    partial = by[("partial", "01")]
    assert (partial["missing_shots"], partial["misses"], partial["confused"]) == (1, 2, 0)
    missing_story = by[("partial", "02")]
    assert missing_story["missing_shots"] == 2 and missing_story["misses"] == 1
    runs = {r["method"]: r for r in run_rows}
    # Run rows pool appearances: dreamshot has 4 + 1 = 5, all found.
    assert runs["dreamshot"]["appearances"] == 5 and runs["dreamshot"]["miss_rate"] == 0.0
    # Story 02's cast is Ruby alone: Moss in Ruby's place is a stranger (low similarity), not a confusion,
    # which needs another cast member's reference to be closer. So 4 of the run's 5 appearances.
    assert runs["swapper"]["confusion_rate"] == pytest.approx(4 / 5)
    assert by[("swapper", "02")]["confused"] == 0 and by[("swapper", "02")]["identity_similarity"] < 0.6
    assert runs["partial"]["miss_rate"] == pytest.approx(3 / 5)
    assert runs["partial"]["missing_shots"] == 3
    assert math.isnan(runs["dreamshot"]["clip_score"])

    paths = write_reports(story_rows, run_rows, tmp_path / "report")
    assert [p.name for p in paths] == ["metrics_stories.csv", "metrics_runs.csv", "metrics.md"]
    assert not [p for p in os.listdir(tmp_path / "report") if p.endswith(".tmp")]
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["method"] == "dreamshot" and rows[0]["clip_score"] == ""
    assert float(rows[0]["identity_similarity"]) == pytest.approx(good["identity_similarity"], abs=1e-3)
    md = paths[2].read_text(encoding="utf-8")
    assert "## Runs" in md and "## Stories" in md and "| swapper" in md and "confusion" in md


def test_a_flat_folder_of_stories_is_one_run(tmp_path):
    """python -m dreamshot.vistory writes <out>/<story>/<N>.png: no shots/ folder, no method/mode/lang."""
    bench = read_benchmark(write_benchmark(tmp_path / "bench"))
    flat = tmp_path / "vistory_bench"
    for sid, placements in GOOD.items():
        for j, p in enumerate(placements):
            save(flat / sid / f"{j + 1}.png", render_scene(160, 96, p, j + 7)[0])
    run = direct_run(flat)
    assert (run.method, run.mode, run.timestamp) == ("vistory_bench", "", "")
    story_rows, [summary] = evaluate_runs(bench, [run], ShapeAnalyzer())
    assert [r["missing_shots"] for r in story_rows] == [0, 0]
    assert summary["appearances"] == 5 and summary["miss_rate"] == 0.0 and summary["identity_similarity"] > 0.95
    with pytest.raises(DreamShotInputError, match="input 'run'"):
        direct_run(tmp_path / "nope")


# ------------------------------------------------------------------------------------ CLI

def test_cli_check_and_its_errors(tmp_path, caplog):
    bench = write_benchmark(tmp_path)
    assert main(["check", "--benchmark", str(bench)]) == 0
    bad = write_benchmark(tmp_path / "bad", stories=[{"id": "x", "shots": [{"prompt": "p", "characters": ["q"]}]}])
    assert main(["check", "--benchmark", str(bad)]) == 2
    assert "unknown character 'q'" in caplog.text


def test_cli_run_refuses_a_face_model_folder_without_models(tmp_path, caplog):
    bench_path, out = make_outputs(tmp_path)
    empty = tmp_path / "buffalo_l"
    empty.mkdir()
    code = main(["run", "--benchmark", str(bench_path), "--outputs", str(out), "--face-model", str(empty),
                 "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "holds no .onnx model files" in caplog.text
    assert main(["run", "--benchmark", str(bench_path), "--outputs", str(out), "--report-dir", str(tmp_path / "r")]) == 2
    assert "nothing to measure" in caplog.text
    assert not (tmp_path / "r").exists()
