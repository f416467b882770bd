"""Helpers for the fault tests: engines under observation, and the books that must balance."""
from __future__ import annotations

import os
import time

from catzilla_mp import TaskStatus
from catzilla_mp._core import SLOT_FREE, state_kind

#: Options of every fault-test engine: small, quick back-offs, quick timeouts.
SMALL = dict(memory_pool_mb=16, queue_size=256, retry_backoff_base=0.01,
             retry_backoff_cap=0.05, timeout_grace_ms=500)


def wait_until(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def wait_running(task, timeout=30.0):
    """Block until a task is seen RUNNING in a worker."""
    wait_until(lambda: task.is_ready() or task.get_stats().status is TaskStatus.RUNNING,
               timeout, f"task {task.task_id} running")
    assert not task.is_ready(), "the task ended before it was seen running"


def worker_pids(engine) -> list[int]:
    """Pids of worker processes that have started serving (their record has a pid)."""
    return [rec.pid for w, rec in engine._backend.supervisor.snapshot() if rec.pid == w.pid]


def running_pid(engine, task) -> int:
    """The pid of the worker running ``task`` (which must be RUNNING)."""
    wid = task.get_stats().worker_id
    for w, rec in engine._backend.supervisor.snapshot():
        if w.index == wid:
            return w.pid
    raise AssertionError(f"no live worker {wid}")


def counting_callbacks(tasks):
    """Attach a callback to each task; returns {task_id: [outcomes delivered]}."""
    seen: dict[str, list] = {t.task_id: [] for t in tasks}
    for t in tasks:
        t.add_callback(seen[t.task_id].append)
    return seen


def books_balance(engine, timeout=15.0) -> None:
    """Every slot free, every chunk back (function-table chunks aside), rings empty.

    Waits a little: the collector may still be releasing the last slot, and a
    ring cell left by a dead worker is repaired within two slow ticks.
    """
    backend = engine._backend
    n = engine.options.queue_size

    def state():
        used = sum(c.used for c in backend.seg.class_stats())
        free_states = sum(1 for i in range(n) if state_kind(backend.seg.slot_state(i)) == SLOT_FREE)
        return dict(chunks_used=used - backend.functions._next, free_list=len(backend._free),
                    free_states=free_states, queued=sum(backend.seg.queue_depths()),
                    owned=sum(1 for t in backend._slot_task if t is not None))

    want = dict(chunks_used=0, free_list=n, free_states=n, queued=0, owned=0)
    deadline = time.monotonic() + timeout
    while (got := state()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"accounting off after recovery: {got}, want {want}")
        time.sleep(0.05)


def replacement_started(engine, timeout=30.0) -> None:
    """The pool is back to its size with every worker serving."""
    want = engine.options.workers
    wait_until(lambda: len(worker_pids(engine)) == want, timeout, f"{want} workers serving")


def no_external_payloads(engine) -> list[str]:
    prefix = engine._backend.seg.name + "_x"
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
