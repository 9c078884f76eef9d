"""The whole proof, one function: dataset -> tiny models -> cache -> train (RACL on/off) -> sample
-> classify -> table. Every random choice comes from ``ProofSettings.seed``."""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text
from . import dataset as ds
from .report import Tally, chance_accuracy, markdown_table, score_story

log = logging.getLogger("DreamShot")


@dataclass(frozen=True)
class ProofSettings:
    width: int = 96
    height: int = 48
    train_stories: int = 200
    test_stories: int = 40
    shots_per_story: int = 3
    train_steps: int = 5000
    lr: float = 2e-3
    racl_lambda: float = 0.5
    # Flow-matching shift for training and sampling alike. Each block colour is spread over all 16
    # latent channels, so averaging them already removes most noise below sigma ~0.7: shift 3 puts
    # half of training above 0.75, where the scene itself must be predicted. (Wan's own 8 left the
    # last noise unlearned in an earlier, weaker setup.)
    shift: float = 3.0
    sample_steps: int = 20
    # Prompt segment length, the same in training and sampling: short, so a caption's few words are
    # not outweighed by many zero rows in cross-attention of the untrained model.
    text_length: int = 12
    # Trained whole besides the 4 blocks (lora.full_finetune_modules): this DiT starts random, and
    # frozen random embeddings and head leave the blocks to work around them.
    train_modules: tuple = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")
    seed: int = 0
    # One thread: with tiny tensors on a shared CPU, a second torch thread made training steps
    # ~10x slower here (threads waiting on each other), not faster.
    threads: int = 1


QUICK = {"train_stories": 2, "test_stories": 1, "train_steps": 2, "sample_steps": 2}

CONDITIONS = (("R2S, trained with RACL", "racl", "r2s"), ("R2S, trained without RACL (lambda 0)", "noracl", "r2s"),
              ("R2S + role attention patch (script boxes; RACL-trained)", "racl", "r2s_roles"),
              ("R2S + role attention patch (script boxes; lambda-0 model)", "noracl", "r2s_roles"),
              ("independent per-shot T2S (no refs; RACL-trained model)", "racl", "t2s"))


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def write_train_config(path: Path, models: Path, s: ProofSettings, out: Path, racl_lambda: float) -> Path:
    from .tiny_models import DIT_SIZE, TINY_UMT5_CONFIG

    sections = {
        "model": {"dit": str(models / "dit.safetensors"), "vae": str(models / "vae.safetensors"),
                  "text_encoder": str(models / "umt5.safetensors"), "text_encoder_config": TINY_UMT5_CONFIG,
                  "dtype": "fp32"},
        "data": {"dataset": str(path.parent / "dataset"), "cache_dir": str(path.parent / "cache"), "width": s.width,
                 "height": s.height, "max_shots": s.shots_per_story, "text_min_length": s.text_length,
                 "cache_dtype": "fp32", "shot_fit": "crop", "reference_fit": "pad_white"},
        "train": {"output_dir": str(out), "steps": s.train_steps, "seed": s.seed, "gradient_checkpointing": False,
                  "timestep_shift": s.shift},
        "modes": {"r2s": 0.6, "t2s": 0.4, "s2s": 0.0},
        "racl": {"lambda": racl_lambda},
        # Every block trained fully (a random DiT has nothing for a LoRA to adapt).
        "lora": {"full_finetune_blocks": list(range(DIT_SIZE["num_layers"])),
                 "full_finetune_modules": list(s.train_modules), "save_dtype": "fp32"},
        "optimizer": {"lr": s.lr, "scheduler": "cosine", "warmup_steps": min(50, s.train_steps // 10)},
        "checkpoint": {"every": 0},
        "logging": {"log_every": max(1, s.train_steps // 10), "progress": False},
    }
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in vals.items()) + "\n"
                   for name, vals in sections.items())
    atomic_write_text(path, text)
    return path


def load_block_vae(path: str | Path):
    import safetensors.torch

    from .block_vae import BlockVAE, build_block_vae

    vae = build_block_vae()
    vae.load_state_dict(safetensors.torch.load_file(str(path)))
    return BlockVAE(vae)


def load_text_encoder(path: str | Path, real_loader=None):
    """The tiny UMT5 through ComfyUI's loader, tokenizing without UMT5's padding to 512 tokens
    (ComfyUI's tokenizer option ``umt5xxl_min_length``): ~50x faster on a CPU, and the cache and the
    sampler both encode this way, so training and sampling see the same text."""
    from ..comfy_bridge import training as bridge
    from .tiny_models import TINY_UMT5_CONFIG

    clip = (real_loader or bridge.load_text_encoder)(str(path), TINY_UMT5_CONFIG)
    clip.set_tokenizer_option("umt5xxl_min_length", 1)
    return clip


@contextmanager
def _fast_encoders():
    """The trainer's cache step with the block VAE's fast path (equal to ComfyUI's VAE on these
    weights, checked in tests/test_proof_models.py; ComfyUI's full VAE takes ~1.6 s a frame here) and
    unpadded, memoised captions (the same few captions recur across stories)."""
    from ..comfy_bridge import training as bridge

    real = bridge.load_vae, bridge.load_text_encoder, bridge.encode_text
    memo: dict = {}

    def encode_text(clip, text):
        if (id(clip), text) not in memo:
            memo[id(clip), text] = real[2](clip, text)
        return memo[id(clip), text]

    bridge.load_vae = load_block_vae
    bridge.load_text_encoder = lambda path, _override=None: load_text_encoder(path, real[1])
    bridge.encode_text = encode_text
    try:
        yield
    finally:
        bridge.load_vae, bridge.load_text_encoder, bridge.encode_text = real


def _text_encoder(clip, length: int):
    from ..comfy_bridge import training as bridge
    from ..train.cache import trim_text

    memo: dict[str, torch.Tensor] = {}

    def encode(text: str) -> torch.Tensor:
        if text not in memo:
            t = trim_text(bridge.encode_text(clip, text))
            if t.shape[0] > length:
                raise ValueError(f"caption {text!r} has {t.shape[0]} tokens > text_length {length}")
            memo[text] = torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[0])).unsqueeze(0)
        return memo[text]
    return encode


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float() / 255.0


