"""Shutdown while tasks are running, queued, delayed or waiting to retry: a defined end for each.

    state at shutdown       wait_for_completion=True (timeout t)     wait_for_completion=False
    running                 finishes if it can within t, else        same
                            FAILED with EngineClosedError
    queued                  runs if a worker frees within t,         CANCELLED
                            else CANCELLED
    delayed                 runs if due within t, else CANCELLED     CANCELLED
                            (never early)
    waiting to retry        retried if due within t, else FAILED     CANCELLED
                            with EngineClosedError
In every case the outcome is delivered once, no worker and no segment remain.
"""
from __future__ import annotations

import pytest

import fault_jobs
from catzilla_mp import EngineClosedError, TaskCancelledError, TaskStatus
from faultkit import counting_callbacks, wait_until


def test_a_delayed_task_is_never_started_early_by_a_shutdown(make_engine, tmp_path):
    engine = make_engine(workers=2)
    engine.add_task(fault_jobs.triple, 1).wait(60)  # workers up and idle
    path = str(tmp_path / "runs")
    delayed = engine.add_task(fault_jobs.mark, path, "d", delay_ms=60_000)
    engine.shutdown(wait_for_completion=True, timeout=0.2)
    assert delayed.status is TaskStatus.CANCELLED
    assert fault_jobs.runs(path) == {}


def test_a_task_running_at_shutdown_is_not_reported_as_never_started(make_engine, tmp_path):
    engine = make_engine(workers=1)
    path = str(tmp_path / "runs")
    running = engine.add_task(fault_jobs.hold, path, "x", str(tmp_path / "never"))
    wait_until(lambda: fault_jobs.runs(path).get("x") == 1, 60, "the task running")
    engine.shutdown(wait_for_completion=False, timeout=0.2)
    with pytest.raises(EngineClosedError, match="shut down before"):
        running.wait(0)
    assert running.status is TaskStatus.FAILED and running.get_stats().started_at is not None
