"""Prompt alignment: CLIP score of each shot against its prompt, with a CLIP model from a local folder.

The folder is a Hugging Face CLIP checkout (``config.json``, ``model.safetensors``, the tokenizer
files and ``preprocessor_config.json``, e.g. openai/clip-vit-large-patch14 saved with
``save_pretrained``). It is loaded with ``local_files_only=True`` and the hub switched offline, so
nothing is ever fetched; weights are read from safetensors only. transformers is a ComfyUI
requirement.

CLIP score (Hessel et al. 2021, scale as torchmetrics): 100 * max(cos(E_img, E_text), 0) with the
projected image and text embeddings; prompts longer than the text model's context are truncated.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import DreamShotInputError
from .metrics import clip_score

log = logging.getLogger("DreamShot.eval")

CLIP_HELP = ("give a folder holding a Hugging Face CLIP model saved with save_pretrained (config.json, "
             "model.safetensors, tokenizer files, preprocessor_config.json), e.g. a local copy of "
             "openai/clip-vit-large-patch14")
REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


class PromptScorer(Protocol):
    name: str

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """CLIP score (0..100) of image i against prompt i."""
        ...


def _check_folder(folder: Path, input_name: str) -> Path:
    if not folder.is_dir():
        raise DreamShotInputError(input_name, f"'{folder}' is not a folder.", CLIP_HELP + ".")
    files = {p.name for p in folder.iterdir()}
    missing = [f for f in REQUIRED if f not in files]
    if not any(all(f in files for f in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        has_bin = any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
        note = " (pickled weights are not loaded: convert them to model.safetensors)" if has_bin else ""
        raise DreamShotInputError(input_name, f"'{folder}' lacks {', '.join(missing)}{note}.", CLIP_HELP + ".")
    return folder.resolve()


@contextlib.contextmanager
def hub_offline():
    """The Hugging Face hub offline while loading, restored after (ComfyUI is one process shared with
    other nodes). local_files_only already forbids the hub; this also stops any helper that would
    look something up (huggingface_hub reads HF_HUB_OFFLINE once, at import, hence the constant)."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved_env})
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        hub_constants = None
    saved_const = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_const


class ClipScorer:
    """CLIP model + processor from one local folder; :meth:`score` gives per-pair CLIP scores."""

    def __init__(self, model_dir, *, device: str = "cpu", batch_size: int = 16, input_name: str = "clip_model"):
        folder = _check_folder(Path(model_dir).expanduser(), input_name)
        try:
            from safetensors import SafetensorError
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as e:   # a ComfyUI requirement, so this only happens outside ComfyUI
            raise DreamShotInputError(input_name, f"transformers is not installed ({e}).",
                                      "pip install transformers.") from e
        try:
            with hub_offline():
                self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
                self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise DreamShotInputError(input_name, f"cannot load a CLIP model from '{folder}' ({e}).",
                                      CLIP_HELP + ".") from e
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.name = f"clip:{folder.name}"
        cfg = self.model.config.text_config
        self.max_length = int(getattr(cfg, "max_position_embeddings", 77))
        log.info("CLIP model for prompt alignment: %s", folder)

    @staticmethod
    def _features(out):
        """transformers < 5 returns the projected features, >= 5 a ModelOutput carrying them."""
        return out if hasattr(out, "shape") else out.pooler_output

    def embed(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        img_out, txt_out = [], []
        with torch.inference_mode():
            for k in range(0, len(images), self.batch_size):
                batch = self.processor(images=[np.asarray(i) for i in images[k:k + self.batch_size]],
                                       return_tensors="pt")
                feats = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device))
                img_out.append(self._features(feats).float().cpu().numpy())
            for k in range(0, len(prompts), self.batch_size):
                tok = self.processor(text=list(prompts[k:k + self.batch_size]), return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_length)
                feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                     attention_mask=tok["attention_mask"].to(self.device))
                txt_out.append(self._features(feats).float().cpu().numpy())
        dim = self.model.config.projection_dim
        return (np.concatenate(img_out) if img_out else np.zeros((0, dim), np.float32),
                np.concatenate(txt_out) if txt_out else np.zeros((0, dim), np.float32))

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        if not images:
            return np.zeros(0)
        img, txt = self.embed(images, prompts)
        return clip_score(img, txt)
