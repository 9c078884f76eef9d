"""python -m dreamshot.bench [--gpu | --quick] [--out DIR] [--parts P,Q] [--skip-parts P,Q] [--budget-s S]
python -m dreamshot.bench [--out DIR] [--steps N] [--size tiny|1.3B] [--skip-ops] [--skip-sampler] [--skip-attention]
[--skip-dense] [--full]

Prints ratios measured side by side in one run and writes bench.md (and more) to --out.

--gpu    the GPU check of issue 24 (needs CUDA; under 8 minutes on one H100), each part in a process
         of its own with its own time box (dreamshot/bench/check.py): a Wan2.1-14B-size random DiT at
         1280x720, 3 references + 6 shots, 2 steps, cfg 3, reference CFG 2: stock sampling against
         DreamShot Sampler, + reference CFG, + RACL Attention Patch, + a Shot LoRA on two shots, in bf16
         and fp8 weights on the whole card, and fp8 under a 24 GB cap; one training step at 832x480
         with the 24 GB recipe under the cap and the 80 GB recipe, against `dreamshot.train estimate`;
         every attention op at 14B/720p and 1.3B/480p with the SDPA kernel it ran.
--quick  the same parts, processes and code on the CPU at tiny sizes (figures meaningless).
default  the in-process cases at the device's sizes (on a CPU the op memory table by shape accounting
         at full model size, the sampler cases on a tiny DiT), the attention grid and keyframes vs dense.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("DreamShot")

# The goals the sampler cases are reported against (issue 13).
SAMPLER_TIME_GOAL, RACL_TIME_GOAL, SAMPLER_MEM_GOAL, OP_MEM_GOAL = 1.05, 1.15, 1.1, 1.2


def main(argv=None) -> int:
    from .check import DEFAULT_BUDGET_S
    from .check_parts import PARTS

    ap = argparse.ArgumentParser(prog="python -m dreamshot.bench", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="the GPU check (issue 24): 14B sampling and training, "
                      "op kernels; each part in its own process and time box")
    mode.add_argument("--quick", action="store_true", help="the GPU check's parts at tiny sizes on the CPU "
                      "(checks that they run)")
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--parts", default=",".join(PARTS), help=f"the check's parts, in order (default: {','.join(PARTS)})")
    ap.add_argument("--skip-parts", default="", help="leave these parts of the check out")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="the check's time budget in seconds: a part that would not fit in what is left is skipped")
    ap.add_argument("--allocator", default="comfyui", choices=["comfyui", "native"],
                    help="the check's CUDA allocator: comfyui = ComfyUI's choice on NVIDIA (cudaMallocAsync) for the "
                         "sampler parts, torch's own for training and the ops, as the programs they stand for; "
                         "native = torch's own everywhere")
    ap.add_argument("--full", action="store_true", help="the full attention grid S=4..12, K=1..4 at 12 heads (slow on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per case (default 4)")
    ap.add_argument("--size", default=None, help="DiT size for the sampler cases: tiny (CPU default) or 1.3B")
    ap.add_argument("--skip-ops", action="store_true", help="leave out the attention ops at model sizes")
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--skip-attention", action="store_true", help="leave out the attention grid over S and K")
    ap.add_argument("--skip-dense", action="store_true", help="leave out keyframes vs dense video (the slowest case)")
    ap.add_argument("--comfy-attention", default="pytorch", choices=["pytorch", "default"],
                    help="ComfyUI's attention backend for the sampler cases: pytorch SDPA (as on most GPUs) or "
                         "ComfyUI's own pick (sub-quadratic on CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.gpu or args.quick:
        return _check(args, ap)
    _in_process(args)
    return 0


def _check(args, ap) -> int:
    """--gpu / --quick: the parts of check_parts.PARTS, each in its own process (check.run_check)."""
    from .check import run_check
    from .check_parts import PARTS

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    skip = {p.strip() for p in args.skip_parts.split(",") if p.strip()}
    unknown = sorted((set(parts) | skip) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    if args.gpu:
        import torch   # only asks the driver: no CUDA context is made in this process

        if not torch.cuda.is_available():
            log.error("python -m dreamshot.bench --gpu: no CUDA device here (torch %s, built for CUDA %s). Run it on "
                      "a machine with an NVIDIA GPU, or --quick for the same parts at tiny sizes on the CPU.",
                      torch.__version__, torch.version.cuda or "none")
            return 2
    return run_check(args.out, args.quick, [p for p in parts if p not in skip], args.budget_s, args.allocator)


def _in_process(args) -> None:
    from ..comfy_bridge.headless import import_comfy

    import_comfy(pytorch_attention=args.comfy_attention == "pytorch")
    import comfy.model_management as mm
    import torch

    device = mm.get_torch_device()
    gpu = device.type == "cuda"
    steps = args.steps or 4
    where = torch.cuda.get_device_name(device) if gpu else "CPU"
    md = [f"# DreamShot benchmark ({where}, torch {torch.__version__})\n"]
    if not args.skip_ops:
        md += _ops_section(device, gpu)
    if not args.skip_sampler:
        md += _sampler_section(args, device, gpu, steps)
    att = []
    if not args.skip_attention:
        att, lines = _attention_grid(args, device, gpu)
        md += lines
    if not (args.skip_dense or args.skip_sampler):
        md += _dense_section(args, device, gpu, steps)

    args.out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(args.out / "bench.md", lambda f: f.write("\n".join(md).encode()))
    print("\n".join(md))  # noqa: T201  (the report is this command's output)
    if att:
        from .report import line_plot

        series = {}
        for k in sorted({r["refs"] for r in att}):
            series[f"cross K={k}"] = [(r["shots"], r["cross_time"]) for r in att if r["refs"] == k]
            series[f"self K={k}"] = [(r["shots"], r["self_time"]) for r in att if r["refs"] == k]
        plot = line_plot(series, "DreamShot attention cost / plain attention", "shots (S)", "time ratio")
        _atomic_write_bytes(args.out / "bench_attention.png", lambda f: plot.save(f, format="PNG"))
    log.info("wrote %s", args.out / "bench.md")


def _ops_section(device, gpu: bool) -> list[str]:
    from .ops_bench import BATCH, MODEL_SIZES, REFS, SHOTS, bench_ops
    from .report import markdown_table

    rows = []
    for size in MODEL_SIZES.values():
        if gpu:
            rows += bench_ops(size, device)
        else:
            rows += bench_ops(size, device, shape_only=True)
    for r in rows:
        r["goal"] = "ok" if r["mem_ratio"] <= OP_MEM_GOAL else "OVER"
        log.info("%s %-56s extra %9.1f MiB / plain %9.1f MiB = %.3f (%s)  kernels: %s", r["model"], r["op"],
                 r["extra_mib"], r["plain_mib"], r["mem_ratio"], r["goal"], r["kernels"])
    how = ("real tensors, torch.cuda.max_memory_allocated" if gpu else
           "shape accounting on the CPU (bench/measure.py ShapeOnly: every allocation made, no math), full size")
    return [f"## Attention ops on one block against the plain call they replace (goal: extra memory <= "
            f"{OP_MEM_GOAL} x plain)\n",
            f"{REFS} references + {SHOTS} shots (one latent frame each), batch {BATCH} (CFG), bf16; {how}. "
            "Extra memory: the peak the call allocates above what existed before it.\n",
            markdown_table(rows, [
                ("model", "model", "s"), ("frame", "frame", "s"), ("tokens", "tokens", "d"), ("op", "op", "s"),
                ("plain", "plain call", "s"), ("extra_mib", "extra MiB", ".1f"), ("plain_mib", "plain MiB", ".1f"),
                ("mem_ratio", "mem ratio", ".3f"), ("goal", "goal", "s"), ("time_ratio", "time ratio", ".2f"),
                ("kernels", "SDPA kernels", "s"), ("plain_kernels", "plain's kernels", "s")]), ""]


def _sampler_section(args, device, gpu: bool, steps: int) -> list[str]:
    from ..comfy_bridge.random_wan import random_wan_dit_patcher
    from .report import markdown_table
    from .sampler_bench import bench_variants

    size = args.size or ("1.3B" if gpu else "tiny")
    w, h = (832, 480) if gpu else (416, 240)
    model = random_wan_dit_patcher(size)
    rows = bench_variants(model, 6, 2, w, h, steps, device, repeats=2, warmup=1)
    goals = {"dreamshot": (SAMPLER_TIME_GOAL, SAMPLER_MEM_GOAL), "racl": (RACL_TIME_GOAL, SAMPLER_MEM_GOAL)}
    for r in rows:
        if r["error"]:
            log.error("sampler %s failed: %s", r["variant"], r["error"])
            continue
        time_goal, mem_goal = goals.get(r["case"], (None, None))
        r["goal"] = "-" if time_goal is None else \
            f"time {'ok' if r['time_ratio'] <= time_goal else 'OVER'} (<= {time_goal}), " \
            f"mem {'ok' if r['total_ratio'] <= mem_goal else 'OVER'} (<= {mem_goal})"
        log.info("sampler %-42s %.3f s/step (%.3fx)  peak %.1f MiB above start (%.3fx), total %.1f MiB (%.3fx)  %s",
                 r["variant"], r["step_s"], r["time_ratio"], r["peak_mib"], r["mem_ratio"], r["total_mib"],
                 r["total_ratio"], r["goal"])
    memory = "torch.cuda.max_memory_allocated (total: weights included; above start: activations)" if gpu else \
        "CPU allocator peak above the start of the call"
    return [f"## Sampler cases ({size} random Wan2.1 DiT through ComfyUI, {w}x{h}, 6 shots, 2 references, "
            f"{steps} steps, cfg 5; {memory})\n",
            markdown_table(rows, [
                ("variant", "case", "s"), ("latent_frames", "latent frames", "d"), ("step_s", "s / step", ".3f"),
                ("time_ratio", "time / stock", ".3f"), ("peak_mib", "peak above start MiB", ".1f"),
                ("mem_ratio", "ratio", ".3f"), ("total_mib", "total peak MiB", ".1f"),
                ("total_ratio", "total / stock", ".3f"), ("goal", "goal", "s"), ("error", "error", "s")]), ""]


def _attention_grid(args, device, gpu: bool):
    import torch

    from .attention_bench import bench_attention
    from .report import markdown_table

    dtype = torch.float16 if gpu else torch.float32
    heads = 12 if (gpu or args.full) else 2
    grid = [(s, k) for s in (4, 6, 8, 10, 12) for k in (1, 2, 3, 4)] if (gpu or args.full) else \
        [(s, k) for s in (4, 8, 12) for k in (1, 2, 4)]
    att = []
    for s, k in grid:
        row = bench_attention(s, k, device, dtype, heads=heads, repeats=3 if gpu else 1)
        log.info("attention S=%2d K=%d tokens=%5d  per-shot cross %.3fx time %.3fx mem | role-masked self "
                 "%.3fx time %.3fx mem", s, k, row["tokens"], row["cross_time"], row["cross_mem"], row["self_time"],
                 row["self_mem"])
        att.append(row)
    return att, [f"## Attention grid against plain attention ({dtype}, {heads} heads of 128 at 832x480; "
                 "goal <= 1.2)\n", markdown_table(att, [
                     ("shots", "S", "d"), ("refs", "K", "d"), ("tokens", "tokens", "d"),
                     ("cross_time", "per-shot cross time", ".3f"), ("cross_mem", "per-shot cross mem", ".3f"),
                     ("self_time", "role-masked self time", ".3f"), ("self_mem", "role-masked self mem", ".3f")]), ""]


def _dense_section(args, device, gpu: bool, steps: int) -> list[str]:
    from ..comfy_bridge.random_wan import random_wan_dit_patcher
    from .report import markdown_table
    from .sampler_bench import bench_keyframes_vs_dense

    model = random_wan_dit_patcher(args.size or ("1.3B" if gpu else "tiny"))
    dw, dh = (832, 480) if gpu else (416, 240)
    dense = [bench_keyframes_vs_dense(model, s, 2, dw, dh, steps, device) for s in (4, 8)]
    for r in dense:
        log.info("storyboard S=%d K=2: keyframes %.3fs vs dense 81-frame clips %.3fs = %.3fx time, %.3fx "
                 "peak mem", r["shots"], r["dreamshot_s"], r["dense_s"], r["time_ratio"], r["mem_ratio"])
    return [f"## Keyframes vs dense video (every shot as an 81-frame clip, {dw}x{dh})\n", markdown_table(dense, [
        ("shots", "S", "d"), ("refs", "K", "d"), ("dreamshot_s", "keyframes s", ".3f"),
        ("dense_s", "dense s", ".3f"), ("time_ratio", "time ratio", ".3f"),
        ("mem_ratio", "peak mem ratio", ".3f")]), ""]


def _atomic_write_bytes(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    raise SystemExit(main())
