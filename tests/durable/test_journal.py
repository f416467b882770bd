"""The durable journal (issue 14): tasks survive restarts and crashes; outcomes are recorded once."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import sys
import time
from collections import Counter

import psutil
import pytest

import durable_jobs
from catzilla_mp import (BackgroundTasks, JournalError, SerializationError, TaskStatus,
                         UnknownTaskError, WorkerCrashedError)
from conftest import SMALL

HERE = pathlib.Path(__file__).parent


def outcomes(journal: str) -> list[tuple]:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT id, status FROM outcomes").fetchall()


def pending_rows(journal: str) -> int:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]


def runs(log_dir: pathlib.Path) -> Counter:
    path = log_dir / "runs.log"
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def test_every_task_survives_a_sigkill_of_the_app_and_its_workers_and_is_recorded_once(
        spawn, tmp_path, journal_path):
    # Given an app that submitted tasks finished, running, queued and delayed
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    n_quick, n_delayed, n_long = 12, 4, 2
    app = spawn(open(HERE / "crash_app.py").read(), journal_path, str(log_dir), str(n_quick),
                str(n_delayed), str(n_long), stdout=__import__("subprocess").PIPE, text=True)
    ids = json.loads(app.stdout.readline())
    assert app.stdout.readline().strip() == "READY"
    family = [app.pid] + [c.pid for c in psutil.Process(app.pid).children(recursive=True)]
    assert len(family) >= n_long + 2  # the app and its workers
    before_crash = runs(log_dir)
    # When the app and every worker are SIGKILLed at once
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    app.wait()
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)
    done_before = {tid for tid, _ in outcomes(journal_path)}
    assert set(ids["before"]) <= done_before  # finished and journaled before the crash
    # Then an app restarted on the same journal runs everything left, once more at most
    engine = BackgroundTasks(**dict(SMALL, workers=2), durable=journal_path)
    try:
        all_ids = [t for group in ids.values() for t in group]
        results = {}
        for tid in all_ids:
            task = engine.get_task_result(tid)
            try:
                results[tid] = ("ok", task.wait(90))
            except Exception as exc:  # noqa: BLE001 - crash0 fails, by design
                results[tid] = ("err", exc)
        assert [results[t] for t in ids["before"]] == [("ok", i * i) for i in range(n_quick)]
        assert [results[t] for t in ids["quick"]] == [("ok", i * i) for i in range(n_quick)]
        assert [results[t] for t in ids["delayed"]] == [("ok", i * i) for i in range(n_delayed)]
        assert [results[t] for t in ids["long"]] == [("ok", -i) for i in range(n_long)]
        # the long tasks' killed attempt was counted
        assert [engine.get_task_result(t).attempt for t in ids["long"]] == [1] * n_long
        kind, err = results[ids["crash0"][0]]
        assert kind == "err" and isinstance(err, WorkerCrashedError)
        deadline = time.monotonic() + 30
        while pending_rows(journal_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.shutdown()
    recorded = outcomes(journal_path)
    assert Counter(tid for tid, _ in recorded) == Counter({t: 1 for t in all_ids})
    assert pending_rows(journal_path) == 0
    assert dict(recorded)[ids["crash0"][0]] == "FAILED"
    # the finished tasks did not run again; the long ones ran twice (at-least-once)
    after = runs(log_dir)
    assert all(after[f"b{i}"] == 1 for i in range(n_quick))
    assert all(after[f"long{i}"] == 2 for i in range(n_long))
    assert before_crash["q0"] == 0 and after["q0"] == 1
    # the delayed ones were not due at the crash: they ran once, after the restart
    assert all(before_crash[f"d{i}"] == 0 and after[f"d{i}"] == 1 for i in range(n_delayed))


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_results_are_read_by_id_after_a_restart_and_delayed_tasks_run_then(journal_path, mode):
    engine = BackgroundTasks(**SMALL, mode=mode, durable=journal_path)
    done = engine.add_task(durable_jobs.slow, 0)
    failed = engine.add_task(durable_jobs.fail_always, 7, max_retries=1)
    assert done.wait(30) == "slept"
    with pytest.raises(ValueError):
        failed.wait(30)
    later = engine.add_task(durable_jobs.slow, 0, delay_ms=1_500)
    engine.shutdown(timeout=0.2)  # the delayed task is not due: it stays in the journal
    assert later.status is TaskStatus.CANCELLED  # this engine's copy ends, the journal's not

    engine = BackgroundTasks(**SMALL, mode=mode, durable=journal_path)
    try:
        again = engine.get_task_result(done.task_id)
        assert again.status is TaskStatus.COMPLETED and again.wait(0) == "slept"
        bad = engine.get_task_result(failed.task_id)
        assert bad.status is TaskStatus.FAILED and bad.attempt == 1
        with pytest.raises(ValueError, match="bad 7"):
            bad.wait(0)
        resumed = engine.get_task_result(later.task_id)
        assert resumed.wait(30) == "slept"
    finally:
        engine.shutdown()


def test_a_lambda_and_a_closure_travel_by_value_and_run_after_a_restart(journal_path):
    factor = 3
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    # not due before the shutdown: they stay in the journal, function and closure by value
    lam = engine.add_task(lambda x: x + 1, 1, delay_ms=1_500)
    clo = engine.add_task(lambda x: x * factor, 5, delay_ms=1_500)
    engine.shutdown(timeout=0)
    factor = 100  # noqa: F841 - the journal holds the value at submission
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    try:
        assert engine.get_task_result(lam.task_id).wait(30) == 2
        assert engine.get_task_result(clo.task_id).wait(30) == 15
    finally:
        engine.shutdown()


def test_a_function_is_journaled_by_reference_when_importable_else_by_value(journal_path):
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    try:
        engine.add_task(durable_jobs.slow, 0, delay_ms=60_000)
        engine.add_task(lambda: 1, delay_ms=60_000)
        with sqlite3.connect(journal_path) as db:
            forms = set(db.execute("SELECT fn_ref, fn_blob IS NOT NULL FROM tasks").fetchall())
        assert forms == {(None, 1), ("durable_jobs:slow", 0)}
    finally:
        engine.shutdown(wait_for_completion=False, timeout=0)


def test_an_unpicklable_closure_is_refused_and_neither_queued_nor_journaled(journal_path):
    import threading
    lock = threading.Lock()
    engine = BackgroundTasks(**SMALL, mode="thread", durable=journal_path)
    try:
        with pytest.raises(SerializationError):
            engine.add_task(lambda: lock.locked())
        assert pending_rows(journal_path) == 0
        assert engine.add_task(durable_jobs.slow, 0).wait(30) == "slept"
    finally:
        engine.shutdown()


def test_a_cancelled_task_is_recorded_cancelled_and_does_not_run_after_a_restart(journal_path):
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    t = engine.add_task(durable_jobs.slow, 0, delay_ms=60_000)
    assert t.cancel()
    engine.shutdown()
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    try:
        assert engine.get_task_result(t.task_id).status is TaskStatus.CANCELLED
        assert pending_rows(journal_path) == 0
    finally:
        engine.shutdown()
    assert outcomes(journal_path) == [(t.task_id, "CANCELLED")]


def test_results_older_than_result_ttl_are_not_found_after_a_restart(journal_path):
    engine = BackgroundTasks(**SMALL, durable=journal_path, result_ttl_s=0.5)
    t = engine.add_task(durable_jobs.slow, 0)
    t.wait(30)
    engine.shutdown()
    time.sleep(0.6)
    engine = BackgroundTasks(**SMALL, durable=journal_path, result_ttl_s=0.5)
    try:
        with pytest.raises(UnknownTaskError):
            engine.get_task_result(t.task_id)
    finally:
        engine.shutdown()


def test_the_journal_is_created_private_and_a_shared_one_is_refused(tmp_path, journal_path):
    engine = BackgroundTasks(**SMALL, mode="thread", durable=journal_path)
    try:
        engine.add_task(durable_jobs.slow, 0).wait(30)
        for name in os.listdir(tmp_path):
            assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600, name
    finally:
        engine.shutdown()
    os.chmod(journal_path, 0o660)
    with pytest.raises(JournalError, match="0600"):
        BackgroundTasks(**SMALL, mode="thread", durable=journal_path)


def test_a_second_engine_on_the_same_journal_is_refused(journal_path):
    engine = BackgroundTasks(**SMALL, mode="thread", durable=journal_path)
    try:
        with pytest.raises(JournalError, match="in use by another engine"):
            BackgroundTasks(**SMALL, mode="thread", durable=journal_path)
    finally:
        engine.shutdown()
    BackgroundTasks(**SMALL, mode="thread", durable=journal_path).shutdown()


def test_durable_passes_through_enable_background_tasks(journal_path):
    from catzilla_mp import BackgroundTaskApp

    app = BackgroundTaskApp()
    app.enable_background_tasks(workers=1, mode="thread", durable=journal_path)
    try:
        t = app.add_task(durable_jobs.slow, 0)
        assert t.wait(30) == "slept"
    finally:
        app.tasks.shutdown()
    with sqlite3.connect(journal_path) as db:
        assert db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 1


def test_a_task_waiting_for_its_retry_survives_a_restart_with_its_attempt_count(tmp_path,
                                                                               journal_path):
    opts = dict(SMALL, retry_backoff_base=3.0, retry_backoff_cap=3.0)
    engine = BackgroundTasks(**opts, durable=journal_path)
    t = engine.add_task(durable_jobs.fail_first, str(tmp_path), "r", max_retries=2)
    deadline = time.monotonic() + 60
    while t.status is not TaskStatus.RETRYING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert t.status is TaskStatus.RETRYING
    engine.shutdown(timeout=0)  # backing off: it stays in the journal
    engine = BackgroundTasks(**opts, durable=journal_path)
    try:
        again = engine.get_task_result(t.task_id)
        assert again.wait(60) == "second time lucky"
        assert again.attempt == 1
    finally:
        engine.shutdown()
    assert runs(tmp_path)["r"] == 2


def test_shutdown_without_waiting_leaves_unstarted_tasks_for_the_next_start(journal_path):
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    blocker = engine.add_task(durable_jobs.slow, 1.0)
    queued = [engine.add_task(durable_jobs.slow, 0) for _ in range(3)]
    engine.shutdown(wait_for_completion=False)
    assert all(q.status is TaskStatus.CANCELLED for q in queued)  # this engine's copies
    engine = BackgroundTasks(**SMALL, durable=journal_path)
    try:
        assert [engine.get_task_result(q.task_id).wait(60) for q in queued] == ["slept"] * 3
        # it ran to the end, or (not started yet at the shutdown) stayed journaled and ran now
        assert engine.get_task_result(blocker.task_id).wait(60) == "slept"
    finally:
        engine.shutdown()
