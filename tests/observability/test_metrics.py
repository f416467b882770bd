"""/metrics: Prometheus text, parsed by prometheus_client's own parser, against a known workload."""
from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import obs_jobs  # noqa: E402
from catzilla_mp import TaskPriority, TaskTimeoutError, WorkerCrashedError  # noqa: E402
from catzilla_mp.observability import instrument, metrics_text  # noqa: E402
from obs_helpers import wait_until  # noqa: E402


def samples(body: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed, name, **labels) -> float:
    return parsed[(name, frozenset(labels.items()))]


def test_metrics_count_a_known_workload_by_priority_and_task(make_engine):
    # Given an instrumented engine
    engine = make_engine(workers=2, timeout_grace_ms=200)
    instrument(engine)
    # When it runs 10 squares at NORMAL, 4 at HIGH, 2 failing tasks with one
    # retry each at LOW, one task past its timeout and one that kills its worker
    ok = [engine.add_task(obs_jobs.square, i) for i in range(10)]
    ok += [engine.add_task(obs_jobs.square, i, priority=TaskPriority.HIGH) for i in range(4)]
    bad = [engine.add_task(obs_jobs.fail, "nope", priority="low", max_retries=1) for _ in range(2)]
    slow = engine.add_task(obs_jobs.spin, 30, timeout_ms=300, max_retries=0)
    crash = engine.add_task(obs_jobs.exit_hard, 9, max_retries=0)
    assert sum(t.wait(30) for t in ok) == sum(i * i for i in range(10)) + sum(i * i for i in range(4))
    for t in bad:
        with pytest.raises(ValueError):
            t.wait(30)
    with pytest.raises(TaskTimeoutError):
        slow.wait(30)
    with pytest.raises(WorkerCrashedError):
        crash.wait(30)
    wait_until(lambda: len(engine._backend.supervisor.snapshot()) == 2, what="crashed worker replaced")

    # Then /metrics, parsed by prometheus_client, says exactly that
    body, ctype = metrics_text(engine)
    assert ctype.startswith("text/plain")
    m = samples(body)
    sq_n = dict(priority="normal", task="square")
    sq_h = dict(priority="high", task="square")
    fl = dict(priority="low", task="fail")
    assert value(m, "catzilla_mp_tasks_submitted_total", **sq_n) == 10
    assert value(m, "catzilla_mp_tasks_submitted_total", **sq_h) == 4
    assert value(m, "catzilla_mp_tasks_completed_total", **sq_n) == 10
    assert value(m, "catzilla_mp_tasks_completed_total", **sq_h) == 4
    assert value(m, "catzilla_mp_tasks_started_total", **sq_n) == 10
    assert value(m, "catzilla_mp_tasks_failed_total", **fl) == 2
    assert value(m, "catzilla_mp_tasks_retried_total", **fl) == 2
    assert value(m, "catzilla_mp_tasks_started_total", **fl) == 4    # two attempts each
    assert value(m, "catzilla_mp_tasks_failed_total", **sq_n) == 0
    assert value(m, "catzilla_mp_tasks_timed_out_total", priority="normal", task="spin") == 1
    assert value(m, "catzilla_mp_tasks_failed_total", priority="normal", task="spin") == 1
    assert value(m, "catzilla_mp_tasks_crashed_total", priority="normal", task="exit_hard") == 1
    assert value(m, "catzilla_mp_tasks_crashed_total", **sq_n) == 0
    # the histogram saw every final attempt that ran
    assert value(m, "catzilla_mp_task_execution_seconds_count", **sq_n) == 10
    assert value(m, "catzilla_mp_task_execution_seconds_bucket", le="+Inf", **sq_h) == 4
    assert value(m, "catzilla_mp_task_execution_seconds_sum", **sq_n) > 0
    # gauges: the live pool, nothing queued
    assert value(m, "catzilla_mp_workers", state="total") == 2
    assert value(m, "catzilla_mp_queue_depth", priority="normal") == 0
    assert value(m, "catzilla_mp_worker_memory_bytes_total") > 0
    assert value(m, "catzilla_mp_worker_crashes_total") >= 1
    for index in ("0", "1"):
        assert value(m, "catzilla_mp_worker_memory_bytes", worker=index) > 0


def test_queue_depth_gauges_show_waiting_tasks_per_priority(make_engine, tmp_path):
    # Given one worker held busy by a task that runs until the test releases it
    engine = make_engine(workers=1, min_workers=1, max_workers=1)
    instrument(engine)
    gate = tmp_path / "go"
    blocker = engine.add_task(obs_jobs.wait_for_file, str(gate))
    wait_until(lambda: engine.get_stats().active_workers == 1, what="blocker running")
    # When three LOW and two CRITICAL tasks queue behind it
    queued = [engine.add_task(obs_jobs.square, i, priority="low") for i in range(3)]
    queued += [engine.add_task(obs_jobs.square, i, priority="critical") for i in range(2)]
    m = samples(metrics_text(engine)[0])
    # Then the gauges show them, and one busy worker
    assert value(m, "catzilla_mp_queue_depth", priority="low") == 3
    assert value(m, "catzilla_mp_queue_depth", priority="critical") == 2
    assert value(m, "catzilla_mp_queue_depth", priority="high") == 0
    assert value(m, "catzilla_mp_workers", state="active") == 1
    gate.write_text("go")
    assert blocker.wait(30) == "released"
    for t in queued:
        t.wait(30)


def test_each_engine_has_its_own_registry(make_engine):
    from prometheus_client import REGISTRY

    a, b = make_engine(workers=1), make_engine(workers=1)
    a.add_task(obs_jobs.square, 3).wait(30)
    assert instrument(a).registry is not instrument(b).registry
    assert instrument(a) is instrument(a)
    mb = samples(metrics_text(b)[0])
    assert not any(name == "catzilla_mp_tasks_submitted_total" for name, _ in mb)
    assert "catzilla_mp_tasks_submitted" not in {m.name for m in REGISTRY.collect()}
