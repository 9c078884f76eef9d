// Pure frontend logic: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  collectCharacters,
  collectShots,
  escapeHtml,
  familySockets,
  formatShotLine,
  formatShotList,
  insertPosition,
  nextSocketName,
  orderDynamicSockets,
  parseCharacterNames,
  parseShotList,
  planDynamicSockets,
  reorderInputs,
  socketIndex,
  storyForSampler,
  storySignature,
  syncDynamicInputs,
  toggleShot,
  upstreamNode,
  widgetValue,
} from "../../js/dreamshot_logic.js";
import { FakeGraph, MODELS, describeInputs, packWith } from "./fake_litegraph.mjs";

/** A pack whose inputs are ``spec`` keys, connected where the value is truthy. */
const pack = (model, spec) => packWith(model, Object.keys(spec), Object.keys(spec).filter((k) => spec[k])).pack;

describe("socket names", () => {
  test("socketIndex", () => {
    assert.equal(socketIndex("shots", "shots"), 1);
    assert.equal(socketIndex("shots_2", "shots"), 2);
    assert.equal(socketIndex("shots_12", "shots"), 12);
    for (const name of ["shots_1", "shots_0", "shots_02", "shots_", "shots_x", "shotsy", "characters_2", null]) {
      assert.equal(socketIndex(name, "shots"), null, String(name));
    }
  });

  test("nextSocketName", () => {
    assert.equal(nextSocketName(["vae", "shots"], "shots"), "shots_2");
    assert.equal(nextSocketName(["shots", "shots_3", "shots_2"], "shots"), "shots_4");
    assert.equal(nextSocketName(["vae"], "shots"), "shots");
    assert.equal(nextSocketName(["characters", "shots_5"], "characters"), "characters_2");
  });
});

for (const model of MODELS) {
  describe(`planDynamicSockets (${model} links)`, () => {
    test("connecting the last socket adds the next one", () => {
      assert.deepEqual(planDynamicSockets(pack(model, { vae: 1, shots: 1 }), "shots"), { add: "shots_2", remove: [] });
      assert.deepEqual(planDynamicSockets(pack(model, { shots: 1, shots_2: 1 }), "shots"), { add: "shots_3", remove: [] });
    });

    test("one empty spare is kept and nothing is added", () => {
      assert.deepEqual(planDynamicSockets(pack(model, { shots: 1, shots_2: 0 }), "shots"), { add: null, remove: [] });
      assert.deepEqual(planDynamicSockets(pack(model, { shots: 0 }), "shots"), { add: null, remove: [] });
    });

    test("disconnecting removes trailing empty sockets, last first, never the base", () => {
      const plan = planDynamicSockets(pack(model, { shots: 1, shots_2: 0, shots_3: 0, shots_4: 0 }), "shots");
      assert.deepEqual(plan, { add: null, remove: ["shots_4", "shots_3"] });
      const none = planDynamicSockets(pack(model, { shots: 0, shots_2: 0, shots_3: 0 }), "shots");
      assert.deepEqual(none, { add: null, remove: ["shots_3", "shots_2"] });
    });

    test("empty sockets in the middle stay (no renumbering)", () => {
      const plan = planDynamicSockets(pack(model, { shots: 1, shots_2: 0, shots_3: 1, shots_4: 0 }), "shots");
      assert.deepEqual(plan, { add: null, remove: [] });
    });

    test("families are independent and other inputs are ignored", () => {
      const node = pack(model, { shots: 1, characters: 0, characters_2: 0, width: 0 });
      assert.deepEqual(planDynamicSockets(node, "shots"), { add: "shots_2", remove: [] });
      assert.deepEqual(planDynamicSockets(node, "characters"), { add: null, remove: ["characters_2"] });
      assert.deepEqual(planDynamicSockets(pack(model, { vae: 1 }), "shots"), { add: null, remove: [] });
      assert.deepEqual(familySockets(node, "characters").map((f) => [f.name, f.index, f.position, f.linked]),
        [["characters", 1, 1, false], ["characters_2", 2, 2, false]]);
    });

    test("reading links never touches the deprecated input.link", () => {
      const { g, pack: node } = packWith(model, ["shots", "shots_2", "characters"], ["shots", "characters"]);
      planDynamicSockets(node, "shots");
      planDynamicSockets(node, "characters");
      assert.deepEqual(g.deprecations, []);
    });
  });
}

