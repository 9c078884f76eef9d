"""One job of the grid, run in its own process: ``python -m dreamshot.proof.jobs OUT JOB``.

JOB is ``assets`` (datasets, models, caches, the VAE ceiling), ``prior`` (text-to-video pretraining
on the shape videos, merged into a DiT file, then checked on held-out captions) or
``cell:<init>-<loss>-s<seed>`` (one fine-tune and its scores). Each writes its ``done.json`` /
``result.json`` last, atomically: the grid skips a job whose file exists. Training resumes from
its last checkpoint when a job is run again after being killed.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json
from .settings import CONDITIONS, Cell, Paths, ProofSettings, cells

log = logging.getLogger("DreamShot")


class Clock:
    """Wall and CPU seconds per phase (CPU time: what the phase costs on an otherwise idle core)."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class _Phase:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.phases[name] = {"wall_s": round(time.perf_counter() - self.t, 1),
                                      "cpu_s": round(time.process_time() - self.c, 1)}
        return _Phase()


def _train(config: Path) -> dict:
    """Train (resuming a killed run from its last checkpoint), or return the finished run's summary."""
    from ..train.config import load_config
    from ..train.distributed import shutdown
    from ..train.trainer import Trainer

    cfg = load_config(config)
    summary = cfg.output_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    trainer = Trainer(cfg)
    try:
        result = trainer.train()
    finally:
        shutdown(trainer.dist)
    metrics = [json.loads(line) for line in (trainer.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["loss"] for m in metrics]
    tail = max(1, len(losses) // 10)
    # the checkpoints (optimizer state: ~3x the weights) are only for resuming; the run is complete
    done = {"lora": str(result.lora_path), "resumed_at": result.start_step, "loss_first": float(np.mean(losses[:tail])),
            "loss_last": float(np.mean(losses[-tail:])),
            "fm_last": float(np.mean([m["fm"] for m in metrics][-tail:])),
            "racl_last": float(np.mean([m["racl"] for m in metrics][-tail:]))}
    atomic_write_json(summary, done)
    shutil.rmtree(trainer.out / "checkpoints", ignore_errors=True)
    return done


def run_assets(p: Paths, s: ProofSettings) -> dict:
    from .assets import build_assets, held_out
    from .evaluate import ceiling

    clock = Clock()
    with clock("build"):
        timings = build_assets(p, s)
    with clock("ceiling"):
        top = ceiling(p.models, held_out(p, s), s)
    return {"ceiling": top, "timings": {k: round(v, 1) for k, v in timings.items()}, "phases": clock.phases}


def run_prior(p: Paths, s: ProofSettings) -> dict:
    from . import videos as vd
    from .assets import write_train_config
    from .evaluate import contact_sheet, load_model, sample_clips
    from .tiny_models import merge_deltas

    clock = Clock()
    cfg = write_train_config(p.prior / "train.toml", p, s, dit=p.models / "dit.safetensors", dataset=p.videos,
                             cache=p.video_cache, out=p.prior / "run", steps=s.prior_steps, lr=s.prior_lr,
                             seed=s.data_seed, modes={"t2v": 1.0}, racl_lambda=0.0)
    with clock("train"):
        run = _train(cfg)
    merge_deltas(p.models / "dit.safetensors", Path(run["lora"]), p.prior_dit)
    clips = vd.make_clips(s.prior_eval_clips, s.data_seed + 11, s.width, s.height, "heldout")
    with clock("check"):
        check = sample_clips(load_model(p.prior_dit, s.shift, mask_padding=s.mask_text_padding), p.models, clips, s, s.data_seed)
    rows = []
    for truth, frames in check.pop("sheet"):
        rows += [truth, frames]
    contact_sheet(p.prior / "samples.png", rows)
    return {"run": run, "persistence": check, "phases": clock.phases}


def run_cell(p: Paths, s: ProofSettings, cell: Cell) -> dict:
    from .assets import held_out, write_train_config
    from .evaluate import contact_sheet, load_model, score_model

    clock = Clock()
    d = p.cell(cell)
    dit = p.models / "dit.safetensors" if cell.init == "scratch" else p.prior_dit
    lam = s.racl_lambda if cell.loss == "racl" else 0.0
    cfg = write_train_config(d / "train.toml", p, s, dit=dit, dataset=p.stories, cache=p.story_cache, out=d / "run",
                             steps=s.train_steps, lr=s.lr, seed=cell.seed, modes={"r2s": s.r2s_share, "t2s": round(1 - s.r2s_share, 6)},
                             racl_lambda=lam)
    with clock("train"):
        run = _train(cfg)
    with clock("sample"):
        scores = score_model(load_model(dit, s.shift, Path(run["lora"]), s.mask_text_padding), p.models, held_out(p, s), s, cell.seed)
    sheet = scores.pop("sheet")
    contact_sheet(d / "samples.png", [[im for story in sheet[c] for im in story] for c in CONDITIONS])
    return {"cell": cell.name, "init": cell.init, "loss": cell.loss, "seed": cell.seed, "racl_lambda": lam,
            "split": s.split, "run": run, **scores, "phases": clock.phases}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.stderr.write("usage: python -m dreamshot.proof.jobs OUT JOB (assets | prior | cell:NAME)\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = Paths(argv[0])
    s = ProofSettings.from_json(json.loads(p.settings.read_text()))
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.data_seed)
    from ..comfy_bridge.headless import import_comfy

    # every job samples or trains through ComfyUI, also when its training was already finished
    import_comfy()
    job = argv[1]
    start = time.perf_counter()
    if job == "assets":
        out, result = p.assets_done, run_assets(p, s)
    elif job == "prior":
        out, result = p.prior_done, run_prior(p, s)
    elif job.startswith("cell:"):
        by_name = {c.name: c for c in cells(s)}
        cell = by_name.get(job[5:])
        if cell is None:
            sys.stderr.write(f"unknown cell {job[5:]!r}: one of {', '.join(by_name)}\n")
            return 2
        out, result = p.cell_done(cell), run_cell(p, s, cell)
    else:
        sys.stderr.write(f"unknown job {job!r}: assets, prior or cell:NAME\n")
        return 2
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["cpu_s"] = round(time.process_time(), 1)
    atomic_write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
