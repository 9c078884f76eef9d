"""Memory: the peak the trainer logs, and an exact ledger of tensor bytes for tests and estimates.

- ``peak_stats`` / ``reset_peak``: what ``logging.log_every`` reports. On CUDA
  ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the training device; on the CPU
  the process's resident set now and its peak (``getrusage``; the peak cannot be reset, so it is
  the peak since the process started).
- ``TensorLedger``: a TorchDispatchMode that counts the bytes of every tensor storage created while it
  is active and still alive, and their peak. It is how the CPU tests measure "what would reside on
  the GPU" (there is no device allocator to ask on a CPU): storages that the trainer parks in host
  memory (offloaded activations) are reported through ``host_resident`` and leave the count. Sizes
  are exact tensor bytes, not allocator blocks (CUDA rounds each block up to 512 bytes and keeps
  freed blocks cached: ``max_memory_reserved`` is higher).
"""

from __future__ import annotations

import os
import resource
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

GiB = 1024 ** 3
_ACTIVE: list["TensorLedger"] = []


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_stats(device: torch.device) -> dict[str, float]:
    """{"peak_mem_gib", ...} for the metrics log: allocated / reserved peak on CUDA, RSS on the CPU."""
    if device.type == "cuda":
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / GiB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GiB}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"rss_gib": _rss_now() / GiB, "peak_rss_gib": peak / GiB}


def host_resident(t: torch.Tensor) -> torch.Tensor:
    """Mark ``t`` as parked in host memory (no-op unless a ``TensorLedger`` is active)."""
    for ledger in _ACTIVE:
        ledger.mark_host(t)
    return t


class TensorLedger(TorchDispatchMode):
    """Live bytes (and their peak) of the tensor storages created while active, less host-parked ones.

    ``with TensorLedger() as ledger: ...`` then ``ledger.peak`` / ``ledger.live``; ``ledger.reset_peak()``
    starts a new peak at the current live count. Counts every op output's storage once (views share
    it); the storage leaves the count when it is freed or marked host-resident.
    """

    def __init__(self):
        super().__init__()
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: dict[int, weakref.ref] = {}
        self.live = 0
        self.peak = 0

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _freed(self, key: int, size: int, _ref=None) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= size

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        st = t.untyped_storage()
        if st in self._sizes:
            return
        size = st.nbytes()
        self._sizes[st] = size
        key = id(st)
        self._refs[key] = weakref.ref(st, lambda r, k=key, s=size: self._freed(k, s))
        self.live += size
        self.peak = max(self.peak, self.live)

    def mark_host(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        size = self._sizes.get(st)
        if size is not None and self._refs.pop(id(st), None) is not None:
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages of ``tensors`` (views counted once)."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total
