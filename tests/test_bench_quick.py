"""python -m dreamshot.bench --quick: the benchmark's CPU path runs end to end inside the real ComfyUI
(tiny sizes; the figures are not checked, only that every case ran and reported)."""

import re

import pytest

pytestmark = pytest.mark.comfyui

OPS = ["per-shot cross-attention, folded text, uncaptioned refs", "per-shot cross-attention, folded text, captioned refs",
       "role-masked self-attention (regions given)", "auto regions (3-character casts)",
       "RACL patch: auto regions + role-masked", "reference-CFG pass (shots blind to refs)",
       "RACL loss (training), forward + backward"]
VARIANTS = ["stock KSampler", "DreamShot Sampler", "DreamShot Sampler + reference CFG 2",
            "DreamShot Sampler + RACL Attention Patch"]


def test_bench_quick_runs_every_case_and_writes_the_tables(comfy_headless, tmp_path):
    from dreamshot.bench.__main__ import main

    main(["--quick", "--out", str(tmp_path)])
    md = (tmp_path / "bench.md").read_text()
    rows = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    op_rows = [r for r in rows if r[0] in ("14B", "1.3B")]
    assert sorted((r[0], r[3]) for r in op_rows) == sorted((m, op) for m in ("14B", "1.3B") for op in OPS)
    for r in op_rows:
        assert float(r[5]) >= 0 and float(r[6]) > 0 and float(r[7]) >= 0   # extra, plain, ratio
        assert re.fullmatch(r"flash \(cpu\)|-", r[10])                       # which SDPA kernel ran
    assert all(r[11] == "flash (cpu)" for r in op_rows)                    # the plain calls ran SDPA
    sampler = {r[0]: r for r in rows if r[0] in VARIANTS}
    assert sorted(sampler) == sorted(VARIANTS)
    for r in sampler.values():
        assert r[1] == "8" and float(r[2]) > 0 and float(r[6]) > 0          # 2 refs + 6 shots; s/step; MiB
    assert sampler["stock KSampler"][3] == "1.000"
