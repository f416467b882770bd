"""Task functions for test_bad_input.py: module-level, so workers import them by name."""
from __future__ import annotations


def keywords(*args, **kwargs):
    """Return what the task was called with."""
    return args, kwargs


def length(data):
    return len(data)


def big(nbytes, fill=7):
    return bytes([fill]) * nbytes


def triple(i):
    return i * 3 + 1


def hold(data, path, timeout=120.0):
    """Keep the task (and its argument's segment) alive until ``path`` exists; returns len(data)."""
    import os
    import time

    end = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    return len(data)
