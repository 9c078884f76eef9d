"""One part of the GPU check, in a process of its own (started by dreamshot/bench/check.py):

    python -m dreamshot.bench.check_parts PART --out FILE.json [--tiny]

A process per part, so that a CUDA out-of-memory error, a crash or the 24 GB cap of one part
cannot touch the others (the cap is memory held back for the whole process: vram_cap.py). The part
writes FILE.json when it starts and again after every case, so a part stopped by its time box still
leaves the cases it finished. ``--tiny``: the same code on the CPU at tiny sizes (a 2-block random
DiT, 64x64 frames): the CPU path tested in CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("DreamShot")

MiB = 2 ** 20
REFS, SHOTS = 3, 6                  # the reference story: 3 characters, one reference each; 6 shots
SAMPLER_STEPS, CFG, REF_CFG = 2, 3.0, 2.0
TRAIN_STEPS = 2                     # the second is the steady state (the optimizer state exists)
EVERY_CASE = ("stock", "dreamshot", "ref_cfg", "racl", "shot_lora")


@dataclass(frozen=True)
class Part:
    title: str
    kind: str                       # sampler | train | ops
    estimate_s: float               # expected wall time on one H100, process start-up included (an estimate)
    box_s: float                    # the most it may take there
    weight_dtype: str = ""          # sampler: bf16 | fp8_e4m3fn
    cases: tuple = ()
    recipe: str = ""                # train: a key of train_bench.RECIPES
    capped: bool = False            # under the 24 GB cap (vram_cap.CAP_24GB)
    on_device: bool = True          # build the random DiT on the GPU (else in host memory, where comfy.sd leaves a file)
    # the CUDA allocator of the program this part stands for: ComfyUI's server (its cuda_malloc.py picks
    # cudaMallocAsync on NVIDIA) for the sampler parts, torch's own for `python -m dreamshot.train` and the ops
    comfyui_allocator: bool = False
    sizes: dict = field(default_factory=dict)


# The parts in the order the check runs them (the goals of issue 24 first).
PARTS = {
    "sampler-bf16": Part("14B bf16 storyboard, 1280x720, whole card", "sampler", 100, 170, "bf16", EVERY_CASE,
                         comfyui_allocator=True),
    "sampler-fp8-24gb": Part("14B fp8 storyboard, 1280x720, under a 24 GB cap", "sampler", 70, 140, "fp8_e4m3fn",
                             ("stock", "full"), capped=True, on_device=False, comfyui_allocator=True),
    "train-24gb": Part("14B training step, 832x480, 24 GB recipe under a 24 GB cap", "train", 60, 130,
                       recipe="24GB", capped=True, on_device=False),
    "train-80gb": Part("14B training step, 832x480, 80 GB recipe (bf16 defaults)", "train", 35, 90, recipe="80GB"),
    "sampler-fp8": Part("14B fp8 storyboard, 1280x720, whole card", "sampler", 100, 170, "fp8_e4m3fn", EVERY_CASE,
                        comfyui_allocator=True),
    "ops": Part("attention ops on one block, 14B 1280x720 and 1.3B 832x480", "ops", 45, 100),
}

# (DiT size, width, height) of each kind: on the GPU, and tiny on the CPU
SIZES = {"sampler": (("14B", 1280, 720), ("tiny", 64, 64)), "train": (("14B", 832, 480), ("tiny", 64, 64))}


def environment(device) -> dict:
    """What ran the part: device, torch / CUDA / cuDNN, the allocator, ComfyUI and its attention."""
    import comfy.ldm.modules.attention as attention
    import torch

    from ..comfy_bridge.headless import find_comfyui

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "-",
           "device": "CPU", "comfyui": _comfyui_version(find_comfyui()),
           "attention": getattr(attention.optimized_attention, "__name__", str(attention.optimized_attention))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, total_mib=round(props.total_memory / MiB), capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                   allocator=torch.cuda.get_allocator_backend())
    return env


def _comfyui_version(root) -> str:
    try:
        text = (root / "comfyui_version.py").read_text()
        return text.split("__version__", 1)[1].split("=", 1)[1].strip().splitlines()[0].strip("\"' ")
    except (OSError, IndexError, TypeError):
        return "?"


class Record:
    """The part's result file, rewritten atomically whenever something is added."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.data = {"part": name, "title": PARTS[name].title, "status": "running", "error": "", "notes": []}
        self.write()

    def write(self) -> None:
        from ..atomic import atomic_write_json

        atomic_write_json(self.path, self.data)


