"""Engine options, shutdown, the Executor interface, scaling and statistics."""
from __future__ import annotations

import os
import time

import psutil
import pytest

import engine_jobs as jobs
from engine_helpers import wait_running
from catzilla_mp import (
    BackgroundTasks, EngineClosedError, EngineStats, TaskCancelledError, TaskStatus)


def _our_segments():
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"czmp_{os.getuid()}_{os.getpid()}_")]


@pytest.mark.parametrize("options,error", [
    (dict(min_workers=3, max_workers=2), ValueError),
    (dict(workers=4, max_workers=2), ValueError),
    (dict(workers=0), ValueError),
    (dict(mode="fiber"), ValueError),
    (dict(start_method="fork"), ValueError),
    (dict(queue_size=0), ValueError),
    (dict(memory_pool_mb="big"), TypeError),
])
def test_invalid_engine_options_are_refused_before_anything_starts(options, error):
    before = _our_segments()
    with pytest.raises(error):
        BackgroundTasks(**options)
    assert _our_segments() == before


@pytest.mark.modes("process", "thread", "ray")
def test_shutdown_drains_everything_and_leaves_no_process_or_segment(make_engine):
    engine = make_engine()
    pids = {p.pid for p in psutil.Process().children()}
    results = [engine.add_task(jobs.sleep_then, 0.01, i) for i in range(50)]
    delayed = engine.add_task(jobs.add, 1, 1, delay_ms=200)
    engine.shutdown(wait_for_completion=True, timeout=30)
    assert [r.wait(0) for r in results] == list(range(50)) and delayed.wait(0) == 2
    assert _our_segments() == []
    assert not [p for p in psutil.Process().children() if p.pid not in pids and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.modes("process", "thread", "ray")
def test_shutdown_without_waiting_cancels_what_has_not_started(make_engine):
    engine = make_engine(workers=1)
    running = engine.add_task(jobs.sleep_then, 0.5, "done")
    wait_running(running)
    queued = [engine.add_task(jobs.noop) for _ in range(5)]
    delayed = engine.add_task(jobs.noop, delay_ms=5000)
    engine.shutdown(wait_for_completion=False, timeout=10)
    assert running.wait(0) == "done"
    for r in queued + [delayed]:
        assert r.status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelledError):
            r.wait(0)


@pytest.mark.modes("process", "thread", "ray")
def test_tasks_still_running_at_the_shutdown_timeout_fail_clearly(make_engine):
    engine = make_engine(workers=1)
    r = engine.add_task(jobs.block_in_c, 30)
    wait_running(r)
    t0 = time.monotonic()
    engine.shutdown(wait_for_completion=True, timeout=0.5)
    assert time.monotonic() - t0 < 10
    with pytest.raises(EngineClosedError):
        r.wait(0)


@pytest.mark.modes("process", "thread", "ray")
def test_submitting_after_shutdown_raises(make_engine):
    engine = make_engine()
    engine.shutdown()
    with pytest.raises(EngineClosedError):
        engine.add_task(jobs.noop)
    engine.shutdown()  # a second shutdown is harmless


def test_the_context_manager_shuts_down():
    with BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64) as engine:
        assert engine.add_task(jobs.add, 1, 2).wait(10) == 3
    assert engine.closed and _our_segments() == []


@pytest.mark.modes("process", "thread", "ray")
def test_executor_submit_map_and_chunked_map(engine):
    assert engine.submit(jobs.add, 1, 2).result(10) == 3
    assert list(engine.map(jobs.square, range(100))) == [i * i for i in range(100)]
    assert list(engine.map(jobs.add, range(50), range(50), chunksize=7)) == [2 * i for i in range(50)]


@pytest.mark.modes("process", "thread", "ray")
def test_executor_cancel_of_a_queued_future(make_engine):
    engine = make_engine(workers=1)
    wait_running(engine.add_task(jobs.sleep_then, 0.4))
    fut = engine.submit(jobs.noop)
    assert fut.cancel() and fut.cancelled()


