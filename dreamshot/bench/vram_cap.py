"""A smaller GPU played on a bigger one: the GPU check's 24 GB runs on an 80 GB H100.

The cap takes the card's memory beyond ``cap_bytes`` away when the process starts, with one
allocation that is never freed (the ballast). Everything then sees a card of the capped size: the
driver's free memory, which ComfyUI reads for each of its decisions (how much of the DiT to load,
``comfy/model_management.py`` load_models_gpu / get_free_memory; whether cond and uncond run as one
batch, ``comfy/samplers.py`` _calc_cond_batch), and an allocation beyond the cap fails with CUDA's
out-of-memory error, as it would on the smaller card. What is not played: the bigger card's speed.

Why not the usual knobs: ComfyUI's ``--reserve-vram`` moves only its load budget (the batching
decision and the allocator still see the whole card), and torch's ``set_per_process_memory_fraction``
caps the allocator while ComfyUI still reads the whole card as free, so ComfyUI would plan for 80 GB
and then fail where a 24 GB card would have run the model partially loaded. Peaks are reported
without the ballast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MiB = 2 ** 20
# An RTX 4090's memory as the driver reports it (nvidia-smi: 24564 MiB; an RTX 3090: 24576 MiB).
CAP_24GB = 24564 * MiB


def ballast_bytes(total_bytes: int, cap_bytes: int) -> int:
    """What to hold back on a card of ``total_bytes`` so that ``cap_bytes`` remain (0 if it is smaller).
    The CUDA context and anything else already on the card stay inside the cap, as on the small card."""
    return max(0, total_bytes - cap_bytes)


@dataclass
class VramCap:
    cap_bytes: int
    ballast: int = 0            # bytes held back
    free_after: int = 0         # the driver's free memory once the cap is in place
    _hold: torch.Tensor | None = None

    def apply(self, device: torch.device) -> "VramCap":
        """Hold back the memory beyond the cap (CUDA only; on a CPU nothing is capped)."""
        if device.type != "cuda":
            return self
        _, total = torch.cuda.mem_get_info(device)
        self.ballast = ballast_bytes(total, self.cap_bytes)
        if self.ballast:
            self._hold = torch.empty(self.ballast, dtype=torch.uint8, device=device)
        torch.cuda.synchronize(device)
        self.free_after = torch.cuda.mem_get_info(device)[0]
        return self

    def describe(self) -> str:
        if not self.ballast:
            return f"cap {self.cap_bytes / MiB:.0f} MiB: not applied (no CUDA device, or a card no larger)"
        return (f"cap {self.cap_bytes / MiB:.0f} MiB: {self.ballast / MiB:.0f} MiB held back, "
                f"{self.free_after / MiB:.0f} MiB free for the run")
