"""mode="ray" as an engine: its options, its statistics, its connection, and life without Ray."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import ray_jobs as jobs
from catzilla_mp import BackgroundTasks, TaskStatus, TaskTimeoutError


@pytest.mark.parametrize("options,error", [
    (dict(mode="process", address="auto"), ValueError),
    (dict(mode="thread", ray_task_options={"num_cpus": 1}), ValueError),
    (dict(mode="ray", address=5), TypeError),
    (dict(mode="ray", ray_task_options=["num_cpus"]), TypeError),
    (dict(mode="process", ray_max_in_flight=4), ValueError),
])
def test_ray_options_are_refused_where_they_do_not_apply(options, error):
    with pytest.raises(error):
        BackgroundTasks(workers=1, **options)


def test_without_ray_installed_mode_ray_raises_an_import_error_naming_the_extra():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from catzilla_mp import BackgroundTasks\n"
            "try:\n"
            "    BackgroundTasks(mode='ray', workers=1)\n"
            "except ImportError as exc:\n"
            "    print('ImportError:', exc)\n"
            "with BackgroundTasks(mode='thread', workers=1) as e:\n"   # other modes still work
            "    print(e.add_task(pow, 2, 5).wait(10))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()[:2]
    assert first.startswith("ImportError:") and "catzilla_mp[ray]" in first
    assert second == "32"


def test_engines_of_one_process_share_its_ray_and_refuse_another_address(ray_session,
                                                                          make_engine):
    a = make_engine(workers=1)
    b = make_engine(workers=1)
    assert a.add_task(jobs.add, 1, 1).wait(60) == 2 and b.add_task(jobs.add, 2, 2).wait(60) == 4
    a.shutdown()
    assert b.add_task(jobs.add, 3, 3).wait(60) == 6  # a's shutdown left the Ray to b
    with pytest.raises(ValueError, match="one process joins one Ray"):
        make_engine(address="ray://127.0.0.1:1")


def test_stats_count_ray_tasks_in_flight_and_queued_per_priority(make_engine, tmp_path):
    engine = make_engine(workers=1)
    running = engine.add_task(jobs.record_span, str(tmp_path / "s"), "x", 0.6)
    engine.add_tasks(jobs.add, [(1, 1)] * 3, priority="high")
    engine.add_tasks(jobs.add, [(1, 1)] * 2, priority="low")
    s = engine.get_stats()
    assert (s.total_workers, s.active_workers, s.idle_workers) == (1, 1, 0)
    assert (s.critical_queue_size, s.high_queue_size, s.normal_queue_size,
            s.low_queue_size) == (0, 3, 0, 2)
    assert running.status is TaskStatus.RUNNING
    running.wait(60)
    deadline = time.monotonic() + 60
    while engine.get_stats().total_tasks_processed < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    s = engine.get_stats()
    assert s.total_queued == 0 and s.active_workers == 0 and s.failed_tasks == 0
    assert s.avg_execution_time_ms > 0 and s.tasks_per_second > 0
    stats = running.get_stats()
    assert stats.worker_id == 0 and stats.execution_time_ms >= 500


def test_ray_task_options_reach_ray(make_engine):
    import ray

    # a resource no node has: Ray cannot place the task, so it never runs
    engine = make_engine(workers=1, ray_task_options={"resources": {"czmp_nowhere": 1}})
    r = engine.add_task(jobs.add, 1, 1, timeout_ms=1500)
    with pytest.raises(TaskTimeoutError):
        r.wait(60)
    assert ray.is_initialized()


def test_the_last_progress_report_comes_back_with_the_outcome(engine):
    r = engine.add_task(jobs.report, 3)
    assert r.wait(60) == 3
    assert r.progress == (1.0, "step 3")


def test_more_tasks_may_be_handed_to_ray_than_the_engine_has_workers(make_engine):
    engine = make_engine(workers=1, ray_max_in_flight=3)
    assert engine.get_stats().total_workers == 3
    results = [engine.add_task(jobs.square, i) for i in range(30)]
    assert [r.wait(60) for r in results] == [i * i for i in range(30)]
    with pytest.raises(ValueError, match="ray_max_in_flight"):
        make_engine(ray_max_in_flight=0)


def test_the_initializer_and_propagated_context_reach_ray_workers(make_engine):
    import ray_context

    engine = make_engine(workers=1, initializer=jobs.set_marker, initargs=("ready",))
    assert engine.add_task(jobs.read_marker).wait(60) == "ready"
    token = ray_context.request.set("req-42")
    try:
        r = engine.add_task(jobs.request_id)
    finally:
        ray_context.request.reset(token)
    assert r.wait(60) == "req-42"


def test_retry_on_and_back_off_decide_on_ray_as_in_process_mode(engine, tmp_path):
    r = engine.add_task(jobs.fail_once_then, str(tmp_path / "a"), "ok", max_retries=2,
                        retry_on=ConnectionError, retry_backoff="fixed")
    assert r.wait(60) == "ok" and r.get_stats().retries == 1
    no = engine.add_task(jobs.fail_once_then, str(tmp_path / "b"), "ok", max_retries=2,
                         retry_on=KeyError)
    with pytest.raises(ConnectionError):
        no.wait(60)
    assert no.get_stats().retries == 0
    with pytest.raises(ValueError, match="memory_limit_mb"):
        engine.add_task(jobs.add, 1, memory_limit_mb=100)
