"""Timing and peak-memory measurement, the same way for every case of one run."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveTensorBytes(TorchDispatchMode):
    """CPU stand-in for torch.cuda.max_memory_allocated: bytes of live op outputs, at their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, ptr: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: not a new allocation (counting them
        # would charge the caller's own inputs to whichever op first viewed them).
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                ptr = t.untyped_storage().data_ptr()
                if ptr and ptr not in self._seen and ptr not in inputs:
                    nbytes = t.untyped_storage().nbytes()
                    self._seen.add(ptr)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, nbytes)
        return out


@dataclass
class Measurement:
    seconds: float
    peak_bytes: int


def measure(fn, device: torch.device, repeats: int = 3, warmup: int = 1) -> Measurement:
    """Best-of-``repeats`` wall time and the peak memory of one call."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with _LiveTensorBytes() as mode:
            fn()
        peak = mode.peak
    return Measurement(best, peak)
