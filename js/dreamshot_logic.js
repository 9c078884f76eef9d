// DreamShot frontend logic with no dependency on the ComfyUI app or the DOM, so that
// `node --test tests/js/` can import it. dreamshot.js wires it into the graph.
//
// The frontend imports every .js under js/ as an extension module; this one only exports
// functions and registers nothing.

export const NODE_IDS = Object.freeze({
  characterReference: "DreamShotCharacterReference",
  shotScript: "DreamShotShotScript",
  sequencePack: "DreamShotShotSequencePack",
  sampler: "DreamShotSampler",
});

/** Socket families that grow as they are connected: base name -> socket type. */
export const DYNAMIC_SOCKETS = Object.freeze({
  shots: "DREAMSHOT_SHOTS",
  characters: "DREAMSHOT_CHARACTERS",
});

const REROUTE_TYPES = new Set(["Reroute"]);
const MAX_HOPS = 10000;

// ------------------------------------------------------------------------------------ escaping

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for HTML. The extension itself only ever uses textContent; this is for any
 *  string that must be built as markup (e.g. a title attribute assembled by hand). */
export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

// ------------------------------------------------------------------------------- dynamic inputs

/** 1 for "shots", N for "shots_N" (N >= 2), null for anything else. */
export function socketIndex(name, base) {
  if (name === base) return 1;
  const prefix = `${base}_`;
  if (typeof name !== "string" || !name.startsWith(prefix)) return null;
  const digits = name.slice(prefix.length);
  if (!/^[1-9][0-9]*$/.test(digits)) return null;
  const n = Number(digits);
  return n >= 2 ? n : null;
}

/** The sockets of one family on ``node``, sorted by index: [{name, index, position, linked}]. */
export function familySockets(node, base) {
  const out = [];
  (node?.inputs ?? []).forEach((input, position) => {
    const index = socketIndex(input?.name, base);
    if (index !== null) out.push({ name: input.name, index, position, linked: node.isInputConnected(position) });
  });
  return out.sort((a, b) => a.index - b.index);
}

/** The name after the highest socket of the family: "shots" -> "shots_2", "shots_3" -> "shots_4". */
export function nextSocketName(names, base) {
  let top = 0;
  for (const name of names ?? []) {
    const index = socketIndex(name, base);
    if (index !== null) top = Math.max(top, index);
  }
  return top === 0 ? base : `${base}_${top + 1}`;
}

/**
 * What to change so the family ends with exactly one empty socket after its last linked one.
 *
 * Empty sockets in the middle stay (removing them would renumber the others); the base socket is
 * never removed. Returns {add: name | null, remove: [names, last first]}.
 */
export function planDynamicSockets(node, base) {
  const sockets = familySockets(node, base);
  if (sockets.length === 0) return { add: null, remove: [] };
  const lastLinked = sockets.reduce((top, s) => (s.linked ? Math.max(top, s.index) : top), 0);
  const after = sockets.filter((s) => s.index > lastLinked);
  if (after.length === 0) {
    return { add: nextSocketName(sockets.map((s) => s.name), base), remove: [] };
  }
  // Keep the lowest empty socket after the last linked one as the spare; drop the rest.
  const remove = after.slice(1).filter((s) => s.index !== 1).map((s) => s.name).reverse();
  return { add: null, remove };
}

/** Where a new socket of the family goes: right after its last socket (else at the end). */
export function insertPosition(inputs, base) {
  const positions = [];
  (inputs ?? []).forEach((input, position) => {
    if (socketIndex(input?.name, base) !== null) positions.push(position);
  });
  return positions.length ? Math.max(...positions) + 1 : (inputs ?? []).length;
}

/**
 * The input order with each family's numbered sockets right after its base, in number order,
 * everything else keeping its place. (A reloaded workflow gets its extra sockets appended at the
 * end; this puts them back next to "shots" / "characters".)
 */
