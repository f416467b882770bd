"""What Ray lacks and catzilla_mp adds on it: priorities with a bounded number in flight,
timeouts and forced cancels that stop the work, crashes re-run or reported (issue 16)."""
from __future__ import annotations

import os
import time

import psutil
import pytest

import ray_jobs as jobs
from catzilla_mp import (
    TaskCancelledError, TaskPriority, TaskStatus, TaskTimeoutError, WorkerCrashedError)


def _wait_for_pid(path, timeout=30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the task never started in a Ray worker"
        time.sleep(0.02)


def _wait_dead(pid, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"Ray worker {pid} still runs"
        time.sleep(0.05)


def test_waiting_tasks_go_to_ray_in_priority_order_one_at_a_time(make_engine, tmp_path):
    # Given one task in flight at most, and a Ray of two CPUs that would run two
    engine = make_engine(workers=1)
    log = tmp_path / "order"
    blocker = engine.add_task(jobs.record_span, str(tmp_path / "spans"), "blocker", 1.0)
    # When tasks of every priority queue up behind it, the lowest first
    tasks = [engine.add_task(jobs.record, str(log), f"low{i}", priority=TaskPriority.LOW)
             for i in range(4)]
    tasks += [engine.add_task(jobs.record, str(log), f"normal{i}") for i in range(4)]
    tasks += [engine.add_task(jobs.record, str(log), f"high{i}", priority="high")
              for i in range(4)]
    tasks.append(engine.add_task(jobs.record, str(log), "critical", priority="critical"))
    assert engine.get_stats().total_queued == 13  # all wait on this side, not in Ray
    for t in [blocker] + tasks:
        t.wait(60)
    # Then they ran most urgent first, in submission order within a priority
    assert log.read_text().split() == (["critical"] + [f"high{i}" for i in range(4)]
                                       + [f"normal{i}" for i in range(4)]
                                       + [f"low{i}" for i in range(4)])


def test_no_more_tasks_run_at_once_than_the_engine_has_in_flight(make_engine, tmp_path):
    engine = make_engine(workers=1)
    spans = tmp_path / "spans"
    for t in [engine.add_task(jobs.record_span, str(spans), i, 0.1) for i in range(5)]:
        t.wait(60)
    runs = sorted((float(a), float(b)) for _, a, b in
                  (line.split() for line in spans.read_text().splitlines()))
    assert len(runs) == 5
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(runs, runs[1:]))  # never two at once


def test_a_task_past_its_timeout_has_its_ray_worker_killed(engine, tmp_path):
    pid_file = tmp_path / "pid"
    stuck = engine.add_task(jobs.pid_then_block, str(pid_file), 60, timeout_ms=1500,
                            max_retries=3)
    pid = _wait_for_pid(pid_file)
    with pytest.raises(TaskTimeoutError, match="killed"):
        stuck.wait(60)
    assert stuck.get_stats().retries == 0  # a timeout is not retried
    _wait_dead(pid)  # the work stopped: its process is gone
    assert engine.get_stats().timeout_count == 1
    assert engine.add_task(jobs.add, 2, 3).wait(60) == 5


def test_a_crashed_worker_s_task_is_run_again_within_its_retries(engine, tmp_path):
    r = engine.add_task(jobs.crash_once, str(tmp_path / "crashed"), max_retries=1)
    assert r.wait(60) == "recovered"
    assert r.get_stats().retries == 1


def test_a_crash_with_no_retries_left_is_a_worker_crashed_error(engine):
    r = engine.add_task(jobs.exit_hard, 3, max_retries=0)
    with pytest.raises(WorkerCrashedError, match="died"):
        r.wait(60)
    assert r.status is TaskStatus.FAILED
    assert engine.add_task(jobs.add, 1, 1).wait(60) == 2  # Ray replaced the worker


def test_a_task_waiting_for_its_turn_is_cancelled_and_never_runs(make_engine, tmp_path):
    engine = make_engine(workers=1)
    blocker = engine.add_task(jobs.record_span, str(tmp_path / "spans"), "b", 0.5)
    victim = engine.add_task(jobs.record, str(tmp_path / "log"), "victim")
    delayed = engine.add_task(jobs.record, str(tmp_path / "log"), "delayed", delay_ms=300)
    assert victim.cancel() and delayed.cancel()
    with pytest.raises(TaskCancelledError):
        victim.wait(1)
    blocker.wait(60)
    time.sleep(0.5)
    assert engine.add_task(jobs.add, 1, 1).wait(60) == 2
    assert not (tmp_path / "log").exists()
    assert engine.get_stats().total_queued == 0


def test_a_forced_cancel_kills_the_running_task_s_worker(engine, tmp_path):
    pid_file = tmp_path / "pid"
    r = engine.add_task(jobs.pid_then_block, str(pid_file), 60, timeout_ms=0)
    pid = _wait_for_pid(pid_file)
    assert not r.cancel()          # it runs: a plain cancel cannot withdraw it
    assert r.cancel(force=True)
    assert r.status is TaskStatus.CANCELLED
    _wait_dead(pid)
    assert engine.add_task(jobs.add, 2, 2).wait(60) == 4


def test_forced_cancels_racing_the_hand_over_settle_once_and_free_their_slot(make_engine):
    engine = make_engine(workers=1)
    outcomes = []
    for _ in range(6):
        r = engine.add_task(jobs.record_span, os.devnull, "x", 0.2)
        r.cancel(force=True)   # before, during or after the hand-over to Ray
        try:
            r.wait(60)
            outcomes.append("completed")
        except TaskCancelledError:
            outcomes.append("cancelled")
    assert outcomes.count("cancelled") >= 1
    assert engine.add_task(jobs.add, 1, 1).wait(60) == 2  # the one slot is free again
    s = engine.get_stats()
    assert s.active_workers == 0 and s.total_queued == 0
    assert s.total_tasks_processed + engine.monitor.cancelled == 7
