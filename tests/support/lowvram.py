"""Forcing ComfyUI to load a model partially (lowvram) on the CPU, and reading what it loaded.

On a GPU, ``model_management.load_models_gpu`` gives each model a weight budget (free VRAM minus its
inference estimate) and ``ModelPatcher.partially_load`` keeps the modules that fit resident; the rest
stay on the offload device with ``comfy_cast_weights`` set, are cast to the compute device and dtype at
every forward, and get their LoRA patches applied on the fly (``LowVramPatch``). On a CPU
``load_models_gpu`` never does this: it sets the state of a CPU load device to VRAMState.DISABLED and
loads everything (``lowvram_model_memory = 0``), and neither --lowvram nor --novram changes that.

``weight_budget`` replaces only that number: every ``LoadedModel.model_load`` gets
``max(0.1, budget - already loaded)`` bytes, the formula load_models_gpu applies to the budget it
computed from free VRAM. Everything after it (partially_load, load, LowVramPatch, the casts in
comfy.ops) is ComfyUI's own code, run as on a GPU, except that the "device" is the CPU too.
"""

from __future__ import annotations

import contextlib

import torch

NOVRAM = 0.1   # what --novram gives: no module resident, every weight cast at every forward


@contextlib.contextmanager
def weight_budget(nbytes: float):
    """Within the block, ComfyUI loads every model with at most ``nbytes`` of weights resident."""
    import comfy.model_management as mm

    real = mm.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        return real(self, max(NOVRAM, nbytes - self.model_loaded_memory()), force_patch_weights=force_patch_weights)

    mm.unload_all_models()          # a model still fully loaded would stay so (partially_load returns early)
    mm.LoadedModel.model_load = model_load
    try:
        yield
    finally:
        mm.LoadedModel.model_load = real
        mm.unload_all_models()


def load_state(patcher) -> dict:
    """What ComfyUI has resident and materialised for ``patcher`` right now (call it during a forward).

    - resident_bytes: ComfyUI's own count of weights loaded on the load device;
    - lowvram: the model is loaded partially; streamed_modules: modules cast at every forward;
    - lowvram_patches: LoRA patches applied on the fly (LowVramPatch);
    - backup_keys / backup_bytes: originals ComfyUI keeps on the offload device to un-patch the
      resident weights it patched (ModelPatcher.backup, shared by all clones; on a GPU these are the
      RAM copies the weights were loaded from, the patched versions live in VRAM);
    - object_patch_bytes: tensors held by object patches (DreamShot's modulation diffs);
    - model_bytes: every weight of the model.
    """
    import comfy.model_patcher as mp

    base = patcher.model
    # Resident modules are marked comfy_patched_weights by ModelPatcher.load; castable ones without it
    # stay on the offload device (prev_comfy_cast_weights alone also marks a force-cast resident one).
    streamed = [n for n, m in base.named_modules() if hasattr(m, "comfy_cast_weights")
                and isinstance(getattr(m, "weight", None), torch.Tensor) and not getattr(m, "comfy_patched_weights", False)]
    lowvram_patches = sum(isinstance(f, mp.LowVramPatch) for m in base.modules()
                          for f in list(getattr(m, "weight_function", [])) + list(getattr(m, "bias_function", [])))
    return {
        "resident_bytes": base.model_loaded_weight_memory,
        "lowvram": bool(base.model_lowvram),
        "streamed_modules": len(streamed),
        "lowvram_patches": lowvram_patches,
        "backup_keys": sorted(patcher.backup),
        "backup_bytes": sum(b.weight.numel() * b.weight.element_size() for b in patcher.backup.values()),
        "object_patch_bytes": sum(v.numel() * v.element_size() for v in patcher.object_patches.values()
                                  if isinstance(v, torch.Tensor)),
        "model_bytes": patcher.model_size(),
    }
