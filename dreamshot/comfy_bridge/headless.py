"""Importing the user's ComfyUI headless: the one start-up of every tool (generate, vistory, train,
bench, proof).

ComfyUI is not a pip package: it is found through ``--comfyui`` (a tool's option, or the trainer's
model.comfyui_path), $COMFYUI_PATH, the ComfyUI that contains this pack (custom_nodes/<pack>), or
~/ComfyUI. Its root goes first on sys.path, because its top-level ``nodes`` module would otherwise be
shadowed by this repo's ``nodes/`` package.

ComfyUI reads its command-line options (comfy.cli_args.args) when comfy.model_management and
folder_paths are imported, so the options a tool passes on (memory management, --base-directory)
are set here, before those imports, and cannot change afterwards in the same process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]

# ComfyUI's memory-management options a headless tool passes on: flag -> (comfy.cli_args name, kind).
# The VRAM modes are one mutually exclusive group in ComfyUI (comfy/cli_args.py, vram_group) and here.
VRAM_MODES = {"--gpu-only": "gpu_only", "--highvram": "highvram", "--normalvram": "normalvram",
              "--lowvram": "lowvram", "--novram": "novram", "--cpu": "cpu"}
MEMORY_OPTIONS = {"--reserve-vram": "reserve_vram", "--disable-smart-memory": "disable_smart_memory"}
# Not offered: newer ComfyUI's dynamic VRAM. Its main.py starts comfy-aimdo and swaps in
# ModelPatcherDynamic (main.py @02018c7e); this start-up does not, so a headless tool loads models the
# estimate-based way, as the server does with --disable-dynamic-vram.
_HELP = {
    "--gpu-only": "store and run everything (text encoder included) on the GPU",
    "--highvram": "keep models in GPU memory after use instead of unloading them to RAM",
    "--normalvram": "force normal VRAM use if lowvram gets enabled automatically (ComfyUI 0.3.x; gone in newer "
                    "ComfyUI)",
    "--lowvram": "0.3.x: load the DiT in parts; newer ComfyUI (without dynamic VRAM): the text encoder on the CPU",
    "--novram": "when --lowvram is not enough",
    "--cpu": "run everything on the CPU (slow; the default only when there is no CUDA device)",
    "--reserve-vram": "GB of VRAM to leave free for the OS and other programs",
    "--disable-smart-memory": "offload models to RAM aggressively instead of keeping them in VRAM",
}


def find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    for candidate in ([Path(env)] if env else []) + [PACK_ROOT.parent.parent, Path.home() / "ComfyUI"]:
        if (candidate / "main.py").is_file() and (candidate / "comfy").is_dir():
            return candidate.resolve()
    return None


def add_comfy_arguments(ap) -> None:
    """The options a headless tool passes to ComfyUI: its folder, its base directory, its memory
    management (ComfyUI's own flags, same names and meaning as ``python main.py``)."""
    g = ap.add_argument_group("ComfyUI (the same flags and meaning as python main.py)")
    g.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, the ComfyUI this pack is installed in, "
                   "~/ComfyUI)")
    g.add_argument("--base-directory", help="ComfyUI's --base-directory: the folder whose models/ (loras, ...) names "
                   "resolve in; default the ComfyUI folder")
    vram = g.add_mutually_exclusive_group()
    for flag in VRAM_MODES:
        vram.add_argument(flag, action="store_true", default=None, help=_HELP[flag])
    g.add_argument("--reserve-vram", type=float, metavar="GB", help=_HELP["--reserve-vram"])
    g.add_argument("--disable-smart-memory", action="store_true", default=None, help=_HELP["--disable-smart-memory"])


