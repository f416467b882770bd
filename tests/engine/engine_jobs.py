"""Task functions for the engine tests: module-level, so workers import them by name."""
from __future__ import annotations

import os
import signal
import time


def add(a, b=0):
    return a + b


def square(x):
    return x * x


def noop():
    return None


def pid():
    return os.getpid()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def spin(seconds):
    """Busy Python loop: interruptible by a raised exception, unlike a C call."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def block_in_c(seconds):
    """Sleeps inside C with signals ignored: only a kill stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(seconds)
    return "finished"


def fail(message="boom"):
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def fail_custom():
    raise CustomError(42, "custom detail")


class Unrecreatable(Exception):
    """Pickles, but unpickling calls __init__ with the wrong arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def fail_unrecreatable():
    raise Unrecreatable(1, 2)


def fail_unpicklable():
    import threading

    err = RuntimeError("carries a lock")
    err.lock = threading.Lock()
    raise err


def return_unpicklable():
    import threading

    return threading.Lock()


def flaky(path, failures):
    """Fails the first `failures` calls (counted in a file), then returns the count."""
    with open(path, "a+") as f:
        f.seek(0)
        n = len(f.read())
        f.write("x")
    if n < failures:
        raise ConnectionError(f"attempt {n + 1} fails")
    return n + 1


def record_start(path, tag):
    with open(path, "a") as f:
        f.write(f"{tag} {time.monotonic()}\n")
    return tag


def exit_hard(code):
    os._exit(code)


def kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(5)


def segfault():
    import ctypes

    ctypes.string_at(0)


def raise_base(kind):
    raise {"exit": SystemExit(3), "kbd": KeyboardInterrupt(), "gen": GeneratorExit()}[kind]


def recurse(n):
    return recurse(n + 1)


def echo_bytes(data):
    return len(data), data[:16], data[-16:]


def big_result(n):
    return b"r" * n


def report(steps, pause):
    from catzilla_mp import report_progress

    for i in range(steps):
        report_progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(pause)
    return steps


def alloc_mb(mb):
    global _hold
    _hold = bytearray(mb << 20)
    return mb


class Counter:
    def __init__(self, start):
        self.start = start

    def bump(self, n):
        return self.start + n


def identity(value, scale=None):
    return value if scale is None else value * scale


def wait_for_path(path, timeout=60.0):
    """Run until ``path`` exists (the test's signal), at most ``timeout`` s."""
    end = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.005)
    return os.path.exists(path)
