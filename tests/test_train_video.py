"""Video records in python -m dreamshot.train: the manifest's clips, the t2v mode ratio, the cache
(one clip = one video latent), the packed sample (plain text-to-video) and training on ComfyUI's Wan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_train_support import SIZE, cached_dataset, make_dataset, write_config

FRAMES = 5   # 1 + 4k: two latent frames


def _add_video(root: Path, frames: int = FRAMES, caption: str = "mira walks to the right") -> dict:
    paths = []
    for t in range(frames):
        img = np.full((SIZE, SIZE, 3), 90, np.uint8)
        img[20:44, 4 + 8 * t:28 + 8 * t] = (220, 40, 40)
        (root / "clip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "clip" / f"f{t}.png")
        paths.append(f"clip/f{t}.png")
    record = {"id": "clip", "video": {"frames": paths, "caption": caption}}
    with open(root / "manifest.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def test_manifest_reads_video_records_and_lists_their_problems(tmp_path):
    from dreamshot.train.dataset import DatasetError, read_manifest

    root = make_dataset(tmp_path / "ds")
    _add_video(root)
    seqs = read_manifest(root)
    assert [s.id for s in seqs] == ["alley", "tea", "clip"] and [s.is_video for s in seqs] == [False, False, True]
    clip = seqs[2].shots[0]
    assert clip.caption == "mira walks to the right" and clip.frames == tuple(f"clip/f{t}.png" for t in range(5))
    assert seqs[2].files() == list(clip.frames) and not seqs[2].characters

    bad = tmp_path / "bad"
    bad.mkdir()
    lines = [{"id": "a", "video": {"frames": ["x.png"] * 4, "caption": "c"}},
             {"id": "b", "video": {"frames": ["../x.png"], "caption": "c", "fps": 8}},
             {"id": "c", "video": {"frames": ["x.png"]}, "shots": []},
             {"id": "d", "video": ["x.png"]}]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "x.png")
    (bad / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DatasetError) as e:
        read_manifest(bad)
    text = str(e.value)
    assert "manifest.jsonl:1: video.frames: 4 frames: a clip has 1 + 4k frames" in text and "use 1 or 5" in text
    assert "manifest.jsonl:2: video.frames[0]" in text and "manifest.jsonl:2: video.fps: unknown field" in text
    assert "manifest.jsonl:3: shots: unknown field" in text and "manifest.jsonl:3: video.caption: missing" in text
    assert "manifest.jsonl:4: video: expected an object" in text


def test_t2v_ratio_and_mode_draws():
    from dreamshot.train.config import ConfigError, TrainConfig
    from dreamshot.train.objective import STORY_MODES, choose_mode

    cfg = TrainConfig()
    cfg.modes.r2s, cfg.modes.t2s, cfg.modes.s2s, cfg.modes.t2v = 0.3, 0.1, 0.0, 0.6
    assert cfg.mode_ratios() == pytest.approx({"reference_to_shot": 0.3, "text_to_shot": 0.1, "shot_to_shot": 0.0,
                                               "text_to_video": 0.6})
    cfg.modes.t2v = -1.0
    with pytest.raises(ConfigError, match="modes.t2v"):
        cfg.validate()
    ratios = TrainConfig().mode_ratios()
    assert ratios["text_to_video"] == 0.0   # off unless asked for
    # a story draws exactly as it did before video records existed (same weights, same generator use)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    feasible = ["text_to_shot", "reference_to_shot", "shot_to_shot"]
    drawn = [choose_mode(g1, ratios, feasible) for _ in range(200)]
    weights = torch.tensor([ratios[m] for m in STORY_MODES], dtype=torch.float64)
    assert drawn == [STORY_MODES[int(torch.multinomial(weights, 1, generator=g2))] for _ in range(200)]
    assert choose_mode(g1, {**ratios, "text_to_video": 0.1}, ["text_to_video"]) == "text_to_video"
    with pytest.raises(ValueError, match="no mode"):
        choose_mode(g1, ratios, ["text_to_video"])


@pytest.fixture(scope="module")
def video_data(tiny_models_dir, tmp_path_factory):
    """The session's cached stories plus one clip (the cache step encodes only the clip)."""
    import shutil

    from dreamshot.train.cache import run_cache
    from dreamshot.train.config import load_config

    shared = cached_dataset(tiny_models_dir)
    d = tmp_path_factory.mktemp("video_data")
    shutil.copytree(shared["dataset"], d / "dataset")
    shutil.copytree(shared["cache"], d / "cache")
    _add_video(d / "dataset")
    cfg = write_config(d / "cache.toml", tiny_models_dir, d / "dataset", d / "cache", d / "unused")
    run_cache(load_config(cfg))
    return {"dir": d, "dataset": d / "dataset", "cache": d / "cache", "models": tiny_models_dir}


