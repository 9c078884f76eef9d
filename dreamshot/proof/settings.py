"""The proof grid's settings, its cells and where everything lives under the output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

INITS = ("scratch", "prior")              # the DiT a cell fine-tunes: random (identity_init) or the video prior
LOSSES = ("racl", "noracl")               # RACL at racl_lambda, or lambda 0
CONDITIONS = ("r2s", "r2s_roles", "t2s")  # scored per cell (dreamshot.proof.evaluate)
CONDITION_LABELS = {"r2s": "R2S (no inference patch)", "r2s_roles": "R2S + role attention patch (script boxes)",
                    "t2s": "T2S (each shot alone, no references)"}


@dataclass(frozen=True)
class ProofSettings:
    width: int = 96
    height: int = 48
    train_stories: int = 200
    test_stories: int = 40        # held out, reported (seed data_seed + 1)
    dev_stories: int = 24         # held out, for exploration only (seed data_seed + 2): never the reported set
    shots_per_story: int = 3
    # Which held-out set the cells score: "test" for the reported table, "dev" while choosing settings.
    split: str = "test"
    videos: int = 1000            # prior clips (seed data_seed + 10)
    prior_steps: int = 5000
    prior_lr: float = 2e-3
    prior_eval_clips: int = 24    # generated from held-out captions to check the prior (seed data_seed + 11)
    train_steps: int = 2000       # per fine-tune, the same from scratch and from the prior
    lr: float = 2e-3
    racl_lambda: float = 0.5
    racl_layers: tuple = ()       # blocks whose self-attention RACL trains; () = every block
    r2s_share: float = 0.6        # fine-tune mix: R2S this often, T2S otherwise
    # Flow-matching shift for training and sampling alike. Each block colour is spread over all 16
    # latent channels, so averaging them already removes most noise below sigma ~0.7: shift 3 puts
    # half of training above 0.75, where the scene itself must be predicted.
    shift: float = 3.0
    sample_steps: int = 20
    # R2S sampled again with the names rotated over the cast, on this many held-out stories: does the
    # caption's name change who is drawn (report.name_check)?
    name_check_stories: int = 12
    # Prompt segment length (at least), the same in training and sampling: short, so a caption's few
    # words are not outweighed by many zero rows in cross-attention of the untrained model.
    text_length: int = 12
    # Hide the zero padding rows from cross-attention in training and sampling (not Wan's way). Trained
    # attending to them, the tiny DiTs put all their cross-attention there; masked, they put it on the
    # caption's constant words instead, and plain R2S stayed at chance either way (docs/proof.md).
    mask_text_padding: bool = False
    # Trained whole besides the 4 blocks (lora.full_finetune_modules): the DiT starts random, and
    # frozen random embeddings and head leave the blocks to work around them.
    train_modules: tuple = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")
    data_seed: int = 0            # datasets and the random models (shared by every cell)
    seeds: tuple = (0, 1, 2)      # fine-tune seeds: data order, modes, noise, timesteps and sampling noise
    checkpoint_every: int = 1000  # a killed job resumes its training from here
    # One thread per process: with tiny tensors a second torch thread made steps ~10x slower here.
    threads: int = 1

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "ProofSettings":
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(kinds)
        if unknown:
            raise ValueError(f"unknown proof settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def with_overrides(self, items: list[str]) -> "ProofSettings":
        """``name=value`` pairs (JSON values; a bare word is a string), e.g. ``train_steps=2000``."""
        changes = {}
        names = {f.name for f in fields(self)}
        for item in items:
            name, sep, raw = item.partition("=")
            if not sep or name not in names:
                raise ValueError(f"--set {item!r}: use NAME=VALUE with NAME one of {sorted(names)}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            changes[name] = tuple(value) if isinstance(value, list) else value
        s = replace(self, **changes)
        if s.split not in ("test", "dev"):
            raise ValueError(f"split = {s.split!r}: use test or dev")
        return s


QUICK = {"train_stories": 2, "test_stories": 1, "dev_stories": 1, "videos": 3, "prior_steps": 2, "prior_eval_clips": 1,
         "train_steps": 2, "sample_steps": 2, "seeds": (0,), "checkpoint_every": 1, "name_check_stories": 1}


@dataclass(frozen=True)
class Cell:
    init: str
    loss: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.init}-{self.loss}-s{self.seed}"


def cells(s: ProofSettings) -> list[Cell]:
    return [Cell(i, lo, seed) for i in INITS for lo in LOSSES for seed in s.seeds]


class Paths:
    """The output folder: ``assets/`` (data, tiny models, caches), ``prior/``, ``cells/<name>/``."""

    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()
        self.settings = self.out / "settings.json"
        self.assets = self.out / "assets"
        self.models = self.assets / "models"
        self.stories = self.assets / "stories"
        self.videos = self.assets / "videos"
        self.story_cache = self.assets / "cache_stories"
        self.video_cache = self.assets / "cache_videos"
        self.held_out = self.assets / "held_out.json"
        self.assets_done = self.assets / "done.json"
        self.prior = self.out / "prior"
        self.prior_dit = self.prior / "prior.safetensors"
        self.prior_done = self.prior / "done.json"
        self.logs = self.out / "logs"

    def cell(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def cell_done(self, cell: Cell) -> Path:
        return self.cell(cell) / "result.json"
