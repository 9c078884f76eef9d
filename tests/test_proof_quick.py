"""`python -m dreamshot.proof --quick`: the whole pipeline (dataset, tiny models, cache, two
training runs, ComfyUI sampling, scoring) for a couple of steps, as a user runs it."""

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
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<n>\d+) \| (?P<acc>[\d.]+)% \| (?P<conf>[\d.]+)% \| (?P<other>[\d.]+)% \| "
                 r"(?P<none>[\d.]+)% \|$")


def test_quick_run_writes_a_well_formed_table(comfy_root, tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(comfy_root))
    env.pop("PYTHONPATH", None)
    out = tmp_path / "proof"
    run = subprocess.run([sys.executable, "-m", "dreamshot.proof", "--quick", "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert results["quick"] is True and "QUICK smoke run" in md
    rows = {m["name"]: m for m in map(ROW.match, md.splitlines()) if m}
    assert set(rows) == set(results["counts"]) and len(rows) == 6
    for name, m in rows.items():
        counts = results["counts"][name]
        total = sum(counts.values())
        assert int(m["n"]) == total > 0
        assert sum(float(m[k]) for k in ("acc", "conf", "other", "none")) == pytest.approx(100, abs=0.3)
        assert float(m["acc"]) == pytest.approx(100 * counts["correct"] / total, abs=0.05)
    assert float(rows["real shots through the VAE (ceiling)"]["acc"]) == 100.0
    assert results["table"] in run.stdout          # printed too
    assert (out / "samples.png").is_file() and (out / "dataset" / "manifest.jsonl").is_file()
    assert set(results["runs"]) == {"racl", "noracl"}
    assert results["runs"]["noracl"]["racl_lambda"] == 0.0 and results["runs"]["racl"]["racl_lambda"] > 0
    for r in results["runs"].values():
        assert Path(r["lora"]).is_file()
