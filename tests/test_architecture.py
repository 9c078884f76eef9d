"""The layering rules of docs/architecture.md, checked on the source.

- The method (every ``dreamshot`` module outside ``dreamshot/comfy_bridge``) imports without
  ComfyUI: no module-level import of ComfyUI's packages, and the method's core modules (top-level
  ``dreamshot/*.py`` and ``dreamshot/roles/``) never import them at all, nor the ComfyUI adapter or a tool.
- ``dreamshot/comfy_bridge`` (the one adapter) never imports the nodes or a tool.
- The headless tools (``python -m dreamshot.<tool>``) import ComfyUI only inside functions, after
  their headless bootstrap, so ``--help`` and their unit tests need no ComfyUI.
- No import cycle inside ``dreamshot/``, lazy imports inside functions included.
- ``nodes/`` reaches the method only through relative imports of ``..dreamshot`` (the pack is
  loaded under a path-derived module name) and never through ``sys.path`` tricks; ComfyUI's node API
  (``io``, ``ui``) comes from ``dreamshot.comfy_bridge.compat`` only, and every node's ``execute`` runs
  under ``nodes.errors.reported_as`` so its errors name the node.

The runtime test imports every method and tool module in a fresh interpreter that cannot see
ComfyUI and checks none of ComfyUI's modules were loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "dreamshot"
COMFY_ROOTS = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "node_helpers",
               "nodes", "server", "execution", "latent_preview"}
TOOLS = {"train", "data", "eval", "vistory", "generate", "bench", "proof"}


def _imports(tree: ast.AST):
    """(module name, level, module-level?) for every import in a file."""
    def walk(node, module_level):  # module level: runs on import (not inside a function body)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, 0, module_level
            elif isinstance(child, ast.ImportFrom):
                yield (child.module or ""), child.level, module_level
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            else:
                yield from walk(child, module_level)
    yield from walk(tree, True)


def _package_of(path: Path) -> tuple[str, ...]:
    return path.relative_to(PKG).with_suffix("").parts


def _resolve(path: Path, module: str, level: int) -> str:
    """Absolute dotted name of an import inside the dreamshot package ('' for outside it)."""
    if level == 0:
        return module
    parts = ("dreamshot",) + _package_of(path)[:-1]
    parts = parts[:len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(parts + ((module,) if module else ()))


def _files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_method_and_tools_never_import_comfy_at_module_level():
    problems = []
    for path in _files(PKG):
        parts = _package_of(path)
        if parts[0] == "comfy_bridge":
            continue
        core = len(parts) == 1 or parts[0] == "roles"
        for module, level, module_level in _imports(ast.parse(path.read_text(), str(path))):
            name = _resolve(path, module, level)
            root = name.split(".")[0]
            where = f"{path.relative_to(REPO)} imports {name}"
            if level == 0 and root in COMFY_ROOTS and (core or module_level):
                problems.append(where + (" (the core never imports ComfyUI)" if core else " at module level"))
            if core and name.startswith("dreamshot.comfy_bridge"):
                problems.append(where + " (the core never imports the ComfyUI adapter)")
            if core and name.split(".")[:2][-1] in TOOLS and name.startswith("dreamshot."):
                problems.append(where + " (the core never imports a tool)")
    assert not problems, "\n".join(problems)


def test_adapter_never_imports_nodes_or_tools():
    problems = []
    for path in _files(PKG / "comfy_bridge"):
        for module, level, _ in _imports(ast.parse(path.read_text(), str(path))):
            name = _resolve(path, module, level)
            parts = name.split(".")
            if (level == 0 and parts[0] == "nodes") or (parts[0] == "dreamshot" and len(parts) > 1
                                                       and parts[1] in TOOLS):
                problems.append(f"{path.relative_to(REPO)} imports {name}")
    assert not problems, "\n".join(problems)


def test_nodes_reach_the_method_by_relative_imports_only():
    problems = []
    for path in _files(REPO / "nodes"):
        source = path.read_text()
        if "sys.path" in source:
            problems.append(f"{path.relative_to(REPO)} touches sys.path")
        for module, level, _ in _imports(ast.parse(source, str(path))):
            if level == 0 and module.split(".")[0] == "dreamshot":
                problems.append(f"{path.relative_to(REPO)} imports {module} absolutely (use ..dreamshot)")
            if level == 0 and module.split(".")[0] == "comfy_api":
                problems.append(f"{path.relative_to(REPO)} imports {module} (the node API comes from "
                                "..dreamshot.comfy_bridge.compat, which falls back when a version is gone)")
    assert not problems, "\n".join(problems)


def test_every_method_and_tool_module_imports_without_comfyui(tmp_path):
    """A fresh interpreter that sees only this repo (and site-packages) imports every module."""
    script = tmp_path / "import_all.py"
    script.write_text(
        "import importlib, json, pkgutil, sys\n"
        "import dreamshot\n"
        "names = [m.name for m in pkgutil.walk_packages(dreamshot.__path__, 'dreamshot.')\n"
        "         if not m.name.startswith('dreamshot.comfy_bridge')]\n"
        "failed = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        failed[n] = repr(e)\n"
        f"roots = {sorted(COMFY_ROOTS - {'nodes', 'server', 'execution'})!r}\n"
        "loaded = sorted(k for k in sys.modules if k.split('.')[0] in roots)\n"
        "print(json.dumps({'names': names, 'failed': failed, 'loaded': loaded}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["names"]) > 30, result["names"]
    assert result["failed"] == {}, result["failed"]
    assert result["loaded"] == [], f"ComfyUI modules imported by the method: {result['loaded']}"


def test_every_node_reports_its_errors_under_its_name():
    """Each node's execute runs inside ``with reported_as(<display name>)`` (nodes/errors.py)."""
    missing = []
    for path in _files(REPO / "nodes"):
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(fn, ast.FunctionDef) and fn.name == "execute":
                withs = [w for w in ast.walk(fn) if isinstance(w, ast.With)
                         and any(isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "")
                                 == "reported_as" for i in w.items)]
                if not withs:
                    missing.append(f"{path.relative_to(REPO)}:{fn.lineno}")
    assert not missing, f"execute without reported_as: {missing}"


def _module_name(path: Path) -> str:
    parts = _package_of(path)
    return ".".join(("dreamshot",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def import_graph() -> dict[str, set[str]]:
    """dreamshot module -> the dreamshot modules it imports anywhere in its file (module level or inside
    a function: a lazy import closes a cycle just as well, only later)."""
    modules = {_module_name(p): p for p in _files(PKG)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(path, node.module or "", node.level)
                # ``from .pkg import x`` imports the module pkg.x when there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_dreamshot_imports_itself_back():
    """No import cycle inside dreamshot/, lazy imports included: two modules that need each other are one
    module, or share a third (dreamshot/train/cache_tensors.py broke cache.py <-> video.py)."""
    graph = import_graph()
    assert "dreamshot.train.video" in graph["dreamshot.train.cache"]      # the graph sees the edges
    assert import_cycles(graph) == []
