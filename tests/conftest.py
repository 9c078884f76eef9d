"""Shared fixtures: the pinned ComfyUI (found, or loudly skipped) and tiny Wan-format models.

There is deliberately no tests/__init__.py: test modules import the helpers as ``support.*`` (this
file puts tests/ on sys.path) and the repo root's __init__.py (the ComfyUI entry point) is never
imported as a package by pytest.

Tests that need ComfyUI carry ``@pytest.mark.comfyui`` (tests using the ComfyUI fixtures below get
it automatically). Without a ComfyUI checkout they are skipped and the run ends with a loud banner.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest

# The tests run on the CPU on every machine: ComfyUI in this process is started with --cpu, and what a
# test starts itself (the tools as subprocesses, an in-process Trainer) would otherwise pick a GPU
# when there is one, and compare GPU results (TF32, other kernels) with CPU references at CPU
# tolerances. Hiding the devices before torch looks for them (subprocesses inherit the environment)
# makes a GPU machine run what CI runs. DREAMSHOT_TEST_DEVICE=cuda leaves them visible (not for CI).
if os.environ.get("DREAMSHOT_TEST_DEVICE", "").lower() != "cuda":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # not setdefault: a GPU runner often sets it to "0"
    os.environ["HIP_VISIBLE_DEVICES"] = ""    # ROCm builds of torch
    _torch = sys.modules.get("torch")
    if _torch is not None and _torch.cuda.is_initialized():
        warnings.warn("torch initialised CUDA before tests/conftest.py hid the GPUs: tests may run on a GPU")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # `support` helpers
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # `dreamshot` for unit tests (after ComfyUI's root, see comfy_host)

from support.comfy_host import (  # noqa: E402
    bootstrap_headless,
    comfy_commit,
    comfy_version,
    find_comfyui,
    load_pack_in_process,
)
from support.memo_clip import MemoClip  # noqa: E402

log = logging.getLogger("DreamShot.tests")

COMFY = find_comfyui()
_SKIPPED: list[str] = []
_NOTES: list[str] = []

# Bump to force new tiny model files; the cache key also hashes the code that writes them and the
# versions of what computes them (_CACHE_PACKAGES, ComfyUI's version and commit).
TINY_MODELS_VERSION = "2"
TINY_MODEL_FILES = ("dit.safetensors", "vae.safetensors", "umt5.safetensors")
# Wan2.2: the tiny TI2V-5B DiT, the full-size random Wan2.2 VAE (1.4 GB: made only when a test asks) and
# the second tiny A14B-layout expert (the low-noise one; dit.safetensors is the high-noise one).
WAN22_FILES = ("dit_wan22_5b.safetensors", "vae_wan22.safetensors", "dit_low_noise.safetensors")
_CACHE_SOURCES = (TESTS / "support" / "tiny_models.py",
                  TESTS / "support" / "test_nodes_pack" / "tiny_umt5_config.json",
                  REPO / "dreamshot" / "comfy_bridge" / "random_wan.py")
# torch: the random fills and ComfyUI's module layouts run on it; sentencepiece trains the tiny tokenizer;
# safetensors writes the files.
_CACHE_PACKAGES = ("torch", "sentencepiece", "safetensors")
# Fixtures that need ComfyUI: a test using one of them is a `comfyui` test.
COMFY_FIXTURES = {"comfy_root", "comfy_headless", "pack_nodes", "N", "pack_module", "tiny_models_dir", "tiny_wan_model", "tiny_vae",
                  "tiny_clip", "story_models", "wan22_models_dir", "tiny_wan22_model", "tiny_wan22_vae",
                  "tiny_low_noise_model"}


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs the pinned ComfyUI checkout (COMFYUI_PATH, the enclosing "
                                       "ComfyUI, or ~/ComfyUI)")
    config.addinivalue_line("markers", "slow: runs the real Wan VAE or the real ComfyUI server")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "comfyui" not in item.keywords and COMFY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.comfyui)
    if COMFY is not None:
        return
    skip = pytest.mark.skip(reason="ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout "
                                   "(or install this pack in ComfyUI/custom_nodes)")
    for item in items:
        if "comfyui" in item.keywords:
            item.add_marker(skip)
            _SKIPPED.append(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if COMFY is None:
        tr.write_line("")
        tr.write_line("!" * 100, red=True, bold=True)
        tr.write_line(f"!!! ComfyUI NOT FOUND: {len(_SKIPPED)} ComfyUI tests SKIPPED — set COMFYUI_PATH to a "
                      "ComfyUI checkout (see COMFYUI.md), or install this pack in ComfyUI/custom_nodes !!!",
                      red=True, bold=True)
        tr.write_line("!" * 100, red=True, bold=True)
        return
    tr.write_line(f"ComfyUI used: {COMFY} (version {comfy_version(COMFY)}, commit {comfy_commit(COMFY)})")
    for note in _NOTES:
        tr.write_line(note)


# ---- ComfyUI ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """The ComfyUI checkout the tests run against (skips the test when there is none)."""
    if COMFY is None:
        pytest.skip("ComfyUI not found (set COMFYUI_PATH)")
    return COMFY


@pytest.fixture(scope="session")
def comfy_headless(comfy_root) -> Path:
    """ComfyUI imported in this process, CPU only (see support.comfy_host.bootstrap_headless)."""
    return bootstrap_headless(comfy_root)


@pytest.fixture(scope="session")
def pack_nodes(comfy_headless) -> dict:
    """{node_id: class} of this pack, loaded by ComfyUI's own custom-node loader."""
    return load_pack_in_process(comfy_headless)


