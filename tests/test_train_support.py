"""Helpers shared by the tests/test_train_*.py files: a generated storyboard dataset, a training
config on the tiny random Wan models, and one cache per test session.

(It is a test module by name only so that it lives beside the other training tests; it holds
one self-check of the generator.)
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64

COLOURS = {"mira": (220, 40, 40), "theo": (40, 60, 220)}
BACKGROUNDS = [(30, 120, 60), (200, 200, 120), (90, 90, 90), (120, 60, 140)]


def _save(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path.name


def _blob(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return ((x - cx * size) ** 2 + (y - cy * size) ** 2 <= (r * size) ** 2)


def _shot(root: Path, name: str, bg, people: dict[str, tuple[float, float]]) -> tuple[str, dict[str, str]]:
    img = np.zeros((SIZE, SIZE, 3), np.uint8) + np.array(bg, np.uint8)
    masks = {}
    for cid, (cx, cy) in people.items():
        m = _blob(SIZE, cx, cy, 0.2)
        img[m] = COLOURS[cid]
        masks[cid] = _save(root / f"{name}_{cid}.png", (m * 255).astype(np.uint8))
    return _save(root / f"{name}.png", img), masks


def _reference(root: Path, cid: str, wide: bool = False) -> tuple[str, str]:
    w = SIZE * 3 // 2 if wide else SIZE   # one reference of another size: fitted when cached
    img = np.full((SIZE, w, 3), 255, np.uint8)
    y, x = np.mgrid[0:SIZE, 0:w]
    m = (x - w / 2) ** 2 + (y - SIZE / 2) ** 2 <= (0.3 * SIZE) ** 2
    img[m] = COLOURS[cid]
    return _save(root / f"ref_{cid}.png", img), _save(root / f"ref_{cid}_mask.png", (m * 255).astype(np.uint8))


def make_dataset(root: Path) -> Path:
    """Two stories at 64x64: 'alley' (Mira + Theo, 3 shots, masks) and 'tea' (Mira, 2 shots)."""
    root.mkdir(parents=True, exist_ok=True)
    refs = {cid: _reference(root, cid, wide=cid == "theo") for cid in COLOURS}
    chars = {cid: {"name": cid.title(), "reference": refs[cid][0], "mask": refs[cid][1],
                   "description": f"{cid} the {'woman' if cid == 'mira' else 'man'}" if cid == "mira" else ""}
             for cid in COLOURS}
    lines = []
    shots = []
    layout = [("mira", {"mira": (0.3, 0.5)}), ("mira theo", {"mira": (0.25, 0.5), "theo": (0.75, 0.5)}),
              ("theo", {"theo": (0.5, 0.4)})]
    for j, (words, people) in enumerate(layout):
        image, masks = _shot(root, f"alley_{j}", BACKGROUNDS[j], people)
        shots.append({"image": image, "caption": f"{words} in the street at night", "characters": list(people),
                      "masks": masks})
    lines.append({"id": "alley", "shots": shots, "characters": chars})
    shots = []
    for j, people in enumerate([{"mira": (0.5, 0.5)}, {"mira": (0.7, 0.6)}]):
        image, masks = _shot(root, f"tea_{j}", BACKGROUNDS[3 - j], people)
        shot = {"image": image, "caption": ["a woman with a cup of tea", "close up of the woman"][j],
                "characters": ["mira"]}
        if j == 0:
            shot["masks"] = masks
        shots.append(shot)
    lines.append({"id": "tea", "shots": shots, "characters": {"mira": chars["mira"]}})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return root


def write_config(path: Path, models: Path, dataset: Path, cache: Path, output: Path, **sections) -> Path:
    """A TOML config for the tiny models; ``sections`` = {"train": {"steps": 4}, ...} overrides."""
    from support.tiny_models import TINY_UMT5_CONFIG

    base = {
        "model": {"dit": str(models / "dit.safetensors"), "vae": str(models / "vae.safetensors"),
                  "text_encoder": str(models / "umt5.safetensors"), "text_encoder_config": dict(TINY_UMT5_CONFIG),
                  "dtype": "fp32"},
        "data": {"dataset": str(dataset), "cache_dir": str(cache), "width": SIZE, "height": SIZE,
                 "max_shots": 3, "text_min_length": 32, "cache_dtype": "fp32"},
        "train": {"output_dir": str(output), "steps": 4, "seed": 0, "gradient_checkpointing": True},
        "modes": {"r2s": 0.4, "t2s": 0.3, "s2s": 0.3},
        "racl": {"lambda": 0.1},
        "lora": {"rank": 4, "alpha": 4.0, "save_dtype": "fp32"},
        "optimizer": {"lr": 1e-3},
        "checkpoint": {"every": 2, "total_limit": 2},
        "logging": {"log_every": 1, "progress": False},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    from dreamshot.train.config import toml_text

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(base), encoding="utf-8")
    return path


_SESSION: dict = {}


def session_dir() -> Path:
    if "dir" not in _SESSION:
        d = Path(tempfile.mkdtemp(prefix="dreamshot-train-tests-"))
        atexit.register(shutil.rmtree, d, True)
        _SESSION["dir"] = d
    return _SESSION["dir"]


def cached_dataset(models: Path) -> dict:
    """Dataset + cache built once per test session (the VAE encode is the slow part)."""
    if "cache" not in _SESSION:
        from dreamshot.train.cache import run_cache
        from dreamshot.train.config import load_config

        d = session_dir()
        dataset = make_dataset(d / "dataset")
        cfg_path = write_config(d / "cache.toml", models, dataset, d / "cache", d / "unused")
        run_cache(load_config(cfg_path))
        _SESSION["cache"] = {"dataset": dataset, "cache": d / "cache", "models": models}
    return _SESSION["cache"]


def test_generated_dataset_is_valid(tmp_path):
    from dreamshot.train.dataset import read_manifest

    seqs = read_manifest(make_dataset(tmp_path / "ds"))
    assert [s.id for s in seqs] == ["alley", "tea"]
    assert [len(s.shots) for s in seqs] == [3, 2]
    assert seqs[0].shots[1].characters == ("mira", "theo")
