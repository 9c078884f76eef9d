"""DreamShot (CVPR 2026) as plain torch: story layout, packing, modes and attention.

Nothing here imports ComfyUI except ``dreamshot.comfy_bridge``, the host adapter, which is
imported only by the nodes and the trainer.
"""

__version__ = "0.1.0"
