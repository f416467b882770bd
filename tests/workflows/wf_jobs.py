"""Task functions for the workflow tests: module-level, so workers import them by name."""
from __future__ import annotations

import threading
import time


def add(a, b=0):
    return a + b


def mul(a, b):
    return a * b


def total(values, extra=0):
    return sum(values) + extra


def fail(message="boom"):
    raise ValueError(message)


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for(event: threading.Event, value=None):
    """Thread mode only: block until the test sets ``event``."""
    event.wait(60)
    return value


def stamp(value=None):
    """(time.monotonic() at the start, value): a chain step's start, for the hand-off."""
    return time.monotonic(), value