export function orderDynamicSockets(names, bases = Object.keys(DYNAMIC_SOCKETS)) {
  const numbered = new Map(bases.map((base) => [base, []]));
  const rest = [];
  for (const name of names) {
    const base = bases.find((b) => (socketIndex(name, b) ?? 1) > 1);
    if (base) numbered.get(base).push(name);
    else rest.push(name);
  }
  const out = [];
  for (const name of rest) {
    out.push(name);
    if (numbered.has(name)) {
      out.push(...numbered.get(name).sort((a, b) => socketIndex(a, name) - socketIndex(b, name)));
      numbered.delete(name);
    }
  }
  for (const extra of numbered.values()) out.push(...extra); // a family without its base: at the end
  return out;
}

// ------------------------------------------------------------------------------ links on inputs
//
// A link names its target socket by position (link.target_slot). Frontends up to 1.52 also keep
// the link id on the socket object (input.link); from 1.53.6 the graph's link store is the only
// record: a socket's link is whichever link targets its position, reading input.link warns
// (deprecated) and assigning it does nothing, and a link cannot be moved onto an occupied slot.
// So links are read with node.getInputLink / isInputConnected (both eras) and sockets are
// reordered by moving the link objects with them (reorderInputs).

function inputSlot(node, name) {
  return node?.inputs?.findIndex((i) => i.name === name) ?? -1;
}

/** The link object on ``node``'s input ``name``, or null. */
export function inputLink(node, name) {
  const slot = inputSlot(node, name);
  return slot >= 0 ? node.getInputLink(slot) ?? null : null;
}

/** Whether ``node``'s input ``name`` is connected. */
export function isInputLinked(node, name) {
  const slot = inputSlot(node, name);
  return slot >= 0 && node.isInputConnected(slot);
}

/**
 * Rearrange ``node.inputs`` into ``order`` (the same socket objects) and move every link with its
 * socket. Links are parked on slots past the end first, so no two ever target one slot.
 */
export function reorderInputs(node, order) {
  const linked = new Map();
  node.inputs.forEach((input, slot) => {
    const link = node.getInputLink(slot);
    if (link) linked.set(input, link);
  });
  // A link cut from its origin behind a reroute floats, still pointing at a socket by position.
  const floating = [...(node.graph?.floatingLinks?.values() ?? [])]
    .filter((link) => String(link.target_id) === String(node.id) && link.target_slot >= 0)
    .map((link) => [link, node.inputs[link.target_slot]]);
  node.inputs.splice(0, node.inputs.length, ...order);
  const moves = [];
  order.forEach((input, slot) => {
    const link = linked.get(input);
    if (link && link.target_slot !== slot) moves.push([link, slot]);
  });
  moves.forEach(([link], k) => {
    link.target_slot = order.length + k;
  });
  for (const [link, slot] of moves) link.target_slot = slot;
  for (const [link, input] of floating) {
    const slot = order.indexOf(input);
    if (slot >= 0) link.target_slot = slot;
  }
}

/** Put numbered sockets back next to their base, in number order. Returns true if it moved any. */
export function orderInputs(node) {
  const names = node.inputs.map((i) => i.name);
  const order = orderDynamicSockets(names);
  if (order.every((name, i) => name === names[i])) return false;
  const byName = new Map(node.inputs.map((i) => [i.name, i]));
  reorderInputs(node, order.map((name) => byName.get(name)));
  return true;
}

/**
 * Make each socket family of a Shot Sequence Pack end with exactly one empty socket, right after
 * the family. Returns true if anything changed.
 */
export function syncDynamicInputs(node) {
  if (!node.inputs || !node.graph) return false;
  let changed = orderInputs(node);
  for (const [base, type] of Object.entries(DYNAMIC_SOCKETS)) {
    const plan = planDynamicSockets(node, base);
    for (const name of plan.remove) {
      const slot = inputSlot(node, name);
      if (slot >= 0 && !node.isInputConnected(slot)) {
        node.removeInput(slot);
        changed = true;
      }
    }
    if (plan.add) {
      const at = insertPosition(node.inputs, base);
      const template = node.inputs.find((i) => i.name === base);
      node.addInput(plan.add, type, template?.shape !== undefined ? { shape: template.shape } : undefined);
      const order = [...node.inputs];
      order.splice(at, 0, order.pop());
      reorderInputs(node, order);
      changed = true;
    }
  }
  return changed;
}

