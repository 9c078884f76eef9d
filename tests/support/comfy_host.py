"""Finding the pinned ComfyUI and running it headless in the test process.

- ``find_comfyui()``: $COMFYUI_PATH, else the ComfyUI this pack is installed in
  (<ComfyUI>/custom_nodes/<pack>), else ~/ComfyUI; None when there is none.
- ``bootstrap_headless(root)``: import ComfyUI in this process, CPU only, without parsing our argv.
- ``load_pack_in_process()``: core + comfy_extras nodes, then a pack loaded by ComfyUI's own
  ``nodes.load_custom_node`` exactly as the server does; returns {node_id: class} it registered.
- ``in_process_object_info()``: what GET /object_info would answer, built in this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("DreamShot.tests")

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-DreamShot"


def is_comfyui(path: Path | str | None) -> bool:
    """A ComfyUI checkout: main.py and the comfy/ package side by side."""
    if not path:
        return False
    path = Path(path).expanduser()
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def comfyui_candidates(repo: Path = REPO) -> list[tuple[str, Path]]:
    """Where find_comfyui() looks, in order, with the reason for each place."""
    out = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        out.append(("$COMFYUI_PATH", Path(env).expanduser()))
    # Installed as <ComfyUI>/custom_nodes/<pack>: look at the grandparent, both of the path we were
    # imported through (a symlinked install) and of the real checkout.
    pack_dirs = [Path(repo)]
    if Path(repo).resolve() == REPO:
        pack_dirs.insert(0, Path(__file__).absolute().parents[2])
    for pack_dir in dict.fromkeys(pack_dirs):
        if pack_dir.parent.name == "custom_nodes":
            out.append(("enclosing ComfyUI", pack_dir.parent.parent))
    # ... or through the shell's logical working directory (`cd ComfyUI/custom_nodes/<pack>` keeps the
    # symlinked path in $PWD while Python only sees the resolved one).
    pwd = os.environ.get("PWD")
    if pwd and Path(pwd).resolve().is_relative_to(Path(repo).resolve()):
        for parent in Path(pwd).parents:
            if parent.name == "custom_nodes":
                out.append(("enclosing ComfyUI ($PWD)", parent.parent))
                break
    out.append(("~/ComfyUI", Path.home() / "ComfyUI"))
    return out


def find_comfyui(repo: Path = REPO) -> Path | None:
    """$COMFYUI_PATH (when it is a ComfyUI), else the enclosing ComfyUI, else ~/ComfyUI, else None."""
    for why, path in comfyui_candidates(repo):
        if is_comfyui(path):
            return path.resolve()
        if why == "$COMFYUI_PATH":
            log.warning("COMFYUI_PATH=%s has no main.py + comfy/: not a ComfyUI checkout, looking elsewhere", path)
    return None


def comfy_commit(root: Path) -> str:
    """`git rev-parse HEAD` of the checkout, or a note that it is not one."""
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def comfy_version(root: Path) -> str:
    """__version__ from comfyui_version.py, read without importing it."""
    try:
        for line in (Path(root) / "comfyui_version.py").read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


_BOOTED: Path | None = None


def bootstrap_headless(root: Path | str | None = None) -> Path:
    """Import ComfyUI in this process on the CPU (idempotent; returns the ComfyUI root).

    ComfyUI's root goes first on sys.path so its top-level ``nodes`` module wins over this repo's
    ``nodes/`` package; the repo goes last so ``import dreamshot`` still works. Args parsing is
    switched off (pytest's argv is not ComfyUI's) and ``args.cpu`` is set before
    comfy.model_management is imported (it reads the args at import time)."""
    global _BOOTED
    if root is None:
        root = find_comfyui()
        if root is None:
            raise RuntimeError("ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout")
    root = Path(root).resolve()
    if _BOOTED is not None:
        if _BOOTED != root:
            raise RuntimeError(f"ComfyUI from {_BOOTED} is already imported in this process; cannot switch to {root}")
        return _BOOTED
    if not is_comfyui(root):
        raise RuntimeError(f"{root} is not a ComfyUI checkout (no main.py + comfy/)")
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:  # imported already (e.g. by dreamshot.comfy_bridge.headless): args are fixed now
        have = Path(mm.__file__).resolve().parents[1]
        if have != root:
            raise RuntimeError(f"ComfyUI from {have} is already imported in this process; cannot switch to {root}")
        from comfy.cli_args import args

        if not args.cpu:
            log.warning("ComfyUI was imported before bootstrap_headless() without --cpu; tests may use an accelerator")
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (REPO, root)]
    sys.path.insert(0, str(root))
    sys.path.append(str(REPO))  # plain `import dreamshot` for unit helpers, after ComfyUI
    for name in ("nodes", "utils"):  # a module of that name imported from elsewhere would shadow ComfyUI's
        loaded = sys.modules.get(name)
        if loaded is not None and not str(getattr(loaded, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    if mm is None:
        args.cpu = True  # comfy.model_management reads it at import time
    import comfy.model_management  # noqa: F401  (after args)
    # Pin ComfyUI's `utils` package before a later import registers another module under that name
    # (main.py gets this for free by importing server first; comfy_extras/nodes_images needs it).
    import utils.install_util  # noqa: F401

    _BOOTED = root
    log.info("ComfyUI %s imported headless (CPU) from %s", comfy_version(root), root)
    return root


class PackLoadError(RuntimeError):
    pass


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


_EXTRAS_DONE = False
_CORE_NODE_NAMES: frozenset[str] = frozenset()
_PACKS: dict[Path, dict] = {}


def init_core_nodes(root: Path | str | None = None) -> frozenset[str]:
    """nodes.py + comfy_extras nodes (not the API nodes, not custom nodes), once per process.

    Returns the node ids registered by ComfyUI itself (custom nodes cannot override these)."""
    global _EXTRAS_DONE, _CORE_NODE_NAMES
    bootstrap_headless(root)
    import nodes

    if not _EXTRAS_DONE:
        # Async in this ComfyUI (0.3.6x). A few extras fail without torchaudio: logged, not fatal.
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        _EXTRAS_DONE = True
        _CORE_NODE_NAMES = frozenset(nodes.NODE_CLASS_MAPPINGS)
    return _CORE_NODE_NAMES


def load_pack_in_process(root: Path | str | None = None, pack_dir: Path | str = REPO) -> dict:
    """Load a custom-node pack the way the server does (``nodes.load_custom_node`` with the core
    node ids as ``ignore``, module_parent "custom_nodes") and return {node_id: class} it registered.

    Defaults to this repo (its ``__init__.py`` exposes ``comfy_entrypoint`` and ``WEB_DIRECTORY``).
    Cached per pack directory; raises PackLoadError with ComfyUI's logged reason when loading fails."""
    pack_dir = Path(pack_dir).resolve()
    if pack_dir in _PACKS:
        return _PACKS[pack_dir]
    core = init_core_nodes(root)
    import nodes

    before = dict(nodes.NODE_CLASS_MAPPINGS)
    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger().addHandler(collect)
    try:
        ok = asyncio.run(nodes.load_custom_node(str(pack_dir), ignore=set(core), module_parent="custom_nodes"))
    finally:
        logging.getLogger().removeHandler(collect)
    if not ok:
        detail = "\n".join(collect.lines) or "(nothing logged)"
        raise PackLoadError(f"ComfyUI could not load the custom node pack {pack_dir}:\n{detail}")
    registered = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if before.get(k) is not v}
    if not registered:
        log.warning("pack %s loaded but registered no node", pack_dir)
    _PACKS[pack_dir] = registered
    return registered


def node_info(node_id: str, node_class=None) -> dict:
    """server.py's node_info (the body of one GET /object_info entry), in this process."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    cls = node_class if node_class is not None else nodes.NODE_CLASS_MAPPINGS[node_id]
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    info = {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_id,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) == True,  # noqa: E712  (as server.py)
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info


def object_info_for(node_ids=None) -> dict:
    """{node_id: info} for the given ids (default: every registered node), JSON round-tripped so it
    equals what the server sends (lists, not tuples). Nodes whose info fails are logged and left out,
    as the server does."""
    import folder_paths
    import nodes

    out = {}
    with folder_paths.cache_helper:
        for node_id in (nodes.NODE_CLASS_MAPPINGS if node_ids is None else node_ids):
            try:
                out[node_id] = node_info(node_id)
            except Exception:
                log.exception("object_info: node %s failed", node_id)
    return json.loads(json.dumps(out))


def in_process_object_info(root: Path | None = None, include_pack: bool = True) -> dict:
    """What GET /object_info answers for core + extras (+ this pack), built in this process."""
    init_core_nodes(root)
    if include_pack:
        load_pack_in_process(root)
    return object_info_for()