def run_part(name: str, out: Path, tiny: bool) -> int:
    spec = PARTS[name]
    rec = Record(out, name)
    t0 = time.perf_counter()
    try:
        from ..comfy_bridge.headless import import_comfy

        import_comfy(cpu=True if tiny else None, pytorch_attention=True)
        import comfy.model_management as mm

        from .vram_cap import CAP_24GB, VramCap

        device = mm.get_torch_device()
        if not tiny and device.type != "cuda":
            raise RuntimeError(f"no CUDA device (ComfyUI chose {device})")
        cap = VramCap(CAP_24GB).apply(device) if spec.capped else None
        rec.data.update(env=environment(device), tiny=tiny, cap=cap.describe() if cap else "",
                        ballast_mib=(cap.ballast if cap else 0) / MiB)
        rec.write()
        exclude = cap.ballast if cap else 0
        if spec.kind == "sampler":
            _sampler(spec, tiny, device, exclude, rec)
        elif spec.kind == "train":
            _train(spec, tiny, device, exclude, rec)
        else:
            _ops(tiny, device, rec)
        rec.data["status"] = "ok"
        return 0
    except Exception as e:  # noqa: BLE001  (the part's failure is its result; the check goes on)
        log.exception("part %s failed", name)
        rec.data["status"] = "error"
        rec.data["error"] = f"{type(e).__name__}: {e}"
        rec.data["traceback"] = traceback.format_exc()[-4000:]
        return 1
    finally:
        rec.data["seconds"] = time.perf_counter() - t0
        rec.write()


def _sampler(spec: Part, tiny: bool, device, exclude: int, rec: Record) -> None:
    import torch

    from ..comfy_bridge.random_wan import random_wan_model
    from .sampler_bench import bench_variants

    size, width, height = SIZES["sampler"][tiny]
    dtype = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[spec.weight_dtype]
    t = time.perf_counter()
    model = random_wan_model(size, dtype, device=device if spec.on_device else None)
    base = model.model
    rec.data["config"] = {
        "dit": size, "frame": f"{width}x{height}", "refs": REFS, "shots": SHOTS, "steps": SAMPLER_STEPS, "cfg": CFG,
        "ref_cfg": REF_CFG, "sampler": "euler / simple", "weight_dtype": str(base.get_dtype()).replace("torch.", ""),
        "compute_dtype": str(base.manual_cast_dtype or base.get_dtype()).replace("torch.", ""),
        "built_on": str(model.model.diffusion_model.blocks[0].ffn[0].weight.device),
        "model_mib": model.model_size() / MiB, "build_s": time.perf_counter() - t}
    rec.write()

    def on_row(rows):
        rec.data["rows"] = rows
        rec.write()

    # On the CPU (--tiny) no extra profiled call per case: its memory would say nothing about a GPU's.
    bench_variants(model, SHOTS, REFS, width, height, SAMPLER_STEPS, device, repeats=1, warmup=1, cfg=CFG,
                   ref_cfg=REF_CFG, cases=spec.cases, exclude_bytes=exclude, on_row=on_row, cpu_memory=False)


def _train(spec: Part, tiny: bool, device, exclude: int, rec: Record) -> None:
    from . import train_bench

    size, width, height = SIZES["train"][tiny]
    changes = {}
    if tiny and train_bench.RECIPES[spec.recipe].get("train.blocks_to_swap"):
        changes["train.blocks_to_swap"] = 1     # of the tiny DiT's 2 blocks
    if train_bench.RECIPES[spec.recipe].get("optimizer.name") == "adamw8bit":
        why = _adamw8bit_fails(device)
        if why:
            changes["optimizer.name"] = "adamw"
            rec.data["notes"].append(f"bitsandbytes' 8-bit AdamW does not run here ({why}): this part ran torch's "
                                     "AdamW instead, and its estimate is AdamW's")

    def on_row(result):
        rec.data["result"] = result
        rec.write()

    with tempfile.TemporaryDirectory(prefix="dreamshot-train-bench-") as tmp:
        on_row(train_bench.bench_train(spec.recipe, size, width, height, SHOTS, REFS, device, Path(tmp),
                                       steps=TRAIN_STEPS, build_on_device=spec.on_device, exclude_bytes=exclude,
                                       on_row=on_row, changes=changes))


def _adamw8bit_fails(device) -> str:
    """Why bitsandbytes' AdamW8bit cannot take a step on ``device`` ("" when it can). Importing it is not
    enough: without a native library for this CUDA it imports and fails at the first step."""
    import torch

    try:
        import bitsandbytes

        p = torch.nn.Parameter(torch.zeros(4096, device=device))
        p.grad = torch.ones_like(p)
        bitsandbytes.optim.AdamW8bit([p], lr=1e-3).step()
        return ""
    except Exception as e:  # noqa: BLE001  (ImportError, a missing native library, ...)
        return f"{type(e).__name__}: {e}"


def _ops(tiny: bool, device, rec: Record) -> None:
    from .ops_bench import MODEL_SIZES, bench_ops, frame_size

    rows = []
    for size in MODEL_SIZES.values():
        if tiny:
            rows += bench_ops(size, device, frame=frame_size(size, 16), repeats=1, warmup=0)
        else:
            rows += bench_ops(size, device)
        rec.data["rows"] = rows
        rec.write()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.bench.check_parts", description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--out", type=Path, required=True, help="the part's result file (JSON)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{args.part}] %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_part(args.part, args.out, args.tiny)


if __name__ == "__main__":
    raise SystemExit(main())