# ---- tiny models, cached across runs ------------------------------------------------------------
def _cache_environment() -> str:
    """What besides this repo's code decides the tiny models' bytes: package versions and ComfyUI's
    (its WanModel, VAE and T5 classes build the modules the random fills walk)."""
    import importlib.metadata

    versions = []
    for name in _CACHE_PACKAGES:
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=-")
    if COMFY is not None:
        versions.append(f"comfyui={comfy_version(COMFY)}@{comfy_commit(COMFY)}")
    return ";".join(versions)


def tiny_models_cache_dir() -> Path:
    """~/.cache/dreamshot-tests/v<TINY_MODELS_VERSION>-<hash of the writing code and of the package and
    ComfyUI versions> ($DREAMSHOT_TEST_CACHE replaces ~/.cache/dreamshot-tests). Older siblings unused
    for a week are pruned."""
    root = Path(os.environ.get("DREAMSHOT_TEST_CACHE") or Path.home() / ".cache" / "dreamshot-tests")
    digest = hashlib.sha1(TINY_MODELS_VERSION.encode())
    for src in _CACHE_SOURCES:
        digest.update(src.read_bytes() if src.exists() else b"-")
    digest.update(_cache_environment().encode())
    d = root / f"v{TINY_MODELS_VERSION}-{digest.hexdigest()[:12]}"
    d.mkdir(parents=True, exist_ok=True)
    os.utime(d)
    for old in root.iterdir():
        if old != d and old.is_dir() and time.time() - old.stat().st_mtime > 7 * 86400:
            shutil.rmtree(old, ignore_errors=True)
    return d


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock file, so parallel pytest runs generate each model once."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic writes are enough, a parallel run may just redo the work
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_tiny_models(cache: Path | None = None, names=TINY_MODEL_FILES) -> Path:
    """Generate whatever of ``names`` (dit/vae/umt5.safetensors by default, WAN22_FILES) the cache lacks
    (atomic writes); return the dir."""
    from support import tiny_models

    cache = cache or tiny_models_cache_dir()
    makers = {"dit.safetensors": tiny_models.write_tiny_wan_dit, "vae.safetensors": tiny_models.write_random_wan_vae,
              "umt5.safetensors": tiny_models.write_tiny_umt5,
              "dit_wan22_5b.safetensors": tiny_models.write_tiny_wan22_dit,
              "vae_wan22.safetensors": tiny_models.write_random_wan22_vae,
              "dit_low_noise.safetensors": lambda path: tiny_models.write_tiny_wan_dit(path, seed=1)}
    with _lock(cache / ".lock"):
        for name in names:
            if (cache / name).exists():
                continue
            t0 = time.perf_counter()
            makers[name](cache / name)
            note = f"tiny models: generated {name} in {time.perf_counter() - t0:.1f} s ({cache})"
            log.info(note)
            _NOTES.append(note)
    return cache


@pytest.fixture(scope="session")
def tiny_models_dir(comfy_headless, tmp_path_factory) -> Path:
    """A session temp dir with dit.safetensors (tiny Wan2.1 T2V DiT), vae.safetensors (full-size random
    Wan2.1 VAE, bf16) and umt5.safetensors (tiny UMT5 + sentencepiece): symlinks into the cross-run cache
    (made once, see tiny_models_cache_dir), so a test cannot damage the cached files."""
    cache = ensure_tiny_models()
    d = tmp_path_factory.mktemp("tiny_models")
    for name in TINY_MODEL_FILES:
        try:
            (d / name).symlink_to(cache / name)
        except OSError:
            return cache  # no symlinks here (Windows): use the cache itself
    return d