// ---------------------------------------------------------------------------------- shot lists

/**
 * Parse a 1-based shot list like "1, 3-4" (as the Python side does) into booleans.
 * Returns {locked: boolean[numShots], invalid: [parts that are not numbers or are out of range]}.
 */
export function parseShotList(text, numShots) {
  const locked = new Array(Math.max(0, numShots | 0)).fill(false);
  const invalid = [];
  for (const raw of String(text ?? "").replace(/;/g, ",").split(",")) {
    const part = raw.trim();
    if (!part) continue;
    const match = /^(\d+)\s*(?:-\s*(\d+))?$/.exec(part);
    if (!match) {
      invalid.push(part);
      continue;
    }
    let lo = Number(match[1]);
    let hi = match[2] === undefined ? lo : Number(match[2]);
    if (lo > hi) [lo, hi] = [hi, lo];
    if (lo < 1 || hi > locked.length) {
      invalid.push(part);
      continue;
    }
    for (let i = lo; i <= hi; i++) locked[i - 1] = true;
  }
  return { locked, invalid };
}

/** [true, true, false, true] -> "1, 2, 4"; runs of three or more become ranges: "1-3, 5". */
export function formatShotList(locked) {
  const parts = [];
  const flags = Array.from(locked ?? [], Boolean);
  for (let i = 0; i < flags.length; i++) {
    if (!flags[i]) continue;
    let j = i;
    while (j + 1 < flags.length && flags[j + 1]) j++;
    if (j - i >= 2) parts.push(`${i + 1}-${j + 1}`);
    else for (let k = i; k <= j; k++) parts.push(String(k + 1));
    i = j;
  }
  return parts.join(", ");
}

/** Flip shot ``index`` (0-based) in a lock list and return the new text. */
export function toggleShot(text, numShots, index) {
  const { locked } = parseShotList(text, numShots);
  if (index >= 0 && index < locked.length) locked[index] = !locked[index];
  return formatShotList(locked);
}

// ------------------------------------------------------------------------------- graph walking

function nodeType(node) {
  return node?.comfyClass ?? node?.type ?? null;
}

/** The node feeding ``node``'s input ``name`` (through legacy Reroute nodes), or null. */
export function upstreamNode(graph, node, name) {
  let link = inputLink(node, name);
  for (let hops = 0; hops < MAX_HOPS && link; hops++) {
    const current = graph.getNodeById(link.origin_id) ?? null;
    if (!current || !REROUTE_TYPES.has(nodeType(current))) return current;
    link = current.inputs?.length ? current.getInputLink(0) : null;
  }
  return null;
}

/** The value of a widget, or of the node feeding it when the widget was turned into an input. */
export function widgetValue(graph, node, name) {
  const input = node?.inputs?.find((i) => i.name === name && i.widget);
  if (input && isInputLinked(node, name)) {
    const source = upstreamNode(graph, node, name);
    const value = source?.widgets?.find((w) => typeof w.value === "string")?.value;
    return typeof value === "string" ? value : null;
  }
  const widget = node?.widgets?.find((w) => w.name === name);
  return widget === undefined ? null : widget.value;
}

/** Split "Mira, Theo" the way the Python side does (commas, semicolons, newlines; no blanks). */
export function parseCharacterNames(text) {
  const names = [];
  for (const part of String(text ?? "").split(/[,;\n]/)) {
    const name = part.trim();
    if (name && !names.includes(name)) names.push(name);
  }
  return names;
}

