"""The frontend in a real browser: the pinned ComfyUI server on 127.0.0.1 with this pack installed
as a custom node, headless Debian Chromium driven by Playwright (never a downloaded browser), under
every frontend in UIS: the one the pinned ComfyUI serves from its venv (comfyui-frontend-package
1.27.10) and NEW_FRONTEND_VERSION (served with main.py --front-end-root) with Nodes 2.0
(Comfy.VueNodes.Enabled) off and on. One server per frontend; one page per configuration.

Checks, per configuration: every bundled workflow loads with our nodes registered and rendered, and
what the server would receive (the frontend's own API prompt) carries every link on the socket the
workflow file saved it on, after loading, after saving and after reloading the saved copy (the saved
file's link table agrees with its sockets); Shot Sequence Pack grows and shrinks its shots_N /
characters_N sockets and they survive save/reload with their links; the lock toggles (clicked with
the mouse) write lock_shots; the Sampler's shot list shows the script with user text escaped; the
Storyboard Sheet node runs in the server and previews its sheet. No console error and no deprecation
warning of ours anywhere (known unrelated noise is listed in NOISE / NEWER_FRONTEND_NOISE and
ignored). A screenshot of every state is saved (path printed; DREAMSHOT_SCREENSHOT_DIR keeps them).

Skips only where ComfyUI is absent. Without Chromium or Playwright it FAILS naming the install
command, unless DREAMSHOT_SKIP_BROWSER=1 (then it skips, loudly). Without the newer frontend
(DREAMSHOT_NEW_FRONTEND_ROOT, else the folder .ci/run installs it into) its configurations FAIL
naming the install command, unless DREAMSHOT_SKIP_NEW_FRONTEND=1 (then they skip, loudly).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from support.comfy_host import PACK_NAME
from support.server import ComfyServer, make_base_dir
from support.workflow_api import ui_to_api

import pytest

REPO = Path(__file__).resolve().parents[1]
# DREAMSHOT_WORKFLOWS_DIR: check other workflow files (e.g. freshly built ones) instead.
WORKFLOWS = sorted(Path(os.environ.get("DREAMSHOT_WORKFLOWS_DIR") or REPO / "workflows").glob("*.json"))
CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = ("install them with: apt-get install -y chromium && pip install playwright "
                "(Playwright is used only with executable_path=/usr/bin/chromium; never run 'playwright install')")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# The newer frontend: .ci/run installs it (pip install --target) and exports its static folder.
NEW_FRONTEND_VERSION = "1.58.1"  # keep equal to NEW_FRONTEND in .ci/run
NEW_FRONTEND_DEFAULT = (Path.home() / ".cache" / "dreamshot-frontends" / f"comfyui-frontend-package-{NEW_FRONTEND_VERSION}"
                        / "comfyui_frontend_package" / "static")
NEW_FRONTEND_HINT = (f"pip install --target ~/.cache/dreamshot-frontends/comfyui-frontend-package-{NEW_FRONTEND_VERSION} "
                     f"--no-deps comfyui-frontend-package=={NEW_FRONTEND_VERSION} (.ci/run does this), or point "
                     "DREAMSHOT_NEW_FRONTEND_ROOT at its comfyui_frontend_package/static folder")
try:
    PINNED_FRONTEND_VERSION = importlib.metadata.version("comfyui-frontend-package")
except importlib.metadata.PackageNotFoundError:
    PINNED_FRONTEND_VERSION = None


@dataclass(frozen=True)
class UI:
    """One frontend configuration: a frontend (None: the one the pinned ComfyUI serves) and Nodes 2.0."""
    version: str | None
    nodes2: bool

    @property
    def id(self) -> str:
        return f"{self.version or f'pinned-{PINNED_FRONTEND_VERSION}'}-nodes2-{'on' if self.nodes2 else 'off'}"


UIS = [UI(None, False), UI(NEW_FRONTEND_VERSION, False), UI(NEW_FRONTEND_VERSION, True)]

# Console errors that are not ours: a fresh user folder has no user.css, saved workflows, templates
# or settings yet (404s), the favicon is absent, and the machine is offline (api.comfy.org release
# check, model-size lookups on huggingface.co for the workflows' model links).
NOISE = [re.compile(p) for p in (
    r"^https?://127\.0\.0\.1:\d+/(api/userdata/)?user\.css$",
    r"^https?://127\.0\.0\.1:\d+/favicon\.ico$",
    r"^https?://127\.0\.0\.1:\d+/api/userdata(\?dir=|/comfy\.templates\.json)",
    r"^https?://127\.0\.0\.1:\d+/api/settings/",
    r"^https?://api\.comfy\.org/",
    r"^https?://huggingface\.co/",
)]
# Frontends newer than the pinned one ask backend 0.3.64 for endpoints it does not have (404s,
# which the frontend then reports itself) and, from 1.52, log its own early graph access. Not ours;
# ignored for those frontends only.
NEWER_FRONTEND_NOISE = [re.compile(p) for p in (
    r"^https?://127\.0\.0\.1:\d+/api/global_subgraphs",
    r"^https?://127\.0\.0\.1:\d+/api/jobs\?",
)]
NEWER_FRONTEND_MESSAGES = [re.compile(p) for p in (
    r"JobsApiError: Failed to fetch jobs: 404",
    r"graph accessed before initialization",
)]
# Set before the page opens: no first-run template dialog, no minimap over the screenshots, no
# missing-model dialog (the model files are not here). Navigation settings: on a fresh user folder
# frontend 1.27.10 registers Comfy.Canvas.NavigationMode, whose onChange sets two settings that
# are not registered yet -> "Cannot read properties of undefined (reading 'id')" in its setting
# store (not ours); with their values already in place that set() returns early.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
            "Comfy.Workflow.ShowMissingModelsWarning": False, "Comfy.Canvas.NavigationMode": "legacy",
            "Comfy.Canvas.LeftMouseClickBehavior": "panning", "Comfy.Canvas.MouseWheelScroll": "zoom"}
NODES2 = "Comfy.VueNodes.Enabled"
INPUT_IMAGES = {"dreamshot_character_a.png": (200, 70, 60), "dreamshot_character_b.png": (60, 80, 200),
                "dreamshot_first_shot.png": (70, 150, 80), "dreamshot_location.png": (90, 90, 120),
                **{f"storyboard_shot_{j}.png": (40 * j, 120, 200 - 40 * j) for j in range(1, 5)}}
# Where the frontend serves this pack's js/ from: a warning raised from there is ours.
OUR_SCRIPTS = f"/extensions/{PACK_NAME}/"

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

# Widgets our nodes must show (issue 26's new inputs among them), and a workflow saved before them.
WIDGETS = {
    "DreamShotShotScript": ["prompt", "characters", "duration", "shot_size", "camera", "action", "dialogue"],
    "DreamShotStoryboardAnimatic": ["fps", "width", "height", "transition", "transition_seconds", "shot_numbers",
                                    "captions", "timecode", "camera_moves", "variant", "duration", "fit"],
    "DreamShotEditorialTimeline": ["fps", "filename_prefix", "variant", "duration"],
}
OLD_WORKFLOW = REPO / "tests" / "support" / "old_workflows" / "dreamshot_reference_to_shot_before_shot_timing.json"


# ----------------------------------------------------------------------------------- environment

def skip_or_fail(text: str, skip_env: str):
    """pytest.fail(text), or a loud skip when the environment variable ``skip_env`` is 1."""
    if os.environ.get(skip_env) == "1":
        loud = f"!!! SKIPPED ({skip_env}=1): {text}"
        warnings.warn(loud)
        print(loud, file=sys.stderr)
        pytest.skip(loud)
    pytest.fail(text)


def require_browser():
    """Playwright's sync API, or FAIL (skip only when DREAMSHOT_SKIP_BROWSER=1, loudly)."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium ({CHROMIUM})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the Python package playwright")
    if missing:
        skip_or_fail(f"the browser test needs {' and '.join(missing)}: {INSTALL_HINT}", "DREAMSHOT_SKIP_BROWSER")
    return sync_playwright


