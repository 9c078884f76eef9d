"""Importing the user's ComfyUI checkout headless (for the trainer and the benchmark CLIs).

ComfyUI is not a pip package: it is found through $COMFYUI_PATH, the ComfyUI that contains this
pack (custom_nodes/<pack>), or ~/ComfyUI. Its root goes first on sys.path, because its top-level
``nodes`` module would otherwise be shadowed by this repo's ``nodes/`` package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    for candidate in ([Path(env)] if env else []) + [PACK_ROOT.parent.parent, Path.home() / "ComfyUI"]:
        if (candidate / "main.py").is_file() and (candidate / "comfy").is_dir():
            return candidate.resolve()
    return None


def import_comfy(cpu: bool | None = None, pytorch_attention: bool = False) -> Path:
    """Make ``import comfy`` work here; returns the ComfyUI root. ``cpu`` None: CPU only if no CUDA;
    ``pytorch_attention``: ComfyUI's --use-pytorch-cross-attention."""
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy.model_management"].__file__).resolve().parents[1]
    root = find_comfyui()
    if root is None:
        raise RuntimeError("ComfyUI not found: set COMFYUI_PATH to your ComfyUI folder (the one with main.py), "
                           "or install this pack in ComfyUI/custom_nodes.")
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PACK_ROOT]
    sys.path.insert(0, str(root))
    sys.path.append(str(PACK_ROOT))
    stale = sys.modules.get("nodes")
    if stale is not None and not str(getattr(stale, "__file__", "")).startswith(str(root)):
        del sys.modules["nodes"]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args

    args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    args.use_pytorch_cross_attention = pytorch_attention or args.use_pytorch_cross_attention
    import comfy.model_management  # noqa: F401  (after args)
    import utils.install_util  # noqa: F401  (pin ComfyUI's `utils` package, as main.py does)

    return root


def import_comfy_for_cli(comfyui_path: str | None, log) -> bool:
    """A headless tool's start-up: ``--comfyui PATH`` (when given) becomes $COMFYUI_PATH, then
    ``import_comfy``. False, with the reason logged, when ComfyUI cannot be imported (exit status 2)."""
    if comfyui_path:
        os.environ["COMFYUI_PATH"] = comfyui_path
    try:
        import_comfy()
    except RuntimeError as e:
        log.error("%s", e)
        return False
    return True
