// DreamShot frontend extension.
//
// - Shot Sequence Pack: a spare "shots_N" / "characters_N" input appears when the last one is
//   connected and trailing empty ones go away when disconnected (the Python node joins the chains
//   in number order); a row of per-shot lock toggles that writes the lock_shots widget (edit mode).
// - DreamShot Sampler: a list of the shots that reach it ("1. prompt — characters").
//
// User text (prompts, names) only ever enters the DOM through textContent or DOM properties,
// never through innerHTML. The graph logic lives in dreamshot_logic.js (tested with node --test).
//
// `app` comes from window.comfyAPI (set by the frontend before extensions load); the documented
// module path "../../scripts/app.js" is the fallback. No deprecated imports (scripts/ui.js,
// extensions/core/*).

import {
  NODE_IDS,
  formatShotLine,
  isInputLinked,
  storyForPack,
  storyForSampler,
  storySignature,
  syncDynamicInputs,
  toggleShot,
} from "./dreamshot_logic.js";

const app = window.comfyAPI?.app?.app ?? (await import("../../scripts/app.js")).app;

const INPUT = 1; // LiteGraph NodeSlotType.INPUT
const REFRESH_MS = 500;
const MAX_PANEL_HEIGHT = 320; // longer lists scroll
const PACK_MIN_LINES = 6; // the lock row and its hints
const SAMPLER_MIN_LINES = 5;
const state = new WeakMap(); // node -> {kind, element, signature, syncQueued}

// --------------------------------------------------------------------------------------- helpers

/** Call ``fn`` after the node's own handler (instance-level hook, no prototype patching). */
function chainCallback(object, name, fn) {
  const original = object[name];
  object[name] = function (...args) {
    const result = original?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Grow the node to its minimum size, plus ``extra`` pixels of height. Never shrinks it. */
function fitNode(node, extra = 0) {
  const min = node.computeSize?.();
  if (!min) return;
  const height = min[1] + extra;
  if (node.size[0] < min[0] || node.size[1] < height) {
    node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], height)]);
  }
  node.setDirtyCanvas?.(true, true);
}

function injectStyle() {
  if (document.getElementById("dreamshot-style")) return;
  const style = el("style");
  style.id = "dreamshot-style";
  style.textContent = `
    .dreamshot-panel { font: 12px/1.35 sans-serif; color: var(--input-text, #ddd); overflow: auto;
      box-sizing: border-box; padding: 4px 6px; background: var(--comfy-input-bg, #222); border-radius: 6px; }
    .dreamshot-panel .dreamshot-head { opacity: 0.75; margin-bottom: 3px; }
    .dreamshot-panel ol { margin: 0; padding: 0; list-style: none; }
    .dreamshot-panel li { margin: 0 0 3px 0; word-break: break-word; }
    .dreamshot-panel .dreamshot-tag { margin-left: 6px; padding: 0 4px; border-radius: 3px; font-size: 10px;
      background: #3a5f3a; }
    .dreamshot-panel .dreamshot-tag.new { background: #6a4a2a; }
    .dreamshot-locks-row { display: flex; flex-wrap: wrap; gap: 4px; }
    .dreamshot-lock { min-width: 28px; padding: 2px 6px; border-radius: 4px; cursor: pointer;
      border: 1px solid var(--border-color, #555); background: var(--comfy-menu-bg, #333); color: inherit; }
    .dreamshot-lock[aria-pressed="true"] { background: #3a5f3a; border-color: #6c6; }
    .dreamshot-hint { margin-top: 3px; opacity: 0.7; font-size: 11px; }
    .dreamshot-hint.warn { color: #e9a; opacity: 1; }
  `;
  document.head.appendChild(style);
}

const panelHeight = (lines) => Math.min(MAX_PANEL_HEIGHT, 24 + 17 * lines);

function addPanel(node, name, className, minLines) {
  const element = el("div", `dreamshot-panel ${className}`);
  // The minimum is small so loaded workflows keep their layout (the panel scrolls); new nodes
  // grow to show everything (see refresh).
  const widget = node.addDOMWidget(name, "dreamshot_panel", element, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => panelHeight(Math.min(minLines, state.get(node)?.lines ?? 1)),
  });
  widget.serialize = false;
  return element;
}

// ------------------------------------------------------------------------------ dynamic inputs

/** Keep one spare shots_N / characters_N socket (see dreamshot_logic.js) and fit the node. */
function syncPack(node) {
  if (syncDynamicInputs(node)) fitNode(node);
}

function queueSync(node) {
  const s = state.get(node);
  if (!s || s.syncQueued) return;
  s.syncQueued = true;
  // After LiteGraph has finished the (dis)connection that called us.
  queueMicrotask(() => {
    s.syncQueued = false;
    syncPack(node);
    refresh(node);
  });
}

// ----------------------------------------------------------------------------- pack: lock row

