"""Timing, peak memory and SDPA kernels, measured the same way for every case of one run.

Peak memory is what the allocator hands out during the call, above what was allocated before it:
``torch.cuda.max_memory_allocated`` on a GPU; on CPU the running total of the CPU allocator, which
PyTorch's profiler records at every allocation and free (``profile_memory``). Both count everything
an op allocates: outputs, temporaries, kernel workspaces, tensors autograd saves. (An earlier probe
here counted only the outputs that ops returned, so a kernel's own workspace went unseen.)

On CPU the peak is also split (``profile_cpu``): what the dispatched ops hold (their outputs and what
they keep alive between them: the same on every machine) and what a kernel allocates and frees
inside itself (CPU flash attention's per-thread buffers, oneDNN scratchpads, a kernel's private
copy of a strided input). The second part depends on the CPU's thread count and instruction set
(AVX2 / AVX-512 / AMX) and has no GPU counterpart of that size; it is found by running the call
under a pass-through dispatch mode, so every kernel call is a profiler event of its own, and taking
the allocations freed before the kernel call that made them returned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# aten ops PyTorch's scaled_dot_product_attention dispatches to, by the kernel they run.
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (other backend)",
}


def _walk(events):
    for e in events:
        yield e
        yield from _walk(e.children)


def _profile(fn, memory: bool):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=memory) as prof:
        fn()
    return list(_walk(prof.profiler.kineto_results.experimental_event_tree()))


def _cpu_allocations(events) -> list:
    from torch._C._profiler import _EventType

    return sorted((e for e in events if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu"),
                  key=lambda e: e.start_time_ns)


def _cpu_peak(events) -> int:
    allocs = _cpu_allocations(events)
    if not allocs:
        return 0
    # The running total also holds blocks still alive from earlier profiled calls: start from the
    # total just before this call's first event.
    first = allocs[0].extra_fields
    start = first.total_allocated - first.alloc_size
    return max(0, max(e.extra_fields.total_allocated for e in allocs) - start)


_MODE_EVENT = "PythonDispatchMode"


def _kernel_call(event):
    """The kernel call an allocation happened in: its nearest "PythonDispatchMode" ancestor, the event
    spanning a dispatch mode's handling of one op (the kernel and whatever it calls), or None."""
    parent = event.parent
    while parent is not None:
        if parent.name == _MODE_EVENT:
            return parent
        parent = parent.parent
    return None


def _cpu_peak_split(events) -> tuple[int, int, int]:
    """(peak of everything, peak without kernel-internal allocations, the largest kernel-internal
    peak of one kernel call) of the CPU allocations among ``events``, relative to the start.

    Kernel-internal: allocated inside a kernel call (see ``_kernel_call``) and freed before that call
    ended. Needs the events of a call run under a dispatch mode (``_PassThrough`` or ``ShapeOnly``).
    """
    allocs = _cpu_allocations(events)
    if not allocs:
        return 0, 0, 0
    internal: set[int] = set()          # ids of the alloc and free events of kernel-internal blocks
    open_blocks: dict[int, tuple] = {}  # ptr -> (alloc event, its kernel call)
    per_call: dict[int, int] = {}
    call_peak = 0
    for e in allocs:
        f = e.extra_fields
        if f.alloc_size > 0:
            open_blocks[f.ptr] = (e, _kernel_call(e))
            continue
        alloc, call = open_blocks.pop(f.ptr, (None, None))
        if alloc is not None and call is not None and e.start_time_ns <= call.end_time_ns:
            internal.update((id(alloc), id(e)))
    total = internal_total = peak = peak_out = 0
    for e in allocs:
        size = e.extra_fields.alloc_size
        total += size
        peak = max(peak, total)
        if id(e) in internal:
            call = id(_kernel_call(e))
            per_call[call] = per_call.get(call, 0) + size
            call_peak = max(call_peak, per_call[call])
            internal_total += size
        peak_out = max(peak_out, total - internal_total)
    return peak, peak_out, call_peak


