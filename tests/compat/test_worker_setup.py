"""Issue 13, items 12, 15, 16: initializer, context propagation, logs from workers."""
from __future__ import annotations

import logging
import os
import time

import pytest

import compat_jobs as jobs
from catzilla_mp import EngineBrokenError, WorkerInitializerError


def _eventually(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# -- item 12: initializer / initargs ---------------------------------------------------------

def test_issue_13_12_the_initializer_runs_once_per_worker_before_its_first_task(make_engine,
                                                                              tmp_path):
    log = tmp_path / "init"
    engine = make_engine(workers=2, initializer=jobs.init_worker, initargs=(str(log), "model"))
    results = [engine.add_task(jobs.initialized) for _ in range(20)]
    assert all(r.wait(60) == ["model"] for r in results)  # set before any task, exactly once
    ran_in = {str(engine.add_task(jobs.pid).wait(60)) for _ in range(5)}
    pids = log.read_text().split()  # read after: every process that ran a task initialised first
    assert len(pids) == len(set(pids))  # once per process
    assert ran_in <= set(pids)


def test_issue_13_12_a_failing_initializer_fails_tasks_with_a_clear_typed_error(make_engine):
    engine = make_engine(initializer=jobs.init_fails, initargs=("no model file",))
    result = engine.add_task(jobs.add, 1, 2, max_retries=3)
    with pytest.raises(WorkerInitializerError, match="no model file") as info:
        result.wait(60)
    assert isinstance(info.value, EngineBrokenError)
    assert "RuntimeError" in str(info.value.__cause__)  # the initializer's traceback
    assert result.attempt == 0  # not retried: it is not the task's fault
    # the next worker tries again (a transient failure would heal); still failing here
    with pytest.raises(WorkerInitializerError):
        engine.add_task(jobs.add, 1, 2).wait(60)


def test_issue_13_12_bad_initializer_options_are_rejected(make_engine):
    with pytest.raises(TypeError):
        make_engine(initializer="not callable")
    with pytest.raises(TypeError):
        make_engine(initializer=jobs.init_worker, initargs="ab")


# -- item 15: context propagation ----------------------------------------------------------------

def test_issue_13_15_a_registered_context_var_set_in_the_request_is_visible_in_the_task(engine):
    token = jobs.request_id.set("req-42")
    other = jobs.not_propagated.set("secret")
    try:
        result = engine.add_task(jobs.read_context)
    finally:
        jobs.request_id.reset(token)
        jobs.not_propagated.reset(other)
    # registered: travels; not registered: stays in the app
    assert result.wait(60) == ("req-42", "unset")
    # each task runs in a fresh context: nothing leaks into the next one
    assert engine.add_task(jobs.read_context).wait(60) == ("unset", "unset")


def test_issue_13_15_each_task_gets_the_value_of_its_own_request(engine):
    results = []
    for i in range(5):
        token = jobs.request_id.set(f"req-{i}")
        try:
            results.append(engine.add_task(jobs.read_context))
        finally:
            jobs.request_id.reset(token)
    assert [r.wait(60)[0] for r in results] == [f"req-{i}" for i in range(5)]


def test_issue_13_15_an_unpicklable_value_is_left_out_not_a_failed_submit(engine, caplog):
    import threading

    token = jobs.request_id.set(threading.Lock())
    try:
        result = engine.add_task(jobs.read_context)
    finally:
        jobs.request_id.reset(token)
    assert result.wait(60) == ("unset", "unset")


# -- item 16: logs ---------------------------------------------------------------------------------

class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_issue_13_16_logs_written_in_a_worker_reach_the_apps_handlers_with_the_task_id(
        engine, capfd):
    keep = _Keep()
    logger = logging.getLogger("compat_jobs")
    logger.addHandler(keep)
    try:
        result = engine.add_task(jobs.log_something, "hello")
        worker_pid = result.wait(60)
        assert _eventually(lambda: any("hello" in r.getMessage() for r in keep.records))
    finally:
        logger.removeHandler(keep)
    record = next(r for r in keep.records if "hello" in r.getMessage())
    assert record.task_id == result.task_id
    assert record.worker_pid == worker_pid != os.getpid()
    assert record.levelno == logging.WARNING and record.name == "compat_jobs"
    assert "from the worker: hello" not in capfd.readouterr().err  # not the inherited stderr


def test_issue_13_16_forward_logs_false_keeps_the_old_behaviour(make_engine):
    engine = make_engine(forward_logs=False)
    assert engine.worker_extras.get("log") is None
    assert engine.add_task(jobs.log_something, "quiet").wait(60)


# -- thread mode: the same options, as far as threads allow -----------------------------------

def test_issue_13_12_thread_mode_runs_the_initializer_in_each_executor_thread(make_engine,
                                                                             tmp_path):
    log = tmp_path / "init"
    engine = make_engine(mode="thread", workers=2, initializer=jobs.init_worker,
                         initargs=(str(log), "t"))
    assert engine.add_task(jobs.add, 1, 1).wait(30) == 2
    assert _eventually(lambda: len(log.read_text().split()) == 2)


def test_issue_13_12_thread_mode_initializer_failure_is_the_same_typed_error(make_engine):
    engine = make_engine(mode="thread", workers=1, initializer=jobs.init_fails,
                         initargs=("no db",))
    with pytest.raises(WorkerInitializerError, match="no db"):
        engine.add_task(jobs.add, 1, 1, max_retries=2).wait(30)


def test_issue_13_15_thread_mode_propagates_registered_context_and_profiles(make_engine):
    engine = make_engine(mode="thread", workers=1)
    token = jobs.request_id.set("req-t")
    try:
        result = engine.add_task(jobs.read_context, enable_profiling=True)
    finally:
        jobs.request_id.reset(token)
    assert result.wait(30) == ("req-t", "unset")
    assert result.get_stats().profile


def test_issue_13_8_thread_mode_refuses_a_memory_limit_it_cannot_enforce(make_engine):
    engine = make_engine(mode="thread", workers=1)
    with pytest.raises(ValueError, match="mode='process'"):
        engine.add_task(jobs.add, 1, memory_limit_mb=10)
    with pytest.raises(ValueError, match="mode='process'"):
        engine.task(memory_limit_mb=10)


def test_a_task_decorated_by_a_process_engine_keeps_its_memory_limit_refused_in_thread_mode(
        make_engine):
    """A @task config carries its memory limit to any engine it is submitted to: one that
    cannot enforce it (thread mode) refuses it instead of running the task unlimited."""
    process_engine = make_engine(workers=1)
    thread_engine = make_engine(mode="thread", workers=1)

    def limited(x):
        return x

    process_engine.task(memory_limit_mb=64)(limited)
    with pytest.raises(ValueError, match="mode='process'"):
        thread_engine.add_task(limited, 1)
    assert process_engine.add_task(limited, 2).wait(60) == 2
