"""python -m dreamshot.data on generated videos with known cuts, identities and masks.

The face analyzer here is dreamshot.shapes.ShapeAnalyzer, a stand-in for insightface (no face
model installs offline): it finds the synthetic shape characters by colour and embeds each
identity as a fixed unit vector, so the ArcFace pairing code runs unchanged. Every other step is
the real thing: PyAV encoding/decoding, PySceneDetect cuts, the dataset written to disk, read back
with dreamshot.train's own reader and checked by ``python -m dreamshot.train check``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamshot.data import DataConfig, build_dataset
from dreamshot.data.cuts import detect_shots
from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, classify_region
from dreamshot.train.dataset import read_manifest
from support.synthetic_videos import ShotSpec, saturation_onnx, write_video

pytest.importorskip("av", reason="pip install -r tests/requirements-ci.txt")
pytest.importorskip("scenedetect", reason="pip install -r tests/requirements-ci.txt")
REPO = Path(__file__).resolve().parents[1]
INDEX = {c.id: i for i, c in enumerate(SHAPE_CAST)}

# Video A: two sequences of four shots. Ruby, Moss and Cobalt also appear outside the first
# sequence (references from outside); Amber appears only inside the second (reference from inside).
SHOTS_A = [ShotSpec(14, ("ruby", "moss"), 1), ShotSpec(12, ("ruby",), 2), ShotSpec(14, ("moss", "cobalt"), 3),
           ShotSpec(12, ("cobalt",), 4), ShotSpec(14, ("ruby", "cobalt"), 5), ShotSpec(12, ("amber", "moss"), 6),
           ShotSpec(12, ("moss",), 7), ShotSpec(14, ("ruby", "amber"), 8)]
SHOTS_B = [ShotSpec(12, ("teal",), 11), ShotSpec(14, ("plum", "teal"), 12), ShotSpec(12, ("plum",), 13),
           ShotSpec(12, ("teal", "plum"), 14)]
# Filters: a black shot, a too-short shot, and a near-duplicate (the same picture with new grain).
SHOTS_F = [ShotSpec(14, ("ruby", "moss"), 1), ShotSpec(12, ("ruby",), 2), ShotSpec(12, (), 4, black=True),
           ShotSpec(14, ("cobalt", "ruby"), 5), ShotSpec(14, ("cobalt", "ruby"), 5, grain=30),
           ShotSpec(3, ("amber",), 7), ShotSpec(14, ("amber", "ruby"), 8)]

N_MASKS = sum(len(s.cast) for s in SHOTS_A + SHOTS_B)  # every character of every shot gets one


def config(**kw) -> DataConfig:
    """Training size = video size (so truth aligns), small faces allowed, body = the shape itself."""
    base = dict(shots=4, width=96, height=64, min_scene_frames=4, min_face_size=8, body_widen=1.25,
                body_above=0.12, body_below=0.12)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    a = write_video(root / "scene_a.mp4", SHOTS_A)
    b = write_video(root / "more" / "scene_b.mp4", SHOTS_B)
    (root / "scene_a.captions.json").write_text(json.dumps(
        {"shots": {str(i): f"Shot {i} of A: " + " and ".join(s.cast) for i, s in enumerate(SHOTS_A)}}))
    srt = "".join(f"{i + 1}\n00:00:{s / 12:06.3f} --> 00:00:{(s + sh.frames) / 12:06.3f}\nB shot {i}\n\n".replace(".", ",")
                  for i, (s, sh) in enumerate(zip(b.starts, SHOTS_B)))
    (root / "more" / "scene_b.srt").write_text(srt)
    return root, {"scene_a.mp4": a, "more/scene_b.mp4": b}


@pytest.fixture(scope="module")
def dataset(videos, tmp_path_factory):
    root, truth = videos
    out = tmp_path_factory.mktemp("dataset")
    summary = build_dataset(root, out, config(), faces=ShapeAnalyzer(), progress=False)
    return out, truth, summary


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records" / "sequences").glob("*.json")}


def identity_of(image: np.ndarray, mask=None) -> int | None:
    k, _ = classify_region(image, mask if mask is not None else (0, 0, image.shape[1], image.shape[0]))
    return k


def load(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel))


@pytest.mark.parametrize("detector", ["adaptive", "histogram"])
def test_cuts_are_found_at_the_generated_frames(videos, detector):
    _, truth = videos
    for video in truth.values():
        shots = detect_shots(video.path, detector, None, 4)
        assert [s.start for s in shots] == video.starts
        assert shots[-1].end == video.starts[-1] + video.shots[-1].frames


def test_output_is_a_dataset_dreamshot_train_reads(dataset):
    out, _, summary = dataset
    seqs = read_manifest(out)  # checks every field and that every file exists
    order = sorted(records(out).values(), key=lambda r: (r["provenance"]["video"], r["provenance"]["first_shot"]))
    assert [s.id for s in seqs] == [r["entry"]["id"] for r in order]  # videos by path, then shot order
    assert len(seqs) == 3 and all(len(s.shots) == 4 for s in seqs)
    assert summary.counts["sequences"]["kept"] == 3
    assert summary.counts["shots"]["detected"] == len(SHOTS_A) + len(SHOTS_B)
    cfg = out / "train.toml"
    cfg.write_text(f'[data]\ndataset = "{out.as_posix()}"\n')
    run = subprocess.run([sys.executable, "-m", "dreamshot.train", "check", "--config", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "3 sequence(s), 12 shot(s)" in run.stderr


def test_identities_are_paired_with_the_right_references(dataset):
    out, truth, _ = dataset
    recs = records(out)
    seen_outside = seen_inside = 0
    for seq in read_manifest(out):
        prov = recs[seq.id]["provenance"]
        video = truth[prov["video"]]
        ref_identity = {}
        for c in seq.characters:
            k = identity_of(load(out, c.references[0]))
            assert k is not None, f"{seq.id}: reference of {c.id} shows nobody"
            ref_identity[c.id] = k
        assert len(set(ref_identity.values())) == len(ref_identity), "two characters share one identity"
        seq_shots = {s["shot"] for s in prov["shots"]}
        for shot, sprov in zip(seq.shots, prov["shots"]):
            spec = video.shots[sprov["shot"]]
            assert video.shot_at(sprov["keyframe"]) == sprov["shot"]
            assert {ref_identity[c] for c in shot.characters} == {INDEX[c] for c in spec.cast}
        for cid, cprov in prov["characters"].items():
            if cprov["from"] == "outside":
                seen_outside += 1
                assert cprov["shot"] not in seq_shots
            else:
                seen_inside += 1
                # only when the character appears nowhere else in its video
                others = [s for i, s in enumerate(video.shots) if i not in seq_shots]
                assert not any(SHAPE_CAST[ref_identity[cid]].id in s.cast for s in others)
    assert seen_outside >= 6 and seen_inside >= 1  # amber in A's second sequence has no outside shot


def test_shot_masks_cover_their_characters(dataset):
    out, truth, summary = dataset
    recs = records(out)
    assert summary.counts["shot_masks"] == {"box": N_MASKS}
    for seq in read_manifest(out):
        prov = recs[seq.id]["provenance"]
        video = truth[prov["video"]]
        for shot, sprov in zip(seq.shots, prov["shots"]):
            _, true_masks = video.render(sprov["keyframe"])
            ref_ids = {c.id: identity_of(load(out, c.references[0])) for c in seq.characters}
            assert set(sprov["mask_source"].values()) == {"box"}
            for cid, rel in shot.masks:
                mask = load(out, rel) > 127
                true = true_masks[SHAPE_CAST[ref_ids[cid]].id]
                assert (mask & true).sum() >= 0.97 * true.sum(), f"{seq.id} {rel} misses its character"
                assert mask.sum() <= 4.0 * true.sum()  # a body box (a triangle fills half of it), not the frame


def test_onnx_segmenter_masks_are_tight(videos, tmp_path):
    from dreamshot.data.masks import load_segmenter

    pytest.importorskip("onnx", reason="pip install -r tests/requirements-ci.txt")
    root, truth = videos
    onnx_file = saturation_onnx(tmp_path / "saturation.onnx")
    seg = load_segmenter(onnx_file)
    out = tmp_path / "out"
    summary = build_dataset(root, out, config(), faces=ShapeAnalyzer(), segmenter=seg, reference_segmenter=seg,
                            progress=False)
    assert summary.counts["shot_masks"] == {"segmenter": N_MASKS}
    assert summary.counts["reference_masks"] == {"segmenter": summary.counts["characters"]["kept"]}
    recs = records(out)
    ious = []
    for seq in read_manifest(out):
        prov = recs[seq.id]["provenance"]
        video = truth[prov["video"]]
        for c in seq.characters:
            ref, rmask = load(out, c.references[0]), load(out, c.masks[0]) > 127
            assert identity_of(ref, rmask) == identity_of(ref)
        for shot, sprov in zip(seq.shots, prov["shots"]):
            _, true_masks = video.render(sprov["keyframe"])
            for cid, rel in shot.masks:
                k = identity_of(load(out, seq.character(cid).references[0]))
                mask, true = load(out, rel) > 127, true_masks[SHAPE_CAST[k].id]
                ious.append((mask & true).sum() / (mask | true).sum())
    assert min(ious) > 0.6 and np.mean(ious) > 0.8, ious


def test_captions_come_from_sidecars_only(dataset):
    out, truth, _ = dataset
    recs = records(out)
    for seq in read_manifest(out):
        prov = recs[seq.id]["provenance"]
        for shot, sprov in zip(seq.shots, prov["shots"]):
            i = sprov["shot"]
            if prov["video"] == "scene_a.mp4":
                assert shot.caption == f"Shot {i} of A: " + " and ".join(SHOTS_A[i].cast)
            else:
                assert shot.caption == f"B shot {i}"


def test_filters_and_missing_captions_are_counted(tmp_path):
    root = tmp_path / "v"
    write_video(root / "f.mp4", SHOTS_F)
    summary = build_dataset(root, tmp_path / "o", config(shots=2, detector="histogram", min_scene_frames=3),
                            faces=ShapeAnalyzer(), progress=False)
    shots = summary.counts["shots"]
    assert (shots["detected"], shots["black"], shots["too_short"], shots["near_duplicate"]) == (7, 1, 1, 1)
    assert shots["no_caption"] == 4 and "kept" not in shots      # no sidecar, no captioner: nothing invented
    assert "sequences" not in summary.counts
    assert (tmp_path / "o" / "manifest.jsonl").read_text() == ""
    summary = build_dataset(root, tmp_path / "o2", config(shots=2, detector="histogram", min_scene_frames=3,
                                                          missing_caption="empty"), faces=ShapeAnalyzer(), progress=False)
    assert summary.counts["shots"]["empty_caption"] == 4 and summary.counts["shots"]["kept"] == 4
    assert all(s.caption == "" for q in read_manifest(tmp_path / "o2") for s in q.shots)


def test_captioner_and_pairing_hook(tmp_path):
    from support.synthetic_videos import identity_captioner

    root = tmp_path / "v"
    write_video(root / "f.mp4", SHOTS_A[:4])
    calls = []

    def pairer(shot, references, present):
        calls.append((shot.shape, sorted(references), list(present)))
        # claim every reference is also in the shot (a VLM seeing backs of heads), without a box
        return {cid: None for cid in references if cid not in present}

    out = tmp_path / "o"
    build_dataset(root, out, config(), faces=ShapeAnalyzer(), captioner=identity_captioner(), pairer=pairer,
                  progress=False)
    (seq,) = read_manifest(out)
    assert [s.caption for s in seq.shots] == ["Moss and Ruby on screen.", "Ruby on screen.",
                                              "Cobalt and Moss on screen.", "Cobalt on screen."]
    assert len(calls) == 4 and all(shape == (64, 96, 3) and refs == ["char0", "char1", "char2"]
                                   for shape, refs, _ in calls)
    rec = records(out)[seq.id]["provenance"]
    for shot, sprov in zip(seq.shots, rec["shots"]):
        assert set(shot.characters) == {"char0", "char1", "char2"}
        hooked = [c for c, src in sprov["mask_source"].items() if src == "none"]
        assert set(hooked) == set(shot.characters) - {c for c, _ in shot.masks}


def test_cli_errors_name_the_problem(tmp_path, videos):
    root, _ = videos
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    run = subprocess.run([sys.executable, "-m", "dreamshot.data", str(root), str(tmp_path / "o"), "--faces",
                          f"insightface:{tmp_path / 'nowhere'}", "--no-progress"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "model_dir" in run.stderr and "buffalo_l" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "dreamshot.data", str(tmp_path), str(tmp_path / "o"), "--faces",
                          "python:support.synthetic_videos:SlowShapeAnalyzer", "--no-progress"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no video files" in run.stderr


def test_changed_settings_refuse_to_resume(tmp_path):
    from dreamshot.errors import DreamShotInputError

    root = tmp_path / "v"
    write_video(root / "f.mp4", SHOTS_A[:4])
    build_dataset(root, tmp_path / "o", config(missing_caption="empty"), faces=ShapeAnalyzer(), progress=False)
    with pytest.raises(DreamShotInputError, match="width"):
        build_dataset(root, tmp_path / "o", config(missing_caption="empty", width=64), faces=ShapeAnalyzer(),
                      progress=False)


def test_sequences_without_characters_when_allowed(tmp_path):
    root = tmp_path / "v"
    write_video(root / "empty.mp4", [ShotSpec(12, (), 21), ShotSpec(12, (), 22)])
    summary = build_dataset(root, tmp_path / "o", config(shots=2, missing_caption="empty"), faces=ShapeAnalyzer(),
                            progress=False)
    assert summary.counts["sequences"] == {"too_few_characters": 1}
    summary = build_dataset(root, tmp_path / "o0", config(shots=2, missing_caption="empty", min_characters=0),
                            faces=ShapeAnalyzer(), progress=False)
    assert summary.counts["sequences"] == {"kept": 1}
    (seq,) = read_manifest(tmp_path / "o0")
    assert seq.characters == () and all(s.characters == () for s in seq.shots)