function renderLocks(node, s, story) {
  const root = s.element;
  root.replaceChildren();
  root.appendChild(el("div", "dreamshot-head", "Lock shots (kept in edit mode)"));
  const row = el("div", "dreamshot-locks-row");
  story.shots.forEach((shot, index) => {
    const button = el("button", "dreamshot-lock", String(index + 1));
    button.type = "button";
    button.setAttribute("aria-pressed", story.locked[index] ? "true" : "false");
    button.title = `${story.locked[index] ? "Locked" : "Regenerated"}: ${formatShotLine(index, shot, 200)}`;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      const widget = findWidget(node, "lock_shots");
      if (!widget) return;
      const value = toggleShot(widget.value, story.shots.length, index);
      widget.value = value;
      widget.callback?.(value);
      refresh(node, true);
    });
    row.appendChild(button);
  });
  root.appendChild(row);

  const hints = [];
  if (!story.shots.length) hints.push(["Connect Shot Scripts to 'shots' to lock shots.", false]);
  if (story.invalid.length) hints.push([`Not understood in lock_shots: ${story.invalid.join(", ")}`, true]);
  const anyLocked = story.locked.some(Boolean);
  if (anyLocked && story.mode !== "edit") hints.push([`Locks are used in edit mode (mode is ${story.mode}).`, true]);
  if (anyLocked && !isInputLinked(node, "keyframes")) hints.push(["Connect the earlier storyboard to 'keyframes'.", true]);
  for (const [text, warn] of hints) root.appendChild(el("div", `dreamshot-hint${warn ? " warn" : ""}`, text));
  s.lines = 1 + Math.max(1, Math.ceil(story.shots.length / 8)) * 1.5 + hints.length;
}

// ----------------------------------------------------------------------------- sampler: shots

function renderShotList(node, s, story) {
  const root = s.element;
  root.replaceChildren();
  if (!story.pack) {
    root.appendChild(el("div", "dreamshot-head", "Connect a Shot Sequence Pack to list the shots."));
    s.lines = 1;
    return;
  }
  const edit = story.mode === "edit";
  root.appendChild(el("div", "dreamshot-head", `${story.shots.length} shot(s), ${story.mode ?? "?"}`));
  const list = el("ol", "dreamshot-shots");
  story.shots.forEach((shot, index) => {
    const item = el("li", "dreamshot-shot");
    item.appendChild(el("span", "dreamshot-shot-text", formatShotLine(index, shot)));
    if (edit) {
      const locked = story.locked[index];
      item.appendChild(el("span", `dreamshot-tag${locked ? "" : " new"}`, locked ? "kept" : "new"));
    }
    list.appendChild(item);
  });
  root.appendChild(list);
  // Lines the list needs at the node's width (12 px text is ~6.5 px a character).
  const perLine = Math.max(20, Math.floor(((node.size?.[0] ?? 300) - 32) / 6.5));
  s.lines = 1 + story.shots.reduce((n, shot, i) => n + Math.ceil((formatShotLine(i, shot).length + 6) / perLine) + 0.2, 0);
}

// --------------------------------------------------------------------------------- refreshing

function refresh(node, force = false) {
  const s = state.get(node);
  if (!s || !node.graph) return;
  const story = s.kind === "pack" ? storyForPack(node.graph, node) : storyForSampler(node.graph, node);
  const signature = `${storySignature(story)}|${s.kind === "pack" && isInputLinked(node, "keyframes")}`;
  if (!force && signature === s.signature) return;
  s.signature = signature;
  (s.kind === "pack" ? renderLocks : renderShotList)(node, s, story);
  const minLines = s.kind === "pack" ? PACK_MIN_LINES : SAMPLER_MIN_LINES;
  fitNode(node, s.autoSize ? panelHeight(s.lines) - panelHeight(Math.min(minLines, s.lines)) : 0);
}

let refreshes = 0;

function refreshAll() {
  const graph = app.canvas?.graph ?? app.graph; // the (sub)graph on screen
  for (const node of graph?.nodes ?? []) {
    if (state.has(node)) refresh(node);
  }
  // How many passes have completed: the browser test waits for passes, not for a guessed delay.
  document.documentElement.dataset.dreamshotRefreshes = String(++refreshes);
}

// ------------------------------------------------------------------------------------- setup

function setupPack(node) {
  const s = { kind: "pack", element: null, signature: null, syncQueued: false, lines: 2, autoSize: true };
  state.set(node, s);
  s.element = addPanel(node, "dreamshot_locks", "dreamshot-locks", PACK_MIN_LINES);
  chainCallback(node, "onConnectionsChange", (type) => {
    if (type === INPUT) queueSync(node);
  });
  chainCallback(node, "onConfigure", () => {
    s.autoSize = false; // a saved node keeps its saved size
    queueSync(node);
  });
  const lock = findWidget(node, "lock_shots");
  if (lock) chainCallback(lock, "callback", () => refresh(node));
  const mode = findWidget(node, "mode");
  if (mode) chainCallback(mode, "callback", () => refresh(node));
}

function setupSampler(node) {
  const s = { kind: "sampler", element: null, signature: null, lines: 1, autoSize: true };
  state.set(node, s);
  s.element = addPanel(node, "dreamshot_shot_list", "dreamshot-shotlist", SAMPLER_MIN_LINES);
  chainCallback(node, "onConfigure", () => {
    s.autoSize = false;
  });
  chainCallback(node, "onConnectionsChange", () => queueMicrotask(() => refresh(node)));
}

app.registerExtension({
  name: "DreamShot.UI",
  setup() {
    injectStyle();
    setInterval(refreshAll, REFRESH_MS);
  },
  nodeCreated(node) {
    if (!node.constructor?.nodeData?.category?.startsWith("DreamShot")) return;
    if (node.comfyClass === NODE_IDS.sequencePack) setupPack(node);
    else if (node.comfyClass === NODE_IDS.sampler) setupSampler(node);
  },
  loadedGraphNode(node) {
    // Inside loadGraphData, before the workflow's saved state is recorded: a loaded workflow
    // with its spare sockets does not count as modified.
    if (state.get(node)?.kind === "pack") syncPack(node);
    if (state.has(node)) refresh(node, true);
  },
});