@pytest.fixture(scope="session")
def tiny_wan_model(tiny_models_dir):
    """ComfyUI MODEL (ModelPatcher, WAN21 T2V: dim 256, 2 heads, 2 layers) via comfy.sd.load_diffusion_model."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(tiny_models_dir / "dit.safetensors"))


@pytest.fixture(scope="session")
def tiny_vae(tiny_models_dir):
    """comfy.sd.VAE of the full-size random Wan2.1 VAE (z_dim 16, 4x time / 8x space compression)."""
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(tiny_models_dir / "vae.safetensors"), safe_load=True))


@pytest.fixture(scope="session")
def wan22_models_dir(tiny_models_dir) -> Path:
    """tiny_models_dir with the Wan2.2 files too (WAN22_FILES: generated into the cross-run cache on
    first use, the Wan2.2 VAE taking ~1 min and 1.4 GB)."""
    cache = ensure_tiny_models(names=WAN22_FILES)
    if tiny_models_dir == cache:
        return cache
    for name in WAN22_FILES:
        if not (tiny_models_dir / name).exists():
            (tiny_models_dir / name).symlink_to(cache / name)
    return tiny_models_dir


@pytest.fixture(scope="session")
def tiny_wan22_model(wan22_models_dir):
    """ComfyUI MODEL of the tiny Wan2.2-TI2V-5B-layout DiT (WAN22: 48 channels, latent format Wan22)."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(wan22_models_dir / "dit_wan22_5b.safetensors"))


@pytest.fixture(scope="session")
def tiny_wan22_vae(wan22_models_dir):
    """comfy.sd.VAE of the full-size random Wan2.2 VAE (z_dim 48, 4x time / 16x space compression)."""
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(wan22_models_dir / "vae_wan22.safetensors"),
                                                       safe_load=True))


@pytest.fixture(scope="session")
def tiny_low_noise_model(wan22_models_dir):
    """The second tiny A14B-layout expert (WAN21, another seed than tiny_wan_model, the high-noise one)."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(wan22_models_dir / "dit_low_noise.safetensors"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_models_dir):
    """comfy CLIP (CLIPType.WAN) of the tiny UMT5: encodes prompts to [1, 512, 4096] conditioning."""
    from support.tiny_models import load_tiny_umt5_clip

    return load_tiny_umt5_clip(tiny_models_dir / "umt5.safetensors")


@pytest.fixture(scope="session")
def N(pack_nodes):
    """N.<node_id>(**inputs) runs a node's execute under inference mode, as the server does, and
    returns its outputs."""
    import torch

    class Runner:
        def __getattr__(self, node_id):
            if node_id not in pack_nodes:   # an AttributeError, so hasattr() probes (hypothesis) work
                raise AttributeError(f"no node {node_id!r} in this pack")
            cls = pack_nodes[node_id]

            def run(**kwargs):
                with torch.inference_mode():
                    return cls.execute(**kwargs).args
            return run
    return Runner()


@pytest.fixture(scope="session")
def pack_module(pack_nodes):
    """pack_module("comfy_bridge.sampling"): the pack's own dreamshot module, as ComfyUI imported it."""
    import importlib

    root = pack_nodes["DreamShotSampler"].__module__.rsplit(".nodes.", 1)[0]
    return lambda name: importlib.import_module(f"{root}.dreamshot.{name}")


@pytest.fixture(scope="session")
def story_models(N, pack_module, tiny_wan_model, tiny_clip):
    """(MODEL, VAE, CLIP) for whole-story tests (support.story_fuzz): the tiny DiT through Load DreamShot
    Model, the proof's block VAE (exact set weights in ComfyUI's Wan VAE module, run frame by frame: ~100x
    faster than the random full Wan VAE, equal to ComfyUI's VAE on those weights, tests/test_proof_models.py)
    and the tiny UMT5 tokenizing without padding to 512 tokens (a clone: tiny_clip is unchanged), memoised."""
    block_vae = pack_module("proof.block_vae")
    clip = tiny_clip.clone()
    clip.set_tokenizer_option("umt5xxl_min_length", 1)
    (model,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="None", strength=1.0)
    return model, block_vae.BlockVAE(block_vae.build_block_vae()), MemoClip(clip)
