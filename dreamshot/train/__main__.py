"""``python -m dreamshot.train``: check the dataset, cache latents/text, train a DreamShot LoRA.

    python -m dreamshot.train check --config train.toml     # validate the manifest (no ComfyUI needed)
    python -m dreamshot.train cache --config train.toml     # VAE latents + text embeddings, resumable
    python -m dreamshot.train train --config train.toml [--resume latest] [--set train.steps=100 ...]
    python -m dreamshot.train --config train.toml           # = train
    python -m dreamshot.train estimate train.toml [--model 14B] [--frames 9]   # expected peak GPU memory
    torchrun --nproc_per_node 8 -m dreamshot.train train --config train.toml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("DreamShot")

COMMANDS = ("check", "cache", "train", "estimate")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dreamshot.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", choices=COMMANDS, default="train", help="what to run (default: train)")
    ap.add_argument("config_file", nargs="?", help="TOML config file (same as --config)")
    ap.add_argument("--config", "-c", help="TOML config file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (repeatable), e.g. --set train.steps=100")
    ap.add_argument("--resume", help='"latest" or a checkpoint folder (same as --set checkpoint.resume=...)')
    ap.add_argument("--output-dir", help="same as --set train.output_dir=...")
    ap.add_argument("--steps", type=int, help="same as --set train.steps=...")
    ap.add_argument("--comfyui", help="ComfyUI folder (same as --set model.comfyui_path=...)")
    est = ap.add_argument_group("estimate")
    est.add_argument("--model", choices=("1.3B", "14B"), help="model sizes to estimate for (default: read from "
                     "model.dit's header)")
    est.add_argument("--frames", type=int, help="latent frames per sample (default: data.max_shots shots + 3 "
                     "references, at most data.max_latent_frames)")
    est.add_argument("--refs", type=int, help="reference frames among them (default 3)")
    est.add_argument("--world-size", type=int, default=1, help="processes of a torchrun job (FSDP divides weights)")
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
    if args.config_file and args.config:
        log.error("give the config once: as an argument or with --config")
        return 2
    try:
        cfg = load_config(args.config or args.config_file, overrides)
        if args.command == "check":
            from .dataset import read_manifest

            cfg.validate(need=("data.dataset",))
            seqs = read_manifest(cfg.data.dataset)
            shots = sum(len(s.shots) for s in seqs)
            log.info("DreamShot dataset %s: %d sequence(s), %d shot(s), %d character(s): OK", cfg.data.dataset,
                     len(seqs), shots, sum(len(s.characters) for s in seqs))
        elif args.command == "estimate":
            run_estimate(cfg, args)
        elif args.command == "cache":
            from .cache import run_cache

            run_cache(cfg)
        else:
            from .distributed import init_distributed, shutdown
            from .trainer import Trainer

            state, finished = init_distributed(cfg.distributed.backend), False
            try:
                trainer = Trainer(cfg, state)
                trainer.train()
                del trainer   # DDP's reducer holds the process group: free it before the group goes
                finished = True
            finally:
                shutdown(state, wait_for_peers=finished)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    return 0


def run_estimate(cfg, args) -> None:
    """Print the expected peak memory (stdout: it is the command's output, not a log)."""
    from pathlib import Path

    from .config import ConfigError
    from .estimate import WAN21, dims_from_file, estimate, sample_size

    cfg.validate()
    if args.model:
        dims = WAN21[args.model]
    elif cfg.model.dit and Path(cfg.model.dit).is_file():
        dims = dims_from_file(cfg.model.dit)
    else:
        raise ConfigError(f"estimate: model.dit {cfg.model.dit!r} is not a file; give --model 14B or --model 1.3B")
    frames, tokens, text, ref_tokens = sample_size(cfg, args.frames, args.refs, dims.token_px)
    est = estimate(cfg, dims, tokens, text, ref_tokens, world_size=args.world_size)
    sys.stdout.write(f"{cfg.data.width}x{cfg.data.height}, {frames} latent frames\n{est.format()}\n")


if __name__ == "__main__":
    sys.exit(main())