describe("socket order", () => {
  test("insertPosition is right after the family's last socket", () => {
    const list = ["vae", "clip", "shots", "shots_2", "width", "characters"].map((name) => ({ name }));
    assert.equal(insertPosition(list, "shots"), 4);
    assert.equal(insertPosition(list, "characters"), 6);
    assert.equal(insertPosition(list, "missing"), 6);
  });

  test("orderDynamicSockets puts numbered sockets back after their base", () => {
    const reloaded = ["vae", "clip", "shots", "characters", "keyframes", "shots_10", "shots_2", "characters_2", "width"];
    assert.deepEqual(orderDynamicSockets(reloaded),
      ["vae", "clip", "shots", "shots_2", "shots_10", "characters", "characters_2", "keyframes", "width"]);
    const ordered = ["vae", "shots", "shots_2", "characters", "width"];
    assert.deepEqual(orderDynamicSockets(ordered), ordered);
    assert.deepEqual(orderDynamicSockets(["a", "shots_2"]), ["a", "shots_2"]);
  });
});

// The pack as a bundled workflow saves it (only its connected sockets, then what the frontend
// adds back), and as a saved graph with numbered sockets that a reload appends at the end.
const SAVED = ["vae", "clip", "shots", "characters", "keyframes", { name: "width", widget: { name: "width" } },
  { name: "fit", widget: { name: "fit" } }];

for (const model of MODELS) {
  describe(`moving links with their sockets (${model} links)`, () => {
    test("reorderInputs keeps every link on its socket, swaps included, without refused moves", () => {
      const { g, pack: node } = packWith(model, ["a", "b", "c", "d"], ["a", "b", "c"]);
      const [a, b, c, d] = node.inputs;
      reorderInputs(node, [c, a, d, b]);
      assert.deepEqual(describeInputs(node), ["c*Source_c", "a*Source_a", "d", "b*Source_b"]);
      reorderInputs(node, [a, c, b, d]); // a and c swap slots
      assert.deepEqual(describeInputs(node), ["a*Source_a", "c*Source_c", "b*Source_b", "d"]);
      assert.deepEqual([...g.links.values()].map((l) => [node.inputs[l.target_slot].name, l.id]),
        [["a", 1], ["b", 2], ["c", 3]]);
      assert.deepEqual(g.errors, []);
      assert.deepEqual(g.deprecations, []);
    });

    test("a floating link (cut behind a reroute) follows its socket too", () => {
      const { g, pack: node } = packWith(model, ["a", "b", "c"], ["a"]);
      const floating = { id: -1, origin_id: -1, origin_slot: -1, target_id: node.id, target_slot: 2 };
      g.floatingLinks.set(-1, floating);
      const [a, b, c] = node.inputs;
      reorderInputs(node, [c, a, b]);
      assert.equal(floating.target_slot, 0);
      assert.deepEqual(describeInputs(node), ["c", "a*Source_a", "b"]);
    });

    test("a loaded workflow: spares inserted, the character and keyframes stay where they were saved", () => {
      const { g, pack: node } = packWith(model, SAVED, ["vae", "clip", "shots", "characters", "keyframes", "fit"]);
      assert.equal(syncDynamicInputs(node), true);
      assert.deepEqual(describeInputs(node), ["vae*Source_vae", "clip*Source_clip", "shots*Source_shots", "shots_2",
        "characters*Source_characters", "characters_2", "keyframes*Source_keyframes", "width", "fit*Source_fit"]);
      assert.equal(syncDynamicInputs(node), false);
      assert.deepEqual(g.errors, []);
      assert.deepEqual(g.deprecations, []);
    });

    test("a reloaded graph: numbered sockets appended at the end go back after their base, links kept", () => {
      const names = ["vae", "shots", "characters", "keyframes", "shots_3", "shots_2", "characters_2"];
      const { g, pack: node } = packWith(model, names, ["shots", "shots_2", "characters", "characters_2", "keyframes"]);
      assert.equal(syncDynamicInputs(node), true);
      assert.deepEqual(describeInputs(node), ["vae", "shots*Source_shots", "shots_2*Source_shots_2", "shots_3",
        "characters*Source_characters", "characters_2*Source_characters_2", "characters_3", "keyframes*Source_keyframes"]);
      assert.deepEqual(g.errors, []);
      assert.deepEqual(g.deprecations, []);
    });

    test("connecting grows a family, disconnecting shrinks it, converging to one spare", () => {
      const { g, pack: node } = packWith(model, SAVED, ["shots", "characters", "keyframes"]);
      syncDynamicInputs(node);
      const script = (k) => g.add(300 + k, `Script${k}`);
      for (let k = 2; k <= 4; k++) {
        g.connect(script(k), node, `shots_${k}`);
        syncDynamicInputs(node);
      }
      assert.deepEqual(describeInputs(node).slice(0, 9), ["vae", "clip", "shots*Source_shots", "shots_2*Script2",
        "shots_3*Script3", "shots_4*Script4", "shots_5", "characters*Source_characters", "characters_2"]);
      for (const name of ["shots_4", "shots_3"]) {
        g.disconnect(node.getInputLink(node.inputs.findIndex((i) => i.name === name)));
        syncDynamicInputs(node);
      }
      g.disconnect(node.getInputLink(node.inputs.findIndex((i) => i.name === "characters")));
      syncDynamicInputs(node);
      assert.deepEqual(describeInputs(node), ["vae", "clip", "shots*Source_shots", "shots_2*Script2", "shots_3",
        "characters", "keyframes*Source_keyframes", "width", "fit"]);
      assert.equal(syncDynamicInputs(node), false);
      assert.deepEqual(g.errors, []);
      assert.deepEqual(g.deprecations, []);
    });
  });
}

