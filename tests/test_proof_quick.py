"""`python -m dreamshot.proof --quick`: the whole grid (assets, the video prior, the cells in two
processes at a time, ComfyUI sampling, scoring, the seed summary) for a couple of steps, as a user
runs it; then run again: nothing finished is recomputed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (?P<cond>[^|]+) \| (?P<init>[^|]+) \| (?P<loss>[^|]+) \| (?P<n>\d+) \| (?P<acc>[\d.]+)% "
                 r"\((?P<lo>[\d.]+)%–(?P<hi>[\d.]+)%\) \|")


def _run(out: Path, comfy_root) -> subprocess.CompletedProcess:
    env = dict(os.environ, COMFYUI_PATH=str(comfy_root))
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "dreamshot.proof", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_quick_grid_writes_a_well_formed_table_and_resumes(comfy_root, tmp_path):
    out = tmp_path / "proof"
    run = _run(out, comfy_root)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert results["quick"] is True and "QUICK smoke run" in md and results["table"] in run.stdout
    seeds = results["settings"]["seeds"]
    rows = [m for m in map(ROW.match, md.splitlines()) if m]
    assert len(rows) == 3 * 2 * 2   # {R2S, R2S + patch, T2S} x {scratch, prior} x {RACL, lambda 0}
    assert {(m["init"], m["loss"]) for m in rows} == {(i, lo) for i in ("scratch (random DiT)", "video prior")
                                                      for lo in ("RACL lambda 0.5", "lambda 0")}
    for m in rows:
        cond = {"R2S (no inference patch)": "r2s", "R2S + role attention patch (script boxes)": "r2s_roles",
                "T2S (each shot alone, no references)": "t2s"}[m["cond"]]
        init = "prior" if m["init"] == "video prior" else "scratch"
        loss = "racl" if m["loss"].startswith("RACL") else "noracl"
        cells = [c for c in results["cells"] if c["init"] == init and c["loss"] == loss]
        assert sorted(c["seed"] for c in cells) == sorted(seeds)
        accs = [100 * c["counts"][cond]["correct"] / sum(c["counts"][cond].values()) for c in cells]
        assert float(m["acc"]) == pytest.approx(sum(accs) / len(accs), abs=0.05)
        assert float(m["lo"]) == pytest.approx(min(accs), abs=0.05) and float(m["hi"]) == pytest.approx(max(accs), abs=0.05)
        assert int(m["n"]) == sum(cells[0]["counts"][cond].values()) > 0
    assert "| real shots through the VAE (ceiling) |" in md and len(results["goals"]) == 2
    names = md.split("Do the names steer R2S?")[1]
    assert sum(line.startswith(("| scratch", "| video prior")) for line in names.splitlines()) == 4
    for c in results["cells"]:   # the name check ran: R2S again with the names rotated
        assert c["name_check"]["stories"] == 1 and c["name_check"]["placements"] > 0
        assert 0.0 <= c["name_check"]["pixel_change"] <= 1.0
    prior = results["prior"]
    assert prior["persistence"]["real"]["kept"] == 1.0 and Path(prior["run"]["lora"]).is_file()
    assert (out / "prior" / "prior.safetensors").is_file() and (out / "samples.png").is_file()
    for c in results["cells"]:   # each cell fine-tuned the DiT its init names, with its lambda
        cfg = (out / "cells" / c["cell"] / "train.toml").read_text()
        assert ("prior.safetensors" in cfg) == (c["init"] == "prior")
        assert ('lambda_racl = 0.0' in cfg or "lambda = 0.0" in cfg) == (c["loss"] == "noracl")
        assert not (out / "cells" / c["cell"] / "run" / "checkpoints").exists()   # removed once trained
    assert set(results["costs"]) == {c["cell"] for c in results["cells"]} | {"prior", "assets"}

    # again: every job is done, so nothing runs and the table is the same
    logs = {p: p.stat().st_size for p in (out / "logs").iterdir()}
    again = _run(out, comfy_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_size for p in (out / "logs").iterdir()} == logs
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    # a lost cell result: only that cell runs again
    (out / "cells" / results["cells"][0]["cell"] / "result.json").unlink()
    third = _run(out, comfy_root)
    assert third.returncode == 0, third.stderr[-3000:]
    grown = [p.name for p in (out / "logs").iterdir() if p.stat().st_size != logs.get(p)]
    assert grown == [f"cell_{results['cells'][0]['cell']}.log"]
    # other settings in the same folder are refused
    env = dict(os.environ, COMFYUI_PATH=str(comfy_root))
    env.pop("PYTHONPATH", None)
    other = subprocess.run([sys.executable, "-m", "dreamshot.proof", "--quick", "--set", "train_steps=3", "--out",
                            str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "other settings" in other.stderr
