"""job_id= / unique_for=: a second submission with the same key returns the first's TaskResult."""
from __future__ import annotations

import threading

import pytest

import wf_jobs as jobs
from catzilla_mp.results import TaskResult
from catzilla_mp.workflows.unique import UniqueJobs

WAIT = 60
THREADS = 16
PER_THREAD = 25


def test_a_second_submission_with_a_live_job_id_returns_the_first_task_result(make_engine):
    engine = make_engine(mode="thread")
    gate = threading.Event()
    first = engine.add_task(jobs.wait_for, gate, 1, job_id="report-42")
    again = engine.add_task(jobs.wait_for, gate, 2, job_id="report-42")
    assert again is first
    assert engine.find_job("report-42") is first
    gate.set()
    assert first.wait(WAIT) == 1


def test_a_job_id_is_free_again_once_its_task_ended_without_unique_for(make_engine):
    engine = make_engine(mode="thread")
    first = engine.add_task(jobs.add, 1, job_id="nightly")
    assert first.wait(WAIT) == 1
    # the key is dropped by a done-callback: wait for it to have run
    first.wait(WAIT)
    second = engine.add_task(jobs.add, 2, job_id="nightly")
    assert second is not first and second.wait(WAIT) == 2


def test_concurrent_submits_of_one_job_id_from_many_threads_make_exactly_one_task(make_engine):
    engine = make_engine()  # process mode: the submissions race real dispatches
    gate = threading.Barrier(THREADS)
    got: list[list[TaskResult]] = [[] for _ in range(THREADS)]

    def submit(i: int) -> None:
        gate.wait()
        for n in range(PER_THREAD):
            got[i].append(engine.add_task(jobs.sleep_then, 0.5, n, job_id="same",
                                          unique_for=3600))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everyone = {id(r) for rs in got for r in rs}
    assert len(everyone) == 1
    winner = got[0][0]
    assert winner.wait(WAIT) in range(PER_THREAD)
    # the losers' tasks were never entered: only the winner is in the table
    assert len(engine.unfinished()) == 0


def test_concurrent_submits_of_many_job_ids_make_one_task_per_id(make_engine):
    engine = make_engine(mode="thread")
    start = threading.Barrier(THREADS)
    got: list[dict[str, TaskResult]] = [{} for _ in range(THREADS)]

    def submit(i: int) -> None:
        start.wait()
        for n in range(PER_THREAD):
            key = f"job-{n}"
            got[i][key] = engine.add_task(jobs.add, n, job_id=key, unique_for=3600)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(PER_THREAD):
        key = f"job-{n}"
        assert len({id(g[key]) for g in got}) == 1
        assert got[0][key].wait(WAIT) == n


def test_unique_for_reuses_a_finished_result_within_the_window_and_not_after(make_engine):
    engine = make_engine(mode="thread")
    first = engine.add_task(jobs.add, 5, unique_for=3600)
    assert first.wait(WAIT) == 5
    # without job_id the key is the function and its arguments
    assert engine.add_task(jobs.add, 5, unique_for=3600) is first
    assert engine.add_task(jobs.add, 6, unique_for=3600) is not first


def test_unique_for_expires_on_the_clock(clock):
    table = UniqueJobs(clock)
    first, second = _done_task("a"), _done_task("b")
    assert table.claim(("id", "x"), first, 10.0) is first
    clock.advance(9.9)
    assert table.claim(("id", "x"), second, 10.0) is first
    clock.advance(0.2)
    assert table.claim(("id", "x"), second, 10.0) is second


def test_bad_job_id_and_unique_for_are_refused_and_submit_nothing(make_engine):
    engine = make_engine(mode="thread")
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, job_id=42)
    with pytest.raises(ValueError):
        engine.add_task(jobs.add, 1, unique_for=0)
    with pytest.raises(ValueError):
        engine.add_task(jobs.add, 1, job_id="k", unique_for=float("nan"))
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, unique_for="1h")
    assert not engine.unfinished()


def test_a_job_id_whose_submission_failed_can_be_submitted_again(make_engine):
    engine = make_engine()
    with pytest.raises(Exception):
        engine.add_task(jobs.add, threading.Lock(), job_id="retry-me")  # cannot be pickled
    assert engine.find_job("retry-me") is None
    assert engine.add_task(jobs.add, 1, job_id="retry-me").wait(WAIT) == 1


class _Owner:
    callback_runner = None


def _done_task(task_id: str) -> TaskResult:
    from catzilla_mp.records import TaskStatus

    task = TaskResult(task_id, _Owner())
    task._finish(True, 1, TaskStatus.COMPLETED)
    return task
