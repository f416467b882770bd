"""A worker dying inside a task -- SIGKILL from outside, a segfault in C, os._exit,
the OOM killer -- loses no task: the task is re-run as a new attempt (after its
back-off) or fails with WorkerCrashedError naming the signal or exit code, every
other task is unaffected, a replacement worker starts, nothing leaks.
"""
from __future__ import annotations

import os
import signal

import pytest

import fault_jobs
from catzilla_mp import TaskStatus, WorkerCrashedError
from faultkit import (books_balance, counting_callbacks, replacement_started, running_pid,
                      wait_until)

#: how -> (exit code, words the error must contain)
DEATHS = {
    "sigkill": (-signal.SIGKILL, "SIGKILL"),
    "segfault": (-signal.SIGSEGV, "SIGSEGV"),
    "exit": (13, "exited with code 13"),
    "oom": (-signal.SIGKILL, "SIGKILL"),
}


def _bystanders(engine, n=40):
    return [engine.add_task(fault_jobs.triple, i) for i in range(n)]


@pytest.mark.parametrize("how", list(DEATHS))
def test_a_task_whose_worker_dies_is_rerun_and_delivered_once(make_engine, tmp_path, how):
    engine = make_engine(workers=2)
    path = str(tmp_path / "runs")
    victim = engine.add_task(fault_jobs.crash_first, path, 7, how, max_retries=2)
    others = _bystanders(engine)
    delivered = counting_callbacks([victim] + others)
    assert victim.wait(60) == 22
    assert [t.wait(60) for t in others] == [i * 3 + 1 for i in range(40)]
    assert victim.get_stats().retries == 1 and victim.status is TaskStatus.COMPLETED
    assert fault_jobs.runs(path) == {"7": 2}
    assert all(len(v) == 1 for v in delivered.values())
    assert engine._backend.supervisor.crashes == 1
    replacement_started(engine)
    books_balance(engine)


@pytest.mark.parametrize("how", list(DEATHS))
def test_when_attempts_run_out_the_error_names_the_signal_or_exit_code(make_engine, tmp_path, how):
    engine = make_engine(workers=2)
    path = str(tmp_path / "runs")
    victim = engine.add_task(fault_jobs.crash_always, path, 1, how, max_retries=1)
    others = _bystanders(engine)
    delivered = counting_callbacks([victim] + others)
    code, words = DEATHS[how]
    with pytest.raises(WorkerCrashedError, match=words) as info:
        victim.wait(60)
    assert info.value.exitcode == code
    assert victim.status is TaskStatus.FAILED and victim.get_stats().retries == 1
    assert fault_jobs.runs(path) == {"1": 2}  # the first run and one retry, no more
    assert [t.wait(60) for t in others] == [i * 3 + 1 for i in range(40)]
    assert all(len(v) == 1 for v in delivered.values())
    replacement_started(engine)
    books_balance(engine)
    assert engine.add_task(fault_jobs.triple, 2).wait(30) == 7


def test_sigkill_from_outside_while_running_reruns_the_task(make_engine, tmp_path):
    engine = make_engine(workers=2)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    victim = engine.add_task(fault_jobs.hold, path, "v", str(release), max_retries=3)
    delivered = counting_callbacks([victim])
    wait_until(lambda: fault_jobs.runs(path).get("v") == 1, 60, "the first run")
    first_pid = running_pid(engine, victim)
    os.kill(first_pid, signal.SIGKILL)
    others = _bystanders(engine)
    # the re-run starts in another worker (or the replacement)
    wait_until(lambda: fault_jobs.runs(path).get("v") == 2, 60, "the re-run")
    release.touch()
    assert victim.wait(60) == "v"
    assert victim.get_stats().retries == 1 and victim.get_stats().worker_id is not None
    assert [t.wait(60) for t in others] == [i * 3 + 1 for i in range(40)]
    assert len(delivered[victim.task_id]) == 1
    replacement_started(engine)
    assert first_pid not in [w.pid for w, _ in engine._backend.supervisor.snapshot()]
    books_balance(engine)


def test_a_crashed_attempt_waits_its_backoff_before_the_rerun(make_engine, tmp_path):
    # back-off for attempt 1 is uniform in [0.5, 1] x 0.4 s: at least 0.2 s
    engine = make_engine(workers=2, retry_backoff_base=0.4, retry_backoff_cap=0.4)
    path = str(tmp_path / "runs")
    seen = []
    engine.monitor.add_listener(lambda ev, task, detail: seen.append((ev, type(detail).__name__)))
    r = engine.add_task(fault_jobs.crash_first, path, 3, "sigkill", max_retries=1)
    assert r.wait(60) == 10
    assert ("retrying", "WorkerCrashedError") in seen
    first, second = fault_jobs.run_times(path)["3"]
    assert second - first >= 0.2  # a lower bound only: a slow machine can only add to it
    assert engine.get_stats().retry_count == 1
