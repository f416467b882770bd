"""Task functions for the chain hand-off tests: module-level, so workers import them by name.

Each step leaves one line per run in a side-effect file, so a test can tell
how many times a step really ran (a chain step must run exactly once).
"""
from __future__ import annotations

import os
import time

from run_trace import runs, trace


def gated(gate, path, tag, value):
    """Wait until the file ``gate`` exists (the test wires the chain meanwhile), then return value."""
    trace(path, tag)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.002)
    return value


def gated_fail(gate, path, tag):
    gated(gate, path, tag, None)
    raise ValueError(f"{tag} failed on purpose")


def step(x, path, tag, k):
    """One chain step: x * k."""
    trace(path, tag)
    return x * k


def fails_once(x, path, tag):
    """Fails on its first run, returns x + 1 on the next (a retried chain step)."""
    trace(path, tag)
    if runs(path).get(tag, 0) == 1:
        raise RuntimeError("first attempt fails on purpose")
    return x + 1


def big(fed, n):
    """A result of its own payload segment (beyond serialization.BIG_BUFFER); ``fed`` ignored."""
    return b"x" * n
