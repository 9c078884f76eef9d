"""The trained LoRA file: ComfyUI-native keys plus safetensors metadata.

Keys are what ComfyUI's TrainLoraNode writes and ``comfy/lora.py`` maps for Wan:
``diffusion_model.blocks.{i}.{self_attn|cross_attn}.{q,k,v,o}.lora_up.weight`` /
``.lora_down.weight`` / ``.alpha`` and ``diffusion_model.blocks.{i}.ffn.{0,2}...``; a fully
fine-tuned block adds ``.diff`` (weight delta) and ``.diff_b`` (bias delta) per linear/norm. ComfyUI applies W + alpha/rank * up @ down, the
scale the trainer used. Metadata follows the kohya ``ss_*`` / ``modelspec.*`` conventions plus
``dreamshot.*`` fields (LoadDreamShotModel logs ``dreamshot.base_model``).
"""

from __future__ import annotations

import datetime
import hashlib
import json

from .config import TrainConfig

FORMAT_VERSION = "1"


def lora_metadata(cfg: TrainConfig, base_model: str, step: int, dataset_hash: str = "") -> dict[str, str]:
    lo = cfg.lora
    modes = {"r2s": cfg.modes.r2s, "t2s": cfg.modes.t2s, "s2s": cfg.modes.s2s, "t2v": cfg.modes.t2v}
    racl = {"lambda": cfg.racl.lambda_racl, "layers": cfg.racl.layers, "kind": cfg.racl.kind}
    # "wan2.1_t2v" (Wan2.1, the Wan2.2-A14B experts) or "wan2.2_ti2v" (Wan2.2-TI2V-5B), from describe_base_model
    family = "wan2.2_ti2v" if base_model.startswith("wan2.2_ti2v") else "wan2.1_t2v"
    meta = {
        "dreamshot.format_version": FORMAT_VERSION,
        "dreamshot.base_model": base_model,
        "dreamshot.rank": str(lo.rank),
        "dreamshot.alpha": str(lo.alpha),
        "dreamshot.steps": str(step),
        "dreamshot.modes": json.dumps(modes),
        "dreamshot.racl": json.dumps(racl),
        "dreamshot.targets": json.dumps(lo.targets),
        "dreamshot.lora_blocks": json.dumps(lo.blocks),
        "dreamshot.full_finetune_blocks": json.dumps(lo.full_finetune_blocks),
        "dreamshot.full_finetune_modules": json.dumps(lo.full_finetune_modules),
        "dreamshot.resolution": f"{cfg.data.width}x{cfg.data.height}",
        "dreamshot.repeat": str(cfg.data.repeat),
        "dreamshot.dataset_hash": dataset_hash,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(lo.rank),
        "ss_network_alpha": str(lo.alpha),
        "ss_steps": str(step),
        "ss_base_model_version": family,
        "ss_learning_rate": str(cfg.optimizer.lr),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{family.replace('_', '-')}/lora",
        "modelspec.implementation": f"https://github.com/Wan-Video/{'Wan2.2' if family.startswith('wan2.2') else 'Wan2.1'}",
        "modelspec.title": cfg.train.lora_name,
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.description": "DreamShot storyboard LoRA (reference-to-shot, text-to-shot, shot-to-shot); "
                                 "load with Load DreamShot Model.",
    }
    if cfg.train.expert:   # a Wan2.2-A14B expert's LoRA: which one, and the sigmas it was trained on
        meta["dreamshot.expert"] = json.dumps({"expert": cfg.train.expert, "boundary": cfg.train.expert_boundary})
    return meta


def dataset_hash(index: dict) -> str:
    """A short hash of the cached sequences (ids + fingerprints) this LoRA was trained on."""
    h = hashlib.sha1()
    for e in index.get("sequences", []):
        h.update(f"{e['id']}:{e.get('fingerprint', '')}\n".encode())
    return h.hexdigest()[:16]
