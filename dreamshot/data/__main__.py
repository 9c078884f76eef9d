"""``python -m dreamshot.data VIDEOS OUT --faces insightface:/models/buffalo_l``: a training dataset from videos.

    python -m dreamshot.data videos/ data/storyboards --faces insightface:/models/insightface/buffalo_l \\
        --shots 4 --width 640 --height 352 [--segmenter sam_box.onnx] [--reference-segmenter saliency.onnx]
    python -m dreamshot.train check --config train.toml     # then validate it as training reads it

Rerunning the same command resumes: finished sequences and videos are kept, the rest is redone.
Plugins are named as package.module:attribute (imported, then called once with no arguments):
``--faces python:mypkg.faces:MyAnalyzer``, ``--captioner mypkg.vlm:Captioner``, ``--pairer ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

log = logging.getLogger("DreamShot")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import MISSING_CAPTION, DataConfig
    from .cuts import DETECTORS

    d = DataConfig()
    ap = argparse.ArgumentParser(prog="python -m dreamshot.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", help="folder of videos (searched recursively); captions sidecars sit beside them")
    ap.add_argument("out", help="dataset folder to write (manifest.jsonl + images); rerun to resume")
    ap.add_argument("--faces", required=True, metavar="insightface:FOLDER | python:MODULE:ATTR",
                    help="face detector + embedder: an insightface model folder (e.g. buffalo_l, never downloaded), "
                         "or a FaceAnalyzer factory to import")
    ap.add_argument("--det-size", type=int, default=640, help="insightface detection size (square)")
    ap.add_argument("--segmenter", help="shot mask segmenter: model.onnx, or weights.safetensors with --segmenter-class")
    ap.add_argument("--segmenter-class", metavar="MODULE:CLASS", help="torch.nn.Module class for --segmenter weights")
    ap.add_argument("--reference-segmenter", help="reference saliency segmenter (default: --segmenter)")
    ap.add_argument("--reference-segmenter-class", metavar="MODULE:CLASS")
    ap.add_argument("--captioner", metavar="MODULE:ATTR", help="captioner factory for shots without sidecar caption")
    ap.add_argument("--pairer", metavar="MODULE:ATTR", help="pairing hook factory for characters without faces (e.g. a VLM)")
    ap.add_argument("--missing-caption", choices=MISSING_CAPTION, default=d.missing_caption,
                    help="a shot without caption is dropped, or kept with an empty caption")
    ap.add_argument("--detector", choices=DETECTORS, default=d.detector, help="PySceneDetect shot detector")
    for f in dataclasses.fields(DataConfig):
        if f.name in ("missing_caption", "detector"):
            continue
        kind = float if f.type in ("float", "float | None") else int
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(d, f.name),
                        help=f"(default {getattr(d, f.name)})")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return ap


def _faces(spec: str, det_size: int):
    from ..errors import DreamShotInputError
    from ..faces import load_insightface
    from .plugins import build_plugin

    kind, sep, rest = spec.partition(":")
    if sep and kind == "insightface":
        return load_insightface(rest, det_size=(det_size, det_size))
    if sep and kind == "python":
        return build_plugin(rest, "faces")
    if Path(spec).expanduser().is_dir():
        return load_insightface(spec, det_size=(det_size, det_size))
    raise DreamShotInputError("faces", f"{spec!r} is neither insightface:FOLDER, python:MODULE:ATTR nor a folder.",
                              "pass --faces insightface:/path/to/buffalo_l (the unpacked model pack folder).")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ..errors import DreamShotInputError
    from .masks import load_segmenter
    from .pipeline import DataConfig, build_dataset
    from .plugins import build_plugin

    config = DataConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataConfig)})
    try:
        faces = _faces(args.faces, args.det_size)
        segmenter = load_segmenter(args.segmenter, args.segmenter_class) if args.segmenter else None
        if args.reference_segmenter:
            ref_segmenter = load_segmenter(args.reference_segmenter, args.reference_segmenter_class,
                                           "reference_segmenter")
        else:
            ref_segmenter = segmenter
        captioner = build_plugin(args.captioner, "captioner") if args.captioner else None
        pairer = build_plugin(args.pairer, "pairer") if args.pairer else None
        summary = build_dataset(args.videos, args.out, config, faces=faces, segmenter=segmenter,
                                reference_segmenter=ref_segmenter, captioner=captioner, pairer=pairer,
                                progress=not args.no_progress)
    except DreamShotInputError as e:
        log.error("%s", e)
        return 2
    log.info("dreamshot.data: %d sequence(s) written this run, %d kept from an earlier run (resumed); totals "
             "for %s:", summary.sequences_written, summary.sequences_resumed, args.out)
    for line in summary.lines():
        log.info("  %s", line)
    log.info("details: %s", Path(args.out) / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
