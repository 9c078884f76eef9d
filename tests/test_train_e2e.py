"""End to end on ComfyUI's own Wan code (tiny random DiT, random full-size VAE, tiny UMT5):
cache -> train -> the LoRA loads through ComfyUI's LoRA loading; resume; the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_support import cached_dataset, write_config

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]
LORA_KEY = re.compile(r"^diffusion_model\.blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.(lora_up\.weight|lora_down\.weight"
                      r"|alpha)$|^diffusion_model\.blocks\.\d+\.ffn\.[02]\.(lora_up\.weight|lora_down\.weight|alpha)$")


@pytest.fixture(scope="module")
def data(tiny_models_dir):
    return cached_dataset(tiny_models_dir)


def _config(data, tmp_path: Path, **sections):
    from dreamshot.train.config import load_config

    return load_config(write_config(tmp_path / "train.toml", data["models"], data["dataset"], data["cache"],
                                    tmp_path / "out", **sections))


def test_cache_files_and_resumable(data, tmp_path, monkeypatch):
    import safetensors

    from dreamshot.train import cache as cache_mod

    index = json.loads((data["cache"] / "index.json").read_text())
    assert [e["id"] for e in index["sequences"]] == ["alley", "tea"]
    with safetensors.safe_open(str(data["cache"] / "sequences" / "alley.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["dreamshot.sequence"])
        assert tuple(f.get_tensor("latent.shots").shape) == (16, 3, 8, 8)    # one latent frame per shot
        assert tuple(f.get_tensor("latent.refs").shape) == (16, 2, 8, 8)     # each reference alone
        assert tuple(f.get_tensor("mask.shot.1.1").shape) == (4, 4)          # Theo in shot 2, token grid
        assert f.get_tensor("text.shot.0").shape[1] == 4096
    assert {"text.shot.0", "text.shot.2", "text.char.0", "mask.ref.0", "mask.ref.1", "mask.shot.0.0"} <= keys
    assert "text.char.1" not in keys            # Theo has no description
    assert meta["shots"][1]["characters"] == [0, 1] and meta["ref_characters"] == [0, 1]

    # a second run re-encodes only what changed
    dataset, cache = tmp_path / "dataset", tmp_path / "cache"
    shutil.copytree(data["dataset"], dataset)
    shutil.copytree(data["cache"], cache)
    lines = (dataset / "manifest.jsonl").read_text().splitlines()
    tea = json.loads(lines[1])
    tea["shots"][1]["caption"] = "the woman drinks her tea"
    (dataset / "manifest.jsonl").write_text(lines[0] + "\n" + json.dumps(tea) + "\n")
    encoded = []
    real = cache_mod.encode_sequence
    monkeypatch.setattr(cache_mod, "encode_sequence", lambda seq, *a: encoded.append(seq.id) or real(seq, *a))
    from dreamshot.train.config import load_config

    cfg = load_config(write_config(tmp_path / "c.toml", data["models"], dataset, cache, tmp_path / "o"))
    cache_mod.run_cache(cfg)
    assert encoded == ["tea"]
    cache_mod.run_cache(cfg)
    assert encoded == ["tea"]


def _plain_forward(patcher, x, sigma, context, transformer_options=None):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context,
                                         transformer_options=transformer_options or {}).float()


def test_train_loss_falls_and_lora_loads_in_comfyui(data, tmp_path, tiny_wan_model):
    import safetensors

    from dreamshot.comfy_bridge.lora import apply_lora
    from dreamshot.train.trainer import Trainer

    # LoRA on block 0, block 1 fully fine-tuned (saved as ComfyUI .diff patches)
    cfg = _config(data, tmp_path, train={"steps": 30}, optimizer={"lr": 3e-3}, checkpoint={"every": 0},
                  lora={"rank": 4, "alpha": 4.0, "full_finetune_blocks": [1], "save_dtype": "fp32"})
    trainer = Trainer(cfg)
    trainer.setup()
    before = trainer.evaluate()
    result = trainer.train()
    after = trainer.evaluate()
    assert after < 0.75 * before, (before, after)
    assert len(result.losses) == 30 and all(v == v for v in result.losses.values())

    path = result.lora_path
    assert path == tmp_path / "out" / "dreamshot_lora.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    lora_keys = {k for k in keys if "blocks.0." in k}
    assert lora_keys and all(LORA_KEY.match(k) for k in lora_keys)
    assert len(lora_keys) == 10 * 3
    full = {k for k in keys if "blocks.1." in k}
    assert {"diffusion_model.blocks.1.self_attn.q.diff", "diffusion_model.blocks.1.self_attn.q.diff_b",
            "diffusion_model.blocks.1.ffn.2.diff", "diffusion_model.blocks.1.self_attn.norm_q.diff"} <= full
    assert not any("modulation" in k for k in keys)   # ComfyUI cannot patch it (see comfy_bridge.training)
    assert keys == lora_keys | full
    assert meta["dreamshot.base_model"].startswith("wan2.1_t2v_") and meta["dreamshot.steps"] == "30"
    assert meta["dreamshot.rank"] == "4"
    assert json.loads(meta["dreamshot.modes"]) == {"r2s": 0.4, "t2s": 0.3, "s2s": 0.3, "t2v": 0.0}
    assert (tmp_path / "out" / "config.toml").is_file() and (tmp_path / "out" / "training_args.json").is_file()

    # LoadDreamShotModel's path: every key lands, and the output is the trained model's output
    loaded = apply_lora(tiny_wan_model, str(path), 1.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.6])
    context = torch.randn(1, 40, 4096, generator=g)
    y_lora = _plain_forward(loaded, x, sigma, context)
    y_base = _plain_forward(tiny_wan_model, x, sigma, context)
    sm = trainer.story_model
    y_trained = _plain_forward(sm.patcher, x, sigma, context, sm.patcher.model_options["transformer_options"])
    assert (y_lora - y_base).abs().max() > 1e-2 * y_base.abs().max()
    assert torch.allclose(y_lora, y_trained, atol=1e-4, rtol=1e-4), (y_lora - y_trained).abs().max()

    # ComfyUI's own loader (LoraLoaderModelOnly path) maps every key too
    import comfy.lora
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(tiny_wan_model.model, {})
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    assert len(patches) == len(lora_keys) // 3 + len(full)


def test_resume_continues_at_the_same_step_with_the_same_loss(data, tmp_path, monkeypatch):
    from dreamshot.train import checkpoint as ckpt
    from dreamshot.train.trainer import Trainer

    sections = {"train": {"steps": 6}, "checkpoint": {"every": 2, "total_limit": 2},
                "optimizer": {"lr": 2e-3, "scheduler": "cosine", "warmup_steps": 1}}
    full = Trainer(_config(data, tmp_path / "a", **sections)).train()

    # run B is killed while writing checkpoint-4: checkpoint-2 stays the latest, nothing is corrupt
    real = ckpt.atomic_write_json

    def killed(path, obj):
        if path.name == "state.json" and path.parent.name == ".tmp-checkpoint-4":
            raise KeyboardInterrupt("SIGKILL")
        return real(path, obj)

    monkeypatch.setattr(ckpt, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(data, tmp_path / "b", **sections)).train()
    monkeypatch.setattr(ckpt, "atomic_write_json", real)
    out = tmp_path / "b" / "out"
    assert (out / "checkpoints" / "latest").read_text().strip() == "checkpoint-2"
    sections["checkpoint"] = dict(sections["checkpoint"], resume="latest")
    resumed = Trainer(_config(data, tmp_path / "b", **sections)).train()
    assert resumed.start_step == 2 and resumed.end_step == 6
    for step in range(3, 7):
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-6, abs=1e-7), step
    import safetensors.torch

    a = safetensors.torch.load_file(str(tmp_path / "a" / "out" / "dreamshot_lora.safetensors"))
    b = safetensors.torch.load_file(str(out / "dreamshot_lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["checkpoint-4", "checkpoint-6", "latest"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def _env() -> dict:
    env = dict(os.environ)
    from support.comfy_host import find_comfyui

    env["COMFYUI_PATH"] = str(find_comfyui())
    env.pop("PYTHONPATH", None)
    return env


def _first_failure(stderr: str) -> str:
    """The lines that say why a worker died, ahead of torchrun's long summary (CI keeps only a tail)."""
    lines = stderr.splitlines()
    keys = ("Error", "error:", "Fatal", "terminate", "what()", "Abort", "abort", "Traceback", "File \"", "Exception")
    first = next((i for i, line in enumerate(lines) if any(k in line for k in keys)), max(0, len(lines) - 40))
    return "\n".join(lines[max(0, first - 5):first + 60])[-6000:]


