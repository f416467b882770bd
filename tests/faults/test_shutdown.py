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


def _four_kinds(engine, tmp_path):
    path = str(tmp_path / "runs")
    running = engine.add_task(fault_jobs.hold, path, "running", str(tmp_path / "never"))
    wait_until(lambda: fault_jobs.runs(path).get("running") == 1, 60, "the running task")
    retrying = engine.add_task(fault_jobs.crash_first, path, "retrying", "exit", max_retries=3)
    wait_until(lambda: retrying.status is TaskStatus.RETRYING, 60, "the task waiting to retry")
    delayed = engine.add_task(fault_jobs.mark, path, "delayed", delay_ms=60_000)
    return path, running, retrying, delayed


@pytest.mark.parametrize("wait", [True, False])
def test_shutdown_ends_running_delayed_and_retrying_tasks_in_a_defined_state(make_engine, tmp_path,
                                                                            wait):
    # retry back-off of 20-40 s: the retry is due long after the shutdown's timeout
    engine = make_engine(workers=2, retry_backoff_base=40, retry_backoff_cap=40)
    path, running, retrying, delayed = _four_kinds(engine, tmp_path)
    delivered = counting_callbacks([running, retrying, delayed])
    engine.shutdown(wait_for_completion=wait, timeout=0.5)
    with pytest.raises(EngineClosedError):
        running.wait(0)
    assert running.status is TaskStatus.FAILED
    with pytest.raises(TaskCancelledError):
        delayed.wait(0)
    assert delayed.status is TaskStatus.CANCELLED
    if wait:
        with pytest.raises(EngineClosedError):
            retrying.wait(0)
        assert retrying.status is TaskStatus.FAILED
    else:
        with pytest.raises(TaskCancelledError):
            retrying.wait(0)
        assert retrying.status is TaskStatus.CANCELLED
    runs = fault_jobs.runs(path)
    assert "delayed" not in runs  # never started early, not even by the shutdown
    assert runs["retrying"] == 1  # never retried after the engine closed
    assert all(len(v) == 1 for v in delivered.values())


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


def test_a_task_failing_while_shutdown_waits_is_still_retried(make_engine, tmp_path):
    engine = make_engine(workers=2, retry_backoff_base=0.3, retry_backoff_cap=0.3)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    # the first attempt dies only after shutdown() has begun waiting
    r = engine.add_task(fault_jobs.crash_after_release, path, "r", str(release), max_retries=3)
    wait_until(lambda: fault_jobs.runs(path).get("r") == 1, 60, "the first attempt")
    import threading
    threading.Timer(0.3, release.touch).start()
    delayed = engine.add_task(fault_jobs.mark, path, 5, delay_ms=300)
    queued = [engine.add_task(fault_jobs.triple, i) for i in range(50)]
    engine.shutdown(wait_for_completion=True, timeout=60)
    assert r.status is TaskStatus.COMPLETED and r.wait(0) == "r"
    assert r.get_stats().retries == 1
    assert delayed.status is TaskStatus.COMPLETED and delayed.wait(0) == 16
    assert [t.wait(0) for t in queued] == [i * 3 + 1 for i in range(50)]
