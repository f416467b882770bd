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
