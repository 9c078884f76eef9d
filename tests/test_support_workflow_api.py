"""support.workflow_api.ui_to_api: frontend (UI) workflow JSON -> API prompt, checked against the
object_info of ComfyUI's own core nodes, built in this process (no server, no custom nodes)."""

from __future__ import annotations

import copy

import pytest

from support.workflow_api import WorkflowConversionError, ui_to_api
from support.workflow_builder import Graph

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def core_info(comfy_headless):
    """GET /object_info of core + comfy_extras nodes (what the server would send), in process."""
    from support.comfy_host import init_core_nodes, object_info_for

    return object_info_for(sorted(init_core_nodes(comfy_headless)))


def _out(name, type_, links):
    return {"name": name, "type": type_, "links": links}


# A KSampler graph as the frontend (1.2x) saves it, written by hand: a Note, two chained Reroutes
# carrying the VAE, widget inputs listed with "widget" entries, the seed's control value after it.
KSAMPLER_UI = {
    "last_node_id": 10, "last_link_id": 11,
    "nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "size": [315, 98], "flags": {}, "order": 0,
         "mode": 0, "inputs": [{"name": "ckpt_name", "type": "COMBO", "widget": {"name": "ckpt_name"}, "link": None}],
         "outputs": [_out("MODEL", "MODEL", [1]), _out("CLIP", "CLIP", [2, 3]), _out("VAE", "VAE", [8])],
         "properties": {"Node name for S&R": "CheckpointLoaderSimple"}, "widgets_values": ["tiny.safetensors"]},
        {"id": 2, "type": "CLIPTextEncode", "mode": 0, "title": "Positive",
         "inputs": [{"name": "clip", "type": "CLIP", "link": 2},
                    {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None}],
         "outputs": [_out("CONDITIONING", "CONDITIONING", [4])], "widgets_values": ["a red fox in the snow"]},
        {"id": 3, "type": "CLIPTextEncode", "mode": 0,
         "inputs": [{"name": "clip", "type": "CLIP", "link": 3},
                    {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None}],
         "outputs": [_out("CONDITIONING", "CONDITIONING", [5])], "widgets_values": ["blurry"]},
        {"id": 4, "type": "EmptyLatentImage", "mode": 0, "inputs": [],
         "outputs": [_out("LATENT", "LATENT", [6])], "widgets_values": [64, 48, 1]},
        {"id": 5, "type": "KSampler", "mode": 0,
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                    {"name": "negative", "type": "CONDITIONING", "link": 5},
                    {"name": "latent_image", "type": "LATENT", "link": 6},
                    {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
         "outputs": [_out("LATENT", "LATENT", [7])],
         "widgets_values": [42, "randomize", 2, 7.5, "euler", "normal", 1.0]},
        {"id": 6, "type": "VAEDecode", "mode": 0,
         "inputs": [{"name": "samples", "type": "LATENT", "link": 7}, {"name": "vae", "type": "VAE", "link": 10}],
         "outputs": [_out("IMAGE", "IMAGE", [11])], "widgets_values": []},
        {"id": 7, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 11}],
         "outputs": [], "widgets_values": ["fox"]},
        {"id": 8, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["frontend only"]},
        {"id": 9, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 8}],
         "outputs": [_out("", "VAE", [9])], "properties": {"showOutputText": False, "horizontal": False}},
        {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 9}],
         "outputs": [_out("", "VAE", [10])], "properties": {"showOutputText": False, "horizontal": False}},
    ],
    "links": [[1, 1, 0, 5, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 1, 1, 3, 0, "CLIP"],
              [4, 2, 0, 5, 1, "CONDITIONING"], [5, 3, 0, 5, 2, "CONDITIONING"], [6, 4, 0, 5, 3, "LATENT"],
              [7, 5, 0, 6, 0, "LATENT"], [8, 1, 2, 9, 0, "VAE"], [9, 9, 0, 10, 0, "VAE"], [10, 10, 0, 6, 1, "VAE"],
              [11, 6, 0, 7, 0, "IMAGE"]],
    "groups": [], "config": {}, "extra": {}, "version": 0.4,
}

KSAMPLER_API = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                               "positive": ["2", 0], "negative": ["3", 0],
                                               "latent_image": ["4", 0]}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fox", "images": ["6", 0]}},
}


