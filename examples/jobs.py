"""CPU-heavy jobs the example apps hand to catzilla_mp (and the failures they demonstrate).

They live in their own module so worker processes import them by name.
"""
from __future__ import annotations

import os
import time

from catzilla_mp import report_progress


def crunch(n: int = 300_000, steps: int = 10) -> int:
    """Pure-Python arithmetic (holds the GIL the whole time), reporting progress per step."""
    total = 0
    for step in range(steps):
        for i in range(n):
            total += i * i % 7
        report_progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return total


def explode(message: str = "the input was bad") -> None:
    """A job whose own code raises."""
    raise ValueError(message)


def crash(code: int = 3) -> None:
    """A job that takes its worker process down with it."""
    os._exit(code)


def linger(seconds: float = 10.0) -> str:
    """A job slower than the timeout it is given."""
    time.sleep(seconds)
    return "too late"
