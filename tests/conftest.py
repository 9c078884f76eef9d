"""Shared fixtures: the pinned ComfyUI (found, or loudly skipped) and tiny Wan-format models."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # `support` helpers
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # `dreamshot` for unit tests (after ComfyUI's root, see comfy_host)

from support.comfy_host import bootstrap_headless, comfy_commit, find_comfyui, load_pack_in_process  # noqa: E402

COMFY = find_comfyui()
_SKIPPED: list[str] = []

# Bump when tiny_models.py changes what it writes: cached files are keyed by it.
TINY_MODELS_VERSION = "1"


def pytest_collection_modifyitems(config, items):
    if COMFY is not None:
        return
    skip = pytest.mark.skip(reason="ComfyUI not found (set COMFYUI_PATH, or install this pack in ComfyUI/custom_nodes)")
    for item in items:
        if "comfyui" in item.keywords:
            item.add_marker(skip)
            _SKIPPED.append(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    if COMFY is None:
        terminalreporter.write_line("")
        terminalreporter.write_line(f"!!! ComfyUI NOT FOUND: {len(_SKIPPED)} ComfyUI integration tests were SKIPPED. "
                                    "Set COMFYUI_PATH to a ComfyUI checkout (see shared COMFYUI.md) !!!", red=True,
                                    bold=True)
    else:
        terminalreporter.write_line(f"ComfyUI used: {COMFY} @ {comfy_commit(COMFY)}")


@pytest.fixture(scope="session")
def comfy_root():
    if COMFY is None:
        pytest.skip("ComfyUI not found")
    return COMFY


@pytest.fixture(scope="session")
def comfy_headless(comfy_root):
    return bootstrap_headless(comfy_root)


@pytest.fixture(scope="session")
def pack_nodes(comfy_headless):
    """{node_id: class} of this pack, loaded by ComfyUI's own custom-node loader."""
    return load_pack_in_process(comfy_headless)


def _cache_dir() -> Path:
    sources = [TESTS / "support" / "tiny_models.py", REPO / "dreamshot" / "comfy_bridge" / "random_wan.py"]
    key = hashlib.sha1((TINY_MODELS_VERSION + "".join(p.read_text() for p in sources)).encode())
    d = Path.home() / ".cache" / "dreamshot-tests" / key.hexdigest()[:12]
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def tiny_models_dir(comfy_headless):
    """dit.safetensors, vae.safetensors (full-size random Wan VAE), umt5.safetensors; cached across runs."""
    from support import tiny_models

    d = _cache_dir()
    makers = {"dit.safetensors": tiny_models.write_tiny_wan_dit, "vae.safetensors": tiny_models.write_random_wan_vae,
              "umt5.safetensors": tiny_models.write_tiny_umt5}
    for name, make in makers.items():
        if not (d / name).exists():
            make(d / name)
    return d


@pytest.fixture(scope="session")
def tiny_wan_model(tiny_models_dir):
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(tiny_models_dir / "dit.safetensors"))


@pytest.fixture(scope="session")
def tiny_vae(tiny_models_dir):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(tiny_models_dir / "vae.safetensors"), safe_load=True))


@pytest.fixture(scope="session")
def tiny_clip(tiny_models_dir):
    from support.tiny_models import load_tiny_umt5_clip

    return load_tiny_umt5_clip(tiny_models_dir / "umt5.safetensors")
