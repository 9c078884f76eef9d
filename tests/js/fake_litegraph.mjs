// A minimal LiteGraph-shaped graph for the logic tests, in the two ways frontends keep links on
// inputs (read from the bundles of comfyui-frontend-package 1.27.10 and 1.58.1):
//
// - "legacy" (frontend <= 1.52): every input holds its link id (input.link); link.target_slot is a
//   plain number that LiteGraph keeps in step (removeInput decrements the later ones).
// - "store" (frontend >= 1.53.6): the graph's link store is the only record. An input's link is
//   whichever link targets its position, so it follows the position, not the socket object;
//   reading input.link is deprecated (recorded here) and assigning it does nothing; moving a link
//   onto a slot another link targets is refused with a console error (recorded here).
//
// Nodes: {id, comfyClass, inputs, widgets [{name, value}], getInputLink, isInputConnected,
// addInput, removeInput}; links {id, origin_id, origin_slot, target_id, target_slot}.

export const MODELS = ["legacy", "store"];

class FakeLink {
  constructor(graph, id, originId, targetId, targetSlot) {
    this.graph = graph;
    this.id = id;
    this.origin_id = originId;
    this.origin_slot = 0;
    this.target_id = targetId;
    this._slot = targetSlot;
  }

  get target_slot() {
    return this._slot;
  }

  set target_slot(slot) {
    const graph = this.graph;
    if (graph.model === "store") {
      const other = graph.linkAt(this.target_id, slot);
      if (other && other !== this) {
        graph.errors.push(`link ${this.id}: target slot ${this.target_id}:${slot} is already occupied`);
        return;
      }
    }
    this._slot = slot;
  }
}

class FakeNode {
  constructor(graph, id, comfyClass, widgets, inputs) {
    this.graph = graph;
    this.id = id;
    this.comfyClass = comfyClass;
    this.title = comfyClass;
    this.widgets = Object.entries(widgets).map(([name, value]) => ({ name, value }));
    this.inputs = [];
    for (const spec of inputs) {
      const { name, ...rest } = typeof spec === "string" ? { name: spec } : spec;
      this.addInput(name, rest.type ?? "*", rest);
    }
  }

  addInput(name, type, extra = {}) {
    const input = { name, type, ...extra };
    if (this.graph.model === "legacy") {
      input.link = null;
    } else {
      const node = this;
      Object.defineProperty(input, "link", {
        get() {
          node.graph.deprecations.push(`input.link read on ${node.comfyClass}.${name}`);
          return node.graph.linkAt(node.id, node.inputs.indexOf(this))?.id ?? null;
        },
        set() {
          node.graph.deprecations.push(`input.link assigned on ${node.comfyClass}.${name}`);
        },
      });
    }
    this.inputs.push(input);
    return input;
  }

  getInputLink(slot) {
    if (this.graph.model === "legacy") return this.graph.links.get(this.inputs[slot]?.link) ?? null;
    return slot < this.inputs.length ? this.graph.linkAt(this.id, slot) : null;
  }

  isInputConnected(slot) {
    return this.getInputLink(slot) !== null;
  }

  removeInput(slot) {
    const link = this.getInputLink(slot);
    if (link) this.graph.disconnect(link);
    if (this.graph.model === "legacy") {
      this.inputs.splice(slot, 1);
      for (const input of this.inputs.slice(slot)) {
        const later = this.graph.links.get(input.link);
        if (later) later.target_slot -= 1;
      }
    } else {
      const later = [...this.graph.links.values()].filter((l) => l.target_id === this.id && l.target_slot > slot)
        .sort((a, b) => a.target_slot - b.target_slot);
      this.inputs.splice(slot, 1);
      for (const l of later) l.target_slot -= 1;
    }
  }
}

export class FakeGraph {
  constructor(model = "legacy") {
    this.model = model;
    this.nodes = new Map();
    this.links = new Map();
    this.floatingLinks = new Map();
    this.nextLink = 1;
    this.deprecations = [];
    this.errors = [];
  }

  add(id, comfyClass, widgets = {}, inputs = []) {
    const node = new FakeNode(this, id, comfyClass, widgets, inputs);
    this.nodes.set(id, node);
    return node;
  }

  linkAt(targetId, slot) {
    for (const link of this.links.values()) {
      if (link.target_id === targetId && link.target_slot === slot) return link;
    }
    return null;
  }

  connect(from, to, inputName) {
    const slot = to.inputs.findIndex((i) => i.name === inputName);
    if (slot < 0) throw new Error(`no input ${inputName}`);
    const old = to.getInputLink(slot);
    if (old) this.disconnect(old);
    const link = new FakeLink(this, this.nextLink++, from.id, to.id, slot);
    this.links.set(link.id, link);
    if (this.model === "legacy") to.inputs[slot].link = link.id;
    return link;
  }

  disconnect(link) {
    this.links.delete(link.id);
    if (this.model === "legacy") {
      const input = this.nodes.get(link.target_id)?.inputs.find((i) => i.link === link.id);
      if (input) input.link = null;
    }
  }

  getNodeById(id) {
    return this.nodes.get(id) ?? null;
  }

  getLink(id) {
    return this.links.get(id);
  }
}

/** A Shot Sequence Pack with the given inputs; the names in ``linked`` connected from fresh nodes.
 *  Returns {g, pack, sources: {input name: source node}}. */
export function packWith(model, names, linked = []) {
  const g = new FakeGraph(model);
  const pack = g.add(100, "DreamShotShotSequencePack", {}, names);
  const sources = {};
  linked.forEach((name, k) => {
    sources[name] = g.add(200 + k, `Source_${name}`);
    g.connect(sources[name], pack, name);
  });
  return { g, pack, sources };
}

/** Input names with "*" for connected ones, and each connected input's source node type. */
export function describeInputs(node) {
  return node.inputs.map((input, slot) => {
    const link = node.getInputLink(slot);
    return link ? `${input.name}*${node.graph.getNodeById(link.origin_id)?.comfyClass}` : input.name;
  });
}