/** The nodes of one chain ending at ``last``, first first, following ``linkName``. */
function walkChain(graph, last, type, linkName, seen) {
  const chain = [];
  let node = last;
  while (node && nodeType(node) === type && !seen.has(node.id)) {
    seen.add(node.id);
    chain.push(node);
    node = upstreamNode(graph, node, linkName);
  }
  // A chain that does not end in one of ours (another pack's node, a cycle) is marked.
  const broken = node ? { id: node.id, title: node.title ?? nodeType(node) ?? "?" } : null;
  return { nodes: chain.reverse(), broken };
}

/**
 * The shots reaching a Shot Sequence Pack, in story order: the chain on "shots", then those on
 * "shots_2", "shots_3", ... (as the Python node joins them).
 * Returns [{nodeId, prompt, characters: [names], linked: bool}] plus {broken} entries.
 */
export function collectShots(graph, pack) {
  const shots = [];
  const seen = new Set();
  for (const socket of familySockets(pack, "shots")) {
    if (!socket.linked) continue;
    const start = upstreamNode(graph, pack, socket.name);
    const { nodes, broken } = walkChain(graph, start, NODE_IDS.shotScript, "shots", seen);
    // Shots from a node that is not a Shot Script (another pack's) come before this chain.
    if (broken) shots.push({ broken });
    for (const node of nodes) {
      const prompt = widgetValue(graph, node, "prompt");
      const characters = widgetValue(graph, node, "characters");
      shots.push({
        nodeId: node.id,
        prompt: typeof prompt === "string" ? prompt : null,
        characters: parseCharacterNames(typeof characters === "string" ? characters : ""),
      });
    }
  }
  return shots;
}

/** The character names reaching a Shot Sequence Pack, in reference order. */
export function collectCharacters(graph, pack) {
  const names = [];
  const seen = new Set();
  for (const socket of familySockets(pack, "characters")) {
    if (!socket.linked) continue;
    const start = upstreamNode(graph, pack, socket.name);
    const { nodes } = walkChain(graph, start, NODE_IDS.characterReference, "characters", seen);
    for (const node of nodes) {
      const name = widgetValue(graph, node, "name");
      names.push(typeof name === "string" ? name.trim() : "?");
    }
  }
  return names;
}

/**
 * Everything the Sampler's shot list shows: the pack feeding it, its mode, the shots and which
 * are locked (only meaningful in edit mode).
 */
export function storyForSampler(graph, sampler) {
  const pack = upstreamNode(graph, sampler, "sequence");
  if (!pack || nodeType(pack) !== NODE_IDS.sequencePack) return { pack: null, shots: [], mode: null, locked: [] };
  return storyForPack(graph, pack);
}

export function storyForPack(graph, pack) {
  const shots = collectShots(graph, pack).filter((s) => !s.broken);
  const mode = widgetValue(graph, pack, "mode");
  const lockText = widgetValue(graph, pack, "lock_shots") ?? "";
  const { locked, invalid } = parseShotList(lockText, shots.length);
  return { pack, shots, mode, lockText, locked, invalid, characters: collectCharacters(graph, pack) };
}

/** One line of the shot list: "1. prompt — Mira, Theo" (text only; the caller escapes nothing,
 *  it puts this into textContent). Long prompts are cut at ``maxLength`` characters. */
export function formatShotLine(index, shot, maxLength = 120) {
  let prompt = shot.prompt === null ? "(prompt from a linked node)" : String(shot.prompt).replace(/\s+/g, " ").trim();
  if (!prompt) prompt = "(empty prompt)";
  if (prompt.length > maxLength) prompt = `${prompt.slice(0, maxLength - 1).trimEnd()}\u2026`;
  const who = shot.characters?.length ? ` \u2014 ${shot.characters.join(", ")}` : "";
  return `${index + 1}. ${prompt}${who}`;
}

/** A string that changes whenever what the widgets show changes (cheap redraw check). */
export function storySignature(story) {
  return JSON.stringify([story.mode, story.lockText, story.shots.map((s) => [s.prompt, s.characters]),
    story.characters ?? []]);
}
