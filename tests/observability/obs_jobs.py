"""Task functions for the observability tests (module-level: workers import them by name)."""
from __future__ import annotations

import os
import time


def square(x):
    return x * x


def fail(message="boom"):
    raise ValueError(message)


def nap(seconds):
    time.sleep(seconds)
    return seconds


def spin(seconds):
    """A busy Python loop: a timeout's exception interrupts it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def exit_hard(code=7):
    os._exit(code)


def wait_for_file(path, limit=60.0):
    """Run until ``path`` exists: a task that ends when the test says so."""
    end = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.02)
    return "released"


class Unprintable(Exception):
    """An exception whose __str__ raises (issue 12.2)."""

    def __str__(self):
        raise RuntimeError("no str for you")


class Unrepresentable:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def fail_unprintable():
    raise Unprintable()


def unrepresentable():
    return Unrepresentable()


def big_list(n):
    return list(range(n))