def test_engine_stats_are_measured(make_engine):
    engine = make_engine(workers=2)
    engine.add_tasks(jobs.noop, [()] * 200)
    failing = engine.add_task(jobs.fail, max_retries=1)
    busy = [engine.add_task(jobs.spin, 1.0) for _ in range(2)]
    for r in busy:
        wait_running(r)
    s = engine.get_stats()
    assert isinstance(s, EngineStats)
    assert s.total_workers == 2 and s.active_workers == 2 and s.idle_workers == 0
    assert s.worker_memory_usage > 10 << 20 and s.engine_memory_usage > 10 << 20
    for r in busy:
        r.wait(10)
    with pytest.raises(ValueError):
        failing.wait(10)
    s = engine.get_stats()
    assert s.total_tasks_processed == 203 and s.failed_tasks == 1 and s.retry_count == 1
    assert s.error_rate == pytest.approx(1 / 203)
    assert s.worker_cpu_usage > 0 and s.avg_worker_utilization > 0
    assert s.p99_execution_time_ms >= s.p95_execution_time_ms > 0
    assert s.avg_execution_time_ms > 0 and s.uptime_seconds > 0
    assert s.tasks_per_second > 0


@pytest.mark.modes("process", "thread", "ray")
def test_queue_sizes_are_reported_per_priority(make_engine):
    engine = make_engine(workers=1)
    wait_running(engine.add_task(jobs.sleep_then, 0.5))
    engine.add_tasks(jobs.noop, [()] * 3, priority="high")
    engine.add_tasks(jobs.noop, [()] * 5, priority="low")
    s = engine.get_stats()
    assert (s.critical_queue_size, s.high_queue_size, s.normal_queue_size, s.low_queue_size) == (0, 3, 0, 5)
    assert s.total_queued == 8 and s.queue_pressure == pytest.approx(8 / 512)


def test_the_pool_scales_up_under_pressure_and_down_when_idle(make_engine):
    engine = make_engine(workers=1, min_workers=1, max_workers=2, scale_down_idle_s=0.5)
    results = [engine.add_task(jobs.sleep_then, 0.05) for _ in range(60)]
    deadline = time.monotonic() + 10
    peak = 0
    while time.monotonic() < deadline and not all(r.is_ready() for r in results):
        peak = max(peak, engine.get_stats().total_workers)
        time.sleep(0.05)
    assert peak == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engine.get_stats().total_workers > 1:
        time.sleep(0.1)
    assert engine.get_stats().total_workers == 1


def test_progress_reported_by_a_task_is_visible_while_it_runs(engine):
    r = engine.add_task(jobs.report, 5, 0.15)
    seen = set()
    deadline = time.monotonic() + 10
    while not r.is_ready() and time.monotonic() < deadline:
        fraction, message = r.progress
        if fraction is not None:
            seen.add((fraction, message))
        time.sleep(0.02)
    assert r.wait(1) == 5
    assert len(seen) >= 2 and all(m.startswith("step") for _, m in seen)
    assert r.progress == (1.0, "step 5")  # the last report outlives the task


@pytest.mark.modes("process", "thread", "ray")
def test_the_last_progress_report_of_a_quick_task_is_kept(engine):
    r = engine.add_task(jobs.report, 2, 0)
    assert r.wait(10) == 2
    assert r.progress == (1.0, "step 2")


@pytest.mark.modes("process", "thread", "ray")
def test_listeners_see_every_task_event_once(engine, tmp_path):
    import threading

    events, lock = [], threading.Lock()

    def listen(event, task, detail):
        with lock:
            events.append((event, task.name))

    engine.monitor.add_listener(listen)
    engine.add_task(jobs.add, 1, 1).wait(10)
    with pytest.raises(ConnectionError):
        engine.add_task(jobs.flaky, str(tmp_path / "n"), 5, max_retries=1).wait(10)
    engine.monitor.remove_listener(listen)
    engine.add_task(jobs.add, 1, 1).wait(10)
    assert events == [("submitted", "add"), ("completed", "add"), ("submitted", "flaky"),
                      ("retrying", "flaky"), ("failed", "flaky")]


def test_an_engine_of_one_worker_stays_one_worker_under_pressure(make_engine):
    # Catzilla's default min_workers=2 once let auto-scaling grow it to two
    engine = make_engine(workers=1)
    assert (engine.min_workers, engine.max_workers) == (1, 1)
    results = [engine.add_task(jobs.sleep_then, 0.02) for _ in range(30)]
    peak = 0
    for r in results:
        peak = max(peak, engine.get_stats().total_workers)
        r.wait(30)
    assert peak == 1


def test_worker_counters_tell_done_from_failed_even_with_progress(make_engine):
    engine = make_engine(workers=1)
    engine.add_task(jobs.report, 2, 0).wait(10)          # succeeded, reported progress
    engine.add_task(jobs.big_result, 64 << 10).wait(10)   # succeeded, result in a chunk
    with pytest.raises(ValueError):
        engine.add_task(jobs.fail, max_retries=0).wait(10)
    (_, rec), = engine._backend.supervisor.snapshot()
    assert (rec.tasks_done, rec.tasks_failed) == (2, 1)