def sample_condition(model, vae, encode, spec: ds.StorySpec, s: ProofSettings, mode: str, seed: int) -> list[np.ndarray]:
    """Generated shots (uint8 RGB) of one test story: all shots together with references (r2s), the
    same with the role attention patch and each character's box from the script as its region (what
    Character Reference boxes + RACL Attention Patch do in ComfyUI; r2s_roles), or each shot alone
    from its caption (t2s)."""
    from ..comfy_bridge.sampling import sample_long_story
    from ..modes import Mode
    from ..story import Character, Shot, encode_story, plan_story

    def run(characters, shots, m):
        plan = plan_story(characters, shots, s.width, s.height, repeat=4, mode=m, fit="pad_white")
        seq = encode_story(plan, vae, encode, "")
        images, _ = sample_long_story(model, seq, seed, s.sample_steps, 1.0, "euler", "simple")
        return [(im.numpy() * 255).round().clip(0, 255).astype(np.uint8) for im in images]

    regions = mode == "r2s_roles"
    shots = [Shot(prompt=spec.caption(j), characters=tuple(p.role for p in spec.shots[j]),
                  regions=tuple((p.role, p.box) for p in spec.shots[j]) if regions else ())
             for j in range(len(spec.shots))]
    if regions:
        from ..comfy_bridge.role_patch import RoleAttentionConfig, with_role_attention

        model = with_role_attention(model, RoleAttentionConfig(strength=1.0))
    if mode in ("r2s", "r2s_roles"):
        characters = []
        for role, ci in spec.cast.items():
            image, mask = ds.render_reference(ci, s.width, s.height)
            characters.append(Character(name=role, images=_as_tensor(image)[None],
                                        masks=torch.from_numpy(mask.astype(np.float32))[None], description=role))
        return run(characters, shots, Mode.REFERENCE_TO_SHOT)
    return [run([], [Shot(prompt=sh.prompt)], Mode.TEXT_TO_SHOT)[0] for sh in shots]


def _contact_sheet(path: Path, rows: list[list[np.ndarray]]) -> None:
    from PIL import Image

    from ..atomic import atomic_write

    h, w = rows[0][0].shape[:2]
    sheet = np.full((len(rows) * (h + 2), max(len(r) for r in rows) * (w + 2), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet[i * (h + 2):i * (h + 2) + h, j * (w + 2):j * (w + 2) + w] = im
    atomic_write(path, lambda tmp: Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2),
                                                                 Image.NEAREST).save(tmp, format="PNG"))


