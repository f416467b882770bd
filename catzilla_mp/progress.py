"""``report_progress()``: how a running task tells the app how far it got.

In a worker process the value goes to the worker's record in shared memory
(a seqlock: odd sequence while writing), where the app reads it for the task
the worker is running. In thread mode it goes straight to the task's record.
Outside a task it does nothing and returns False, so library code can call
it unconditionally.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

_local = threading.local()
#: Set in worker processes: writes (fraction, message) to the worker record.
_process_sink: Optional[Callable[[float, str], None]] = None


def report_progress(fraction: float, message: str = "") -> bool:
    """Report the running task's progress, ``fraction`` in [0, 1].

    Returns:
        True if a running task received it, False when called outside a task.
    Raises:
        ValueError: fraction outside [0, 1] or not a number.
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"progress must be a number in [0, 1], not {fraction!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"progress must be in [0, 1], not {value}")
    sink = getattr(_local, "sink", None) or _process_sink
    if sink is None:
        return False
    sink(value, str(message))
    return True


def set_thread_sink(sink: Optional[Callable[[float, str], None]]) -> None:
    """Route this thread's reports to ``sink`` (thread mode), or stop (None)."""
    _local.sink = sink


def set_process_sink(sink: Optional[Callable[[float, str], None]]) -> None:
    global _process_sink
    _process_sink = sink