def frontend_root(ui: UI) -> Path | None:
    """The --front-end-root for ``ui`` (None: the pinned one), or FAIL / loud skip when absent."""
    if ui.version is None:
        return None
    root = Path(os.environ.get("DREAMSHOT_NEW_FRONTEND_ROOT") or NEW_FRONTEND_DEFAULT).expanduser()
    if not (root / "index.html").is_file():
        skip_or_fail(f"frontend {ui.version} not found at {root}: {NEW_FRONTEND_HINT}", "DREAMSHOT_SKIP_NEW_FRONTEND")
    return root


def http_json(url: str, data=None, timeout=10):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def upload_image(url: str, name: str, data: bytes):
    """POST /upload/image (multipart), as the frontend's upload button does."""
    boundary = "----dreamshot-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + \
        (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue"
         f"\r\n--{boundary}--\r\n").encode()
    req = urllib.request.Request(f"{url}/upload/image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["name"] == name


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def input_images() -> dict[str, bytes]:
    """The bundled workflows' LoadImage files (else their previews 404)."""
    from PIL import Image, ImageDraw

    out = {}
    for name, color in INPUT_IMAGES.items():
        im = Image.new("RGB", (416, 240), color)
        ImageDraw.Draw(im).ellipse((150, 40, 266, 200), fill=(240, 220, 200))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out[name] = buf.getvalue()
    return out


class Servers:
    """One ComfyUI server at a time, restarted only when the frontend changes."""

    def __init__(self, comfy_root: Path):
        self.comfy_root = comfy_root
        self.base = Path(tempfile.mkdtemp(prefix="dreamshot-browser-"))
        self.root: object = ()  # the --front-end-root being served (None: the pinned one)
        self.server: ComfyServer | None = None
        self.object_info: dict = {}

    def serve(self, root: Path | None) -> ComfyServer:
        if self.server is not None and root == self.root:
            return self.server
        self.close_server()
        extra = ["--front-end-root", str(root)] if root is not None else []
        self.server = ComfyServer(make_base_dir(self.base), root=self.comfy_root, extra_args=extra).start()
        self.root = root
        url = self.server.url
        for name, data in input_images().items():
            upload_image(url, name, data)
        for key, value in SETTINGS.items():
            http_json(f"{url}/api/settings/{key}", value)
        self.object_info = http_json(url + "/object_info", timeout=60)
        return self.server

    def close_server(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self):
        self.close_server()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(comfy_root):
    pool = Servers(comfy_root)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    keep = os.environ.get("DREAMSHOT_SCREENSHOT_DIR")
    folder = Path(keep) if keep else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}", file=sys.stderr)
    return folder


