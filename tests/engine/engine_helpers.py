"""Helpers for the engine tests (a module name of its own: every test dir has a conftest)."""
from __future__ import annotations


def wait_running(task, timeout=20.0):
    """Block until a task has started in a worker (workers take a moment to boot)."""
    import time

    from catzilla_mp import TaskStatus

    deadline = time.monotonic() + timeout
    while task.get_stats().status is not TaskStatus.RUNNING:
        assert not task.is_ready(), "the task ended before it was seen running"
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.005)
