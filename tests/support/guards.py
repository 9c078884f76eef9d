"""Hang detectors and a memory measure for tests of hostile input (story files, the story fuzzer).

``wall_guard`` is a hang detector, never a timing assertion: it is sized far above any normal run,
so a test fails on a machine of any speed only when something does not end. ``traced_peak`` measures
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
def wall_guard(seconds: float, what: str = "the block"):
    """Fail the block with Hang once it has run ``seconds`` of wall time (SIGALRM, main thread, POSIX).
    Where Python cannot be interrupted (a C call that never returns), faulthandler dumps every
    thread's stack and ends the process 60 s later, so CI fails instead of waiting forever. Not
    nested: one guard at a time. Elsewhere (no SIGALRM, another thread) only the stack dump."""
    def alarm(signum, frame):
        raise Hang(f"{what} ran past its {seconds:g} s wall guard (a hang detector sized far above a normal run)")

    armed = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if armed:
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 60, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


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
