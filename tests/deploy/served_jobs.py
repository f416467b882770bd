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