def test_cache_encodes_a_clip_as_one_video_and_packs_it_as_text_to_video(video_data):
    import comfy.sd
    import comfy.utils
    import safetensors

    from dreamshot.train.cache import CacheReader, build_sample, feasible_modes

    path = video_data["cache"] / "sequences" / "clip.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dreamshot.sequence"])
        latent = f.get_tensor("latent.shots")
        assert tuple(latent.shape) == (16, 2, 8, 8) and tuple(f.get_tensor("latent.refs").shape) == (16, 0, 8, 8)
    assert meta["kind"] == "video" and meta["repeat"] == 8 and meta["frames"] == FRAMES
    # the same latent as ComfyUI's VAE gives the clip's frames as one video
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(video_data["models"] / "vae.safetensors"), safe_load=True))
    frames = torch.stack([torch.from_numpy(np.array(Image.open(video_data["dataset"] / f"clip/f{t}.png")))
                          for t in range(FRAMES)]).float() / 255
    torch.testing.assert_close(latent, vae.encode(frames)[0].float(), atol=1e-3, rtol=1e-3)

    reader = CacheReader(video_data["cache"])
    ids = [e["id"] for e in reader.entries]
    seq = reader.load(ids.index("clip"))
    assert seq.kind == "video" and seq.frames_per_shot == 2
    assert feasible_modes(seq, 3, 21) == ["text_to_video"] and feasible_modes(seq, 3, 1) == []
    story = reader.load(ids.index("alley"))
    assert story.kind == "story" and "text_to_video" not in feasible_modes(story, 3, 21)
    s = build_sample(seq, "text_to_video", torch.Generator().manual_seed(0), reader.empty_text, 3, 21, 4)
    assert s.mode == "text_to_video" and s.layout.num_refs == 0 and s.layout.num_shots == 1
    assert s.noised.tolist() == [True, True] and s.frame_segments == [0, 0] and s.num_segments == 1
    assert torch.equal(s.latent[0], latent.float()) and not any(s.shot_regions)
    n = seq.shot_texts[0].shape[0]
    assert torch.equal(s.context[0, :n], seq.shot_texts[0].float()) and not s.context[0, n:].any()


def test_training_draws_clips_only_for_t2v(video_data, tmp_path):
    from dreamshot.train.config import load_config
    from dreamshot.train.trainer import Trainer

    def config(name: str, modes: dict):
        return load_config(write_config(tmp_path / f"{name}.toml", video_data["models"], video_data["dataset"],
                                        video_data["cache"], tmp_path / name, modes=modes,
                                        train={"steps": 6, "gradient_checkpointing": False},
                                        checkpoint={"every": 0}))

    trainer = Trainer(config("mixed", {"r2s": 0.5, "t2s": 0.0, "s2s": 0.0, "t2v": 0.5}))
    trainer.train()
    drawn = {}
    for line in (tmp_path / "mixed" / "metrics.jsonl").read_text().splitlines():
        for mode, k in json.loads(line)["modes"].items():
            drawn[mode] = drawn.get(mode, 0) + k
    assert set(drawn) == {"reference_to_shot", "text_to_video"}   # stories never t2v, the clip never r2s
    clip = [e["id"] for e in trainer.data.entries].index("clip")
    assert trainer.feasible[clip] == ["text_to_video"]
    batch = trainer.prepare_batch(clip)
    assert batch.sample.mode == "text_to_video" and batch.mask.all() and batch.role_map is None
    assert json.loads(__import__("safetensors").safe_open(str(tmp_path / "mixed" / "dreamshot_lora.safetensors"),
                                                          framework="pt").metadata()["dreamshot.modes"])["t2v"] == 0.5
    with pytest.raises(ValueError, match="modes.t2v > 0"):
        Trainer(config("stories_only", {"r2s": 1.0, "t2s": 0.0, "s2s": 0.0})).train()
