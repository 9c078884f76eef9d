"""Hang detectors and a memory measure for tests of hostile input (story files, the story fuzzer).

``hang_guard`` is a hang detector, never a timing assertion: sized far above any
normal run (and counting CPU time, which a busy machine does not stretch), so a test fails on a
machine of any speed only when something does not end. ``traced_peak`` measures
the Python heap a call needed at its peak (tracemalloc: Python objects, numpy arrays; not torch's
or PIL's own buffers), a machine-independent way to say "refused before anything large was built".
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import threading
import tracemalloc


class Hang(BaseException):
    """Raised into a block that outlived its wall guard. A BaseException (like KeyboardInterrupt):
    hypothesis and broad ``except Exception`` let it through, so a hang is reported at once, not
    replayed and shrunk (which would hang again)."""


@contextlib.contextmanager
def hang_guard(cpu_s: float, wall_s: float, what: str = "the block"):
    """Fail the block with Hang once it has used ``cpu_s`` seconds of the process's CPU time (a busy
    hang: a loop that never ends, whatever else runs on the machine) or run ``wall_s`` seconds of wall
    time (a blocked one). POSIX timers, main thread only; not nested. Where Python cannot be
    interrupted (a C call that never returns), faulthandler dumps every thread's stack and ends the
    process 60 s after the wall limit, so CI fails instead of waiting forever. Elsewhere (no
    signals, another thread) only that last resort."""
    def alarm(signum, frame):
        spent = f"{cpu_s:g} s of CPU time" if signum == getattr(signal, "SIGPROF", None) else f"{wall_s:g} s"
        raise Hang(f"{what} ran past its hang guard ({spent}; sized far above a normal run)")

    armed = hasattr(signal, "SIGPROF") and threading.current_thread() is threading.main_thread()
    if armed:
        previous = signal.signal(signal.SIGALRM, alarm), signal.signal(signal.SIGPROF, alarm)
        signal.setitimer(signal.ITIMER_REAL, wall_s)
        signal.setitimer(signal.ITIMER_PROF, cpu_s)
    faulthandler.dump_traceback_later(wall_s + 60, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGALRM, previous[0])
            signal.signal(signal.SIGPROF, previous[1])


def traced_peak(fn, *args, **kwargs) -> tuple[int, object]:
    """(peak bytes of Python heap allocated during ``fn(*args, **kwargs)`` above what was live
    before, its result or the exception it raised)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        outcome = fn(*args, **kwargs)
    except Exception as e:          # the caller asserts on it
        outcome = e
    peak = tracemalloc.get_traced_memory()[1] - before
    if started:
        tracemalloc.stop()
    return peak, outcome
