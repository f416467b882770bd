"""Task functions and helpers for the deployment tests: module-level, so workers import them."""
from __future__ import annotations

import os
import subprocess
import time


def square(x):
    return x * x


def whoami(x):
    """(x squared, the worker's pid): a caller can check the answer and who gave it."""
    return x * x, os.getpid()


class Blob:
    """A result that can be weakly referenced, to see who keeps it alive."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def make_blob(n):
    return Blob(b"b" * n)


def big(n):
    return b"r" * n


class Holder:
    """An instance whose bound method is a task."""

    def __init__(self, k: int) -> None:
        self.k = k

    def times(self, x):
        return self.k * x


def wait_for_file(path, timeout=120.0):
    """Run until ``path`` exists (a test's go signal); returns how long that took."""
    start = time.monotonic()
    while not os.path.exists(path) and time.monotonic() - start < timeout:
        time.sleep(0.01)
    return time.monotonic() - start


def start_child_and_sleep(pid_path):
    """Start a long `sleep` child, write its pid, then sleep: a task whose child would outlive it."""
    child = subprocess.Popen(["sleep", "300"])
    with open(pid_path + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.rename(pid_path + ".tmp", pid_path)
    time.sleep(300)
