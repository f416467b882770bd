"""Task functions for the Ray tests: module-level, so Ray workers import them by name."""
from __future__ import annotations

import os
import signal
import time


def add(a, b=0):
    return a + b


def record(path, tag):
    """Append ``tag`` to ``path``: the order tasks ran in."""
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    return tag


def record_span(path, tag, seconds):
    """Append ``tag start end`` (monotonic) after running ``seconds``: which tasks overlapped."""
    t0 = time.monotonic()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{tag} {t0} {time.monotonic()}\n")
    return tag


def pid_then_block(path, seconds):
    """Write this worker's pid, then sleep in C with signals blocked: only a kill stops it."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
    time.sleep(seconds)
    return "finished"


def crash_once(path):
    """The first call kills its worker process; later calls succeed."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return "recovered"


def exit_hard(code):
    os._exit(code)


def square(x):
    return x * x


def report(steps):
    from catzilla_mp import report_progress

    for i in range(steps):
        report_progress((i + 1) / steps, f"step {i + 1}")
    return steps


_marker = None


def set_marker(value):
    """The engine's initializer: runs once per Ray worker process before its first task."""
    global _marker
    _marker = value


def read_marker():
    return _marker


def request_id():
    from ray_context import request

    return request.get("unset")


def fail_once_then(path, value):
    if not os.path.exists(path):
        open(path, "w").close()
        raise ConnectionError("first attempt fails")
    return value
