"""``python -m dreamshot.proof [--out DIR] [--jobs N] [--quick] [--set NAME=VALUE ...]``: the shapes-story
proof grid, end to end (CPU).

Generates the stories and the shape videos, builds tiny Wan-format models, pretrains the video prior
(text-to-video), fine-tunes DreamShot from scratch and from the prior, with and without RACL, for
every seed (dreamshot.train's trainer), samples the held-out stories through ComfyUI's samplers,
classifies who is where and prints the table (also DIR/results.md). Run it again with the same
options to continue an interrupted grid: finished jobs are not recomputed.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.proof", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="proof_out", help="output folder (default: ./proof_out)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time, one torch thread each (default 2)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few steps (the numbers mean nothing)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="change a setting (dreamshot/proof/settings.py), e.g. --set split=dev --set train_steps=2000")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from dataclasses import replace

    from .grid import run_grid
    from .settings import QUICK, ProofSettings

    settings = ProofSettings()
    if args.quick:
        settings = replace(settings, **QUICK)
    try:
        settings = settings.with_overrides(args.overrides)
    except ValueError as e:
        ap.error(str(e))
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    results = run_grid(args.out, settings, quick=args.quick, parallel=args.jobs)
    sys.stdout.write("\n\n".join([results["header"], results["table"], "\n".join(results["goals"])]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
