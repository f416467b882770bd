"""Task functions for the compat tests (module-level: workers import them by name)."""
from __future__ import annotations

import contextvars
import logging
import os
import time

try:
    from catzilla_mp import propagate_context
except ImportError:  # an older catzilla_mp (checking that the tests fail there)
    def propagate_context(var):
        return var

request_id: contextvars.ContextVar = propagate_context(contextvars.ContextVar("compat_request_id"))
not_propagated: contextvars.ContextVar = contextvars.ContextVar("compat_not_propagated")

_initialized: list = []


def add(a, b=0):
    return a + b


def square(x):
    return x * x


def pid():
    return os.getpid()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_file(path, timeout=60.0):
    """Run until ``path`` exists (lets a test look at a task while it runs)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def touch_and_wait(started, release, timeout=60.0):
    open(started, "w").close()
    return wait_for_file(release, timeout)


def hold_bytes(data, release, timeout=60.0):
    wait_for_file(release, timeout)
    return len(data)


def fail_with(kind, path=None):
    """Raise ``kind`` (a name); count calls in ``path`` if given."""
    if path:
        with open(path, "a") as f:
            f.write("x")
    raise {"value": ValueError, "key": KeyError, "os": OSError}[kind](kind)


def allocate_mb(mb, then_sleep=0.0):
    """Touch ``mb`` MiB (so it is resident), keep it a moment, free it."""
    block = b"x" * (mb << 20)
    deadline = time.monotonic() + then_sleep
    while time.monotonic() < deadline:
        time.sleep(0.001)
    return len(block) >> 20


def allocate_in_steps(mb, steps=20):
    blocks = []
    for _ in range(steps):
        blocks.append(b"y" * ((mb << 20) // steps))
        time.sleep(0.005)
    return sum(map(len, blocks)) >> 20


def busy_python(n):
    def inner(k):
        return sum(i * i for i in range(k))
    return sum(inner(1000) for _ in range(n))


def read_context():
    return request_id.get("unset"), not_propagated.get("unset")


def log_something(message):
    logging.getLogger("compat_jobs").warning("from the worker: %s", message)
    return os.getpid()


def init_worker(path, value):
    _initialized.append(value)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def init_fails(message):
    raise RuntimeError(message)


def initialized():
    return list(_initialized)


def record_and_square(path, x):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x * x


def allocate_then_block_in_c(mb, seconds):
    """Over the limit, then in a C call that ignores asynchronous exceptions."""
    block = b"z" * (mb << 20)
    time.sleep(seconds)
    return len(block)
