"""The GPU check's CPU path: ``python -m dreamshot.bench --quick`` runs the parts of ``--gpu`` (the same
processes, functions and ComfyUI code, tiny sizes) inside the real ComfyUI; the figures are not checked,
only that every part and case ran and reported, and that what each part set up is what it claims
(fp8 weights built in host memory, block swap, the 8-bit optimizer). Also: ``--gpu`` refuses a machine
without CUDA before loading anything, a part past its time box is stopped and recorded, the random
14B-shaped DiT is built exactly as ComfyUI loads a file, and the 24 GB cap's arithmetic."""

import json
import re

import pytest
import torch

OPS = ["per-shot cross-attention, folded text, uncaptioned refs", "per-shot cross-attention, folded text, captioned refs",
       "role-masked self-attention (regions given)", "auto regions (3-character casts)",
       "RACL patch: auto regions + role-masked", "reference-CFG pass (shots blind to refs)",
       "RACL loss (training), forward + backward"]
EVERY_CASE = ["stock", "dreamshot", "ref_cfg", "racl", "shot_lora"]
# sampler-fp8 is left out to keep this test short: it is sampler-bf16's code with sampler-fp8-24gb's weights.
PARTS = ["sampler-bf16", "sampler-fp8-24gb", "train-24gb", "train-80gb", "ops"]


