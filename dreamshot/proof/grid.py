"""The whole grid, one command: assets, the video prior, {scratch, prior} x {RACL, lambda 0} x seeds.

Every job runs in its own process (``python -m dreamshot.proof.jobs``) with one torch thread, up to
``jobs`` at a time; a job starts when what it needs is done, the prior first (the longest chain:
the prior's cells wait for it, the scratch cells do not). A job whose result file exists is not run
again, so running the same command after an interruption continues the grid (and a killed job's
training continues from its last checkpoint). Then the cells' scores are summarised over seeds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from .report import chance_accuracy, choice_analysis, goal_check, grid_table, summarise
from .settings import CONDITION_LABELS, CONDITIONS, INITS, LOSSES, Paths, ProofSettings, cells

log = logging.getLogger("DreamShot")

INIT_LABELS = {"scratch": "scratch (random DiT)", "prior": "video prior"}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Job:
    name: str
    done: Path
    needs: list[str] = field(default_factory=list)


def plan_jobs(p: Paths, s: ProofSettings) -> list[Job]:
    """In start order: the prior before the cells, scratch cells (which need only the assets) next."""
    jobs = [Job("assets", p.assets_done), Job("prior", p.prior_done, ["assets"])]
    for c in sorted(cells(s), key=lambda c: (c.init != "scratch", c.seed, c.loss)):
        jobs.append(Job(f"cell:{c.name}", p.cell_done(c), ["assets"] if c.init == "scratch" else ["prior"]))
    return jobs


def _check_settings(p: Paths, s: ProofSettings) -> None:
    if p.settings.is_file():
        old = json.loads(p.settings.read_text())
        if old != s.to_json():
            diff = {k: (old.get(k), v) for k, v in s.to_json().items() if old.get(k) != v}
            raise SystemExit(f"{p.out} holds a grid run with other settings ({diff}, as (then, now)): continue it "
                             "with the same options, or use another --out")
    else:
        p.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p.settings, s.to_json())


def run_jobs(p: Paths, jobs: list[Job], parallel: int) -> dict[str, float]:
    """Run what is not done, up to ``parallel`` processes at once; returns wall seconds per job run."""
    p.logs.mkdir(parents=True, exist_ok=True)
    pending = [j for j in jobs if not j.done.is_file()]
    done = {j.name for j in jobs if j.done.is_file()}
    if done:
        log.info("proof grid: %d job(s) already done (%s)", len(done), ", ".join(sorted(done)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), env.get("PYTHONPATH", "")) if x)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    walls: dict[str, float] = {}
    failed = None
    while pending or running:
        for name, (proc, t0, logf) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del running[name]
            walls[name] = time.perf_counter() - t0
            if proc.returncode != 0:
                failed = failed or name
                log.error("proof grid: job %s failed (exit %d); its log: %s", name, proc.returncode,
                          p.logs / f"{name.replace(':', '_')}.log")
            else:
                done.add(name)
                log.info("proof grid: %s done in %.0f s (%d left)", name, walls[name], len(pending) + len(running))
        if failed is None:
            for job in [j for j in pending if all(n in done for n in j.needs)]:
                if len(running) >= parallel:
                    break
                logf = open(p.logs / f"{job.name.replace(':', '_')}.log", "a", encoding="utf-8")
                proc = subprocess.Popen([sys.executable, "-m", "dreamshot.proof.jobs", str(p.out), job.name],
                                        cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT)
                running[job.name] = (proc, time.perf_counter(), logf)
                pending.remove(job)
                log.info("proof grid: started %s", job.name)
        elif not running:
            break
        time.sleep(0.5)
    if failed is not None:
        tail = (p.logs / f"{failed.replace(':', '_')}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"proof grid: job {failed} failed; the end of its log:\n{tail}")
    return walls


def aggregate(p: Paths, s: ProofSettings, quick: bool, walls: dict[str, float], wall: float) -> dict:
    from .assets import held_out
    from .evaluate import contact_sheet

    results = [json.loads(p.cell_done(c).read_text()) for c in cells(s)]
    assets = json.loads(p.assets_done.read_text())
    prior = json.loads(p.prior_done.read_text())
    stories = held_out(p, s)
    summary = summarise(results, CONDITIONS, INITS, LOSSES)
    loss_labels = {"racl": f"RACL lambda {s.racl_lambda}", "noracl": "lambda 0"}
    table = grid_table(summary, CONDITION_LABELS, INIT_LABELS, loss_labels, chance_accuracy(stories),
                       assets["ceiling"] if s.split == "test" else None)
    goals = goal_check(summary)
    choices = {f"{c}|{i}|{lo}": choice_analysis([r for r in results if r["init"] == i and r["loss"] == lo], stories, c)
               for c in ("r2s", "r2s_roles") for i in INITS for lo in LOSSES}
    names = ["| fine-tuned from | training loss | pixel change | character changed | shows the new name "
             "| R2S identity accuracy (same stories) |", "|---|---|---|---|---|---|"]
    for i in INITS:
        for lo in LOSSES:
            group = [r for r in results if r["init"] == i and r["loss"] == lo and "name_check" in r]
            if not group:
                continue
            mean = {k: float(np.mean([r["name_check"][k] for r in group]))
                    for k in ("pixel_change", "character_changed", "follows_new_name")}
            n = group[0]["name_check"]["stories"]
            same = [o for r in group for e in r["per_story"][:n] for row in e["r2s"] for o in row]
            acc = sum(o == "correct" for o in same) / len(same) if same else float("nan")
            names.append(f"| {INIT_LABELS[i]} | {loss_labels[lo]} | {mean['pixel_change']:.1e} | "
                         f"{mean['character_changed']:.1%} | {mean['follows_new_name']:.1%} | {acc:.1%} |")
    pers = prior["persistence"]
    job_costs = {r["cell"]: {"cpu_s": r["cpu_s"], "wall_s": r["wall_s"], **{f"{k}_cpu_s": v["cpu_s"]
                                                                           for k, v in r["phases"].items()}}
                 for r in results}
    job_costs["prior"] = {"cpu_s": prior["cpu_s"], "wall_s": prior["wall_s"],
                          **{f"{k}_cpu_s": v["cpu_s"] for k, v in prior["phases"].items()}}
    job_costs["assets"] = {"cpu_s": assets["cpu_s"], "wall_s": assets["wall_s"]}
    header = (f"DreamShot shapes-story proof grid: {s.train_stories} training stories, {s.videos} prior clips "
              f"({s.prior_steps} text-to-video steps), {len(stories)} held-out {s.split} stories, {s.width}x{s.height}, "
              f"{s.train_steps} fine-tune steps per cell, seeds {list(s.seeds)}, RACL lambda {s.racl_lambda}, "
              f"shift {s.shift}, {s.sample_steps} euler steps, data seed {s.data_seed}"
              f"{' (QUICK smoke run: numbers mean nothing)' if quick else ''}.")
    prior_line = (f"Video prior on {s.prior_eval_clips} held-out captions: the same character in every latent frame "
                  f"where it is in view for {pers['generated']['kept']:.1%} of {pers['generated']['tracks']} "
                  f"characters (real clips through the VAE: {pers['real']['kept']:.1%}); a character in view each "
                  f"time: {pers['generated']['present']:.1%}. T2V loss {prior['run']['loss_first']:.3f} -> "
                  f"{prior['run']['loss_last']:.3f}.")
    cpu_total = sum(v["cpu_s"] for v in job_costs.values())
    results_json = {"settings": s.to_json(), "quick": quick, "header": header, "table": table, "goals": goals,
                    "prior": {"persistence": pers, "run": prior["run"]},
                    "summary": {f"{c}|{i}|{lo}": v for (c, i, lo), v in summary.items()}, "choices": choices,
                    "costs": job_costs, "cpu_total_s": round(cpu_total, 1),
                    "this_invocation": {"wall_s": round(wall, 1), "job_wall_s": {k: round(v, 1) for k, v in walls.items()}},
                    "ceiling": assets["ceiling"], "cells": results}
    atomic_write_json(p.out / "results.json", results_json)
    choice_lines = ["| condition | fine-tuned from | training loss | generated = reference 1 / 2 / 3 (script: 1 / 2 / 3) "
                    "| shot repeats the previous shot's character |", "|---|---|---|---|---|"]
    for key, v in choices.items():
        c, i, lo = key.split("|")
        pick = " / ".join(f"{x:.0%}" for x in v["reference_picked"][:3])
        want = " / ".join(f"{x:.0%}" for x in v["reference_wanted"][:3])
        choice_lines.append(f"| {CONDITION_LABELS[c]} | {INIT_LABELS[i]} | {loss_labels[lo]} | {pick} ({want}) | "
                            f"{v['repeats_previous_shot']:.1%} |")
    text = "\n\n".join([header, table, "Goal (stated before the run):\n" + "\n".join(goals), prior_line,
                        "Which reference the shots drew from (all seeds):\n\n" + "\n".join(choice_lines),
                        "Do the names steer R2S? The first held-out stories sampled again with the role names "
                        "rotated over the cast (captions only, same seeds; mean over seeds; a model that ignores "
                        "the names changes nothing):\n\n" + "\n".join(names),
                        f"CPU time of all jobs: {cpu_total / 60:.1f} min; this invocation's wall time: {wall / 60:.1f} min."])
    atomic_write_text(p.out / "results.md", text + "\n")
    # the sheet: real shots of the first held-out stories, then seed 0's cells, one row per condition
    from . import dataset as ds

    real = [ds.render_shot(sp, j, s.width, s.height)[0] for sp in stories[:4] for j in range(len(sp.shots))]
    rows = [real]
    for c in (c for c in cells(s) if c.seed == s.seeds[0]):
        sheet = p.cell(c) / "samples.png"
        if sheet.is_file():
            from ..images import load_image

            im = (load_image(sheet).numpy() * 255).round().astype(np.uint8)[::2, ::2]
            h = s.height
            rows += [[im[k * (h + 2):k * (h + 2) + h, j * (s.width + 2):j * (s.width + 2) + s.width]
                      for j in range(len(real))] for k in range(len(CONDITIONS))]
    contact_sheet(p.out / "samples.png", rows)
    return results_json


def run_grid(out: str | Path, settings: ProofSettings, quick: bool = False, parallel: int = 2) -> dict:
    p = Paths(out)
    _check_settings(p, settings)
    start = time.perf_counter()
    walls = run_jobs(p, plan_jobs(p, settings), parallel)
    return aggregate(p, settings, quick, walls, time.perf_counter() - start)
