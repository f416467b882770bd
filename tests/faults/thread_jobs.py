"""Task functions for the engine-thread tests (test_threads.py): module-level, so workers import them."""
from __future__ import annotations

import os
import signal
import time



def trace(path, tag):
    """Append one line naming ``tag`` to ``path`` (O_APPEND: concurrent runs never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{tag} {os.getpid()} {time.monotonic()}\n".encode())
    finally:
        os.close(fd)


def spin_then(path, tag, seconds, value=None):
    """Record a run, then run Python for ``seconds`` (a soft timeout can stop it)."""
    trace(path, tag)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return value


def mark_value(path, tag, value):
    """Record a run of ``tag``; return ``value``."""
    trace(path, tag)
    return value


def deaf_until(path, tag, release_path, seconds=60.0):
    """Record a run, then ignore SIGUSR1 (no soft timeout: the worker's, for good) until release_path exists."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    trace(path, tag)
    end = time.monotonic() + seconds
    while not os.path.exists(release_path) and time.monotonic() < end:
        time.sleep(0.005)
    return tag


class ExitOnUnpickle:
    """A result whose unpickling in the app raises SystemExit (issue 11.4)."""

    def __reduce__(self):
        return (_exit_now, ())


def _exit_now():
    raise SystemExit(7)


def exit_on_unpickle():
    return ExitOnUnpickle()
