"""Convert a ComfyUI frontend (UI / litegraph) workflow into the API prompt the server executes.

The frontend does this in JS (graphToPrompt); tests need it in Python to run saved workflows
through the real server. Widget values are matched to inputs with the live node definitions
(GET /object_info, or support.comfy_host.in_process_object_info()), the way the frontend builds
widgets:

- widgets are the inputs (required, then optional, in ``input_order``) whose type is INT, FLOAT,
  STRING, BOOLEAN, COMBO or a list of options, unless they say ``forceInput``;
- an INT (or COMBO) with ``control_after_generate`` (an INT named seed / noise_seed by default)
  is followed by its control value ("fixed", "randomize", ...) in ``widgets_values``;
- an upload combo (``image_upload``, ``video_upload``, ...) may be followed by its button value
  ("image"); both forms are accepted;
- ``widgets_values`` may also be a dict keyed by input name;
- a linked input wins over its widget value, except a link from a PrimitiveNode (frontend-only:
  the value already sits in the target's widgets_values).

Frontend-only nodes (Note, MarkdownNote, PrimitiveNode, Reroute) are not emitted; Reroute chains
are followed to the real producer. Muted nodes (mode 2) are left out and inputs linked to them
dropped; bypassed nodes (mode 4) pass through: a consumer gets the bypassed node's input of the same
type (the input at the same slot first), or nothing - as the frontend does. Subgraphs and legacy
group nodes raise NotImplementedError.
"""

from __future__ import annotations

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
REMOVED = object()


class WorkflowConversionError(ValueError):
    pass


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec, widget_types=WIDGET_TYPES) -> bool:
    """Does the frontend give this input a widget (and a widgets_values slot)?"""
    kind = spec[0]
    if _opts(spec).get("forceInput") or _opts(spec).get("defaultInput"):
        return False
    return isinstance(kind, list) or kind in widget_types


def has_control_after_generate(name: str, spec) -> bool:
    """The frontend's rule (useIntWidget: ``control_after_generate ?? name in [seed, noise_seed]``)."""
    opts = _opts(spec)
    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
    if kind == "INT":
        flag = opts.get("control_after_generate")
        return bool(flag) if flag is not None else name in ("seed", "noise_seed")
    return kind == "COMBO" and bool(opts.get("control_after_generate"))


def has_upload_button(spec) -> bool:
    return any(_opts(spec).get(flag) for flag in UPLOAD_FLAGS)


def input_specs(info: dict) -> list[tuple[str, tuple, bool]]:
    """[(name, spec, optional)] in the order the frontend builds widgets/sockets."""
    out = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"].get(section, {}).get(name)
            if spec is not None:
                out.append((name, tuple(spec), section == "optional"))
    return out


def _links_by_id(workflow: dict) -> dict:
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # schema 1: {id, origin_id, origin_slot, target_id, target_slot, type}
            links[link["id"]] = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        else:  # schema 0.4: [id, origin_id, origin_slot, target_id, target_slot, type]
            links[link[0]] = tuple(link[:6])
    return links


def _widget_values(node: dict, info: dict, widget_types) -> dict:
    """{input name: value} from the node's widgets_values."""
    where = f"node {node['id']} ({node['type']})"
    values = node.get("widgets_values")
    widgets = [(name, spec) for name, spec, _ in input_specs(info) if is_widget(spec, widget_types)]
    if values is None:
        values = []
    if isinstance(values, dict):
        return {name: values[name] for name, _ in widgets if name in values}
    if not isinstance(values, list):
        raise WorkflowConversionError(f"{where}: widgets_values is a {type(values).__name__}")
    controls = sum(has_control_after_generate(n, s) for n, s in widgets)
    uploads = sum(has_upload_button(s) for _, s in widgets)
    without, with_ = len(widgets) + controls, len(widgets) + controls + uploads
    if len(values) not in (without, with_):
        names = [n + ("+control" if has_control_after_generate(n, s) else "") for n, s in widgets]
        raise WorkflowConversionError(
            f"{where}: {len(values)} widget values {values!r} for {without} widget slots {names} "
            f"(+{uploads} upload buttons): the workflow does not match the node definition (stale workflow, "
            "or a different version of the node)")
    take_uploads = uploads and len(values) == with_
    out, pos = {}, 0
    for name, spec in widgets:
        out[name] = values[pos]
        pos += 1 + has_control_after_generate(name, spec) + bool(take_uploads and has_upload_button(spec))
    return out