def run_proof(out: str | Path, settings: ProofSettings | None = None, quick: bool = False) -> dict:
    """Run everything under ``out``; returns the results (also written to results.json / results.md)."""
    s = settings or ProofSettings()
    if quick:
        s = replace(s, **QUICK)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    from ..comfy_bridge.training import import_comfy

    import_comfy()
    timings = {}

    # 1. data
    t = time.perf_counter()
    train = ds.make_stories(s.train_stories, s.seed, s.width, s.height, "train", s.shots_per_story)
    test = ds.make_stories(s.test_stories, s.seed + 1, s.width, s.height, "test", s.shots_per_story)
    ds.write_dataset(out / "dataset", train, s.width, s.height)
    atomic_write_json(out / "test_stories.json", ds.stories_to_json(test))
    timings["dataset"] = time.perf_counter() - t

    # 2. tiny models (the VAE's latent scale is set on the training images)
    from .block_vae import write_block_vae
    from .tiny_models import write_dit, write_text_encoder

    t = time.perf_counter()
    models = out / "models"
    write_dit(models / "dit.safetensors", s.seed)
    write_text_encoder(models / "umt5.safetensors", s.seed)
    images = [ds.render_shot(sp, j, s.width, s.height)[0] for sp in train for j in range(len(sp.shots))]
    images += [ds.render_reference(ci, s.width, s.height)[0] for ci in sorted({c for sp in train for c in sp.cast.values()})]
    write_block_vae(models / "vae.safetensors", images, s.seed)
    timings["models"] = time.perf_counter() - t

    # 3. cache + 4. train, with and without RACL
    from ..train.cache import run_cache
    from ..train.config import load_config
    from ..train.distributed import shutdown
    from ..train.trainer import Trainer

    t = time.perf_counter()
    runs = {}
    for name, lam in (("racl", s.racl_lambda), ("noracl", 0.0)):
        cfg_path = write_train_config(out / f"train_{name}.toml", models, s, out / "runs" / name, lam)
        if name == "racl":
            with _fast_encoders():
                run_cache(load_config(cfg_path))
            timings["cache"] = time.perf_counter() - t
            t = time.perf_counter()
        trainer = Trainer(load_config(cfg_path))
        try:
            result = trainer.train()
        finally:
            shutdown(trainer.dist)
        losses = [result.losses[k] for k in sorted(result.losses)]
        tail = max(1, len(losses) // 10)
        runs[name] = {"lora": str(result.lora_path), "racl_lambda": lam,
                      "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:]))}
        timings[f"train_{name}"] = time.perf_counter() - t
        t = time.perf_counter()

    # 5. sample the held-out stories, 6. classify
    from ..comfy_bridge import training as bridge
    from ..comfy_bridge.lora import apply_lora
    t = time.perf_counter()
    base = bridge.load_dit(str(models / "dit.safetensors"), "fp32")
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    base = ModelSamplingSD3().patch(base, s.shift)[0]   # sample with the shift the model was trained at
    trained = {name: apply_lora(base, r["lora"], 1.0) for name, r in runs.items()}
    vae = load_block_vae(models / "vae.safetensors")
    encode = _text_encoder(load_text_encoder(models / "umt5.safetensors"), s.text_length)
    tallies = {label: Tally() for label, _, _ in CONDITIONS}
    truth = Tally()
    per_story = []
    sheet_rows = []
    for i, spec in enumerate(test):
        seed = s.seed * 1000 + i
        gt = [ds.render_shot(spec, j, s.width, s.height)[0] for j in range(len(spec.shots))]
        # the ceiling: the real shots through the VAE (what a perfect DiT could reach)
        rt = [(vae.decode(vae.encode(_as_tensor(im)[None]))[0, 0].numpy() * 255).round().astype(np.uint8) for im in gt]
        entry = {"id": spec.id, "seed": seed, "vae_round_trip": score_story(truth, rt, spec)}
        if i < 4:
            sheet_rows.append(gt)
        for label, run_name, mode in CONDITIONS:
            shots = sample_condition(trained[run_name], vae, encode, spec, s, mode, seed)
            entry[label] = score_story(tallies[label], shots, spec)
            if i < 4:
                sheet_rows.append(shots)
        per_story.append(entry)
        log.info("proof: sampled test story %d/%d", i + 1, len(test))
    timings["sample_and_score"] = time.perf_counter() - t

    rows = [(label, tallies[label]) for label, _, _ in CONDITIONS]
    rows.append(("real shots through the VAE (ceiling)", truth))
    table = markdown_table(rows, chance_accuracy(test))
    wall = time.perf_counter() - start
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    header = (f"DreamShot shapes-story proof: {len(train)} training / {len(test)} held-out stories, "
              f"{s.width}x{s.height}, {s.train_steps} training steps per model, RACL lambda {s.racl_lambda}, shift {s.shift}, "
              f"{s.sample_steps} euler steps, "
              f"seed {s.seed}{' (QUICK smoke run: numbers mean nothing)' if quick else ''}; "
              f"wall time {wall:.0f} s on {machine}.")
    results = {"settings": asdict(s), "quick": quick, "table": table, "header": header, "runs": runs,
               "timings_s": {k: round(v, 1) for k, v in timings.items()}, "wall_s": round(wall, 1),
               "counts": {label: t.counts for label, t in rows}, "per_story": per_story}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", header + "\n\n" + table + "\n")
    if sheet_rows:
        _contact_sheet(out / "samples.png", sheet_rows)
    return results
