"""Side-effect files for tests that count how many times a task really ran.

A task appends one line per run (``trace``); the test reads the counts
(``runs``). Module-level in tests/, which pytest puts on sys.path, so the
task modules of every test directory (and their workers) import it by name.
"""
from __future__ import annotations

import os
import time


def trace(path, tag) -> None:
    """Append ``tag pid monotonic-time`` to ``path``."""
    # O_APPEND writes of one short line are atomic: concurrent runs never interleave
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{tag} {os.getpid()} {time.monotonic()}\n".encode())
    finally:
        os.close(fd)


def runs(path) -> dict[str, int]:
    """How many times each tag ran, from a side-effect file."""
    counts: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                tag = line.split()[0]
                counts[tag] = counts.get(tag, 0) + 1
    except FileNotFoundError:
        pass
    return counts
