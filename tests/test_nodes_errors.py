"""Every error a node raises names the node (nodes/errors.py, in the real ComfyUI): input errors get
the display name; other exceptions keep their type with the name in front and the original chained;
ComfyUI's interrupt and out-of-memory exceptions pass untouched."""

import importlib

import pytest
import torch


@pytest.fixture()
def errors(pack_nodes):
    root = pack_nodes["DreamShotSampler"].__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{root}.nodes.errors")


def test_input_errors_and_plain_errors_name_the_node(errors, pack_module):
    DreamShotInputError = pack_module("errors").DreamShotInputError
    with pytest.raises(DreamShotInputError, match=r"^DreamShot Sampler: input 'steps'"):
        with errors.reported_as("DreamShot Sampler"):
            raise DreamShotInputError("steps", "must be at least 1.", "use 1 or more.")
    for kind in (ValueError, RuntimeError, KeyError, TypeError):
        with pytest.raises(kind) as e:
            with errors.reported_as("Shot Sequence Pack"):
                raise kind("expected 3 shot images (or None), got 2")
        assert str(e.value).strip("'\"").startswith("Shot Sequence Pack: expected 3 shot images")
        assert isinstance(e.value.__cause__, kind)


def test_interrupt_and_out_of_memory_pass_untouched(errors):
    import comfy.model_management as mm

    for exc in (mm.InterruptProcessingException(), torch.OutOfMemoryError("CUDA out of memory"), MemoryError()):
        with pytest.raises(type(exc)) as e:
            with errors.reported_as("DreamShot Sampler"):
                raise exc
        assert e.value is exc


def test_a_packing_error_reaches_the_user_with_the_node_name(errors, pack_module):
    """A ValueError from the pack's own dreamshot.packing (a shot image of the wrong size)."""
    layout = pack_module("layout").StoryLayout(num_refs=0, num_shots=1, width=32, height=32)
    with pytest.raises(ValueError, match=r"^Shot Sequence Pack: shot 1 image is"):
        with errors.reported_as("Shot Sequence Pack"):
            pack_module("packing").shot_video(layout, [torch.zeros(16, 16, 3)])
