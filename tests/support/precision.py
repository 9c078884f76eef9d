"""Loading the tiny DiT at a given weight / compute precision through ComfyUI's own mechanisms, and
small stories for the precision and low-VRAM tests.

ComfyUI picks the DiT's dtypes once, at load: ``model_management.unet_dtype`` (weights) and
``unet_manual_cast`` (compute, None = the weight dtype). On a CPU both answer float32 whatever the
weights are: ``should_use_fp16`` / ``should_use_bf16`` return False for a CPU device before reading
any flag, so --force-fp16 has no effect there and --bf16-unet / --fp16-unet / model_options["dtype"]
/ UNETLoader's weight_dtype change only the weight storage (cast to float32 at every layer).
Two ways to run half precision on a CPU, both ComfyUI's own:
- ``gpu=True``: the load runs with should_use_fp16 / should_use_bf16 answering True, i.e. ComfyUI's
  choice on a GPU with compute capability >= 8 (RTX 30xx and later): a Wan2.1 checkpoint is loaded
  as fp16 (WAN21 lists fp16 first among its inference dtypes), bf16 with --bf16-unet, and fp8
  weights get fp16 manual cast. Only the load sees the answer; sampling runs ComfyUI's code unchanged.
- ``compute``: the core ModelComputeDtype node (``ModelPatcher.set_model_compute_dtype``), which a
  user can add on any device.

Text encodings are memoised per process (``MemoClip``): the tiny UMT5 pads every prompt to 512 rows and
costs seconds per prompt on a small CPU; each distinct text is still encoded once by the real encoder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .memo_clip import MemoClip

SIZE = 32          # 32x32 pixels: 4x4 latent, 2x2 = 4 tokens per latent frame
PROMPTS = [("Mira and Theo at a bus stop", "Mira, Theo"), ("Mira alone in the rain", "Mira"),
           ("Theo reads a letter", "Theo")]
BOXES = "Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1"


@dataclass(frozen=True)
class Precision:
    """One way to load the DiT."""

    name: str
    weights: str = "default"          # "default" (the checkpoint's), "bf16-unet" (--bf16-unet), or a
                                      # UNETLoader weight_dtype ("fp8_e4m3fn", "fp8_e4m3fn_fast")
    gpu: bool = False                 # ComfyUI's dtype choice as on a GPU (see above)
    compute: str | None = None        # ModelComputeDtype's dtype; None = ComfyUI's choice
    activations: torch.dtype = torch.float32   # what the DiT then computes in (checked by the tests)


PRECISIONS = {p.name: p for p in [
    Precision("fp32"),
    # A GPU's default for a Wan2.1 checkpoint (bf16, fp16 or fp32 file): fp16 weights and activations.
    Precision("fp16", gpu=True, activations=torch.float16),
    # --bf16-unet on a GPU: bf16 weights and activations.
    Precision("bf16", weights="bf16-unet", gpu=True, activations=torch.bfloat16),
    # UNETLoader fp8_e4m3fn on a GPU (the 24 GB recipe): fp8 weights cast to fp16 at every layer.
    Precision("fp8_e4m3fn", weights="fp8_e4m3fn", gpu=True, activations=torch.float16),
    # UNETLoader fp8_e4m3fn + ModelComputeDtype bf16, on the CPU as is.
    Precision("fp8_e4m3fn+bf16", weights="fp8_e4m3fn", compute="bf16", activations=torch.bfloat16),
    # UNETLoader fp8_e4m3fn on the CPU as is: ComfyUI casts the fp8 weights to float32.
    Precision("fp8_e4m3fn_cpu", weights="fp8_e4m3fn"),
    # fp8 matmuls (torch._scaled_mm), as on an fp8-capable GPU (--supports-fp8-compute).
    Precision("fp8_e4m3fn_fast", weights="fp8_e4m3fn_fast", gpu=True, activations=torch.float16),
]}


def ensure_diffusion_models_folder(models_dir) -> None:
    """Let UNETLoader list the tiny dit.safetensors."""
    import folder_paths

    if str(models_dir) not in folder_paths.get_folder_paths("diffusion_models"):
        folder_paths.add_model_folder_path("diffusion_models", str(models_dir))


@contextlib.contextmanager
def _load_as(precision: Precision):
    """ComfyUI's flags and device answers that ``precision`` loads under (restored afterwards)."""
    import comfy.model_management as mm
    from comfy.cli_args import args

    saved = (mm.should_use_fp16, mm.should_use_bf16, mm.SUPPORT_FP8_OPS, args.bf16_unet)
    if precision.gpu:
        mm.should_use_fp16 = mm.should_use_bf16 = lambda *a, **k: True
    mm.SUPPORT_FP8_OPS = saved[2] or precision.weights.endswith("_fast")    # --supports-fp8-compute
    args.bf16_unet = saved[3] or precision.weights == "bf16-unet"
    try:
        yield
    finally:
        mm.should_use_fp16, mm.should_use_bf16, mm.SUPPORT_FP8_OPS, args.bf16_unet = saved


