"""``python -m dreamshot.train``: check the dataset, cache latents/text, train a DreamShot LoRA.

    python -m dreamshot.train check --config train.toml     # validate the manifest (no ComfyUI needed)
    python -m dreamshot.train cache --config train.toml     # VAE latents + text embeddings, resumable
    python -m dreamshot.train train --config train.toml [--resume latest] [--set train.steps=100 ...]
    python -m dreamshot.train --config train.toml           # = train
    torchrun --nproc_per_node 8 -m dreamshot.train train --config train.toml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("DreamShot")

COMMANDS = ("check", "cache", "train")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", choices=COMMANDS, default="train", help="what to run (default: train)")
    ap.add_argument("--config", "-c", help="TOML config file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (repeatable), e.g. --set train.steps=100")
    ap.add_argument("--resume", help='"latest" or a checkpoint folder (same as --set checkpoint.resume=...)')
    ap.add_argument("--output-dir", help="same as --set train.output_dir=...")
    ap.add_argument("--steps", type=int, help="same as --set train.steps=...")
    ap.add_argument("--comfyui", help="ComfyUI folder (same as --set model.comfyui_path=...)")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .config import ConfigError, load_config
    from .dataset import DatasetError

    overrides = list(args.overrides)
    for flag, key in ((args.resume, "checkpoint.resume"), (args.output_dir, "train.output_dir"),
                      (args.steps, "train.steps"), (args.comfyui, "model.comfyui_path")):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    try:
        cfg = load_config(args.config, overrides)
        if args.command == "check":
            from .dataset import read_manifest

            cfg.validate(need=("data.dataset",))
            seqs = read_manifest(cfg.data.dataset)
            shots = sum(len(s.shots) for s in seqs)
            log.info("DreamShot dataset %s: %d sequence(s), %d shot(s), %d character(s): OK", cfg.data.dataset,
                     len(seqs), shots, sum(len(s.characters) for s in seqs))
        elif args.command == "cache":
            from .cache import run_cache

            run_cache(cfg)
        else:
            from .distributed import shutdown
            from .trainer import Trainer

            trainer = Trainer(cfg)
            try:
                trainer.train()
            finally:
                shutdown(trainer.dist)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