def _wf():
    return copy.deepcopy(KSAMPLER_UI)


def _node(wf, node_id):
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def test_ksampler_graph_converts_like_the_frontend(core_info):
    assert ui_to_api(_wf(), core_info) == KSAMPLER_API


def test_meta_titles(core_info):
    api = ui_to_api(_wf(), core_info, meta=True)
    assert api["2"]["_meta"] == {"title": "Positive"}
    assert api["5"]["_meta"] == {"title": "KSampler"}


def test_widgets_values_as_a_dict(core_info):
    wf = _wf()
    _node(wf, 5)["widgets_values"] = {"seed": 7, "control_after_generate": "fixed", "steps": 3, "cfg": 1.0,
                                      "sampler_name": "ddim", "scheduler": "simple", "denoise": 0.5}
    assert ui_to_api(wf, core_info)["5"]["inputs"] == {**KSAMPLER_API["5"]["inputs"], "seed": 7, "steps": 3,
                                                      "cfg": 1.0, "sampler_name": "ddim", "scheduler": "simple",
                                                      "denoise": 0.5}


def test_links_in_the_object_form(core_info):
    wf = _wf()
    wf["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                   for link in wf["links"]]
    assert ui_to_api(wf, core_info) == KSAMPLER_API


def test_a_linked_widget_input_takes_the_link(core_info):
    wf = _wf()
    wf["nodes"].append({"id": 11, "type": "PrimitiveInt", "mode": 0, "inputs": [],
                        "outputs": [_out("INT", "INT", [12])], "widgets_values": [5, "fixed"]})
    _node(wf, 5)["inputs"][4]["link"] = 12
    wf["links"].append([12, 11, 0, 5, 4, "INT"])
    api = ui_to_api(wf, core_info)
    assert api["5"]["inputs"]["seed"] == ["11", 0]
    assert api["11"] == {"class_type": "PrimitiveInt", "inputs": {"value": 5}}


def test_a_frontend_primitive_node_leaves_the_widget_value(core_info):
    wf = _wf()
    wf["nodes"].append({"id": 11, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": [12], "widget": {"name": "seed"}}],
                        "widgets_values": [42, "fixed"]})
    _node(wf, 5)["inputs"][4]["link"] = 12
    wf["links"].append([12, 11, 0, 5, 4, "INT"])
    api = ui_to_api(wf, core_info)
    assert "11" not in api and api["5"]["inputs"]["seed"] == 42


def test_muted_nodes_are_left_out_with_the_inputs_that_use_them(core_info):
    wf = _wf()
    _node(wf, 7)["mode"] = 2  # SaveImage muted
    _node(wf, 4)["mode"] = 2  # EmptyLatentImage muted: KSampler loses latent_image
    api = ui_to_api(wf, core_info)
    assert "7" not in api and "4" not in api
    assert "latent_image" not in api["5"]["inputs"] and api["5"]["inputs"]["model"] == ["1", 0]


def test_bypassed_node_passes_its_input_of_the_same_type_through(core_info):
    wf = _wf()
    # EmptyLatentImage -> LatentUpscaleBy (bypassed) -> KSampler: KSampler reads the empty latent.
    wf["nodes"].append({"id": 11, "type": "LatentUpscaleBy", "mode": 4,
                        "inputs": [{"name": "samples", "type": "LATENT", "link": 6}],
                        "outputs": [_out("LATENT", "LATENT", [12])], "widgets_values": ["nearest-exact", 1.5]})
    wf["links"][5] = [6, 4, 0, 11, 0, "LATENT"]
    wf["links"].append([12, 11, 0, 5, 3, "LATENT"])
    _node(wf, 5)["inputs"][3]["link"] = 12
    api = ui_to_api(wf, core_info)
    assert "11" not in api
    assert api["5"]["inputs"]["latent_image"] == ["4", 0]


def test_bypassed_node_without_a_matching_input_drops_the_consumers_input(core_info):
    wf = _wf()
    _node(wf, 6)["mode"] = 4  # VAEDecode bypassed: no IMAGE input to pass on
    api = ui_to_api(wf, core_info)
    assert "6" not in api and "images" not in api["7"]["inputs"]


def test_reroute_without_input_leaves_the_input_unconnected(core_info):
    wf = _wf()
    _node(wf, 9)["inputs"][0]["link"] = None
    wf["links"] = [link for link in wf["links"] if link[0] != 8]
    assert "vae" not in ui_to_api(wf, core_info)["6"]["inputs"]


def test_seed_control_value_follows_the_frontends_rules(core_info):
    info = {"Fake": {"input": {"required": {
        "seed": ["INT", {"default": 0}],                                   # named seed: control widget
        "noise_seed": ["INT", {"default": 0, "control_after_generate": False}],  # explicitly none
        "count": ["INT", {"default": 1, "control_after_generate": "fixed"}],     # asks for one
        "mode": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],
        "steps": ["INT", {"forceInput": True}],                             # a socket, no widget
        "model": ["MODEL"]}},
        "input_order": {"required": ["seed", "noise_seed", "count", "mode", "steps", "model"]},
        "output": [], "output_name": []}}
    wf = {"nodes": [{"id": 1, "type": "Fake", "mode": 0, "inputs": [],
                     "widgets_values": [3, "randomize", 4, 5, "fixed", "b", "increment"]}], "links": []}
    assert ui_to_api(wf, info)["1"]["inputs"] == {"seed": 3, "noise_seed": 4, "count": 5, "mode": "b"}