def load_dit(models_dir, precision: Precision):
    """A fresh ModelPatcher of the tiny dit.safetensors at ``precision`` (weights of its own: a test may
    load it partially or patch it without touching the session's model), through UNETLoader."""
    import nodes

    ensure_diffusion_models_folder(models_dir)
    weight_dtype = precision.weights if precision.weights.startswith("fp8") else "default"
    with _load_as(precision):
        (model,) = nodes.UNETLoader().load_unet("dit.safetensors", weight_dtype)
    if precision.compute is not None:
        (model,) = nodes.NODE_CLASS_MAPPINGS["ModelComputeDtype"]().patch(model, precision.compute)
    return model


def compute_dtype(model) -> torch.dtype:
    """The dtype the DiT runs in (what BaseModel._apply_model casts its inputs to)."""
    base = model.model
    cast = model.object_patches.get("manual_cast_dtype", base.manual_cast_dtype)
    return cast if cast is not None else base.get_dtype()


def image(seed: int, h: int = SIZE, w: int = SIZE) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def cast(N):
    (chars,) = N.DreamShotCharacterReference(image=image(1), name="Mira", description="a woman in green")
    (chars,) = N.DreamShotCharacterReference(image=image(2, SIZE, 2 * SIZE), name="Theo", characters=chars)
    return chars


def shots(N, prompts=PROMPTS, first_image=None):
    out = None
    for j, (prompt, who) in enumerate(prompts):
        (out,) = N.DreamShotShotScript(prompt=prompt, characters=who, character_boxes=BOXES if j == 0 else "",
                                       image=first_image if j == 0 else None, shots=out)
    return out


def pack(N, vae, clip, mode, characters=None, first_image=None, **kw):
    """Shot Sequence Pack (the node) at SIZE x SIZE, repeat 4."""
    args = dict(vae=vae, clip=MemoClip(clip), shots=shots(N, first_image=first_image), width=SIZE, height=SIZE,
                mode=mode, negative_prompt="blurry", repeat=4, fit="pad_white", max_latent_frames=21,
                characters=characters)
    args.update(kw)
    return N.DreamShotShotSequencePack(**args)[0]


_STORIES: dict = {}
MODES = ("r2s", "t2s", "s2s", "edit")


def story(N, vae, clip, mode: str):
    """The packed story of ``mode``, once per process (read-only: a test that changes it copies it):
    r2s (2 references, 3 shots), t2s, s2s (shot 1 given) and edit (shots 1 and 3 locked to given
    keyframes, shot 2 regenerated, with the references)."""
    key = (id(vae), id(clip), mode)
    if key not in _STORIES:
        chars = cast(N)
        if mode == "r2s":
            seq = pack(N, vae, clip, "reference_to_shot", chars)
        elif mode == "t2s":   # text to shot ignores the references
            seq = pack(N, vae, clip, "text_to_shot", chars)
        elif mode == "s2s":
            seq = pack(N, vae, clip, "shot_to_shot", chars, first_image=image(5))
        elif mode == "edit":
            keyframes = torch.rand(3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(9))
            seq = pack(N, vae, clip, "edit", chars, keyframes=keyframes, lock_shots="1, 3")
        else:
            raise ValueError(mode)
        _STORIES[key] = seq
    return _STORIES[key]


def stories(N, vae, clip) -> dict:
    return {mode: story(N, vae, clip, mode) for mode in MODES}


def kept_frames(sequence) -> list[int]:
    """Latent frames that must come back exactly as packed (references and given shots)."""
    return [f for f, g in enumerate(sequence.layout.denoise_mask_values()) if not g]