class Console:
    """Console errors and page errors, minus the noise that is not ours; and anything of ours:
    a warning or error logged from this pack's scripts, or a LiteGraph deprecation warning whose
    stack passes through them (recorded in the page by WATCH_DEPRECATIONS)."""

    def __init__(self, page, newer_frontend: bool):
        self.page = page
        self.urls = NOISE + (NEWER_FRONTEND_NOISE if newer_frontend else [])
        self.messages = NEWER_FRONTEND_MESSAGES if newer_frontend else []
        self.errors: list[str] = []
        self.ignored: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}\n{getattr(e, 'stack', '')}"))

    def _console(self, message):
        url = (message.location or {}).get("url", "")
        if message.type in ("warning", "error") and OUR_SCRIPTS in url:
            self.errors.append(f"console {message.type} from our script: {message.text} (at {url})")
            return
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and any(p.search(url) for p in self.urls):
            self.ignored.append(url)
            return
        if any(p.search(message.text) for p in self.messages):
            self.ignored.append(message.text)
            return
        self.errors.append(f"console error: {message.text} (at {url})")

    def take(self) -> list[str]:
        ours = self.page.evaluate("() => window.__dreamshotDeprecations.splice(0)")
        errors, self.errors = self.errors + [f"deprecation warning from our script: {d}" for d in ours], []
        return errors


# Record LiteGraph deprecation warnings raised through our scripts. Every occurrence is checked
# (alwaysRepeatWarnings), while the frontend's own listeners still see each message once.
WATCH_DEPRECATIONS = """(ours) => {
  const LG = window.LiteGraph, seen = new Set(), listeners = LG.onDeprecationWarning.splice(0);
  window.__dreamshotDeprecations = [];
  LG.alwaysRepeatWarnings = true;
  LG.onDeprecationWarning.push((message, source) => {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 100;
    const stack = new Error().stack;
    Error.stackTraceLimit = limit;
    if (stack.includes(ours)) window.__dreamshotDeprecations.push(`${message}\\n${stack}`);
    if (seen.has(message)) return;
    seen.add(message);
    for (const listener of listeners) listener(message, source);
  });
}"""

STARTED = """() => ({
  version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
  nodes2: window.comfyAPI.app.app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled") ?? null,
  extension: !!window.comfyAPI.app.app.extensions?.find?.((e) => e.name === "DreamShot.UI"),
})"""


@dataclass
class Session:
    ui: UI
    url: str
    page: object
    console: Console
    object_info: dict


