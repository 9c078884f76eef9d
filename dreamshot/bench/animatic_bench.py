"""python -m dreamshot.bench.animatic_bench [--shots 12] [--seconds 2] [--size 1280x720] [--fps 24] [--out DIR]

How fast the Storyboard Animatic writes its MP4 on this machine, and how much memory it holds: the
issue's case (12 shots x 2 s at 1280x720, 24 fps) from 832x480 keyframes, in three settings (plain
cuts; shot numbers + timecode, the node's default; crossfades + camera moves + captions), then the
peak of Python/numpy memory (tracemalloc) while writing 3, 12 and 48 shots, against one shot's
frames. Prints a table; figures depend on the CPU (docs/storyboard-features.md records one run).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

log = logging.getLogger("DreamShot")

def keyframes(n: int, height: int = 480, width: int = 832):
    """Smooth synthetic boards (gradients and a block), as compressible as drawn boards are."""
    import torch

    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    out = []
    for j in range(n):
        colour = torch.tensor([(j * 0.31) % 1, (j * 0.67) % 1, (j * 0.45 + 0.2) % 1])
        img = (0.5 + 0.5 * torch.sin(6.28 * (x * (j % 5 + 1) + y * 2) + colour * 6)).expand(height, width, 3).clone()
        img[height // 4:height // 2, width // 4:width // 2] = colour
        out.append(img)
    return torch.stack(out)


CASES = {
    "cuts only": dict(shot_numbers=False, timecode=False),
    "numbers + timecode (default)": dict(),
    "crossfade + moves + captions": dict(transition="crossfade", captions=True),
}
MOVES = ("static", "push in", "pan right", "tilt up", "pull out", "pan left")


def boards(n: int, seconds: float, moves: bool):
    from ..animatic import Board

    keys = keyframes(n)
    return [Board(keys[j], seconds, camera=MOVES[j % len(MOVES)] if moves else "static",
                  caption=f"MIRA: line {j + 1} of the dialogue.") for j in range(n)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.bench.animatic_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--out", type=Path, default=None, help="keep the MP4s here (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ..animatic import AnimaticSettings, write_animatic

    width, height = (int(v) for v in args.size.lower().split("x"))
    out = args.out or Path(tempfile.mkdtemp(prefix="dreamshot-animatic-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    lines = [f"animatic: {args.shots} shots x {args.seconds:g} s at {width}x{height}, {args.fps:g} fps, "
             f"from 832x480 keyframes; {os.cpu_count()} CPU(s) visible{load}"]
    for name, extra in CASES.items():
        settings = AnimaticSettings(fps=args.fps, width=width, height=height, **extra)
        shots = boards(args.shots, args.seconds, moves="transition" in extra)
        path = out / f"bench_{len(lines)}.mp4"
        if path.exists():
            path.unlink()
        start, cpu = time.perf_counter(), time.process_time()
        info = write_animatic(path, shots, settings)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        video = info.frames / float(info.fps)
        lines.append(f"  {name:30s} {info.frames} frames in {seconds:5.1f} s wall ({cpu:5.1f} s CPU, all threads): "
                     f"{info.frames / seconds:6.1f} frames/s, {video / seconds:5.1f}x real time, "
                     f"{path.stat().st_size / 1e6:5.2f} MB")
    frame_bytes = width * height * 3
    per_shot = round(args.seconds * args.fps) * frame_bytes
    lines.append(f"peak Python/numpy memory while writing (tracemalloc; one {width}x{height} frame = "
                 f"{frame_bytes / 1e6:.2f} MB, one shot's frames = {per_shot / 1e6:.0f} MB):")
    settings = AnimaticSettings(fps=args.fps, width=width, height=height, transition="crossfade", captions=True)
    for n in (3, 12, 48):
        shots = boards(n, args.seconds, moves=True)
        path = out / f"memory_{n}.mp4"
        if path.exists():
            path.unlink()
        tracemalloc.start()
        write_animatic(path, shots, settings)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        lines.append(f"  {n:3d} shots: peak {peak / 1e6:6.2f} MB = {peak / frame_bytes:4.1f} frames "
                     f"({peak / per_shot:.2f} of one shot's frames)")
    log.info("%s", "\n".join(lines))


if __name__ == "__main__":
    main()
