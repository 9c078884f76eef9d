"""Measure one training step's tensor memory on the CPU (dreamshot.train.memory.TensorLedger), and write
random Wan2.1-format DiTs of any width for it."""

from __future__ import annotations

from pathlib import Path

import torch


def write_wan_dit(path: Path, dim: int, ffn_dim: int, num_layers: int, dtype=torch.bfloat16, seed: int = 0) -> Path:
    """A random Wan2.1 T2V DiT (ComfyUI's own class) saved as safetensors; heads = dim // 128."""
    import safetensors.torch

    from dreamshot.comfy_bridge.random_wan import random_wan_dit

    if not path.exists():
        model = random_wan_dit(dim, ffn_dim, num_layers, seed=seed, dtype=dtype)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        tmp = path.with_suffix(".tmp")
        safetensors.torch.save_file(sd, str(tmp))
        tmp.rename(path)
    return path


def measure_step(trainer, batch) -> dict[str, int]:
    """Bytes of one optimizer step (forward, backward, optimizer) on the training device.

    ``resident``: DiT weights on the device (not the swapped blocks) + trainable tensors before the step;
    ``after_forward``: tensors the step created that are alive when forward returns (saved for backward);
    ``peak``: the most such tensors alive at once (backward, optimizer); ``state``: what stays after
    the step (gradients are freed; optimizer states are not)."""
    from dreamshot.comfy_bridge.compat import training_mode
    from dreamshot.train.memory import TensorLedger, tensor_bytes

    resident = trainer.story_model.resident_bytes() + tensor_bytes(trainer.params)
    with training_mode(), TensorLedger() as ledger:
        loss, parts = trainer.compute_loss(batch)
        after_forward = ledger.live
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        del loss
        state = ledger.live
    return {"resident": resident, "after_forward": after_forward, "peak": ledger.peak, "state": state,
            "loss": parts["fm"]}
