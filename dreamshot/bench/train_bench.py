"""Training steps of a random Wan2.1 DiT through the real trainer, against ``dreamshot.train estimate``.

``RandomDiTTrainer`` is ``dreamshot.train.trainer.Trainer`` with two hooks replaced: the frozen DiT
is built by ``comfy_bridge.random_wan.random_wan_model`` (ComfyUI's own classes, weights made in
place: no 28.6 GB file) where ``load_dit`` would leave it, and the data is one synthetic story held in
memory (3 references, one per character; 6 shots that each list all three characters with a
vertical-band mask each, so RACL runs on every shot). Everything else is the trainer's own code:
LoRA on the ten targets of every block, fp8 storage (``store_fp8``), block swap, offloaded
checkpointed inputs, RACL, the optimizer (8-bit AdamW from bitsandbytes when the recipe names it),
clipping and the optimizer step (``Trainer.train_step``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..train.cache import CachedSequence
from ..train.config import TrainConfig
from ..train.distributed import DistState
from ..train.trainer import Trainer

GiB = 2 ** 30
TEXT_DIM = 4096

# The recipes of docs/training.md section 7 (Wan2.1 14B, rank 32 on all ten targets of all blocks, RACL on).
RECIPES = {
    "80GB": {},                                        # the defaults: bf16, gradient checkpointing, AdamW
    "24GB": {"model.weight_dtype": "fp8_e4m3fn", "train.offload_activations": True,
             "train.blocks_to_swap": 10, "optimizer.name": "adamw8bit"},
}


def recipe_config(settings: dict, width: int, height: int, shots: int, out_dir: Path, steps: int) -> TrainConfig:
    """The TrainConfig of a recipe's ``settings`` ({"section.key": value}) for one story of ``shots``
    shots at ``width`` x ``height``, trained in reference-to-shot mode only (references clean, every
    shot noised)."""
    cfg = TrainConfig()
    cfg.data.width, cfg.data.height, cfg.data.max_shots = width, height, shots
    cfg.modes.r2s, cfg.modes.t2s, cfg.modes.s2s, cfg.modes.t2v = 1.0, 0.0, 0.0, 0.0
    cfg.train.steps, cfg.train.output_dir = steps, str(out_dir)
    cfg.checkpoint.every = 0
    cfg.logging.progress = False
    cfg.logging.log_every = 10 ** 6
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


def synthetic_story(width: int, height: int, shots: int, refs: int, seed: int = 0) -> CachedSequence:
    """One cached story as ``CacheReader.load`` returns it: random raw latents (one latent frame per
    shot and per reference), UMT5-shaped captions (20-60 rows, trailing padding trimmed, as cached),
    no character descriptions, and each shot's characters in vertical bands of the token grid."""
    g = torch.Generator().manual_seed(seed)
    lh, lw, gh, gw = height // 8, width // 8, height // 16, width // 16

    def caption():
        return (torch.randn(int(torch.randint(20, 61, (1,), generator=g)), TEXT_DIM, generator=g) * 0.1)

    def band(c):
        mask = torch.zeros(gh, gw)
        mask[:, c * gw // refs:(c + 1) * gw // refs] = 1.0
        return mask

    return CachedSequence(
        id="synthetic", shots_latent=torch.randn(16, shots, lh, lw, generator=g),
        refs_latent=torch.randn(16, refs, lh, lw, generator=g), shot_texts=[caption() for _ in range(shots)],
        char_texts={}, ref_characters=list(range(refs)), ref_masks=[None] * refs,
        shot_characters=[list(range(refs)) for _ in range(shots)],
        shot_masks=[{c: band(c) for c in range(refs)} for _ in range(shots)],
        width=width, height=height, repeat=4)


class _OneStory:
    """What the trainer reads of a CacheReader, for one story held in memory."""

    def __init__(self, story: CachedSequence):
        self.story = story
        self.empty_text = torch.zeros(1, TEXT_DIM)
        self.index = {"sequences": [{"id": story.id, "fingerprint": "synthetic"}]}

    def __len__(self) -> int:
        return 1

    def load(self, i: int, tensors: bool = True) -> CachedSequence:
        return self.story


class RandomDiTTrainer(Trainer):
    """The trainer on a random DiT of ``size`` built on ``build_device`` and one synthetic story."""

    required_paths = ()

    def __init__(self, cfg: TrainConfig, size: str, device, build_device, story: CachedSequence):
        super().__init__(cfg, DistState(device=torch.device(device)))
        self.size, self.build_device, self.story = size, build_device, story

    def load_base_model(self, fsdp: bool):
        from ..comfy_bridge.random_wan import random_wan_model
        from ..comfy_bridge.training import DTYPES

        if fsdp:
            raise ValueError("the GPU check trains on one device")
        return random_wan_model(self.size, DTYPES[self.cfg.model.dtype], device=self.build_device)

    def load_data(self) -> None:
        from ..train.lora_io import dataset_hash

        self.data = _OneStory(self.story)
        self.ratios = self.cfg.mode_ratios()
        self.feasible = [["reference_to_shot"]]
        self.dataset_hash = dataset_hash(self.data.index)


def bench_train(recipe: str, size: str, width: int, height: int, shots: int, refs: int, device, out_dir: Path,
                steps: int = 2, build_on_device: bool = False, exclude_bytes: int = 0, on_row=None,
                changes: dict | None = None) -> dict:
    """``steps`` optimizer steps of ``recipe`` (one story each); per step its time and, on a GPU, the
    peaks of torch.cuda.max_memory_allocated / max_memory_reserved (less ``exclude_bytes``, a VRAM
    cap's ballast) against ``dreamshot.train estimate`` for the same config and the same story (its
    image, text and reference token counts). The last step is the steady state (the optimizer's state
    exists from the first step on), so the comparison uses it. ``changes``: settings changed from the
    recipe's (e.g. {"optimizer.name": "adamw"} where bitsandbytes is missing).

    ``build_on_device``: the random DiT is made on the compute device (all of it stays there: no block
    swap) instead of in host memory where ComfyUI's loader leaves a file's weights."""
    import comfy.model_management as mm

    from ..comfy_bridge.compat import training_mode
    from ..train.estimate import WAN21, WanDims, estimate, sample_size

    settings = {**RECIPES[recipe], **(changes or {})}
    cfg = recipe_config(settings, width, height, shots, out_dir, steps)
    story = synthetic_story(width, height, shots, refs)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    trainer = RandomDiTTrainer(cfg, size, device, device if build_on_device else mm.unet_offload_device(), story)
    trainer.setup()
    result = {"recipe": recipe, "size": size, "frame": f"{width}x{height}", "shots": shots, "refs": refs,
              "settings": settings, "steps": [],
              "setup_s": time.perf_counter() - t0, "error": ""}
    sample = trainer.prepare_batch(0).sample
    lay = sample.layout
    tokens, text, ref_tokens = lay.num_tokens, sample.num_segments * sample.segment_length, \
        lay.num_refs * lay.tokens_per_frame
    dims = WAN21.get(size) or WanDims(*_tiny_dims(trainer))
    compute = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[trainer.story_model.compute_dtype]
    est = estimate(cfg, dims, tokens, text, ref_tokens, compute=compute)
    frames, cli_tokens, cli_text, cli_refs = sample_size(cfg, lay.num_latent_frames, refs)
    cli = estimate(cfg, dims, cli_tokens, cli_text, cli_refs, compute=compute)
    result.update(tokens=tokens, text_tokens=text, ref_tokens=ref_tokens, compute=compute,
                  resident_gib=trainer.story_model.resident_bytes() / GiB,
                  swapped_blocks=len(trainer.story_model.swapped),
                  estimate_gib=est.peak / GiB, estimate_text=est.format(),
                  cli_estimate_gib=cli.peak / GiB, cli_text_tokens=cli_text,
                  cli_command=f"python -m dreamshot.train estimate train.toml --model {size} --frames {frames} "
                              f"--refs {refs}" + "".join(f" --set {k}={_toml(v)}" for k, v in settings.items())
                              + f" --set data.width={width} --set data.height={height} --set data.max_shots={shots}")
    if on_row is not None:
        on_row(result)          # the estimate stands even if a step then runs out of memory
    micro = 0
    with training_mode():
        for i in range(steps):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            micro, logs, _ = trainer.train_step(micro)
            if cuda:
                torch.cuda.synchronize()
            row = {"step": i + 1, "seconds": time.perf_counter() - t, "loss": logs["loss"], "racl": logs["racl"],
                   "finite": math.isfinite(logs["loss"])}
            if cuda:
                row["peak_gib"] = (torch.cuda.max_memory_allocated() - exclude_bytes) / GiB
                row["reserved_gib"] = (torch.cuda.max_memory_reserved() - exclude_bytes) / GiB
                row["ratio"] = row["peak_gib"] / result["estimate_gib"]
            result["steps"].append(row)
            if on_row is not None:
                on_row(result)
    return result


def _tiny_dims(trainer) -> tuple[int, int, int]:
    dm = trainer.story_model.base_model.diffusion_model
    return dm.dim, dm.blocks[0].ffn[0].weight.shape[0], len(dm.blocks)


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"'\"{value}\"'" if isinstance(value, str) else str(value)