@pytest.fixture(scope="module", params=UIS, ids=[ui.id for ui in UIS])
def session(request, servers):
    """A page on a server with the frontend and Nodes 2.0 setting of one UI configuration."""
    ui: UI = request.param
    sync_playwright = require_browser()
    server = servers.serve(frontend_root(ui))
    http_json(f"{server.url}/api/settings/{NODES2}", ui.nodes2)
    user_data = tempfile.mkdtemp(prefix="dreamshot-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        try:
            page = context.new_page()
            console = Console(page, newer_frontend=ui.version is not None)
            page.goto(server.url + "/")
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.LiteGraph", timeout=90_000)
            page.evaluate(WATCH_DEPRECATIONS, OUR_SCRIPTS)
            wait_for_panels(page)   # the extension is set up and refreshing
            started = page.evaluate(STARTED)
            assert started["version"] == (ui.version or PINNED_FRONTEND_VERSION), started
            assert started["nodes2"] == ui.nodes2 and started["extension"], started
            errors = console.take()
            assert not errors, f"console errors while the page started: {errors}"
            yield Session(ui, server.url, page, console, servers.object_info)
        finally:
            context.close()
            shutil.rmtree(user_data, ignore_errors=True)


# ------------------------------------------------------------------------------------- page code

# Load, save, reload the saved copy: the API prompt the frontend would send each time and the
# saved workflows (graphToPrompt().workflow is what Save writes).
ROUND_TRIP = """async ([wf, name]) => {
  const app = window.comfyAPI.app.app;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const ticks = () => Number(document.documentElement.dataset.dreamshotRefreshes ?? 0);
  const settle = async () => {  // two whole refresh passes of the extension after this point
    const start = ticks(), until = Date.now() + 30000;
    while (ticks() < start + 2) { if (Date.now() > until) throw new Error("DreamShot panels never refreshed"); await sleep(50); }
  };
  const api = (output) => Object.fromEntries(Object.entries(output).map(
    ([id, n]) => [id, {class_type: n.class_type, inputs: n.inputs}]));
  const out = {};
  await app.loadGraphData(wf, true, true, name, {showMissingModelsDialog: false});
  await settle();
  let p = await app.graphToPrompt();
  out.loaded = api(p.output);
  out.saved = JSON.parse(JSON.stringify(p.workflow));
  await app.loadGraphData(out.saved, true, true, `${name}-saved`, {showMissingModelsDialog: false});
  await settle();
  p = await app.graphToPrompt();
  out.reloaded = api(p.output);
  out.resaved = JSON.parse(JSON.stringify(p.workflow));
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  return out;
}"""

DESCRIBE = """() => {
  const app = window.comfyAPI.app.app, LG = window.LiteGraph;
  return app.graph.nodes.map((n) => ({
    id: n.id, type: n.type, registered: !!LG.registered_node_types[n.type],
    category: n.constructor?.nodeData?.category ?? null, size: [...n.size],
    sockets: (n.inputs ?? []).map((input, slot) => [input, slot]).filter(([input]) => !input.widget)
      .map(([input, slot]) => [input.name, input.type, n.isInputConnected(slot)]),
    widgets: (n.widgets ?? []).map((w) => w.name),
    list: [...(n.widgets?.find((w) => w.name === "dreamshot_shot_list")?.element
               ?.querySelectorAll(".dreamshot-shot-text") ?? [])].map((e) => e.textContent),
    locks: [...(n.widgets?.find((w) => w.name === "dreamshot_locks")?.element
                ?.querySelectorAll("button") ?? [])].map((b) => b.getAttribute("aria-pressed")),
    panelInDocument: !!n.widgets?.find((w) => w.name?.startsWith("dreamshot_"))?.element?.isConnected,
  }));
}"""


def wait_for_panels(page) -> None:
    """Until the extension has completed two refresh passes of its panels (it refreshes them every
    500 ms: one pass may have begun before the change), however slow the machine."""
    start = page.evaluate("() => Number(document.documentElement.dataset.dreamshotRefreshes ?? 0)")
    page.wait_for_function("(start) => Number(document.documentElement.dataset.dreamshotRefreshes ?? 0) >= start + 2",
                           arg=start, timeout=30_000)


def shot(page, folder: Path, name: str, focus_type: str | None = None) -> Path:
    """Screenshot, optionally zoomed to 1:1 on the first node of ``focus_type``."""
    if focus_type:
        page.evaluate("""(type) => { const app = window.comfyAPI.app.app;
          const n = app.graph.nodes.find((x) => x.type === type); if (!n) return;
          app.canvas.ds.scale = 1; app.canvas.ds.offset = [-n.pos[0] + 420, -n.pos[1] + 120];
          app.graph.setDirtyCanvas(true, true); }""", focus_type)
    page.wait_for_timeout(400)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    return path


def workflow_prompts(wf: dict) -> list[str]:
    return [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "DreamShotShotScript"]


def prompt_differences(sent: dict, expected: dict) -> list[str]:
    """Where an API prompt differs from the expected one, one line per node input."""
    out = [f"node {i}: {'missing' if i not in sent else 'not in the file'}" for i in sorted(set(sent) ^ set(expected))]
    for i in sorted(set(sent) & set(expected)):
        a, b = sent[i], expected[i]
        if a["class_type"] != b["class_type"]:
            out.append(f"node {i}: {a['class_type']} sent, {b['class_type']} in the file")
            continue
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(name, "(absent)") != b["inputs"].get(name, "(absent)"):
                out.append(f"node {i} ({a['class_type']}) input {name!r}: sent {a['inputs'].get(name, '(absent)')!r}, "
                           f"the file says {b['inputs'].get(name, '(absent)')!r}")
    return out


def link_table_disagreements(wf: dict) -> list[str]:
    """Links whose target slot in the workflow's link table is not the socket that names them."""
    nodes = {str(n["id"]): n for n in wf["nodes"]}
    bad = []
    for link in wf["links"]:
        link_id, target, slot = ((link["id"], link["target_id"], link["target_slot"]) if isinstance(link, dict)
                                 else (link[0], link[3], link[4]))
        inputs = nodes[str(target)].get("inputs") or []
        if not (0 <= slot < len(inputs) and inputs[slot].get("link") == link_id):
            holder = next((i["name"] for i in inputs if i.get("link") == link_id), None)
            bad.append(f"link {link_id}: table says node {target} slot {slot} "
                       f"({inputs[slot]['name'] if 0 <= slot < len(inputs) else 'no such slot'}), "
                       f"socket {holder!r} names it")
    return bad


# ----------------------------------------------------------------------------------------- tests

def test_bundled_workflows_exist():
    assert WORKFLOWS, "no workflows/*.json: run python tests/support/build_workflows.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_bundled_workflow_round_trip(session, screenshots, path):
    """Loaded, saved and reloaded, the workflow sends the server exactly what its file says (every
    link on the socket it was saved on), and our nodes render with their sockets and panels."""
    page = session.page
    wf = json.loads(path.read_text())
    session.console.take()
    expected = ui_to_api(wf, session.object_info)
    out = page.evaluate(ROUND_TRIP, [wf, path.stem])
    wait_for_panels(page)
    nodes = page.evaluate(DESCRIBE)
    errors = session.console.take()
    shot(page, screenshots, f"{session.ui.id}-{path.stem}", focus_type="DreamShotShotSequencePack")

    checks = {"loaded": prompt_differences(out["loaded"], expected),
              "saved: link table": link_table_disagreements(out["saved"]),
              "saved": prompt_differences(ui_to_api(out["saved"], session.object_info), expected),
              "reloaded": prompt_differences(out["reloaded"], expected),
              "saved again: link table": link_table_disagreements(out["resaved"])}
    assert not any(checks.values()), f"{path.name}: {checks}"
    assert not errors, f"{path.name}: {errors}"

    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in wf["nodes"])
    assert all(n["registered"] for n in nodes), [n["type"] for n in nodes if not n["registered"]]
    ours = [n for n in nodes if n["type"].startswith("DreamShot") or n["type"] == "LoadDreamShotModel"]
    assert all(n["category"] and n["category"].startswith("DreamShot/") for n in ours)
    # every template but animate-between-boards (ComfyUI's own Wan nodes only) uses ours
    assert ours or path.stem == "dreamshot_animate_between_boards"
    if path.stem == "dreamshot_animate_between_boards":
        assert {"WanFirstLastFrameToVideo", "CreateVideo", "SaveVideo"} <= {n["type"] for n in nodes}

    # every node shows its inputs as widgets, the new ones of issue 26 included
    for n in nodes:
        if n["type"] in WIDGETS:
            assert set(WIDGETS[n["type"]]) <= set(n["widgets"]), (n["type"], n["widgets"])

    prompts = workflow_prompts(wf)
    for pack in (n for n in nodes if n["type"] == "DreamShotShotSequencePack"):
        names = [s[0] for s in pack["sockets"]]
        for base, kind in (("shots", "DREAMSHOT_SHOTS"), ("characters", "DREAMSHOT_CHARACTERS")):
            linked = next(s[2] for s in pack["sockets"] if s[0] == base)
            # A linked family gets exactly one spare socket right after it.
            if linked:
                spare = names.index(base) + 1
                assert pack["sockets"][spare] == [f"{base}_2", kind, False], pack["sockets"]
            assert f"{base}_3" not in names
        assert pack["panelInDocument"] and len(pack["locks"]) == len(prompts)
    samplers = [n for n in nodes if n["type"] == "DreamShotSampler"]
    assert samplers or not ours
    for sampler in samplers:
        assert sampler["panelInDocument"]
        assert len(sampler["list"]) == len(prompts)
        for j, (line, prompt) in enumerate(zip(sampler["list"], prompts)):
            assert line.startswith(f"{j + 1}. {prompt}"), (line, prompt)


