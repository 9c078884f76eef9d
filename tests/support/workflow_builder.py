"""Write ComfyUI frontend (UI-format) workflow JSON from a compact graph description.

Widget order comes from the live node definitions (object_info), so the bundled workflows are
re-made, not hand-edited, whenever a node signature changes: `python tests/support/build_workflows.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .workflow_api import WIDGET_TYPES, has_control_after_generate, input_specs, is_widget  # noqa: F401


@dataclass
class Node:
    id: int
    type: str
    widgets: dict
    links_in: dict = field(default_factory=dict)   # input name -> (node, slot)
    pos: tuple = (0, 0)
    size: tuple = (320, 160)
    title: str | None = None
    properties: dict = field(default_factory=dict)


class Graph:
    def __init__(self):
        self.nodes: list[Node] = []

    def add(self, type_: str, widgets: dict | None = None, pos=(0, 0), size=(320, 160), title=None, properties=None,
            **links) -> Node:
        node = Node(id=len(self.nodes) + 1, type=type_, widgets=dict(widgets or {}), pos=pos, size=size, title=title,
                    properties=dict(properties or {}))
        for name, src in links.items():
            node.links_in[name] = src if isinstance(src, tuple) else (src, 0)
        self.nodes.append(node)
        return node

    def to_ui(self, object_info: dict) -> dict:
        links = []
        outputs: dict[int, list[list[int]]] = {}
        nodes_json = []
        for node in self.nodes:
            info = object_info[node.type]
            outputs.setdefault(node.id, [[] for _ in info["output"]])
        for order, node in enumerate(self.nodes):
            info = object_info[node.type]
            inputs_json, widgets_values = [], []
            for name, spec, _optional in input_specs(info):
                widget = is_widget(spec)
                if name in node.links_in:
                    src, slot = node.links_in[name]
                    link_id = len(links) + 1
                    kind = object_info[src.type]["output"][slot]
                    links.append([link_id, src.id, slot, node.id, len(inputs_json), kind])
                    outputs[src.id][slot].append(link_id)
                    entry = {"name": name, "type": kind if not widget else _widget_type(spec), "link": link_id}
                    if widget:
                        entry["widget"] = {"name": name}
                    inputs_json.append(entry)
                elif not widget and not _optional:
                    raise ValueError(f"{node.type}: required input {name!r} is not connected")
                if widget:
                    default = spec[1].get("default") if len(spec) > 1 else None
                    if default is None and isinstance(spec[0], list) and spec[0]:
                        default = spec[0][0]
                    if default is None and spec[0] == "COMBO" and spec[1].get("options"):
                        default = spec[1]["options"][0]
                    widgets_values.append(node.widgets.pop(name, default))
                    widgets_values += extra_widget_values(spec, name)
            if node.widgets:
                raise ValueError(f"{node.type}: unknown widget(s) {sorted(node.widgets)}")
            out_json = [{"name": n, "type": t, "links": outputs[node.id][i], "slot_index": i}
                        for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
            entry = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                     "order": order, "mode": 0, "inputs": inputs_json, "outputs": out_json,
                     "properties": {"Node name for S&R": node.type, **node.properties},
                     "widgets_values": widgets_values}
            if node.title:
                entry["title"] = node.title
            nodes_json.append(entry)
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": nodes_json, "links": links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def extra_widget_values(spec, name: str = "") -> list:
    """Values the frontend saves after a widget's own: the control_after_generate mode of a seed
    (saved as "fixed" here), and the upload button of an image combo (LoadImage saves
    ["file.png", "image"])."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = []
    if has_control_after_generate(name, spec):
        extra.append("fixed")
    if opts.get("image_upload"):
        extra.append("image")
    return extra


def _widget_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]
