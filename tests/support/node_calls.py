"""The pack's V3 nodes called in this process as ComfyUI's executor calls them, and ComfyUI's input,
output and temp folders pointed at a test's own for the time of a call."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def run_node(node_cls, hidden=None, **kwargs):
    """As ComfyUI's executor calls a V3 node: the validated class, a clone per run carrying the hidden
    inputs, under inference mode (execution.py)."""
    node_cls.VALIDATE_CLASS()
    clone = node_cls.PREPARE_CLASS_CLONE(hidden or {})
    with torch.inference_mode():
        return clone.EXECUTE_NORMALIZED(**kwargs)


@contextlib.contextmanager
def comfy_folders(input=None, output=None, temp=None):
    """ComfyUI's input / output / temp directory set to the folder given for it (created), restored after."""
    import folder_paths

    access = {"input": (folder_paths.get_input_directory, folder_paths.set_input_directory),
              "output": (folder_paths.get_output_directory, folder_paths.set_output_directory),
              "temp": (folder_paths.get_temp_directory, folder_paths.set_temp_directory)}
    given = {k: Path(v) for k, v in (("input", input), ("output", output), ("temp", temp)) if v is not None}
    before = {k: access[k][0]() for k in given}
    try:
        for k, folder in given.items():
            folder.mkdir(parents=True, exist_ok=True)
            access[k][1](str(folder))
        yield
    finally:
        for k, folder in before.items():
            access[k][1](folder)