def test_a_workflow_saved_before_shot_timing_still_loads(session, screenshots):
    """A workflow saved before the Shot Script had duration, shot_size, camera, action and dialogue (the
    reference_to_shot template as it was): it loads without an error, shows the new widgets at their
    defaults, and sends the server exactly what today's template sends."""
    page = session.page
    old = json.loads(OLD_WORKFLOW.read_text())
    assert {len(n["widgets_values"]) for n in old["nodes"] if n["type"] == "DreamShotShotScript"} == {5}
    session.console.take()
    out = page.evaluate(ROUND_TRIP, [old, OLD_WORKFLOW.stem])
    wait_for_panels(page)
    nodes = page.evaluate(DESCRIBE)
    errors = session.console.take()
    shot(page, screenshots, f"{session.ui.id}-old-workflow", focus_type="DreamShotShotScript")
    assert not errors, errors
    current = json.loads((REPO / "workflows" / "dreamshot_reference_to_shot.json").read_text())
    expected = ui_to_api(current, session.object_info)
    assert not prompt_differences(out["loaded"], expected)
    assert not prompt_differences(out["reloaded"], expected)
    scripts = [n for n in nodes if n["type"] == "DreamShotShotScript"]
    assert len(scripts) == 4 and all(set(WIDGETS["DreamShotShotScript"]) <= set(n["widgets"]) for n in scripts)
    sent = [out["loaded"][str(n["id"])]["inputs"] for n in scripts]
    assert {(i["duration"], i["shot_size"], i["camera"], i["action"], i["dialogue"]) for i in sent} == \
        {(2.0, "", "static", "", "")}


