"""The host adapter: DreamShot on ComfyUI's own Wan model, patcher and samplers.

This is the one part of ``dreamshot`` that imports ComfyUI (``comfy``); the rest is plain
torch. ``nodes/`` and ``dreamshot.train`` both go through here, so a model patched for
sampling and one patched for training behave the same.
"""
