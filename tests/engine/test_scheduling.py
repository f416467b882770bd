"""Priorities, delays, retries, timeouts, cancellation and a full queue."""
from __future__ import annotations

import time

import pytest

import engine_jobs as jobs
from engine_helpers import wait_running
from catzilla_mp import (
    QueueFullError, TaskCancelledError, TaskPriority, TaskStatus, TaskTimeoutError)


@pytest.mark.modes("process", "thread", "ray")
def test_a_critical_task_overtakes_a_thousand_queued_low_ones(make_engine):
    engine = make_engine(workers=1, queue_size=2048)
    blocker = engine.add_task(jobs.sleep_then, 0.5)
    wait_running(blocker)
    low = [engine.add_task(jobs.noop, priority=TaskPriority.LOW) for _ in range(1000)]
    critical = engine.add_task(jobs.noop, priority="critical")
    critical.wait(30)
    for r in low:
        r.wait(30)
    blocker.wait(30)
    started_before = sum(1 for r in low if r.get_stats().started_at < critical.get_stats().started_at)
    assert started_before <= 2  # at most what the worker held when it arrived


@pytest.mark.modes("process", "thread", "ray")
def test_priorities_accept_names_and_refuse_unknown_ones(engine):
    assert engine.add_task(jobs.add, 1, 1, priority="HIGH").wait(10) == 2
    assert engine.add_task(jobs.add, 1, 1, priority=TaskPriority.LOW).wait(10) == 2
    with pytest.raises(ValueError, match="unknown priority"):
        engine.add_task(jobs.add, 1, 1, priority="urgent")


@pytest.mark.modes("process", "thread", "ray")
def test_a_delayed_task_waits_and_blocks_nothing_else(engine):
    wait_running(engine.add_task(jobs.sleep_then, 0.1))  # workers are up
    t0 = time.monotonic()
    delayed = engine.add_task(jobs.pid, delay_ms=400)
    quick = engine.add_task(jobs.add, 1, 1)
    assert quick.wait(10) == 2
    delayed.wait(10)
    # the later, undelayed task did not wait behind the delayed one
    assert quick.get_stats().completed_at < delayed.get_stats().started_at
    assert delayed.get_stats().started_at - delayed.get_stats().created_at >= 0.39
    assert time.monotonic() - t0 >= 0.39


@pytest.mark.modes("process", "thread", "ray")
def test_a_failing_task_is_retried_with_backoff_then_succeeds(engine, tmp_path):
    r = engine.add_task(jobs.flaky, str(tmp_path / "count"), 2, max_retries=3)
    assert r.wait(20) == 3
    assert r.get_stats().retries == 2
    assert engine.get_stats().retry_count == 2


@pytest.mark.modes("process", "thread", "ray")
def test_the_last_attempts_error_is_raised_after_retries_run_out(engine, tmp_path):
    seen = []
    r = engine.add_task(jobs.flaky, str(tmp_path / "count"), 10, max_retries=2)
    deadline = time.monotonic() + 20
    while not r.is_ready() and time.monotonic() < deadline:
        seen.append(r.status)
        time.sleep(0.001)
    with pytest.raises(ConnectionError, match="attempt 3"):
        r.wait(1)
    assert TaskStatus.RETRYING in seen
    assert (tmp_path / "count").read_text() == "xxx"


def test_backoff_grows_exponentially_with_jitter_and_a_cap(make_engine):
    engine = make_engine(retry_backoff_base=0.1, retry_backoff_cap=0.3)
    waits = [engine._backoff_s(a) for a in (1, 2, 3, 4, 5)]
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2
    assert all(0.15 <= w <= 0.3 for w in waits[2:])
    assert len({round(engine._backoff_s(3), 6) for _ in range(20)}) > 1  # jittered


@pytest.mark.modes("process", "thread", "ray")
def test_a_task_past_its_timeout_is_interrupted_and_others_keep_running(engine):
    slow = engine.add_task(jobs.spin, 30, timeout_ms=300, max_retries=3)
    fine = [engine.add_task(jobs.add, i, 1) for i in range(20)]
    with pytest.raises(TaskTimeoutError) as info:
        slow.wait(20)
    assert isinstance(info.value, TimeoutError)
    assert [r.wait(10) for r in fine] == [i + 1 for i in range(20)]
    assert slow.get_stats().retries == 0  # a timeout is not retried
    assert engine.get_stats().timeout_count == 1