BUILD = """async () => {
  const app = window.comfyAPI.app.app, LG = window.LiteGraph;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const ticks = () => Number(document.documentElement.dataset.dreamshotRefreshes ?? 0);
  const settle = async () => {  // two whole refresh passes of the extension after this point
    const start = ticks(), until = Date.now() + 30000;
    while (ticks() < start + 2) { if (Date.now() > until) throw new Error("DreamShot panels never refreshed"); await sleep(50); }
  };
  const sockets = (n) => n.inputs.map((input, slot) => [input, slot]).filter(([input]) => !input.widget)
    .map(([input, slot]) => input.name + (n.isInputConnected(slot) ? "*" : ""));
  const links = async (id) => Object.fromEntries(Object.entries((await app.graphToPrompt()).output[String(id)].inputs)
    .filter(([k]) => /^(shots|characters|keyframes)/.test(k)).map(([k, v]) => [k, String(v[0])]));
  const out = {};
  app.graph.clear();
  const add = (type, pos) => { const n = LG.createNode(type); n.pos = pos; app.graph.add(n); return n; };
  const pack = add("DreamShotShotSequencePack", [560, 60]);
  const sampler = add("DreamShotSampler", [1000, 60]);
  pack.connect(0, sampler, sampler.inputs.findIndex((i) => i.name === "sequence"));
  const script = (prompt, chars, pos) => {
    const n = add("DreamShotShotScript", pos);
    n.widgets.find((w) => w.name === "prompt").value = prompt;
    n.widgets.find((w) => w.name === "characters").value = chars;
    return n;
  };
  const slot = (name) => pack.inputs.findIndex((i) => i.name === name);
  out.fresh = sockets(pack);
  const a = script("Mira waits at the bus stop", "Mira", [100, 0]);
  a.connect(0, pack, slot("shots"));
  await sleep(30);
  out.afterFirst = sockets(pack);
  const b = script('<img src=x onerror="window.__dreamshotXss=1">Theo & <b>Mira</b>', "Theo, Mira", [100, 300]);
  b.connect(0, pack, slot("shots_2"));
  await sleep(30);
  out.afterSecond = sockets(pack);
  const c1 = add("DreamShotCharacterReference", [-300, 600]);
  c1.connect(0, pack, slot("characters"));
  await sleep(30);
  out.afterCharacter = sockets(pack);
  const keys = add("LoadImage", [-300, 0]);
  keys.connect(0, pack, slot("keyframes"));
  await sleep(30);
  out.afterKeyframes = sockets(pack);
  out.promptLinks = await links(pack.id);
  out.ids = {a: String(a.id), b: String(b.id), c1: String(c1.id), keys: String(keys.id)};
  // save and reload: the sockets and their links come back, in order
  const saved = JSON.parse(JSON.stringify((await app.graphToPrompt()).workflow));
  await app.loadGraphData(saved, true, true, "dreamshot-roundtrip", {showMissingModelsDialog: false});
  await settle();
  const pack2 = app.graph.getNodeById(pack.id);
  out.afterReload = sockets(pack2);
  out.reloadLinks = await links(pack.id);
  out.modifiedAfterReload = app.extensionManager.workflow?.activeWorkflow?.isModified ?? null;
  out.packId = String(pack.id);
  out.samplerId = String(sampler.id);
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  await settle();
  const list = app.graph.getNodeById(sampler.id).widgets.find((w) => w.name === "dreamshot_shot_list").element;
  out.list = [...list.querySelectorAll(".dreamshot-shot-text")].map((e) => e.textContent);
  out.injected = document.querySelectorAll(".dreamshot-panel img, .dreamshot-panel b").length;
  out.xss = window.__dreamshotXss ?? null;
  const locks = pack2.widgets.find((w) => w.name === "dreamshot_locks").element;
  out.locks0 = [pack2.widgets.find((w) => w.name === "lock_shots").value,
                [...locks.querySelectorAll("button")].map((x) => x.getAttribute("aria-pressed"))];
  return out;
}"""