def comfy_options(args) -> dict:
    """{comfy.cli_args name: value} of the memory flags given on the command line (add_comfy_arguments)."""
    names = list(VRAM_MODES.values()) + list(MEMORY_OPTIONS.values())
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def import_comfy(comfyui_path: str | os.PathLike | None = None, cpu: bool | None = None,
                 pytorch_attention: bool = False, options: dict | None = None, base_directory: str | None = None,
                 path_option: str = "--comfyui") -> Path:
    """Make ``import comfy`` work here; returns the ComfyUI root (idempotent).

    ``comfyui_path``: the ComfyUI folder (becomes $COMFYUI_PATH); else find_comfyui(). ``cpu`` None: the
    CPU only if there is no CUDA device (``options["cpu"]`` wins); ``pytorch_attention``: ComfyUI's
    --use-pytorch-cross-attention; ``options``: {comfy.cli_args name: value} (comfy_options);
    ``base_directory``: ComfyUI's --base-directory. ``path_option`` names the option in errors.
    Raises RuntimeError when ComfyUI is not found, an option does not exist in this ComfyUI, or ComfyUI
    was already imported with other options.
    """
    options = dict(options or {})
    if comfyui_path:
        root = Path(comfyui_path).expanduser()
        if not ((root / "main.py").is_file() and (root / "comfy").is_dir()):
            raise RuntimeError(f"{path_option} {str(root)!r} is not a ComfyUI folder (no main.py / comfy/).")
        os.environ["COMFYUI_PATH"] = str(root)
    if "comfy.model_management" in sys.modules:
        from comfy.cli_args import args

        wanted = {**options, **({"base_directory": str(Path(base_directory).resolve())} if base_directory else {})}
        changed = {k: v for k, v in wanted.items() if getattr(args, k, None) != v}
        if changed:
            raise RuntimeError(f"ComfyUI is already imported in this process, so its options can no longer change "
                               f"({', '.join(f'{k}={v!r}' for k, v in changed.items())}).")
        return Path(sys.modules["comfy.model_management"].__file__).resolve().parents[1]
    root = find_comfyui()
    if root is None:
        raise RuntimeError(f"ComfyUI not found: give its folder (the one with main.py) with {path_option} or "
                           "COMFYUI_PATH, or install this pack in ComfyUI/custom_nodes.")
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

    flags = {v: k for k, v in {**VRAM_MODES, **MEMORY_OPTIONS}.items()}
    missing = [flags.get(name, name) for name in options if not hasattr(args, name)]
    if missing:
        raise RuntimeError(f"this ComfyUI ({root}) has no {', '.join(missing)} option; leave it out (python main.py "
                           "--help lists the options it has).")
    cpu = options.pop("cpu", None) or cpu
    args.cpu = (not torch.cuda.is_available()) if cpu is None else bool(cpu)
    for name, value in options.items():
        setattr(args, name, value)
    if base_directory:
        if not Path(base_directory).is_dir():
            raise RuntimeError(f"--base-directory {base_directory!r} is not a folder.")
        args.base_directory = str(Path(base_directory).resolve())
    args.use_pytorch_cross_attention = pytorch_attention or args.use_pytorch_cross_attention
    import comfy.model_management  # noqa: F401  (after args)
    import utils.install_util  # noqa: F401  (pin ComfyUI's `utils` package, as main.py does)

    _load_extra_model_paths(root)
    return root


def imported_comfy_device():
    """The torch device ComfyUI computes on when it is already imported in this process, else None
    (nothing is imported here). Code that picks its own device (the Trainer) follows it: a trainer run
    in a process whose ComfyUI was started with --cpu (a CPU server, the tests) must not take a GPU."""
    mm = sys.modules.get("comfy.model_management")
    return None if mm is None else mm.get_torch_device()


def _load_extra_model_paths(root: Path) -> None:
    """ComfyUI's extra_model_paths.yaml beside main.py, as main.py reads it, so model names resolve in
    the folders the server would search."""
    config = root / "extra_model_paths.yaml"
    if config.is_file():
        import utils.extra_config

        utils.extra_config.load_extra_path_config(str(config))


def import_comfy_for_cli(args, log) -> bool:
    """A headless tool's start-up from its add_comfy_arguments options. False, with the reason logged,
    when ComfyUI cannot be imported (exit status 2)."""
    try:
        import_comfy(getattr(args, "comfyui", None), options=comfy_options(args),
                     base_directory=getattr(args, "base_directory", None))
    except RuntimeError as e:
        log.error("%s", e)
        return False
    return True