describe("lock lists", () => {
  test("parse like the Python side", () => {
    assert.deepEqual(parseShotList("1, 3-4", 5), { locked: [true, false, true, true, false], invalid: [] });
    assert.deepEqual(parseShotList("4-2; 5", 5).locked, [false, true, true, true, true]);
    assert.deepEqual(parseShotList(" ", 3), { locked: [false, false, false], invalid: [] });
  });

  test("bad parts are reported, good ones kept", () => {
    const { locked, invalid } = parseShotList("1, x, 7, 0, 2-9, 3", 4);
    assert.deepEqual(locked, [true, false, true, false]);
    assert.deepEqual(invalid, ["x", "7", "0", "2-9"]);
  });

  test("format: singles and pairs listed, runs of three as ranges", () => {
    assert.equal(formatShotList([true, true, false, true]), "1, 2, 4");
    assert.equal(formatShotList([true, true, true, false, true, true, true, true]), "1-3, 5-8");
    assert.equal(formatShotList([false, false]), "");
    assert.equal(formatShotList([]), "");
  });

  test("round trip and toggling", () => {
    for (const text of ["1, 2, 4", "1-3, 5", "2", ""]) {
      assert.equal(formatShotList(parseShotList(text, 6).locked), text);
    }
    assert.equal(toggleShot("1, 2, 4", 4, 2), "1-4");
    assert.equal(toggleShot("1-4", 4, 0), "2-4");
    assert.equal(toggleShot("", 4, 3), "4");
    assert.equal(toggleShot("2", 4, 9), "2");
  });
});

describe("escaping and captions", () => {
  test("escapeHtml", () => {
    assert.equal(escapeHtml(`<img src=x onerror="alert('1')">&`),
      "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;");
    assert.equal(escapeHtml(null), "");
    assert.equal(escapeHtml(42), "42");
  });

  test("formatShotLine", () => {
    assert.equal(formatShotLine(0, { prompt: "a  rainy\nstreet", characters: ["Mira", "Theo"] }),
      "1. a rainy street \u2014 Mira, Theo");
    assert.equal(formatShotLine(2, { prompt: "", characters: [] }), "3. (empty prompt)");
    assert.equal(formatShotLine(1, { prompt: null, characters: [] }), "2. (prompt from a linked node)");
    const long = formatShotLine(0, { prompt: "x".repeat(300), characters: [] }, 20);
    assert.equal(long, `1. ${"x".repeat(19)}\u2026`);
  });

  test("parseCharacterNames matches the Python parser", () => {
    assert.deepEqual(parseCharacterNames(" Mira, Theo;Mira\n Ada ,, "), ["Mira", "Theo", "Ada"]);
    assert.deepEqual(parseCharacterNames(undefined), []);
  });
});

