"""The REAL ComfyUI server (main.py) on 127.0.0.1, with this pack installed in a temp base dir."""

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

from .comfy_host import REPO, find_comfyui

log = logging.getLogger("DreamShot.tests")

# CLIPLoader builds the full UMT5-XXL (5.7B params) and cannot take the tiny test encoder, so the
# tests swap it for this test-only loader node (same output type, CLIP).
TEST_NODES_SOURCE = '''
import folder_paths
import comfy.sd

CONFIG = {config!r}


class DreamShotTestTinyUMT5Loader:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"clip_name": (folder_paths.get_filename_list("text_encoders"),),
                             "type": (["wan"],), "device": (["default", "cpu"],)}}}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name, type="wan", device="default"):
        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        return (comfy.sd.load_clip(ckpt_paths=[path], clip_type=comfy.sd.CLIPType.WAN,
                                   model_options={{"umt5xxl_model_config": dict(CONFIG)}}),)


NODE_CLASS_MAPPINGS = {{"DreamShotTestTinyUMT5Loader": DreamShotTestTinyUMT5Loader}}
'''


def make_base_dir(base: Path, models: dict[str, dict[str, Path]] | None = None, inputs: dict[str, Path] | None = None,
                  pack_name: str = "ComfyUI-DreamShot") -> Path:
    """<base>/custom_nodes/<pack> -> this repo, models/<folder>/<name> -> files, input/ files."""
    from .tiny_models import TINY_UMT5_CONFIG

    base = Path(base)
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / pack_name
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "dreamshot_test_nodes.py").write_text(TEST_NODES_SOURCE.format(config=TINY_UMT5_CONFIG))
    for folder, files in (models or {}).items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            dst = base / "models" / folder / name
            if not dst.exists():
                dst.symlink_to(Path(src).resolve())
    for name, src in (inputs or {}).items():
        shutil.copyfile(src, base / "input" / name)
    return base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start main.py on 127.0.0.1 for a test session; queue prompts and wait for them."""

    def __init__(self, base_dir: Path, port: int | None = None, extra_args=(), root: Path | None = None):
        self.root = Path(root or find_comfyui())
        self.base_dir = Path(base_dir)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = self.base_dir / "server.log"

    def __enter__(self):
        cmd = [sys.executable, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--disable-auto-launch", "--preview-method", "none",
               *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"ComfyUI server did not answer in 180 s:\n{self.log_tail()}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return json.loads(body) if body else None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict) -> str:
        try:
            return self.post("/prompt", {"prompt": prompt, "client_id": "dreamshot-tests"})["prompt_id"]
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.code, json.loads(e.read() or b"{}")) from None

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") != "success":
                    raise PromptFailed(entry, self.log_tail())
                return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died:\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def interrupt(self):
        self.post("/interrupt", {})


class PromptRejected(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {json.dumps(body)[:4000]}")


class PromptFailed(Exception):
    def __init__(self, entry: dict, log_tail: str):
        self.entry = entry
        msgs = entry.get("status", {}).get("messages", [])
        super().__init__(f"prompt failed: {json.dumps(msgs)[:4000]}\n--- server log ---\n{log_tail}")
