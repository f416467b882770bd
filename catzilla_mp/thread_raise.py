"""Raising an exception into another thread, and taking a raise back.

Thread-mode timeouts, soft timeouts in multi-threaded workers and memory
limits stop a Python thread by raising into it (CPython's
PyThreadState_SetAsyncExc): the exception lands at the thread's next
eval-breaker check (a call, a loop's backward jump); a blocking C call runs
to its end first.

Taking a raise back that has not landed needs care. The C API's way,
``PyThreadState_SetAsyncExc(id, NULL)``, clears the thread's pending
exception but leaves the interpreter's "asynchronous exception pending" flag
set for good (only a delivery clears it): every thread then takes the slow
path at every check, and CPython 3.11 loops for ever in the next function run
under a profiler or tracer (cProfile, coverage, a debugger). So a raise is
taken back by replacing it with a private one and letting that land at once.
"""
from __future__ import annotations

import threading
import time

#: How long ``withdraw_pending_raise`` lets its own raise land before giving
#: up; it lands at the loop's first backward jump, the bound only guards
#: against an interpreter that delivers it later than that.
WITHDRAW_WAIT_S = 1.0


class _Withdrawn(BaseException):
    """The placeholder raise that replaces a withdrawn one; caught where it is sent."""


def raise_in_thread(ident: int, exc_type: type) -> bool:
    """Raise ``exc_type`` in the thread ``ident`` at its next eval-breaker check.

    Returns:
        True if the thread exists (the raise is pending there), else False.
    """
    import ctypes  # here, not at the top: ~1 ms of every engine's start-up (issue 18)
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type)) == 1


def withdraw_pending_raise() -> None:
    """Drop a raise sent to the calling thread that has not landed yet (or do nothing).

    The caller makes sure no other raise can be sent meanwhile (it holds the
    lock the raiser takes). Never raises.
    """
    deadline = time.monotonic() + WITHDRAW_WAIT_S
    try:
        raise_in_thread(threading.get_ident(), _Withdrawn)  # replaces a pending one
        while time.monotonic() < deadline:
            pass
    except _Withdrawn:
        pass
