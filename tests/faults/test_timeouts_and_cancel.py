"""Timeouts stop the work, not just the waiting; a running task can be cancelled by force.

Soft: at timeout_ms the worker raises TaskTimeoutError inside the task, the
task stops, and the same worker goes on serving. Hard: a task that ignores
(or swallows) it has its worker SIGKILLed after timeout_grace_ms; a
replacement serves. The caller gets TaskTimeoutError either way, never a
retry. Cancelling: ``cancel()`` of a running task returns False (as
concurrent.futures does) and the task carries on; ``cancel(force=True)``
kills the worker running it and fails it with TaskCancelledError.
"""
from __future__ import annotations

import os
import time

import pytest

import fault_jobs
from catzilla_mp import TaskCancelledError, TaskStatus, TaskTimeoutError
from faultkit import (books_balance, counting_callbacks, replacement_started, running_pid,
                      wait_until, worker_pids)


def test_a_soft_timeout_stops_the_task_and_keeps_its_worker(make_engine, tmp_path):
    engine = make_engine(workers=1, timeout_grace_ms=30_000)
    warm = engine.add_task(fault_jobs.pid_after, 0)
    pid = warm.wait(60)
    r = engine.add_task(fault_jobs.spin, 60, timeout_ms=300, max_retries=3)
    delivered = counting_callbacks([r])
    with pytest.raises(TaskTimeoutError):
        r.wait(60)
    assert r.status is TaskStatus.FAILED and r.get_stats().retries == 0
    # the same process serves on: the soft timeout needed no kill
    assert engine.add_task(fault_jobs.pid_after, 0).wait(30) == pid
    assert engine._backend.supervisor.crashes == 0 and len(delivered[r.task_id]) == 1
    assert engine.get_stats().timeout_count == 1
    books_balance(engine)


def test_a_task_that_swallows_the_soft_timeout_is_killed_after_the_grace(make_engine, tmp_path):
    engine = make_engine(workers=1, timeout_grace_ms=400)
    path = str(tmp_path / "runs")
    r = engine.add_task(fault_jobs.catch_timeout_then_finish, path, 30, timeout_ms=300,
                        max_retries=3)
    delivered = counting_callbacks([r])
    with pytest.raises(TaskTimeoutError, match="killed"):
        r.wait(60)
    runs = fault_jobs.runs(path)
    assert runs.get("start") == 1 and runs.get("soft", 0) >= 1 and "end" not in runs
    assert r.get_stats().retries == 0 and len(delivered[r.task_id]) == 1
    replacement_started(engine)
    assert engine.add_task(fault_jobs.triple, 1).wait(30) == 4
    books_balance(engine)


def test_a_task_blocked_in_c_is_killed_after_the_grace_and_not_retried(make_engine, tmp_path):
    engine = make_engine(workers=2, timeout_grace_ms=300)
    stuck = engine.add_task(fault_jobs.block_in_c, 60, timeout_ms=200, max_retries=3)
    others = [engine.add_task(fault_jobs.triple, i) for i in range(30)]
    with pytest.raises(TaskTimeoutError, match="killed"):
        stuck.wait(60)
    assert stuck.get_stats().retries == 0
    assert [t.wait(30) for t in others] == [i * 3 + 1 for i in range(30)]
    replacement_started(engine)
    books_balance(engine)


def test_cancel_of_a_running_task_returns_false_and_the_task_finishes(make_engine, tmp_path):
    engine = make_engine(workers=1)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    r = engine.add_task(fault_jobs.hold, path, "x", str(release))
    wait_until(lambda: fault_jobs.runs(path).get("x") == 1, 60, "the task running")
    assert r.cancel() is False and r.future.cancel() is False
    release.touch()
    assert r.wait(30) == "x" and r.status is TaskStatus.COMPLETED


def test_cancel_with_force_kills_the_worker_running_the_task(make_engine, tmp_path):
    engine = make_engine(workers=2)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    r = engine.add_task(fault_jobs.hold, path, "x", str(release), max_retries=3)
    delivered = counting_callbacks([r])
    wait_until(lambda: fault_jobs.runs(path).get("x") == 1, 60, "the task running")
    victim_pid = running_pid(engine, r)
    others = [engine.add_task(fault_jobs.triple, i) for i in range(30)]
    assert r.cancel(force=True) is True
    assert r.status is TaskStatus.CANCELLED and r.cancelled() and r.future.cancelled()
    with pytest.raises(TaskCancelledError, match="running"):
        r.wait(0)
    release.touch()
    assert [t.wait(30) for t in others] == [i * 3 + 1 for i in range(30)]
    assert fault_jobs.runs(path) == {"x": 1}  # never re-run
    assert len(delivered[r.task_id]) == 1
    replacement_started(engine)
    assert victim_pid not in worker_pids(engine)
    books_balance(engine)
    assert engine.get_stats().failed_tasks == 0


def test_cancel_with_force_of_a_queued_task_is_a_plain_cancel(make_engine, tmp_path):
    engine = make_engine(workers=1)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    blocker = engine.add_task(fault_jobs.hold, path, "b", str(release))
    wait_until(lambda: fault_jobs.runs(path).get("b") == 1, 60, "the blocker running")
    queued = engine.add_task(fault_jobs.mark, path, "q")
    pids = worker_pids(engine)
    assert queued.cancel(force=True) is True and queued.status is TaskStatus.CANCELLED
    release.touch()
    assert blocker.wait(30) == "b"
    assert worker_pids(engine) == pids and "q" not in fault_jobs.runs(path)
    books_balance(engine)


def test_cancel_with_force_of_a_finished_task_is_false(make_engine):
    engine = make_engine(workers=1)
    r = engine.add_task(fault_jobs.triple, 2)
    assert r.wait(30) == 7
    assert r.cancel(force=True) is False and r.status is TaskStatus.COMPLETED


def test_a_task_sharing_a_worker_killed_for_a_timeout_is_requeued_without_using_an_attempt(
        make_engine, tmp_path):
    # Given one worker running two tasks at once (threads_per_worker=2)
    engine = make_engine(workers=1, threads_per_worker=2, timeout_grace_ms=300)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    bystander = engine.add_task(fault_jobs.hold, path, "b", str(release), max_retries=0,
                                timeout_ms=0)
    wait_until(lambda: fault_jobs.runs(path).get("b") == 1, 60, "the bystander running")
    # When the other task ignores its timeout and the worker is killed for it
    stuck = engine.add_task(fault_jobs.block_in_c, 60, timeout_ms=200, max_retries=0)
    with pytest.raises(TaskTimeoutError, match="killed"):
        stuck.wait(60)
    # Then the bystander, which did nothing wrong, runs again without using an attempt
    wait_until(lambda: fault_jobs.runs(path).get("b") == 2, 60, "the bystander re-run")
    release.touch()
    assert bystander.wait(60) == "b" and bystander.get_stats().retries == 0
    books_balance(engine)