def test_cli_train_runs_from_the_repo_root(data, tmp_path):
    """`python -m dreamshot.train` from the repo root, whose nodes/ package must not shadow ComfyUI's."""
    cfg = write_config(tmp_path / "train.toml", data["models"], data["dataset"], data["cache"], tmp_path / "out",
                       train={"steps": 2}, checkpoint={"every": 1})
    run = subprocess.run([sys.executable, "-m", "dreamshot.train", "train", "--config", str(cfg), "--resume", "latest",
                          "--set", "lora.rank=2"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LoRA written to" in run.stderr
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-2" / "lora.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "dreamshot.train", "train", "--config", str(cfg),
                          "--set", "lora.rank=0"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "lora.rank = 0: must be >= 1" in bad.stderr


def test_sigkill_while_training_then_resume_latest(data, tmp_path):
    """A real kill at an arbitrary moment (often mid-save: a checkpoint is written every step)."""
    import signal
    import time

    from dreamshot.train.checkpoint import checkpoint_step, resolve_resume

    cfg = write_config(tmp_path / "train.toml", data["models"], data["dataset"], data["cache"], tmp_path / "out",
                       train={"steps": 10000}, checkpoint={"every": 1, "total_limit": 2})
    proc = subprocess.Popen([sys.executable, "-m", "dreamshot.train", "train", "--config", str(cfg)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "out" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file() and (checkpoint_step(Path(latest.read_text().strip())) or 0) >= 3:
                break
            time.sleep(0.05)
        time.sleep(0.13)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    found = resolve_resume("latest", tmp_path / "out")
    step = checkpoint_step(found)
    assert step >= 3
    run = subprocess.run([sys.executable, "-m", "dreamshot.train", "train", "--config", str(cfg), "--resume", "latest",
                          "--steps", str(step + 1)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"at step {step}" in run.stderr
    assert (tmp_path / "out" / "checkpoints" / f"checkpoint-{step + 1}" / "state.json").is_file()
    assert not list((tmp_path / "out" / "checkpoints").glob(".tmp-*"))


def test_the_trainer_computes_where_an_imported_comfyui_does(comfy_headless, monkeypatch):
    """ComfyUI imported with --cpu (a CPU server, these tests): an in-process Trainer takes the CPU too,
    even where CUDA is present, instead of cuda:LOCAL_RANK."""
    from dreamshot.comfy_bridge.headless import imported_comfy_device
    from dreamshot.train.distributed import init_distributed

    assert imported_comfy_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"the trainer took {device}"))
    assert init_distributed().device == torch.device("cpu")


def test_two_process_gloo_runs_keep_ranks_identical_and_fsdp_reads_shards(data, tmp_path):
    """DDP and FSDP, 2 processes each: ranks end identical; FSDP builds the DiT on meta and each process
    reads only its shards from the memory-mapped file, and trains to the same losses as DDP (which
    loads the whole DiT in each process)."""
    losses = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        cfg = write_config(out / "train.toml", data["models"], data["dataset"], data["cache"], out / "out",
                           train={"steps": 3, "gradient_accumulation_steps": 2}, checkpoint={"every": 0},
                           distributed={"strategy": strategy, "backend": "gloo"},  # what it tests, on any machine
                           logging={"log_every": 1, "progress": False})
        # --standalone: torchrun's rendezvous store binds a port the OS picks (no guessed port to collide)
        # faulthandler and C++ stack traces: a rank that aborts says where (CI shows only a tail)
        env = {**_env(), "PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "dreamshot.train", "train", "--config", str(cfg)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, _first_failure(run.stderr)
        assert "process 1 of 2" in run.stderr and "all 2 processes hold identical trainable weights" in run.stderr
        fsdp = strategy == "fsdp"
        assert ("FSDP sharded the DiT's 2 blocks over 2 processes" in run.stderr) == fsdp
        assert (run.stderr.count("built the DiT on the meta device and read this process's shards") == 2) == fsdp
        import safetensors.torch

        final = safetensors.torch.load_file(str(out / "out" / "dreamshot_lora.safetensors"))
        ck = safetensors.torch.load_file(str(out / "out" / "checkpoints" / "checkpoint-3" / "lora.safetensors"))
        assert final.keys() == ck.keys() and all(torch.equal(final[k], ck[k]) for k in final)
        assert any(float(v.abs().max()) > 0 for k, v in final.items() if k.endswith("lora_up.weight"))
        for r in (0, 1):
            assert (out / "out" / "checkpoints" / "checkpoint-3" / f"rng_rank{r}.safetensors").is_file()
        losses[strategy] = [json.loads(line)["loss"] for line in (out / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["fsdp"]) == 3
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-5)