def ui_to_api(workflow_ui: dict, object_info: dict, *, meta: bool = False,
              widget_types=WIDGET_TYPES) -> dict:
    """{node_id: {"class_type", "inputs"}} for the server's POST /prompt, from a UI workflow.

    ``object_info``: GET /object_info of the ComfyUI that will run it. ``meta``: add
    ``_meta.title`` as the frontend does. Raises KeyError for a node type that ComfyUI does not
    know (a missing custom node), WorkflowConversionError for widget values that do not fit."""
    if workflow_ui.get("definitions", {}).get("subgraphs"):
        subgraph_ids = {s.get("id") for s in workflow_ui["definitions"]["subgraphs"]}
    else:
        subgraph_ids = set()
    nodes = {n["id"]: n for n in workflow_ui["nodes"]}
    links = _links_by_id(workflow_ui)

    def mode(node) -> int:
        return node.get("mode", MODE_ALWAYS) or MODE_ALWAYS

    def resolve(link_id, want_type):
        """Follow a link through reroutes and bypassed nodes. Returns (node, slot) of the producer;
        None when the input is simply unconnected (dangling link, empty reroute, a PrimitiveNode:
        the widget value stays); REMOVED when it points at a node the prompt leaves out (muted, or
        bypassed with no input of the wanted type: the frontend then drops the input)."""
        seen = set()
        while True:
            if link_id in seen:
                raise WorkflowConversionError(f"link cycle through link {link_id}")
            seen.add(link_id)
            if link_id not in links:
                raise WorkflowConversionError(f"link {link_id} is used by a node but missing from 'links'")
            _, src_id, slot = links[link_id][:3]
            src = nodes.get(src_id)
            if src is None or src["type"] == "PrimitiveNode":
                return None
            if src["type"] == "Reroute":
                link_id = (src.get("inputs") or [{}])[0].get("link")
                if link_id is None:
                    return None
                continue
            if mode(src) == MODE_NEVER or src["type"] in FRONTEND_ONLY:
                return REMOVED
            if mode(src) == MODE_BYPASS:
                ins = src.get("inputs") or []
                order = ([slot] if slot < len(ins) else []) + list(range(len(ins)))
                match = next((i for i in order if ins[i].get("type") == want_type), None)
                if match is None or ins[match].get("link") is None:
                    return REMOVED
                link_id = ins[match]["link"]
                continue
            return src, slot

    prompt = {}
    for node in workflow_ui["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or mode(node) in (MODE_NEVER, MODE_BYPASS):
            continue
        if kind in subgraph_ids:
            raise NotImplementedError(f"node {node['id']} is a subgraph ({kind}): not supported")
        if kind.startswith("workflow>") or kind.startswith("workflow/"):
            raise NotImplementedError(f"node {node['id']} is a legacy group node ({kind}): not supported")
        info = object_info.get(kind)
        if info is None:
            raise KeyError(f"node {node['id']}: ComfyUI has no node type {kind!r} (missing custom node?)")
        inputs = _widget_values(node, info, widget_types)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            found = resolve(inp["link"], inp.get("type"))
            if found is REMOVED:
                inputs.pop(inp["name"], None)
            elif found is not None:
                src, slot = found
                inputs[inp["name"]] = [str(src["id"]), slot]
        entry = {"class_type": kind, "inputs": inputs}
        if meta:
            entry["_meta"] = {"title": node.get("title") or info.get("display_name") or kind}
        prompt[str(node["id"])] = entry
    return prompt
