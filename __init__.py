"""
@author: ComfyUI-DreamShot contributors
@title: ComfyUI-DreamShot
@nickname: DreamShot
@description: Consistent multi-character storyboards from character references and a shot script, with Wan2.1 as the prior (DreamShot, CVPR 2026).
"""

# Guarded like ComfyUI-GGUF: outside ComfyUI (pytest, python -m dreamshot.train) this file
# registers nothing, so the package imports without comfy. Inside ComfyUI the V3 node API comes from
# comfy_api.v0_0_2, else comfy_api.latest; with neither, compat logs an error and nothing registers.
try:
    import comfy.model_management  # noqa: F401
except ImportError:
    pass
else:
    from .dreamshot.comfy_bridge.compat import node_api

    _api = node_api()
    if _api is not None:
        from .nodes import NODES, register_model_folder

        WEB_DIRECTORY = "./js"

        class DreamShotExtension(_api.ComfyExtension):
            async def get_node_list(self):
                return list(NODES)

        async def comfy_entrypoint() -> DreamShotExtension:
            register_model_folder()
            return DreamShotExtension()