// Sampler <- Pack <- [S3 <- S2 <- S1] on "shots" and [S4] on "shots_2"; characters C2 <- C1.
function storyGraph(model) {
  const g = new FakeGraph(model);
  const shotInputs = ["shots", { name: "prompt", widget: { name: "prompt" } }, { name: "characters", widget: { name: "characters" } }];
  const s1 = g.add(1, "DreamShotShotScript", { prompt: "Mira waits", characters: "Mira" }, shotInputs);
  const s2 = g.add(2, "DreamShotShotScript", { prompt: "Theo <b>arrives</b>", characters: "Theo, Mira" }, shotInputs);
  const s3 = g.add(3, "DreamShotShotScript", { prompt: "close-up", characters: "" }, shotInputs);
  const s4 = g.add(4, "DreamShotShotScript", { prompt: "they leave", characters: "Mira, Theo" }, shotInputs);
  const c1 = g.add(5, "DreamShotCharacterReference", { name: "Mira" }, ["image", "characters"]);
  const c2 = g.add(6, "DreamShotCharacterReference", { name: "Theo " }, ["image", "characters"]);
  const pack = g.add(7, "DreamShotShotSequencePack", { mode: "edit", lock_shots: "1, 2, 4" },
    ["vae", "clip", "shots", "shots_2", "shots_3", "characters", "characters_2", "keyframes"]);
  const reroute = g.add(8, "Reroute", {}, [""]);
  const sampler = g.add(9, "DreamShotSampler", { seed: 1 }, ["model", "sequence"]);
  g.connect(s1, s2, "shots");
  g.connect(s2, s3, "shots");
  g.connect(s3, pack, "shots");
  g.connect(s4, pack, "shots_2");
  g.connect(c1, c2, "characters");
  g.connect(c2, pack, "characters");
  g.connect(pack, reroute, "");
  g.connect(reroute, sampler, "sequence");
  return { g, s1, s2, s3, s4, pack, sampler };
}

for (const model of MODELS) {
  describe(`graph walking (${model} links)`, () => {
    test("upstreamNode follows Reroute nodes", () => {
      const { g, pack, sampler } = storyGraph(model);
      assert.equal(upstreamNode(g, sampler, "sequence"), pack);
      assert.equal(upstreamNode(g, sampler, "model"), null);
      assert.equal(upstreamNode(g, sampler, "nope"), null);
    });

    test("shots in story order, numbered sockets appended in number order", () => {
      const { g, pack } = storyGraph(model);
      const shots = collectShots(g, pack);
      assert.deepEqual(shots.map((s) => s.prompt), ["Mira waits", "Theo <b>arrives</b>", "close-up", "they leave"]);
      assert.deepEqual(shots.map((s) => s.characters), [["Mira"], ["Theo", "Mira"], [], ["Mira", "Theo"]]);
      assert.deepEqual(collectCharacters(g, pack), ["Mira", "Theo"]);
      assert.deepEqual(g.deprecations, []);
    });

    test("storyForSampler: mode, locks and lines", () => {
      const { g, sampler } = storyGraph(model);
      const story = storyForSampler(g, sampler);
      assert.equal(story.mode, "edit");
      assert.deepEqual(story.locked, [true, true, false, true]);
      assert.equal(formatShotLine(1, story.shots[1]), "2. Theo <b>arrives</b> \u2014 Theo, Mira");
      const before = storySignature(story);
      g.getNodeById(3).widgets[0].value = "close-up, smiling";
      assert.notEqual(storySignature(storyForSampler(g, sampler)), before);
    });

    test("a prompt turned into an input reads the node feeding it", () => {
      const { g, s3 } = storyGraph(model);
      const primitive = g.add(20, "PrimitiveNode", { value: "from a primitive" }, []);
      g.connect(primitive, s3, "prompt");
      assert.equal(widgetValue(g, s3, "prompt"), "from a primitive");
      const other = g.add(21, "SomethingElse", { count: 3 }, []);
      g.connect(other, s3, "prompt");
      assert.equal(widgetValue(g, s3, "prompt"), null);
    });

    test("no pack, foreign chains and cycles do not hang or throw", () => {
      const g = new FakeGraph(model);
      const sampler = g.add(1, "DreamShotSampler", {}, ["sequence"]);
      assert.deepEqual(storyForSampler(g, sampler).shots, []);
      const foreign = g.add(2, "OtherPackShots", {}, []);
      const a = g.add(3, "DreamShotShotScript", { prompt: "a", characters: "" }, ["shots"]);
      const b = g.add(4, "DreamShotShotScript", { prompt: "b", characters: "" }, ["shots"]);
      const pack = g.add(5, "DreamShotShotSequencePack", { mode: "text_to_shot", lock_shots: "" }, ["shots"]);
      g.connect(foreign, a, "shots");
      g.connect(a, b, "shots");
      g.connect(b, pack, "shots");
      const shots = collectShots(g, pack);
      assert.equal(shots[0].broken.title, "OtherPackShots");
      assert.deepEqual(shots.slice(1).map((s) => s.prompt), ["a", "b"]);
      // a cycle: a <- b <- a
      g.connect(b, a, "shots");
      assert.ok(collectShots(g, pack).length <= 3);
    });
  });
}
