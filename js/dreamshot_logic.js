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

/** The sockets of one family, sorted by index: [{name, index, position, linked}]. */
export function familySockets(inputs, base) {
  const out = [];
  (inputs ?? []).forEach((input, position) => {
    const index = socketIndex(input?.name, base);
    if (index !== null) out.push({ name: input.name, index, position, linked: input.link != null });
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
export function planDynamicSockets(inputs, base) {
  const sockets = familySockets(inputs, base);
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
  const sockets = familySockets(inputs, base);
  if (sockets.length === 0) return (inputs ?? []).length;
  return Math.max(...sockets.map((s) => s.position)) + 1;
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

/** The link object for an id, from a LiteGraph graph (getLink / links Map / links object). */
function getLink(graph, id) {
  if (id == null || !graph) return null;
  if (typeof graph.getLink === "function") return graph.getLink(id) ?? null;
  const links = graph.links ?? graph._links;
  if (!links) return null;
  return (typeof links.get === "function" ? links.get(id) : links[id]) ?? null;
}

function nodeType(node) {
  return node?.comfyClass ?? node?.type ?? null;
}

/** The node feeding ``node``'s input ``name`` (through legacy Reroute nodes), or null. */
export function upstreamNode(graph, node, name) {
  let input = node?.inputs?.find((i) => i.name === name);
  let current = null;
  for (let hops = 0; hops < MAX_HOPS; hops++) {
    const link = getLink(graph, input?.link);
    if (!link) return null;
    current = graph.getNodeById(link.origin_id) ?? null;
    if (!current || !REROUTE_TYPES.has(nodeType(current))) return current;
    input = current.inputs?.[0];
  }
  return null;
}

/** The value of a widget, or of the node feeding it when the widget was turned into an input. */
export function widgetValue(graph, node, name) {
  const input = node?.inputs?.find((i) => i.name === name && i.widget);
  if (input && input.link != null) {
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
  for (const socket of familySockets(pack?.inputs, "shots")) {
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
  for (const socket of familySockets(pack?.inputs, "characters")) {
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
