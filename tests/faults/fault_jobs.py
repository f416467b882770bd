"""Task functions for the fault tests: module-level, so workers import them by name.

Each leaves a trace in a side-effect file (one line per run), so a test can
tell how many times a task really ran from how many results it delivered.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

from run_trace import runs, trace


def run_times(path):
    """When each tag ran (time.monotonic(), comparable across processes), in order."""
    times: dict[str, list[float]] = {}
    with open(path) as f:
        for line in f:
            tag, _, t = line.split()
            times.setdefault(tag, []).append(float(t))
    return times


def mark(path, i):
    """Record one run of task i; return a value derived from i."""
    trace(path, i)
    return i * 3 + 1


def mark_big(path, i, nbytes):
    """As mark, with a result too big for the slot: it needs an arena chunk."""
    trace(path, i)
    return bytes([i % 256]) * nbytes


def triple(i):
    return i * 3 + 1


def hold(path, i, release_path, seconds=60.0):
    """Record a run, then wait (Python loop, interruptible) until release_path exists."""
    trace(path, i)
    end = time.monotonic() + seconds
    while not os.path.exists(release_path) and time.monotonic() < end:
        time.sleep(0.005)
    return i


def _die(how):
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)  # SIGSEGV inside a C call, as a broken extension would
    elif how == "exit":
        os._exit(13)
    elif how == "oom":
        # what the OOM killer does: grow, then SIGKILL from outside the task's control
        ballast = bytearray(64 << 20)
        ballast[::4096] = b"x" * len(ballast[::4096])
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise ValueError(how)
    time.sleep(10)  # a signal may take a moment to land


def crash_first(path, i, how, crashes=1):
    """Die `crashes` times (counted in the side-effect file), then return."""
    n = runs(path).get(str(i), 0)
    trace(path, i)
    if n < crashes:
        _die(how)
    return i * 3 + 1


def crash_after_release(path, i, release_path, seconds=60.0):
    """First run: wait for release_path, then die (os._exit); later runs return i."""
    n = runs(path).get(str(i), 0)
    trace(path, i)
    if n:
        return i
    end = time.monotonic() + seconds
    while not os.path.exists(release_path) and time.monotonic() < end:
        time.sleep(0.005)
    os._exit(13)


def crash_always(path, i, how):
    trace(path, i)
    _die(how)


def allocate_and_keep(mb):
    """Grow this worker's heap for good: what a leaky task does."""
    global _kept
    try:
        _kept.append(bytearray(mb << 20))
    except NameError:
        _kept = [bytearray(mb << 20)]
    for b in _kept:
        b[::4096] = b"x" * len(b[::4096])
    return os.getpid()


def keep_then_hold(mb, path, i, release_path):
    """allocate_and_keep, then hold: the worker goes over its limit inside this one task."""
    allocate_and_keep(mb)
    return hold(path, i, release_path)


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def spin(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def block_in_c(seconds):
    """Sleeps in C with SIGUSR1 blocked: only a kill stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(seconds)
    return "finished"


def catch_timeout_then_finish(path, seconds):
    """Swallows the soft timeout and carries on: the hard timeout must stop it."""
    from catzilla_mp import TaskTimeoutError

    trace(path, "start")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.01)
        except TaskTimeoutError:
            trace(path, "soft")
    trace(path, "end")
    return "finished"


def inherited(fd, link):
    """What a worker sees of its app: its SIGUSR2 handler, and whether ``fd`` is the
    app's socket (``link``: what /proc/<app>/fd/<fd> links to)."""
    try:
        same = os.readlink(f"/proc/self/fd/{fd}") == link
    except OSError:
        same = False
    return signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL, same


def register_exit_marker(path):
    """Register an exit hook in this worker that appends its pid to ``path``."""
    import atexit

    def mark_exit(pid=os.getpid()):
        with open(path, "a") as f:
            f.write(f"{pid}\n")

    atexit.register(mark_exit)
    return os.getpid()