LOCKS = """async (packId) => {
  const app = window.comfyAPI.app.app;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const ticks = () => Number(document.documentElement.dataset.dreamshotRefreshes ?? 0);
  const settle = async () => {  // two whole refresh passes of the extension after this point
    const start = ticks(), until = Date.now() + 30000;
    while (ticks() < start + 2) { if (Date.now() > until) throw new Error("DreamShot panels never refreshed"); await sleep(50); }
  };
  const pack = app.graph.getNodeById(packId);
  const locks = pack.widgets.find((w) => w.name === "dreamshot_locks").element;
  const lockWidget = pack.widgets.find((w) => w.name === "lock_shots");
  const pressed = () => [...locks.querySelectorAll("button")].map((x) => x.getAttribute("aria-pressed"));
  const out = {locks1: [lockWidget.value, pressed(), locks.textContent]};
  pack.widgets.find((w) => w.name === "mode").value = "edit";
  lockWidget.value = "1";   // set directly: no callback fires, the periodic refresh shows it
  await settle();
  out.locks2 = [lockWidget.value, pressed(), locks.textContent];
  out.promptLock = (await app.graphToPrompt()).output[String(packId)].inputs.lock_shots;
  return out;
}"""

SHRINK = """async ([packId, samplerId]) => {
  const app = window.comfyAPI.app.app;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const pack = app.graph.getNodeById(packId);
  const sockets = (n) => n.inputs.map((input, slot) => [input, slot]).filter(([input]) => !input.widget)
    .map(([input, slot]) => input.name + (n.isInputConnected(slot) ? "*" : ""));
  const out = {};
  const list = app.graph.getNodeById(samplerId).widgets.find((w) => w.name === "dreamshot_shot_list").element;
  out.listEdit = [...list.querySelectorAll(".dreamshot-tag")].map((e) => e.textContent);
  // disconnecting the last chain removes the spare behind it
  pack.disconnectInput(pack.inputs.findIndex((i) => i.name === "shots_2"));
  await sleep(30);
  out.afterDisconnect = sockets(pack);
  pack.disconnectInput(pack.inputs.findIndex((i) => i.name === "characters"));
  await sleep(30);
  out.afterCharacterGone = sockets(pack);
  const p = (await app.graphToPrompt()).output[String(packId)].inputs;
  out.promptLinks = Object.fromEntries(Object.entries(p).filter(([k, v]) => Array.isArray(v)).map(([k, v]) => [k, String(v[0])]));
  return out;
}"""


def test_dynamic_sockets_locks_and_escaping(session, screenshots):
    page = session.page
    session.console.take()
    out = page.evaluate(BUILD)
    ids = out["ids"]
    assert out["fresh"] == ["vae", "clip", "shots", "characters", "keyframes"]
    assert out["afterFirst"] == ["vae", "clip", "shots*", "shots_2", "characters", "keyframes"]
    assert out["afterSecond"] == ["vae", "clip", "shots*", "shots_2*", "shots_3", "characters", "keyframes"]
    grown = ["vae", "clip", "shots*", "shots_2*", "shots_3", "characters*", "characters_2", "keyframes"]
    assert out["afterCharacter"] == grown
    assert out["afterKeyframes"] == grown[:-1] + ["keyframes*"]
    # What the server would receive: each chain on its socket (joined in number order by the node).
    expected_links = {"shots": ids["a"], "shots_2": ids["b"], "characters": ids["c1"], "keyframes": ids["keys"]}
    assert out["promptLinks"] == expected_links
    assert out["afterReload"] == out["afterKeyframes"] and out["reloadLinks"] == expected_links
    assert out["modifiedAfterReload"] in (False, None)

    assert out["list"] == ["1. Mira waits at the bus stop \u2014 Mira",
                           '2. <img src=x onerror="window.__dreamshotXss=1">Theo & <b>Mira</b> \u2014 Theo, Mira']
    assert out["injected"] == 0 and out["xss"] is None
    assert out["locks0"] == ["", ["false", "false"]]

    # The lock toggles take a real mouse click where the node shows them.
    page.locator(".dreamshot-locks button").nth(1).click()
    page.wait_for_function("""(packId) => window.comfyAPI.app.app.graph.getNodeById(packId)
        .widgets.find((w) => w.name === "lock_shots").value === "2" """, arg=out["packId"], timeout=30_000)
    out.update(page.evaluate(LOCKS, out["packId"]))
    shot(page, screenshots, f"{session.ui.id}-interaction", focus_type="DreamShotShotSequencePack")
    out.update(page.evaluate(SHRINK, [out["packId"], out["samplerId"]]))
    assert not session.console.take()

    assert out["locks1"][:2] == ["2", ["false", "true"]]
    assert "Locks are used in edit mode" in out["locks1"][2]
    assert out["locks2"][:2] == ["1", ["true", "false"]] and out["promptLock"] == "1"
    assert "Locks are used in edit mode" not in out["locks2"][2]      # edit mode, keyframes connected
    assert out["listEdit"] == ["kept", "new"]
    assert out["afterDisconnect"] == ["vae", "clip", "shots*", "shots_2", "characters*", "characters_2", "keyframes*"]
    assert out["afterCharacterGone"] == ["vae", "clip", "shots*", "shots_2", "characters", "keyframes*"]
    assert {k: v for k, v in out["promptLinks"].items() if k not in ("vae", "clip")} == \
        {"shots": ids["a"], "keyframes": ids["keys"]}


