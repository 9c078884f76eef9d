"""The REAL ComfyUI server (main.py) on 127.0.0.1, with this pack installed in a temp base dir.

    base = make_base_dir(tmp, models={"diffusion_models": [dit], "vae": [vae], "text_encoders": [umt5]})
    with ComfyServer(base) as server:
        entry = server.wait(server.queue(prompt_api), timeout=300)
        pngs = server.output_files(entry)

ComfyUI's stock CLIPLoader cannot build the tiny UMT5 of the tests (it always builds UMT5-XXL), so
make_base_dir() also installs the TEST-ONLY node DreamShotTestTinyUMT5Loader
(tests/support/test_nodes_pack); tests swap it in for CLIPLoader and must say so.
Only the standard library talks to the server (urllib, proxies bypassed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .comfy_host import PACK_NAME, REPO, find_comfyui

log = logging.getLogger("DreamShot.tests")

TEST_NODES_DIR = Path(__file__).resolve().with_name("test_nodes_pack")
TEST_NODES_NAME = "dreamshot_test_nodes"
TEST_LOADER = "DreamShotTestTinyUMT5Loader"

# Never route 127.0.0.1 through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _replace_link(dst: Path, src: Path, copy: bool = False) -> None:
    """dst -> src as a symlink (a copy when asked or when symlinks are not allowed)."""
    src = Path(src).resolve()
    if not src.exists():
        raise FileNotFoundError(src)
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    if not copy:
        try:
            dst.symlink_to(src, target_is_directory=src.is_dir())
            return
        except OSError as e:  # e.g. Windows without the symlink privilege
            log.info("symlink %s -> %s failed (%s): copying", dst, src, e)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(src, dst)


def make_base_dir(base: Path | str, pack_root: Path | str | None = REPO,
                  models: dict[str, list[Path] | dict[str, Path]] | None = None,
                  extra_custom_nodes: dict[str, str] | None = None, inputs: dict[str, Path] | None = None,
                  pack_name: str = PACK_NAME, test_nodes: bool = True, copy_models: bool = False) -> Path:
    """A ComfyUI --base-directory with this pack installed. Returns ``base``.

    - custom_nodes/<pack_name> -> pack_root (symlink; None: no pack), and unless ``test_nodes`` is
      False the test-only nodes (DreamShotTestTinyUMT5Loader) as custom_nodes/dreamshot_test_nodes/;
    - models/<folder>/<file> for ``models`` = {folder: [paths]} (file name kept) or
      {folder: {name: path}} (renamed), symlinked (copied with ``copy_models``);
    - ``extra_custom_nodes`` = {"name.py" or "name": python source}: test-only custom nodes written as
      custom_nodes/name.py or custom_nodes/name/__init__.py;
    - ``inputs`` = {name: path} copied into input/; input/, output/, user/, temp/ always exist.
    Calling it again on the same base updates it."""
    base = Path(base).resolve()
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if pack_root is not None:
        _replace_link(base / "custom_nodes" / pack_name, Path(pack_root))
    if test_nodes:
        _replace_link(base / "custom_nodes" / TEST_NODES_NAME, TEST_NODES_DIR, copy=True)
    for folder, files in (models or {}).items():
        named = files.items() if isinstance(files, dict) else ((Path(f).name, f) for f in files)
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name, src in named:
            _replace_link(base / "models" / folder / name, Path(src), copy=copy_models)
    for name, source in (extra_custom_nodes or {}).items():
        if name.endswith(".py"):
            target = base / "custom_nodes" / name
        else:
            (base / "custom_nodes" / name).mkdir(exist_ok=True)
            target = base / "custom_nodes" / name / "__init__.py"
        target.write_text(source)
    for name, src in (inputs or {}).items():
        shutil.copyfile(src, base / "input" / name)
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not start, or died."""


class PromptRejected(Exception):
    """POST /prompt answered an HTTP error (400: validation failed); ``body`` is its JSON."""

    def __init__(self, status: int, body):
        self.status, self.body = status, body
        detail = json.dumps(body, indent=1)[:6000] if not isinstance(body, str) else body[:6000]
        super().__init__(f"POST /prompt rejected with HTTP {status}: {detail}")


