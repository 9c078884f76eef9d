"""Every error a DreamShot node raises names the node the user sees.

DreamShotInputError (bad input: input, problem, fix) gets the node's display name. Any other
exception (a ValueError from packing, a RuntimeError from a patch: a check DreamShot did not turn into
an input error, or a bug) is re-raised as the same type with the node's name in front, chained to the
original, so ComfyUI's error dialog says where it happened. ComfyUI's own signals pass untouched:
interrupts (Cancel) and out-of-memory (ComfyUI prints its free-memory advice for those by type).
"""

import contextlib

import comfy.model_management as mm
import torch

from ..dreamshot.errors import DreamShotInputError

# OOM_EXCEPTION is plain Exception where ComfyUI sees no CUDA: never let that swallow everything
_OOM = tuple({t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None),
                          getattr(mm, "OOM_EXCEPTION", None)) if isinstance(t, type) and t is not Exception})
_UNTOUCHED = (mm.InterruptProcessingException, MemoryError) + _OOM


def _labelled(e: Exception, display_name: str) -> Exception | None:
    """``e`` again, its message prefixed with the node's name; None when its type cannot be rebuilt."""
    text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)  # KeyError's str quotes
    if text.startswith(f"{display_name}:"):
        return None
    try:
        labelled = type(e)(f"{display_name}: {text}" if text else f"{display_name}: {type(e).__name__}")
    except Exception:
        return None
    return labelled if str(labelled).strip("'\"").startswith(display_name) else None


@contextlib.contextmanager
def reported_as(display_name: str):
    try:
        yield
    except DreamShotInputError as e:
        if e.node:
            raise
        raise e.for_node(display_name) from None
    except _UNTOUCHED:
        raise
    except Exception as e:
        labelled = _labelled(e, display_name)
        if labelled is None:
            raise
        raise labelled from e
