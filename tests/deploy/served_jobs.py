"""Task functions of the one-engine-per-server tests (the serve process's workers import them)."""
from __future__ import annotations

import os
import time


def whoami(x):
    """(x squared, the worker's pid)."""
    return x * x, os.getpid()


def slow_square(x, seconds=0.3):
    time.sleep(seconds)
    return x * x


def stamp(i):
    """(i, the wall-clock time the task started): rate limits measured over windows."""
    return i, time.time()


def note(path, tag, seconds=0.0):
    """Append ``tag`` to ``path`` (one line per run: runs counted, not timed), then sleep."""
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    time.sleep(seconds)
    return tag
