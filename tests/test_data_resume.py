"""Resuming python -m dreamshot.data after a crash: a SIGKILLed CLI and an exception mid-sequence.

Face analysis uses dreamshot.shapes.ShapeAnalyzer (SlowShapeAnalyzer: the same, slowed down so the
kill lands mid-run), a stand-in for insightface on the generated shape-character videos.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamshot.data import DataConfig, build_dataset
from dreamshot.data.masks import box_mask
from dreamshot.shapes import ShapeAnalyzer
from dreamshot.train.dataset import read_manifest
from support.synthetic_videos import ShotSpec, write_video

pytest.importorskip("av", reason="pip install -r tests/requirements-ci.txt")
pytest.importorskip("scenedetect", reason="pip install -r tests/requirements-ci.txt")
REPO = Path(__file__).resolve().parents[1]
CASTS = [("ruby", "moss"), ("ruby",), ("moss", "cobalt"), ("cobalt",), ("ruby", "cobalt"), ("amber", "moss"),
         ("moss",), ("ruby", "amber")]
FLAGS = ["--shots", "2", "--width", "96", "--height", "64", "--min-scene-frames", "4", "--min-face-size", "8",
         "--missing-caption", "empty", "--body-widen", "1.25", "--body-above", "0.12", "--body-below", "0.12"]


def cfg() -> DataConfig:
    return DataConfig(shots=2, width=96, height=64, min_scene_frames=4, min_face_size=8, missing_caption="empty",
                      body_widen=1.25, body_above=0.12, body_below=0.12)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for v in range(3):
        write_video(root / f"clip{v}.mp4", [ShotSpec(12, c, 10 * v + i) for i, c in enumerate(CASTS)])
    return root


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    build_dataset(videos, out, cfg(), faces=ShapeAnalyzer(), progress=False)
    return out


def snapshot(out: Path) -> dict[str, str]:
    """Every dataset file (not the records) by its sha1."""
    return {p.relative_to(out).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.parts[len(out.parts)] not in ("records", "summary.json")}


def test_resume_after_sigkill(videos, clean, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    cmd = [sys.executable, "-m", "dreamshot.data", str(videos), str(out), "--faces",
           "python:support.synthetic_videos:SlowShapeAnalyzer", "--no-progress", *FLAGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seq_dir = out / "records" / "sequences"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if seq_dir.is_dir() and any(seq_dir.glob("*.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    done_videos = list((out / "records" / "videos").glob("*.json"))
    assert len(done_videos) < 3, "the kill came after the last video"
    partial = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() else []
    assert len(partial) < len(read_manifest(clean))

    cmd[cmd.index("python:support.synthetic_videos:SlowShapeAnalyzer")] = "python:dreamshot.shapes:ShapeAnalyzer"
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"(\d+) sequence\(s\) written this run, (\d+) kept from an earlier run", rerun.stderr)
    assert resumed and int(resumed.group(2)) >= 1 and int(resumed.group(1)) >= 1, rerun.stderr[-2000:]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == len(read_manifest(out))
    assert (out / "manifest.jsonl").read_text() == (clean / "manifest.jsonl").read_text()
    assert snapshot(out) == snapshot(clean)
    assert not list(out.rglob("*.tmp"))


class CrashingSegmenter:
    """Box masks, but raises on call number ``crash_at``: a crash in the middle of writing a sequence."""

    name = "box-via-segmenter"

    def __init__(self, crash_at: int | None):
        self.calls = 0
        self.crash_at = crash_at

    def __call__(self, image, box=None):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("injected crash")
        return box_mask(box, *image.shape[:2])


def test_resume_after_a_crash_inside_a_video(videos, tmp_path):
    out = tmp_path / "out"
    # sequence 1 of clip0 has 3 masks, so call 5 is inside sequence 2: clip0 is left half done
    with pytest.raises(KeyboardInterrupt):
        build_dataset(videos, out, cfg(), faces=ShapeAnalyzer(), segmenter=CrashingSegmenter(5), progress=False)
    assert len(list((out / "records" / "sequences").glob("*.json"))) == 1
    assert not list((out / "records" / "videos").glob("*.json"))
    summary = build_dataset(videos, out, cfg(), faces=ShapeAnalyzer(), segmenter=CrashingSegmenter(None),
                            progress=False)
    reference = tmp_path / "reference"
    build_dataset(videos, reference, cfg(), faces=ShapeAnalyzer(), segmenter=CrashingSegmenter(None), progress=False)
    assert summary.sequences_written == len(read_manifest(reference)) - 1
    assert (out / "manifest.jsonl").read_text() == (reference / "manifest.jsonl").read_text()
    assert snapshot(out) == snapshot(reference)
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert got.pop("this_run") == {"sequences_written": 11, "sequences_resumed": 1, "videos_resumed": 0}
    assert want.pop("this_run") == {"sequences_written": 12, "sequences_resumed": 0, "videos_resumed": 0}
    assert got == want  # counts over the whole folder do not depend on where the crash was
