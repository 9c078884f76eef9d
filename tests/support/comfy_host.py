"""Finding the pinned ComfyUI and running it headless in the test process."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("DreamShot.tests")

REPO = Path(__file__).resolve().parents[2]


def _is_comfy(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def find_comfyui() -> Path | None:
    """$COMFYUI_PATH, else the ComfyUI this pack sits in (custom_nodes/<pack>), else ~/ComfyUI."""
    env = os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent.parent, Path.home() / "ComfyUI"]
    for c in candidates:
        if _is_comfy(c):
            return c.resolve()
    return None


def comfy_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


_BOOTED: Path | None = None


def bootstrap_headless(root: Path) -> Path:
    """Import ComfyUI in this process on the CPU. ComfyUI's root goes first on sys.path so its
    top-level ``nodes`` module wins over this repo's ``nodes/`` package."""
    global _BOOTED
    if _BOOTED is not None:
        return _BOOTED
    root = Path(root).resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    sys.path.insert(0, str(root))
    sys.path.append(str(REPO))  # plain `import dreamshot` for unit helpers, after ComfyUI
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(root)):
        del sys.modules["nodes"]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args)
    # Pin ComfyUI's `utils` package before a later import registers another module under that name
    # (main.py gets this for free by importing server first; nodes_images needs it).
    import utils.install_util  # noqa: F401

    _BOOTED = root
    return root


_PACK: dict | None = None


def load_pack_in_process(root: Path) -> dict:
    """Core + extra nodes, then this repo loaded exactly as ComfyUI loads a custom node.

    Returns {node_id: class} for the nodes the pack registered."""
    global _PACK
    if _PACK is not None:
        return _PACK
    bootstrap_headless(root)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(str(REPO), module_parent="custom_nodes"))
    if not ok:
        raise RuntimeError("ComfyUI failed to load the DreamShot pack (see the log above)")
    _PACK = {k: nodes.NODE_CLASS_MAPPINGS[k] for k in set(nodes.NODE_CLASS_MAPPINGS) - before}
    return _PACK


def node_info(node_class) -> dict:
    """What GET /object_info says about a node class (server.py node_info, in process)."""
    from comfy_api.internal import _ComfyNodeInternal

    if issubclass(node_class, _ComfyNodeInternal):
        return node_class.GET_NODE_INFO_V1()
    inputs = node_class.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(node_class.RETURN_TYPES),
            "output_name": list(getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)),
            "category": getattr(node_class, "CATEGORY", "sd")}


def in_process_object_info(root: Path | None = None) -> dict:
    root = root or find_comfyui()
    if root is None:
        raise RuntimeError("ComfyUI not found: set COMFYUI_PATH")
    load_pack_in_process(root)
    import nodes

    return {name: node_info(cls) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}
