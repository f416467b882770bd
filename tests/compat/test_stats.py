"""Issue 13, item 11: statistics that are measured, live and exact."""
from __future__ import annotations

import threading
import time
import types

import pytest

import compat_jobs as jobs
from catzilla_mp import QueueFullError, TaskStatus
from catzilla_mp.lifecycle import monitor as monitor_mod


def _eventually(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_issue_13_11_task_stats_memory_usage_is_measured(engine):
    result = engine.add_task(jobs.allocate_mb, 60, 0.05)
    assert result.wait(60) == 60
    used = result.get_stats().memory_usage_mb
    assert used is not None and 50 <= used < 200


def test_issue_13_11_status_is_running_while_the_task_runs(engine, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    result = engine.add_task(jobs.touch_and_wait, str(started), str(release))
    try:
        assert _eventually(started.exists)
        assert result.status is TaskStatus.RUNNING
        assert result.get_stats().status is TaskStatus.RUNNING
    finally:
        release.touch()
    assert result.wait(60) is True
    assert result.status is TaskStatus.COMPLETED


class _FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_issue_13_11_tasks_per_second_is_the_exact_rate_over_the_window(monkeypatch):
    """8 tasks/s for 1.2 s, from an engine start in the middle of a second: 8.0, not 4."""
    clock = _FakeClock(1000.9)
    monkeypatch.setattr(monitor_mod, "time", types.SimpleNamespace(
        monotonic=clock.monotonic, time=time.time))
    engine = types.SimpleNamespace(_lock=threading.Lock(), _last_seq=0, _backend=None)
    mon = monitor_mod.Monitor(engine)
    task = types.SimpleNamespace(exec_ms=None)
    for i in range(1, 10):  # completions at 1001.025, 1001.15, ... every 0.125 s
        clock.now = 1000.9 + i * 0.125
        mon.count_final_locked(task, True, None, TaskStatus.COMPLETED)
    clock.now = 1000.9 + 9 * 0.125  # = 1002.025
    assert mon.tasks_per_second() == pytest.approx(9 / 1.125)
    clock.now = 1030.0  # long after: nothing in the window
    assert mon.tasks_per_second() == 0.0


def test_issue_13_11_memory_usage_counts_payloads_in_their_own_segments(engine, tmp_path):
    release = tmp_path / "release"
    data = b"p" * (6 << 20)  # beyond the largest chunk class: a segment of its own
    result = engine.add_task(jobs.hold_bytes, data, str(release))
    try:
        assert engine.get_stats().memory_usage_mb >= 6
    finally:
        release.touch()
    assert result.wait(60) == len(data)


def test_issue_13_11_submissions_and_queue_full_rejections_are_counted(make_engine, tmp_path):
    engine = make_engine(queue_size=2, queue_full_timeout=0.05)
    release = tmp_path / "release"
    held = [engine.add_task(jobs.wait_for_file, str(release)) for _ in range(2)]
    with pytest.raises(QueueFullError):
        engine.add_task(jobs.add, 1)
    stats = engine.get_stats()
    assert stats.queue_full_rejections == 1
    assert stats.total_tasks_submitted == 2
    assert stats.submissions_per_second > 0
    release.touch()
    assert all(r.wait(60) for r in held)


def test_issue_13_11_metrics_show_submission_rate_and_rejections(make_engine, tmp_path):
    pytest.importorskip("prometheus_client")
    from catzilla_mp.observability import metrics_text

    engine = make_engine(queue_size=1, queue_full_timeout=0.01)
    release = tmp_path / "release"
    held = engine.add_task(jobs.wait_for_file, str(release))
    with pytest.raises(QueueFullError):
        engine.add_task(jobs.add, 1)
    body = metrics_text(engine)[0].decode()
    release.touch()
    held.wait(60)
    assert "catzilla_mp_queue_full_rejections_total 1.0" in body
    assert "catzilla_mp_submissions_per_second" in body
