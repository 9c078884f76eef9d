"""Shot LoRA on one linear layer: precision and cost of the on-the-fly delta against the merged weight.

python -m dreamshot.bench.shot_lora_bench [--dim 1536] [--tokens 9360] [--scoped 1560] [--rank 64]

Defaults: Wan2.1 1.3B (dim 1536), 832x480 (1560 tokens per latent frame), a 6-frame pass with one
shot scoped. Precision: bf16 outputs of (a) the weight with the LoRA merged in fp32 and rounded to
bf16 (what ComfyUI's merge gives) and (b) the bf16 base layer plus the bf16 delta on the scoped rows,
both against the merged layer in float64. Cost: fp32 wall time of the plain layer, of (b), and the
ratio, measured side by side in one run (medians of --repeat).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from ..shot_lora import LowRankDelta, add_scoped_delta

log = logging.getLogger("DreamShot")


def _median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.bench.shot_lora_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=9360)
    ap.add_argument("--scoped", type=int, default=1560)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    g = torch.Generator().manual_seed(0)
    d, n, r = args.dim, args.tokens, args.rank
    x = torch.randn(1, n, d, generator=g)
    w, b = torch.randn(d, d, generator=g) / d ** 0.5, torch.randn(d, generator=g) * 0.01
    up, down = torch.randn(d, r, generator=g) * 0.02, torch.randn(r, d, generator=g) / d ** 0.5
    scale = 32 / r                                          # alpha 32
    spans = [(0, args.scoped)]
    rows = slice(0, args.scoped)

    ref = torch.nn.functional.linear(x[:, rows].double(), w.double() + scale * up.double() @ down.double(), b.double())
    merged = torch.nn.functional.linear(x[:, rows].bfloat16(), (w + scale * up @ down).bfloat16(), b.bfloat16())
    fly = add_scoped_delta(torch.nn.functional.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()), x.bfloat16(), spans,
                           LowRankDelta(up, down, scale).on("cpu", torch.bfloat16), 1.0)[:, rows]
    log.info("bf16, %d scoped rows, dim %d, rank %d (max |y| %.3g); error vs float64:", args.scoped, d, r,
             ref.abs().max().item())
    for name, out in (("merged weight", merged), ("on the fly", fly)):
        e = (out.double() - ref).abs()
        log.info("  %-14s mean %.3g  max %.3g", name, e.mean().item(), e.max().item())

    delta = LowRankDelta(up, down, scale)
    plain = _median_time(lambda: torch.nn.functional.linear(x, w, b), args.repeat)
    scoped = _median_time(lambda: add_scoped_delta(torch.nn.functional.linear(x, w, b), x, spans, delta, 1.0),
                          args.repeat)
    log.info("fp32, %d tokens: plain layer %.1f ms, with the scoped delta %.1f ms (x%.3f; FLOP ratio %.3f)", n,
             plain * 1e3, scoped * 1e3, scoped / plain, 1 + args.scoped * r * 2 * d / (n * d * d))


if __name__ == "__main__":
    main()
