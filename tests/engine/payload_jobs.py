"""Task functions of test_payloads.py (importable by the workers)."""
from __future__ import annotations

import hashlib
import os
import signal


def digest(data):
    """(type name, length in bytes, sha256) of what the worker received."""
    view = memoryview(data)
    raw = view.tobytes(order="A") if not view.contiguous else bytes(view.cast("B")) if view.nbytes else b""
    return type(data).__name__, view.nbytes, hashlib.sha256(raw).hexdigest()


def echo(data):
    return data


def filled(n, byte):
    return bytes([byte]) * n


def die_after_reading(data):
    """Read the whole payload, then die as a SIGKILL would have it, mid-task."""
    assert len(data) > 0
    os.kill(os.getpid(), signal.SIGKILL)


def priority():
    """(nice value, scheduling policy) of the worker running this."""
    return os.nice(0), os.sched_getscheduler(0)