class _PassThrough(TorchDispatchMode):
    """Runs every op as it is; being active makes each kernel call an event of its own."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _kernels(events) -> list[str]:
    names = {e.name for e in events}
    return sorted({kernel for op, kernel in SDPA_KERNELS.items() if op in names})


def cpu_peak_bytes(fn) -> int:
    """Peak of the CPU allocator's running total during ``fn()``, relative to its start."""
    return _cpu_peak(_profile(fn, memory=True))


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated during ``fn()`` beyond those allocated before it."""
    return _peaks(fn, device)[0]


def _peaks(fn, device: torch.device) -> tuple[int, int]:
    """(peak above the start, the allocator's own peak: torch.cuda.max_memory_allocated on a GPU)."""
    if device.type != "cuda":
        peak = cpu_peak_bytes(fn)
        return peak, peak
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    total = torch.cuda.max_memory_allocated()
    return total - base, total


def sdpa_kernels(fn) -> list[str]:
    """The SDPA kernels ``fn()`` ran (flash / efficient / cudnn / math), from the profiler's op names;
    an empty list when it called no PyTorch SDPA (e.g. a ComfyUI sage or xformers backend)."""
    return _kernels(_profile(fn, memory=False))


class ShapeOnly(TorchDispatchMode):
    """Every op allocates exactly what it would, but floating-point results are left uncomputed.

    Shape accounting for memory at full model size on a CPU: an op whose results are all floating
    point gets its outputs from its meta kernel (shapes, strides, dtypes: the same allocations as the
    real kernel, outside the kernels' own workspaces) as empty tensors on the real device; in-place
    and ``out=`` ops return their target untouched. Views, integer and boolean ops (token indices,
    group ids, masks: what control flow depends on) and ops without a meta kernel run for real. Values
    are garbage, so only memory is meaningful; tests/test_dreamshot_memory.py checks it against real
    runs of every op.
    """

    def __init__(self):
        super().__init__()
        self._plans: dict = {}   # the meta kernel's answer per op and argument shapes (blocks repeat)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        key = (func, spec, tuple(_signature(x) for x in flat))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _plan(func, flat, spec)
        if plan == "real":
            return func(*args, **kwargs)
        if plan == "target":   # in place / out=: the target, untouched
            return kwargs["out"] if "out" in kwargs else args[0]
        out_spec, metas = plan
        devices = {t.device for t in flat if isinstance(t, torch.Tensor)}
        device = next(iter(devices)) if len(devices) == 1 else kwargs.get("device") or torch.device("cpu")
        return tree_unflatten([torch.empty_strided(shape, stride, dtype=dtype, device=device)
                               for shape, stride, dtype in metas], out_spec)


def _signature(x):
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype, x.device.type)
    try:
        hash(x)
        return x
    except TypeError:
        return repr(x)


def _plan(func, flat, spec):
    """"real" (run it), "target" (skip an in-place / out= op) or (output spec, [(shape, stride, dtype)])."""
    aliased = [r.alias_info for r in func._schema.returns if r.alias_info is not None]
    if (aliased and not any(a.is_write for a in aliased)) or func in _UNANNOTATED_VIEWS:
        return "real"   # a view
    try:
        meta_args, meta_kwargs = tree_unflatten([_to_meta(x) for x in flat], spec)
        out = func(*meta_args, **meta_kwargs)
    except Exception:  # data-dependent shapes, no meta kernel
        return "real"
    leaves, out_spec = tree_flatten(out)
    if not leaves or not all(isinstance(t, torch.Tensor) and (t.dtype.is_floating_point or t.dtype.is_complex)
                             for t in leaves):
        return "real"
    if aliased:
        return "target"
    return out_spec, [(t.shape, t.stride(), t.dtype) for t in leaves]


# Views whose schema does not say so (reshape and matmul return their results through them).
_UNANNOTATED_VIEWS = {torch.ops.aten._unsafe_view.default, torch.ops.aten._reshape_alias.default}


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, torch.device):
        return torch.device("meta")
    return x


@dataclass
class Measurement:
    seconds: float
    peak_bytes: int           # above what was allocated before the call
    kernels: list[str] = field(default_factory=list)
    total_bytes: int = 0      # GPU: torch.cuda.max_memory_allocated itself (weights included); CPU: peak_bytes
    # CPU only (profile_cpu): the peak without kernel-internal allocations (the same on every machine),
    # and the largest kernel-internal peak of one kernel call (CPU threads and ISA decide it).
    ops_peak_bytes: int = 0
    kernel_workspace_bytes: int = 0


def measure(fn, device: torch.device, repeats: int = 3, warmup: int = 1, kernels: bool = False,
            exclude_bytes: int = 0, cpu_memory: bool = True) -> Measurement:
    """Best-of-``repeats`` wall time (at least one timed call), the peak memory of one call and,
    with ``kernels``, the SDPA kernels it ran.

    On a GPU the peak is read from the timed calls themselves (the allocator's peak is reset before
    each, so no extra call is made: at Wan2.1-14B size one call is several seconds);
    ``exclude_bytes`` is left out of the total (memory held on purpose, e.g. a VRAM cap's ballast).
    On a CPU one more call runs under the profiler (profile_cpu), which would distort the times
    (``cpu_memory`` False: no such call, and no memory figure: NaN)."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    best, peak, total = float("inf"), 0, 0
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        if cuda:
            top = torch.cuda.max_memory_allocated()
            peak, total = max(peak, top - base), max(total, top - exclude_bytes)
    if cuda:
        return Measurement(best, peak, sdpa_kernels(fn) if kernels else [], total)
    if not cpu_memory:
        return Measurement(best, math.nan, [], math.nan)
    m = profile_cpu(fn)
    m.seconds = best
    if not kernels:
        m.kernels = []
    return m


def profile_cpu(fn) -> Measurement:
    """Peak CPU memory (whole, and split into ops / kernel workspace) and the SDPA kernels of one call
    of ``fn`` (one profiled call gives all); no time. Under ShapeOnly already, ``fn`` runs in it."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if _get_current_dispatch_mode() is None:
        def run():
            with _PassThrough():
                fn()
    else:
        run = fn
    events = _profile(run, memory=True)
    peak, ops_peak, workspace = _cpu_peak_split(events)
    return Measurement(math.nan, peak, _kernels(events), peak, ops_peak, workspace)
