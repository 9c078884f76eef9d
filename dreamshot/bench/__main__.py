"""python -m dreamshot.bench [--out DIR] [--full] [--steps N] [--size tiny|1.3B] [--skip-attention] [--skip-dense]

Prints ratios measured side by side in one run, writes bench.md and bench_attention.png to --out.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("DreamShot")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--full", action="store_true", help="the full grid S=4..12, K=1..4 at 12 heads (slow on CPU)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", default=None, help="DiT size for the sampler cases: tiny (CPU default) or 1.3B")
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-dense", action="store_true", help="leave out keyframes vs dense video (the slowest case)")
    ap.add_argument("--comfy-attention", default="pytorch", choices=["pytorch", "default"],
                    help="ComfyUI's attention backend for the sampler cases: pytorch SDPA (as on most GPUs) or "
                         "ComfyUI's own pick (sub-quadratic on CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ..comfy_bridge.headless import import_comfy

    import_comfy(pytorch_attention=args.comfy_attention == "pytorch")
    import comfy.model_management as mm
    import torch

    from .attention_bench import bench_attention
    from .report import line_plot, markdown_table

    device = mm.get_torch_device()
    gpu = device.type == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    heads = 12 if (gpu or args.full) else 2
    grid = [(s, k) for s in (4, 6, 8, 10, 12) for k in (1, 2, 3, 4)] if (gpu or args.full) else \
        [(s, k) for s in (4, 8, 12) for k in (1, 2, 4)]
    md = [f"# DreamShot benchmark ({device}, {dtype}, {heads} heads of 128 at 832x480)\n"]

    att = []
    for s, k in ([] if args.skip_attention else grid):
        row = bench_attention(s, k, device, dtype, heads=heads, repeats=3 if gpu else 1)
        log.info("attention S=%2d K=%d tokens=%5d  per-shot cross %.3fx time %.3fx mem | role-masked self "
                 "%.3fx time %.3fx mem", s, k, row["tokens"], row["cross_time"], row["cross_mem"], row["self_time"],
                 row["self_mem"])
        att.append(row)
    md += ["## Attention against plain attention (goal <= 1.2)\n", markdown_table(att, [
        ("shots", "S", "d"), ("refs", "K", "d"), ("tokens", "tokens", "d"),
        ("cross_time", "per-shot cross time", ".3f"), ("cross_mem", "per-shot cross mem", ".3f"),
        ("self_time", "role-masked self time", ".3f"), ("self_mem", "role-masked self mem", ".3f")]), ""]

    if not args.skip_sampler:
        from ..comfy_bridge.random_wan import random_wan_dit_patcher
        from .sampler_bench import bench_keyframes_vs_dense, bench_sampler

        size = args.size or ("1.3B" if gpu else "tiny")
        model = random_wan_dit_patcher(size)
        # The sampler comparison runs at 832x480 everywhere: 1560 image tokens per latent frame against
        # 512 text tokens per shot, the real proportion (at smaller sizes the per-shot text dominates).
        # The dense-video comparison (21 latent frames per shot) is at half that size on CPU.
        w, h = 832, 480
        samp = [bench_sampler(model, s, 2, w, h, args.steps, device) for s in (4, 8)]
        for r in samp:
            log.info("sampler S=%d K=2: DreamShot %.3fs vs stock KSampler %.3fs = %.3fx time, %.3fx mem",
                     r["shots"], r["dreamshot_s"], r["stock_s"], r["time_ratio"], r["mem_ratio"])
        dw, dh = (w, h) if gpu else (416, 240)
        dense = [] if args.skip_dense else \
            [bench_keyframes_vs_dense(model, s, 2, dw, dh, args.steps, device) for s in (4, 8)]
        for r in dense:
            log.info("storyboard S=%d K=2: keyframes %.3fs vs dense 81-frame clips %.3fs = %.3fx time, %.3fx "
                     "peak mem", r["shots"], r["dreamshot_s"], r["dense_s"], r["time_ratio"], r["mem_ratio"])
        md += [f"## DreamShot Sampler vs stock KSampler ({size} random Wan2.1 DiT, {w}x{h}, {args.steps} steps, "
               "same latent frames; goal <= 1.10)\n", markdown_table(samp, [
                   ("shots", "S", "d"), ("refs", "K", "d"), ("latent_frames", "latent frames", "d"),
                   ("stock_s", "stock s", ".3f"), ("dreamshot_s", "DreamShot s", ".3f"),
                   ("time_ratio", "time ratio", ".3f"), ("mem_ratio", "mem ratio", ".3f")]), "",
               f"## Keyframes vs dense video (every shot as an 81-frame clip, {dw}x{dh})\n", markdown_table(dense, [
                   ("shots", "S", "d"), ("refs", "K", "d"), ("dreamshot_s", "keyframes s", ".3f"),
                   ("dense_s", "dense s", ".3f"), ("time_ratio", "time ratio", ".3f"),
                   ("mem_ratio", "peak mem ratio", ".3f")]), ""]

    args.out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(args.out / "bench.md", lambda f: f.write("\n".join(md).encode()))
    print("\n".join(md))  # noqa: T201  (the report is this command's output)
    if not att:
        return
    series = {}
    for k in sorted({r["refs"] for r in att}):
        series[f"cross K={k}"] = [(r["shots"], r["cross_time"]) for r in att if r["refs"] == k]
        series[f"self K={k}"] = [(r["shots"], r["self_time"]) for r in att if r["refs"] == k]
    plot = line_plot(series, "DreamShot attention cost / plain attention", "shots (S)", "time ratio")
    _atomic_write_bytes(args.out / "bench_attention.png", lambda f: plot.save(f, format="PNG"))
    log.info("wrote %s and %s", args.out / "bench.md", args.out / "bench_attention.png")


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
    main()