@pytest.mark.modes("process", "ray")
def test_a_task_that_ignores_its_timeout_has_its_worker_killed(make_engine):
    engine = make_engine(timeout_grace_ms=300)
    stuck = engine.add_task(jobs.block_in_c, 60, timeout_ms=200)
    with pytest.raises(TaskTimeoutError, match="killed"):
        stuck.wait(20)
    assert engine.add_task(jobs.add, 2, 3).wait(20) == 5


@pytest.mark.modes("process", "thread", "ray")
def test_a_queued_task_can_be_cancelled_and_never_runs(make_engine, tmp_path):
    engine = make_engine(workers=1)
    blocker = engine.add_task(jobs.sleep_then, 0.5)
    wait_running(blocker)
    victim = engine.add_task(jobs.record_start, str(tmp_path / "log"), "victim")
    assert victim.cancel()
    assert victim.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelledError):
        victim.wait(1)
    blocker.wait(10)
    engine.add_task(jobs.add, 1, 1).wait(10)
    assert not (tmp_path / "log").exists()
    assert not blocker.cancel()  # finished tasks cannot be cancelled


@pytest.mark.modes("process", "thread", "ray")
def test_a_delayed_task_can_be_cancelled(engine, tmp_path):
    r = engine.add_task(jobs.record_start, str(tmp_path / "log"), "x", delay_ms=300)
    assert r.cancel()
    time.sleep(0.5)
    assert not (tmp_path / "log").exists()


@pytest.mark.modes("process", "thread", "ray")
def test_a_full_queue_waits_then_raises_instead_of_dropping(make_engine):
    engine = make_engine(workers=1, queue_size=4, queue_full_timeout=0.2)
    held = [engine.add_task(jobs.sleep_then, 0.6) for _ in range(4)]
    t0 = time.monotonic()
    with pytest.raises(QueueFullError):
        engine.add_task(jobs.noop)
    assert time.monotonic() - t0 >= 0.19
    for r in held:
        r.wait(10)
    assert engine.add_task(jobs.add, 1, 1).wait(10) == 2


@pytest.mark.modes("process", "thread", "ray")
def test_a_full_queue_accepts_again_as_soon_as_a_slot_frees(make_engine):
    engine = make_engine(workers=1, queue_size=2, queue_full_timeout=10)
    first = [engine.add_task(jobs.sleep_then, 0.2, i) for i in range(2)]
    third = engine.add_task(jobs.add, 1, 2)  # waits for a slot, then goes
    assert third.wait(10) == 3 and [r.wait(10) for r in first] == [0, 1]


@pytest.mark.parametrize("option,value,error", [
    ("delay_ms", -1, ValueError), ("timeout_ms", -5, ValueError),
    ("max_retries", -1, ValueError), ("max_retries", 1.5, TypeError),
])
@pytest.mark.modes("process", "thread", "ray")
def test_invalid_task_options_are_refused(engine, option, value, error):
    with pytest.raises(error, match=option):
        engine.add_task(jobs.noop, **{option: value})
    assert engine.get_stats().total_queued == 0


@pytest.mark.modes("process", "thread", "ray")
def test_non_callables_are_refused(engine):
    with pytest.raises(TypeError, match="callable"):
        engine.add_task(42)


def test_add_tasks_beyond_the_queue_size_waits_for_slots_and_delivers_all(make_engine):
    engine = make_engine(queue_size=64)
    results = engine.add_tasks(jobs.square, range(1000))
    assert [r.wait(30) for r in results] == [i * i for i in range(1000)]
    assert len(engine._backend._free) == 64


def test_add_tasks_that_runs_out_of_room_says_how_many_went_and_leaks_nothing(make_engine):
    engine = make_engine(workers=1, queue_size=8, queue_full_timeout=0.2)
    blocker = engine.add_task(jobs.sleep_then, 1.0)
    with pytest.raises(QueueFullError) as info:
        engine.add_tasks(jobs.square, range(20))
    assert any("tasks were submitted" in note for note in getattr(info.value, "__notes__", []))
    blocker.wait(10)
    deadline = time.monotonic() + 10
    while len(engine._backend._free) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(engine._backend._free) == 8  # every slot came back
    assert engine._in_flight() == 0


@pytest.mark.modes("process", "thread", "ray")
def test_add_tasks_mixes_small_and_large_calls(engine):
    calls = [(b"x" * n,) for n in (1, 500, 3, 70_000, 2)]
    assert [r.wait(30)[0] for r in engine.add_tasks(jobs.echo_bytes, calls)] == [1, 500, 3, 70_000, 2]
