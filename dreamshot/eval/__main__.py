"""``python -m dreamshot.eval``: measure generated storyboards against a benchmark file.

    python -m dreamshot.eval check --benchmark bench.json
    python -m dreamshot.eval run --benchmark bench.json --outputs data/outputs \\
        --face-model /models/insightface/buffalo_l [--clip-model /models/clip-vit-large-patch14] \\
        [--method dreamshot] [--mode base] [--lang en] [--timestamp 20260101-120000 | --all-timestamps] \\
        [--report-dir eval_results]

    python -m dreamshot.eval run --benchmark bench.json --run output/vistory_bench --face-model ...

Shots are read from <outputs>/<method>/<mode>/<lang>/<timestamp>/<story_id>/shots/<N>.png (N from 1),
or with --run from <folder>/<story_id>/<N>.png (what python -m dreamshot.vistory writes).
Writes metrics_stories.csv, metrics_runs.csv and metrics.md to --report-dir and prints the markdown.
Models are only read from the folders given; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("DreamShot")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", choices=("run", "check"), default="run",
                    help="run: measure the storyboards (default); check: validate the benchmark file only")
    ap.add_argument("--benchmark", "-b", required=True, help="benchmark .json file (stories: references + shots)")
    ap.add_argument("--outputs", "-o", help="root of the generated storyboards (<method>/<mode>/<lang>/<timestamp>)")
    ap.add_argument("--run", action="append", default=[], help="a folder of <story_id>/[shots/]<N>.png measured as "
                                                                "one run, e.g. python -m dreamshot.vistory's --out "
                                                                "(repeatable)")
    ap.add_argument("--face-model", help="insightface model folder (e.g. .../buffalo_l with det_10g.onnx and "
                                         "w600k_r50.onnx): identity metrics")
    ap.add_argument("--clip-model", help="Hugging Face CLIP folder (config.json, model.safetensors, tokenizer, "
                                         "preprocessor_config.json): CLIP score")
    ap.add_argument("--method", action="append", default=[], help="only this method (repeatable)")
    ap.add_argument("--mode", action="append", default=[], help="only this mode (repeatable)")
    ap.add_argument("--lang", action="append", default=[], help="only this language (repeatable)")
    ap.add_argument("--timestamp", action="append", default=[], help="only this timestamp (repeatable; default: "
                                                                      "the newest per method/mode/lang)")
    ap.add_argument("--all-timestamps", action="store_true", help="measure every timestamp, not only the newest")
    ap.add_argument("--shot-numbering", type=int, choices=(0, 1), default=1,
                    help="number of the first shot image (1: 1.png is shot 1; 0: 0.png is shot 1)")
    ap.add_argument("--det-size", type=int, default=640, help="insightface detector input size (square)")
    ap.add_argument("--device", default="cpu", help="torch device for CLIP (cpu, cuda, ...)")
    ap.add_argument("--report-dir", default="eval_results", help="where the CSV and markdown files go")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ..errors import DreamShotInputError
    from .benchmark import read_benchmark

    try:
        bench = read_benchmark(args.benchmark)
        shots = sum(len(s.shots) for s in bench.stories)
        log.info("benchmark %s: %d story(ies), %d shot(s): OK", bench.path, len(bench.stories), shots)
        if args.command == "check":
            return 0
        if not args.outputs and not args.run:
            raise DreamShotInputError("outputs", "no --outputs or --run folder was given.",
                                      "pass --outputs <root of <method>/<mode>/<lang>/<timestamp>> or --run <folder "
                                      "of <story_id>/<N>.png>.")
        from .report import write_reports
        from .runner import direct_run, evaluate_runs, find_runs

        runs = [direct_run(r) for r in args.run]
        if args.outputs:
            runs += find_runs(args.outputs, args.method, args.mode, args.lang, args.timestamp, args.all_timestamps)
        analyzer = scorer = None
        if args.face_model:
            from ..faces import load_insightface

            analyzer = load_insightface(args.face_model, det_size=(args.det_size, args.det_size))
        if args.clip_model:
            from .clip_score import ClipScorer

            scorer = ClipScorer(args.clip_model, device=args.device)
        story_rows, run_rows = evaluate_runs(
            bench, runs, analyzer, scorer, numbering=args.shot_numbering,
            on_story=lambda run, story: log.info("%s: story %s", "/".join(
                k for k in (run.method, run.mode, run.lang, run.timestamp) if k), story.id))
        paths = write_reports(story_rows, run_rows, Path(args.report_dir))
        markdown = paths[2].read_text(encoding="utf-8")
        sys.stdout.write(markdown)   # the report is this command's output
        log.info("wrote %s", ", ".join(str(p) for p in paths))
    except DreamShotInputError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
