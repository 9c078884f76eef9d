"""TEST-ONLY ComfyUI custom nodes for DreamShot's test suite. Never shipped with the pack.

ComfyUI's stock CLIPLoader (type "wan") always builds the full UMT5-XXL (5.7B parameters) from
umt5_config_xxl.json, so it cannot load the tiny random UMT5 the tests use (a size mismatch on every
weight). Tests that run workflows in the real server replace CLIPLoader with
DreamShotTestTinyUMT5Loader: same inputs (clip_name, type, device), same output (CLIP), but it passes
the tiny encoder's config through ``model_options["umt5xxl_model_config"]``.

tests/support/server.py make_base_dir() copies this folder into <base>/custom_nodes/; the config
sits beside it in tiny_umt5_config.json (also read by tests/support/tiny_models.py).
"""

import json
import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_umt5_config.json")) as _f:
    TINY_UMT5_CONFIG = json.load(_f)


class DreamShotTestTinyUMT5Loader:
    """CLIPLoader's drop-in for the tiny test UMT5 (tests only)."""

    DESCRIPTION = "TEST ONLY: loads the tiny random UMT5 text encoder of DreamShot's tests as a Wan CLIP."
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),),
                             "type": (["wan"], {"default": "wan"}),
                             "device": (["default", "cpu"], {"default": "default"})}}

    def load(self, clip_name, type="wan", device="default"):
        import comfy.sd
        import folder_paths

        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        model_options = {"umt5xxl_model_config": dict(TINY_UMT5_CONFIG)}
        if device == "cpu":
            import torch

            model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
        # as CLIPLoader.load_clip, the embeddings folders included; only the UMT5 size differs
        return (comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                   clip_type=comfy.sd.CLIPType.WAN, model_options=model_options),)


NODE_CLASS_MAPPINGS = {"DreamShotTestTinyUMT5Loader": DreamShotTestTinyUMT5Loader}
NODE_DISPLAY_NAME_MAPPINGS = {"DreamShotTestTinyUMT5Loader": "DreamShot TEST tiny UMT5 loader (tests only)"}