class PromptFailed(Exception):
    """The prompt ran and ended in error (or was interrupted); ``entry`` is its /history entry."""

    def __init__(self, entry: dict, log_tail: str = ""):
        self.entry = entry
        self.messages = entry.get("status", {}).get("messages", [])
        lines = []
        for kind, data in self.messages:
            if kind == "execution_error":
                lines.append(f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                             f"{data.get('exception_type')}: {data.get('exception_message')}")
                lines.append("".join(data.get("traceback") or [])[-3000:])
            elif kind == "execution_interrupted":
                lines.append(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        self.summary = "\n".join(lines) or json.dumps(self.messages)[:4000]
        super().__init__(f"prompt failed: {self.summary}\n--- server log (tail) ---\n{log_tail}")


class ComfyServer:
    """Start ComfyUI's main.py (same interpreter) on 127.0.0.1 for a test; queue prompts, wait.

    ``with ComfyServer(base_dir) as s:`` starts it and waits until GET /system_stats answers
    (``startup_timeout`` s; ServerError with the log tail if it dies or hangs); leaving the block
    terminates it. The server log is <base_dir>/server.log."""

    def __init__(self, base_dir: Path | str, port: int | None = None, extra_args=(), root: Path | str | None = None,
                 startup_timeout: float = 120.0, env: dict | None = None):
        root = root or find_comfyui()
        if root is None:
            raise ServerError("ComfyUI not found: set COMFYUI_PATH")
        self.root = Path(root)
        self.base_dir = Path(base_dir).resolve()
        self._auto_port = port is None
        self.port = port or free_port()
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = startup_timeout
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"
        self._log = None
        self._log_start = 0
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        db = self.base_dir / "user" / "comfyui.db"  # default would be <ComfyUI>/user/comfyui.db
        return [sys.executable, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir), "--disable-auto-launch", "--preview-method", "none",
                "--database-url", f"sqlite:///{db}", *self.extra_args]

    def _spawn(self) -> None:
        (self.base_dir / "user").mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        log.info("starting ComfyUI: %s", " ".join(self.command()))
        self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)

    def start(self) -> ComfyServer:
        t0 = time.monotonic()
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    stats = self.get("/system_stats", timeout=5)
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.25)
                    continue
                argv = (stats or {}).get("system", {}).get("argv", []) if isinstance(stats, dict) else []
                if str(self.base_dir) not in argv:  # another server took the port first: ours will die
                    time.sleep(0.25)
                    continue
                self.startup_seconds = time.monotonic() - t0
                log.info("ComfyUI answered on %s after %.1f s", self.url, self.startup_seconds)
                return self
            else:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"ComfyUI server did not answer on {self.url} in {self.startup_timeout:.0f} s; "
                                  f"log {self.log_path}:\n{tail}")
            tail = self.log_tail()
            self.stop()
            if self._auto_port and attempt < 2 and ("address already in use" in tail.lower() or "errno 98" in tail):
                self.port = free_port()
                continue
            raise ServerError(f"ComfyUI server exited with code {self.proc.returncode} before answering; "
                              f"log {self.log_path}:\n{tail}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-n:])

    def custom_node_import_failures(self) -> list[str]:
        """Custom-node paths the server logged as "(IMPORT FAILED)" at startup (ComfyUI does not stop
        for them: a broken pack just has no nodes)."""
        tail = self.log_tail(n=10**6)
        return [line.split(":", 1)[1].strip() for line in tail.splitlines() if "(IMPORT FAILED):" in line]

    # ---- HTTP -----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload=None, timeout: float = 30):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        with _OPENER.open(req, timeout=timeout) as r:
            body = r.read()
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")

    def get(self, path: str, timeout: float = 30):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, payload: dict | None = None, timeout: float = 30):
        return self._request("POST", path, payload if payload is not None else {}, timeout=timeout)

    def object_info(self, node_id: str | None = None) -> dict:
        """GET /object_info (or /object_info/<node_id>)."""
        return self.get("/object_info" if node_id is None else f"/object_info/{node_id}", timeout=120)

    def queue(self, prompt_api: dict, client_id: str = "dreamshot-tests") -> str:
        """POST /prompt; returns the prompt id. HTTP errors (400 = invalid prompt) raise PromptRejected
        carrying the JSON body (``error`` and ``node_errors``)."""
        try:
            return self.post("/prompt", {"prompt": prompt_api, "client_id": client_id})["prompt_id"]
        except urllib.error.HTTPError as e:
            raw = e.read() or b"{}"
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            raise PromptRejected(e.code, body) from None

    def history(self, prompt_id: str | None = None) -> dict:
        return self.get("/history" if prompt_id is None else f"/history/{prompt_id}")

    def wait(self, prompt_id: str, timeout: float = 300, poll: float = 0.2) -> dict:
        """Poll /history/<id> until the prompt is done; return its history entry.
        Raises PromptFailed (error or interrupted, with ComfyUI's messages), ServerError if the server
        died, TimeoutError (after interrupting it) if it takes longer than ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id).get(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and (status.get("completed") is not None or status.get("status_str")):
                if status.get("status_str") != "success":
                    raise PromptFailed(entry, self.log_tail())
                return entry
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"ComfyUI server died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(poll)
        self.interrupt()
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s (interrupted):\n{self.log_tail()}")

    def run(self, prompt_api: dict, timeout: float = 300) -> dict:
        """queue + wait."""
        return self.wait(self.queue(prompt_api), timeout=timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop the running prompt (only ``prompt_id``, when given and running).
        An interrupt sent before a prompt starts executing is lost (execution clears the flag)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def queue_state(self) -> dict:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]} (items: [number, prompt_id, ...])."""
        return self.get("/queue")

    def output_files(self, entry: dict, kind: str = "images") -> list[Path]:
        """Files listed under outputs[*][kind] of a history entry, as paths in this base dir."""
        dirs = {"output": "output", "temp": "temp", "input": "input"}
        out = []
        for result in entry.get("outputs", {}).values():
            for item in result.get(kind, []) or []:
                if isinstance(item, dict) and "filename" in item:
                    out.append(self.base_dir / dirs.get(item.get("type", "output"), "output") /
                               item.get("subfolder", "") / item["filename"])
        return out
