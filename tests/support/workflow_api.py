"""Convert a ComfyUI frontend (UI-format) workflow into the API prompt the server executes.

The frontend does this in JS; tests need it in Python to run the bundled workflows through the
real server. Widget values are matched to inputs with the live node definitions (object_info).
"""

from __future__ import annotations

from .workflow_builder import extra_widget_values, input_specs, is_widget

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id):
        _, src, slot = links[link_id][:3]
        node = nodes[src]
        while node["type"] == "Reroute":  # follow reroutes to the real producer
            upstream = node["inputs"][0]["link"]
            _, src, slot = links[upstream][:3]
            node = nodes[src]
        return [str(src), slot]

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) == 4:
            raise NotImplementedError(f"node {node['id']} ({node['type']}) is bypassed")
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node {node['id']}: unknown node type {node['type']!r}")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        inputs = {}
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k in dict((n, s) for n, s, _ in input_specs(info))})
        else:
            pos = 0
            for name, spec, _optional in input_specs(info):
                if not is_widget(spec):
                    continue
                if pos < len(values):
                    inputs[name] = values[pos]
                pos += 1 + len(extra_widget_values(spec))
            if pos != len(values):
                raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {pos} widgets")
        for name, link_id in linked.items():
            inputs[name] = source(link_id)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
