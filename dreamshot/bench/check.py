"""The GPU check of issue 24 in one command: ``python -m dreamshot.bench --gpu --out DIR``.

Runs each part of check_parts.PARTS in a process of its own with its own time box, within one time
budget for the whole check (a part that would not fit in what is left is skipped, and says so), and
rewrites DIR/bench.md and DIR/bench.json after every part, so a part that fails, runs out of memory or
out of time still leaves every other part's figures. ``--quick`` runs the same parts, processes and
code on the CPU at tiny sizes (figures meaningless: it checks that everything runs).

DIR/parts/<part>.json and .log hold each part's own result and output; DIR/bench.log all logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .check_parts import PARTS

log = logging.getLogger("DreamShot")

SAMPLER_TIME_GOAL, RACL_TIME_GOAL, SAMPLER_MEM_GOAL, ESTIMATE_GOAL = 1.05, 1.15, 1.1, 0.10
DEFAULT_BUDGET_S = 470              # the whole check on one H100: under 8 minutes
TINY_BOX_S = 600                    # a tiny part's time box on a CPU
COMFYUI_ALLOCATOR = "backend:cudaMallocAsync"   # what ComfyUI's cuda_malloc.py sets on NVIDIA GPUs (main.py)


def run_check(out: Path, tiny: bool, parts: list[str], budget_s: float = DEFAULT_BUDGET_S,
              allocator: str = "comfyui") -> int:
    """Run ``parts`` in order; 0 when every part ran to the end (a case that ran out of memory under
    the cap is a result, not a failure), 1 otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    meta = {"tiny": tiny, "budget_s": budget_s, "parts": parts, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "nvidia_smi": "" if tiny else _nvidia_smi(), "allocator": allocator}
    results: dict[str, dict] = {}
    if not tiny:
        log.info("GPU check: %d part(s), estimated %.0f s on one H100 in all (estimates), budget %.0f s: %s",
                 len(parts), sum(PARTS[p].estimate_s for p in parts), budget_s,
                 ", ".join(f"{p} ~{PARTS[p].estimate_s:.0f} s" for p in parts))
    t0 = time.monotonic()
    for name in parts:
        spec = PARTS[name]
        left = budget_s - (time.monotonic() - t0)
        if not tiny and left < spec.estimate_s:
            results[name] = {"part": name, "title": spec.title, "status": "skipped",
                             "error": f"not started: {left:.0f} s of the {budget_s:.0f} s budget left, the part is "
                                      f"estimated at {spec.estimate_s:.0f} s"}
            log.warning("part %s skipped: %s", name, results[name]["error"])
            _write(out, meta, results)
            continue
        box = TINY_BOX_S if tiny else min(spec.box_s, left)
        log.info("part %s (%s): estimated %.0f s on one H100, time box %.0f s, %.0f s of the budget left",
                 name, spec.title, spec.estimate_s, box, left)
        results[name] = _run_part(name, out, tiny, box, allocator)
        r = results[name]
        log.info("part %s: %s after %.0f s%s", name, r["status"], r.get("wall_s", 0),
                 f" ({r['error']})" if r.get("error") else "")
        _write(out, meta, results)
    meta["wall_s"] = time.monotonic() - t0
    _write(out, meta, results)
    sys.stdout.write(render(meta, results))
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def _nvidia_smi() -> str:
    """The card and driver as nvidia-smi reports them (no CUDA context is created here)."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _run_part(name: str, out: Path, tiny: bool, box: float, allocator: str) -> dict:
    """One part in its own process group, killed at its time box; its result file (as far as it got)."""
    result_file, log_file = out / "parts" / f"{name}.json", out / "parts" / f"{name}.log"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if allocator == "comfyui" and PARTS[name].comfyui_allocator and not tiny \
            and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
        env["PYTORCH_CUDA_ALLOC_CONF"] = COMFYUI_ALLOCATOR
    cmd = [sys.executable, "-m", "dreamshot.bench.check_parts", name, "--out", str(result_file)] + \
        (["--tiny"] if tiny else [])
    t = time.monotonic()
    status = None
    with open(log_file, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
        try:
            rc = proc.wait(timeout=box)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # the part's own process group (start_new_session)
            except ProcessLookupError:                # it ended just now
                pass
            proc.wait()
            rc, status = None, f"timed out after {box:.0f} s"
    try:
        record = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {"part": name, "title": PARTS[name].title, "error": "", "notes": []}
    if status is not None:
        record["status"], record["error"] = "timed out", status + " (the cases it finished are kept)"
    elif rc != 0 and record.get("status") in (None, "running"):
        record["status"] = "crashed"
        record["error"] = f"exit status {rc}; last output: " + " | ".join(_tail(log_file, 5))
    record["wall_s"] = time.monotonic() - t
    return record


def _tail(path: Path, n: int) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]]
    except OSError:
        return []


def _write(out: Path, meta: dict, results: dict) -> None:
    from ..atomic import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench.json", {"meta": meta, "parts": results})
    atomic_write_text(out / "bench.md", render(meta, results))
    logs = []
    for name in results:
        logs += [f"===== {name} =====", *_tail(out / "parts" / f"{name}.log", 400)]
    atomic_write_text(out / "bench.log", "\n".join(logs) + "\n")


# -- bench.md -----------------------------------------------------------------------------------------
def render(meta: dict, results: dict) -> str:
    from .report import markdown_table

    env = next((r["env"] for r in results.values() if r.get("env")), {})
    where = env.get("device", "?")
    md = [f"# DreamShot GPU check ({where})\n"]
    if meta["tiny"]:
        md.append("**--quick: tiny sizes on the CPU. The figures are meaningless; this checks that every part "
                  "runs.**\n")
    md.append(f"- device: {where}" + (f", {env['total_mib']} MiB, compute capability {env['capability']}, "
                                       f"{env['multiprocessors']} SMs" if "total_mib" in env else ""))
    if meta.get("nvidia_smi"):
        md.append(f"- nvidia-smi: {meta['nvidia_smi']}")
    md.append(f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '-')}; "
              f"Python {env.get('python', '?')} (each part's CUDA allocator: the parts table)")
    md.append(f"- ComfyUI {env.get('comfyui', '?')}, attention {env.get('attention', '?')}")
    md.append(f"- started {meta['started']}; budget {meta['budget_s']:.0f} s"
              + (f"; took {meta['wall_s']:.0f} s" if "wall_s" in meta else " (running)") + "\n")
    md += ["## Parts\n", markdown_table([{
        "part": name, "title": r.get("title", ""), "status": r["status"], "wall_s": r.get("wall_s", math.nan),
        "allocator": r.get("env", {}).get("allocator", "-"),
        "error": (r.get("error") or "") + "".join(f" Note: {n}" for n in r.get("notes", []))}
        for name, r in results.items()],
        [("part", "part", "s"), ("title", "what", "s"), ("status", "status", "s"), ("wall_s", "wall s", ".0f"),
         ("allocator", "allocator", "s"), ("error", "error / note", "s")]), ""]
    sampler = [(n, r) for n, r in results.items() if PARTS[n].kind == "sampler" and r.get("rows")]
    if sampler:
        md += _sampler_section(sampler)
    train = [(n, r) for n, r in results.items() if PARTS[n].kind == "train" and r.get("result")]
    if train:
        md += _train_section(train)
    ops = results.get("ops", {}).get("rows")
    if ops:
        md += _ops_section(ops, env)
    md += _goals(results)
    return "\n".join(md) + "\n"


def _sampler_section(sampler) -> list[str]:
    from .report import markdown_table

    md = ["## Storyboard sampling (DreamShot Sampler against stock sampling)\n"]
    for name, r in sampler:
        c, capped = r.get("config", {}), PARTS[name].capped
        rows = [dict(x, goal=_goal(x)) for x in r["rows"]]
        md.append(f"### {r['title']}\n")
        md.append(f"Random {c.get('dit')} Wan2.1 DiT through ComfyUI, weights {c.get('weight_dtype')} (compute "
                  f"{c.get('compute_dtype')}, {c.get('model_mib', 0):.0f} MiB), {c.get('frame')}, {c.get('refs')} "
                  f"references + {c.get('shots')} shots, {c.get('steps')} steps, cfg {c.get('cfg')}, reference CFG "
                  f"{c.get('ref_cfg')}, {c.get('sampler')}. Peaks: torch.cuda.max_memory_allocated (total: weights "
                  "included; above start: what the call added)" + (f"; {r.get('cap')}" if capped else "") + ".\n")
        if capped:
            fits = all(not x["error"] for x in r["rows"]) and r["status"] == "ok"
            md.append(f"**Fits under the cap: {'yes' if fits else 'NO'}** (every case ran to the end without a "
                      "CUDA out-of-memory error). Resident DiT weights after each case: loaded MiB of model MiB "
                      "(less: ComfyUI loaded it partially).\n")
        md.append(markdown_table(rows, [
            ("variant", "case", "s"), ("step_s", "s / step", ".2f"), ("time_ratio", "time / stock", ".3f"),
            ("peak_mib", "peak above start MiB", ".0f"), ("mem_ratio", "ratio", ".3f"),
            ("total_mib", "total peak MiB", ".0f"), ("total_ratio", "total / stock", ".3f"),
            ("loaded_mib", "loaded MiB", ".0f"), ("goal", "goal", "s"), ("error", "error", "s")]))
        md.append("")
    return md


def _goal(row: dict) -> str:
    goals = {"dreamshot": SAMPLER_TIME_GOAL, "racl": RACL_TIME_GOAL}
    if row["case"] not in goals or row.get("error") or "time_ratio" not in row:
        return "-"
    t, m = row["time_ratio"], row["total_ratio"]
    mem = "mem -" if math.isnan(m) else f"mem {'ok' if m <= SAMPLER_MEM_GOAL else 'OVER'} (<= {SAMPLER_MEM_GOAL})"
    return f"time {'ok' if t <= goals[row['case']] else 'OVER'} (<= {goals[row['case']]}), {mem}"


def _train_section(train) -> list[str]:
    from .report import markdown_table

    rows = []
    for name, r in train:
        res = r["result"]
        for s in res["steps"]:
            rows.append({"part": name, "recipe": res["recipe"], "settings": _settings(res["settings"]),
                         "resident": res["resident_gib"], "step": s["step"], "seconds": s["seconds"],
                         "peak": s.get("peak_gib", math.nan), "reserved": s.get("reserved_gib", math.nan),
                         "estimate": res["estimate_gib"], "ratio": s.get("ratio", math.nan),
                         "cli": res["cli_estimate_gib"], "loss": s["loss"]})
    md = ["## Training: one optimizer step against `dreamshot.train estimate`\n",
          "Random DiT through the trainer (`Trainer.train_step`: LoRA rank 32 on the ten targets of every block, "
          "RACL on, reference-to-shot), one synthetic story of 3 references + 6 shots. Peak: "
          "torch.cuda.max_memory_allocated during the step (reserved: max_memory_reserved). Estimate: "
          "`estimate()` for the same config and the same story's image, text and reference tokens; the "
          "`estimate` command's default sample (every character described: more text) in the last column. "
          "Step 2 is the steady state (the optimizer state exists); the goal compares it.\n",
          markdown_table(rows, [
              ("part", "part", "s"), ("settings", "settings", "s"), ("resident", "resident weights GiB", ".2f"),
              ("step", "step", "d"), ("seconds", "s", ".2f"), ("peak", "peak GiB", ".2f"),
              ("reserved", "reserved GiB", ".2f"), ("estimate", "estimate GiB", ".2f"),
              ("ratio", "peak / estimate", ".3f"), ("cli", "command's estimate GiB", ".2f"),
              ("loss", "loss", ".4f")]), ""]
    for name, r in train:
        res = r["result"]
        md += [f"`{name}`: {res['tokens']} image tokens, {res['text_tokens']} text tokens, compute {res['compute']}, "
               f"{res['swapped_blocks']} swapped blocks, setup {res['setup_s']:.0f} s. The command: "
               f"`{res['cli_command']}`\n", "```", res["estimate_text"], "```", ""]
    return md


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def _ops_section(rows: list[dict], env: dict) -> list[str]:
    from .report import markdown_table

    return ["## Attention ops on one block against the plain call they replace\n",
            "3 references + 6 shots (one latent frame each), batch 2, bf16; extra memory: the peak above what "
            "existed before the call (torch.cuda.max_memory_allocated); the SDPA kernel each ran.\n",
            markdown_table(rows, [
                ("model", "model", "s"), ("frame", "frame", "s"), ("tokens", "tokens", "d"), ("op", "op", "s"),
                ("plain", "plain call", "s"), ("extra_mib", "extra MiB", ".1f"), ("plain_mib", "plain MiB", ".1f"),
                ("mem_ratio", "mem ratio", ".3f"), ("time_ratio", "time ratio", ".2f"),
                ("kernels", "SDPA kernels", "s"), ("plain_kernels", "plain's kernels", "s")]), ""]


def _goals(results: dict) -> list[str]:
    """The goals of issue 24, each with the figure that decides it (or why there is none)."""
    lines = ["## Goals\n"]
    for name in ("sampler-bf16", "sampler-fp8"):
        rows = {x["case"]: x for x in results.get(name, {}).get("rows", [])}
        for case, goal in (("dreamshot", SAMPLER_TIME_GOAL), ("racl", RACL_TIME_GOAL)):
            x = rows.get(case)
            if x is None or x.get("error") or "time_ratio" not in x:
                lines.append(f"- {name} {case}: not measured")
                continue
            mem = x["total_ratio"]
            mem = "memory not measured" if math.isnan(mem) else \
                f"memory {mem:.3f} x (goal <= {SAMPLER_MEM_GOAL}: {'met' if mem <= SAMPLER_MEM_GOAL else 'MISSED'})"
            lines.append(f"- {name}: {x['variant']}: time {x['time_ratio']:.3f} x stock (goal <= {goal}: "
                         f"{'met' if x['time_ratio'] <= goal else 'MISSED'}), {mem}")
    capped = results.get("sampler-fp8-24gb")
    if capped and capped.get("rows"):
        fits = capped["status"] == "ok" and all(not x["error"] for x in capped["rows"])
        lines.append(f"- 14B fp8 720p 6-shot storyboard under the 24 GB cap: {'fits' if fits else 'DOES NOT FIT'}")
    else:
        lines.append("- 14B fp8 under the 24 GB cap: not measured")
    for name in ("train-24gb", "train-80gb"):
        res = results.get(name, {}).get("result")
        last = res["steps"][-1] if res and res.get("steps") else None
        if last is None or "ratio" not in last:
            lines.append(f"- {name} training estimate: not measured")
            continue
        off = last["ratio"] - 1
        lines.append(f"- {name}: measured {last['peak_gib']:.2f} GiB against the estimate {res['estimate_gib']:.2f} "
                     f"GiB: {off:+.1%} (goal within {ESTIMATE_GOAL:.0%}: "
                     f"{'met' if abs(off) <= ESTIMATE_GOAL else 'MISSED'})")
    return lines + [""]