@pytest.mark.comfyui
def test_quick_check_runs_every_part_in_its_own_process(comfy_root, tmp_path):
    from dreamshot.bench.__main__ import main

    assert main(["--quick", "--out", str(tmp_path), "--parts", ",".join(PARTS)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    parts = report["parts"]
    assert report["meta"]["parts"] == PARTS and sorted(parts) == sorted(PARTS)
    for name, r in parts.items():
        assert r["status"] == "ok", (name, r.get("error"), r.get("traceback"))
        assert r["env"]["device"] == "CPU" and r["env"]["attention"] == "attention_pytorch"
        assert (tmp_path / "parts" / f"{name}.log").stat().st_size > 0

    bf16 = parts["sampler-bf16"]
    assert bf16["config"]["weight_dtype"] == "bfloat16" and bf16["config"]["dit"] == "tiny"
    assert [r["case"] for r in bf16["rows"]] == EVERY_CASE
    for r in bf16["rows"]:
        assert r["error"] == "" and r["step_s"] > 0 and r["latent_frames"] == 9   # 3 references + 6 shots
        assert r["loaded_mib"] == pytest.approx(r["model_mib"])                   # nothing left off the device
    assert bf16["rows"][0]["time_ratio"] == 1.0

    capped = parts["sampler-fp8-24gb"]
    assert capped["config"]["weight_dtype"] == "float8_e4m3fn" and capped["config"]["built_on"] == "cpu"
    assert [r["case"] for r in capped["rows"]] == ["stock", "full"] and not any(r["error"] for r in capped["rows"])
    assert "not applied" in capped["cap"]                                        # no CUDA: no cap

    small, big = parts["train-24gb"]["result"], parts["train-80gb"]["result"]
    assert small["settings"] == {"model.weight_dtype": "fp8_e4m3fn", "train.offload_activations": True,
                                 "train.blocks_to_swap": 1, "optimizer.name": "adamw8bit"}
    assert parts["train-24gb"]["notes"] == []                                     # bitsandbytes' AdamW8bit ran
    assert (small["swapped_blocks"], big["swapped_blocks"]) == (1, 0)
    # on the device: fp8 saves a byte per linear weight of the resident block, the swapped block leaves all its bytes
    from dreamshot.train.estimate import WanDims

    d = WanDims(256, 512, 2)
    saved = d.block_linear_weights() + 2 * (d.block_linear_weights() + d.block_other())
    assert (big["resident_gib"] - small["resident_gib"]) * 2 ** 30 == saved
    for res in (small, big):
        assert [s["step"] for s in res["steps"]] == [1, 2] and all(s["finite"] for s in res["steps"])
        assert res["tokens"] == 9 * 16 and res["estimate_gib"] > 0 and "expected peak" in res["estimate_text"]
        assert "peak_gib" not in res["steps"][0]                                  # a CPU has no device peak

    from dreamshot.bench.ops_bench import MODEL_SIZES

    ops = parts["ops"]["rows"]
    assert {"14B", "1.3B", "5B"} <= set(MODEL_SIZES)        # Wan2.1 14B / 1.3B and Wan2.2's 5B are measured
    assert sorted((r["model"], r["op"]) for r in ops) == sorted((m, op) for m in MODEL_SIZES for op in OPS)
    for r in ops:
        assert r["extra_mib"] >= 0 and r["plain_mib"] > 0 and r["mem_ratio"] >= 0
        assert re.fullmatch(r"flash \(cpu\)|-", r["kernels"]) and r["plain_kernels"] == "flash (cpu)"

    md = (tmp_path / "bench.md").read_text()
    assert "tiny sizes on the CPU" in md and "**Fits under the cap: yes**" in md
    assert md.count("| ok |") == len(PARTS) and "## Goals" in md


def test_gpu_check_refuses_a_machine_without_cuda(tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from dreamshot.bench.__main__ import main

    assert main(["--gpu", "--out", str(tmp_path / "out")]) == 2
    assert "no CUDA device here" in caplog.text and "--quick" in caplog.text
    assert not (tmp_path / "out").exists()                                        # nothing started


def test_parts_past_the_budget_are_skipped_and_reported(tmp_path):
    from dreamshot.bench.check import run_check

    assert run_check(tmp_path, tiny=False, parts=["sampler-bf16", "ops"], budget_s=0) == 1
    parts = json.loads((tmp_path / "bench.json").read_text())["parts"]
    assert {r["status"] for r in parts.values()} == {"skipped"}
    assert "estimated at 100 s" in parts["sampler-bf16"]["error"]
    assert "| sampler-bf16 |" in (tmp_path / "bench.md").read_text()


@pytest.mark.comfyui
def test_a_part_past_its_time_box_is_stopped_and_recorded(comfy_root, tmp_path, monkeypatch):
    import dreamshot.bench.check as check

    monkeypatch.setattr(check, "TINY_BOX_S", 1)
    assert check.run_check(tmp_path, tiny=True, parts=["ops"]) == 1
    r = json.loads((tmp_path / "bench.json").read_text())["parts"]["ops"]
    assert r["status"] == "timed out" and "timed out after 1 s" in r["error"] and r["wall_s"] < 30
    assert "| ops |" in (tmp_path / "bench.md").read_text()


def test_cap_holds_back_what_the_card_has_beyond_it():
    from dreamshot.bench.vram_cap import CAP_24GB, ballast_bytes

    h100 = 81_559 * 2 ** 20
    assert ballast_bytes(h100, CAP_24GB) == (81_559 - 24_564) * 2 ** 20
    assert ballast_bytes(CAP_24GB - 1, CAP_24GB) == 0


@pytest.mark.parametrize("weight_dtype", [None, torch.bfloat16, torch.float8_e4m3fn])
def test_random_model_is_built_as_comfyui_loads_a_file(comfy_headless, weight_dtype):
    """random_wan_model against comfy.sd.load_diffusion_model_state_dict on a bf16 file's state dict of
    the same sizes: the same model class and config, dtypes per tensor, operations and devices."""
    import comfy.sd

    from dreamshot.comfy_bridge.random_wan import random_wan_dit, random_wan_model

    built = random_wan_model("tiny", weight_dtype)
    sd = random_wan_dit(256, 512, 2, dtype=torch.bfloat16).state_dict()
    loaded = comfy.sd.load_diffusion_model_state_dict(sd, {"dtype": weight_dtype} if weight_dtype else {})
    for m in (built, loaded):
        assert type(m.model).__name__ == "WAN21" and type(m.model.model_config).__name__ == "WAN21_T2V"
    assert built.model.get_dtype() == loaded.model.get_dtype()
    assert built.model.manual_cast_dtype == loaded.model.manual_cast_dtype
    assert (built.load_device, built.offload_device) == (loaded.load_device, loaded.offload_device)
    a, b = built.model.diffusion_model, loaded.model.diffusion_model
    assert {n: (p.dtype, p.shape, p.device) for n, p in a.named_parameters()} == \
        {n: (p.dtype, p.shape, p.device) for n, p in b.named_parameters()}
    assert {n: type(m) for n, m in a.named_modules()} == {n: type(m) for n, m in b.named_modules()}
    assert built.model_size() == loaded.model_size()
    w = a.blocks[0].ffn[0].weight.float()
    assert torch.isfinite(w).all() and 0.5 < w.std().item() * 256 ** 0.5 < 2   # N(0, 1 / fan_in)