@pytest.mark.parametrize("values", [["cat.png", "image"], ["cat.png"]])
def test_load_image_with_or_without_the_upload_button_value(core_info, values):
    wf = {"nodes": [{"id": 3, "type": "LoadImage", "mode": 0, "inputs": [], "widgets_values": values}],
          "links": []}
    assert ui_to_api(wf, core_info) == {"3": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}}}


def test_wrong_number_of_widget_values_names_the_node(core_info):
    wf = _wf()
    _node(wf, 5)["widgets_values"] = [42, 2, 7.5, "euler", "normal", 1.0]  # control value missing
    with pytest.raises(WorkflowConversionError, match=r"node 5 \(KSampler\): 6 widget values .* 7 widget slots"):
        ui_to_api(wf, core_info)


def test_unknown_node_type_is_named(core_info):
    wf = _wf()
    _node(wf, 7)["type"] = "SaveSomethingFromAMissingPack"
    with pytest.raises(KeyError, match="SaveSomethingFromAMissingPack"):
        ui_to_api(wf, core_info)


def test_subgraphs_are_refused(core_info):
    wf = _wf()
    uid = "6c0b2b8e-2f0a-4a57-9d44-1f1d7bcbcb31"
    wf["definitions"] = {"subgraphs": [{"id": uid, "nodes": [], "links": []}]}
    wf["nodes"].append({"id": 11, "type": uid, "mode": 0, "inputs": [], "widgets_values": []})
    with pytest.raises(NotImplementedError, match="subgraph"):
        ui_to_api(wf, core_info)


def test_workflow_builder_output_converts_back(core_info):
    """The builder that writes workflows/ and the converter agree on widget layout."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"})
    pos = g.add("CLIPTextEncode", {"text": "a fox"}, clip=(ckpt, 1))
    neg = g.add("CLIPTextEncode", {"text": ""}, clip=(ckpt, 1))
    lat = g.add("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1})
    ks = g.add("KSampler", {"seed": 9, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                            "denoise": 1.0}, model=(ckpt, 0), positive=pos, negative=neg, latent_image=lat)
    dec = g.add("VAEDecode", {}, samples=ks, vae=(ckpt, 2))
    g.add("SaveImage", {"filename_prefix": "x"}, images=dec)
    ui = g.to_ui(core_info)
    assert _node(ui, ks.id)["widgets_values"] == [9, "fixed", 2, 1.0, "euler", "simple", 1.0]
    api = ui_to_api(ui, core_info)
    assert api[str(ks.id)]["inputs"] == {"seed": 9, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                                         "scheduler": "simple", "denoise": 1.0, "model": [str(ckpt.id), 0],
                                         "positive": [str(pos.id), 0], "negative": [str(neg.id), 0],
                                         "latent_image": [str(lat.id), 0]}
    assert api[str(dec.id)]["inputs"] == {"samples": [str(ks.id), 0], "vae": [str(ckpt.id), 2]}