RUN_SHEET = """async ([image, count]) => {
  const app = window.comfyAPI.app.app, LG = window.LiteGraph;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  app.graph.clear();
  const add = (type, pos) => { const n = LG.createNode(type); n.pos = pos; app.graph.add(n); return n; };
  const load = add("LoadImage", [0, 100]);
  load.widgets.find((w) => w.name === "image").value = image;
  const batch = add("RepeatImageBatch", [340, 100]);
  batch.widgets.find((w) => w.name === "amount").value = count;
  load.connect(0, batch, 0);
  const sheet = add("DreamShotStoryboardSheet", [680, 100]);
  batch.connect(0, sheet, sheet.inputs.findIndex((i) => i.name === "keyframes"));
  sheet.widgets.find((w) => w.name === "title").value = "Browser <b>sheet</b>";
  sheet.widgets.find((w) => w.name === "filename_prefix").value = "DreamShot/browser_sheet";
  sheet.setSize([560, 520]);
  const before = Object.keys(await (await fetch("/api/history")).json());
  await app.queuePrompt(0, 1);
  let entry = null;
  for (let i = 0; i < 600 && !entry; i++) {
    await sleep(100);
    const history = await (await fetch("/api/history")).json();
    entry = Object.entries(history).find(([id, e]) => !before.includes(id) && e.status?.completed !== undefined
                                         && (e.status.completed || e.status.status_str === "error"))?.[1] ?? null;
  }
  // the preview: fetched and decoded after the execution message (polled, up to 30 s)
  for (let i = 0; i < 300 && entry && !((sheet.imgs ?? []).length && sheet.imgs.every((img) => img.complete)); i++) {
    await sleep(100);
  }
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [20, 0]; app.graph.setDirtyCanvas(true, true);
  return {status: entry?.status?.status_str ?? "timeout", messages: JSON.stringify(entry?.status?.messages ?? []).slice(-2000),
          outputs: entry?.outputs?.[String(sheet.id)] ?? null,
          nodeOutput: app.nodeOutputs?.[String(sheet.id)] ?? null,
          previewImages: (sheet.imgs ?? []).length};
}"""


def test_storyboard_sheet_runs_and_previews(session, screenshots):
    if "DreamShotStoryboardSheet" not in session.object_info:
        pytest.fail("DreamShotStoryboardSheet is not registered: add StoryboardSheet to NODES in nodes/__init__.py")
    page = session.page
    session.console.take()
    out = page.evaluate(RUN_SHEET, ["dreamshot_character_a.png", 4])
    shot(page, screenshots, f"{session.ui.id}-storyboard_sheet")
    assert not session.console.take()
    assert out["status"] == "success", out["messages"]
    [image] = out["outputs"]["images"]
    assert image["subfolder"] == "DreamShot" and image["type"] == "output"
    assert re.fullmatch(r"browser_sheet_\d{5}_\.png", image["filename"])
    assert out["nodeOutput"]["images"] == [image] and out["previewImages"] == 1
    view = f"{session.url}/api/view?type=output&subfolder=DreamShot&filename="
    assert fetch(view + image["filename"]).startswith(b"\x89PNG")
    assert fetch(view + image["filename"].replace(".png", ".pdf")).startswith(b"%PDF")
