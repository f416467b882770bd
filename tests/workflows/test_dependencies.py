"""depends_on and the canvas (chain, group, chord): order, results fed along, failure propagation."""
from __future__ import annotations

import threading

import pytest

import wf_jobs as jobs
from catzilla_mp import SerializationError, TaskCancelledError, TaskStatus
from catzilla_mp.errors import DependencyCancelledError, DependencyFailedError
from catzilla_mp.workflows import Dependencies, chain, chord, group, sig

WAIT = 60


def test_a_task_with_depends_on_runs_only_after_every_parent_completed(make_engine):
    engine = make_engine(mode="thread")
    gate = threading.Event()
    slow = engine.add_task(jobs.wait_for, gate, 1)
    fast = engine.add_task(jobs.add, 1, 1)
    child = engine.add_task(jobs.add, 40, 2, depends_on=[slow, fast])
    fast.wait(WAIT)
    # Given one parent done and one still running, the child is held, not queued
    assert child.status is TaskStatus.PENDING and not child.done()
    assert engine.get_task_result(child.task_id) is child
    gate.set()
    assert child.wait(WAIT) == 42
    assert child.started_at >= slow.completed_at - 1e-3


def test_a_chain_feeds_each_result_to_the_next_step_in_worker_processes(make_engine):
    engine = make_engine()
    last = chain(sig(jobs.add, 1, 2), sig(jobs.mul, 10), sig(jobs.add, 5)).apply(engine)
    # (1 + 2) * 10 + 5
    assert last.wait(WAIT) == 35


def test_a_chord_gives_the_callback_the_list_of_the_group_results_in_order(make_engine):
    engine = make_engine(mode="thread")
    gate = threading.Event()
    header = group(sig(jobs.wait_for, gate, 1), sig(jobs.add, 2), sig(jobs.add, 3))
    result = chord(header, sig(jobs.total, extra=100)).apply(engine)
    assert not result.done()
    gate.set()
    assert result.wait(WAIT) == 106


def test_a_group_inside_a_chain_fans_out_and_back_in(make_engine):
    engine = make_engine(mode="thread")
    last = chain(sig(jobs.add, 1, 1), group(sig(jobs.mul, 3), sig(jobs.mul, 4)),
                 sig(jobs.total)).apply(engine)
    assert last.wait(WAIT) == 2 * 3 + 2 * 4


def test_a_group_returns_a_list_of_task_results(make_engine):
    engine = make_engine(mode="thread")
    results = group(sig(jobs.add, i) for i in range(5)).apply(engine)
    assert results.wait(WAIT) == [0, 1, 2, 3, 4]
    assert results.done() and len(results) == 5


def test_a_failed_parent_fails_its_dependants_down_the_graph_naming_each_parent(make_engine):
    engine = make_engine()
    parent = engine.add_task(jobs.fail, "bad input", max_retries=0)
    child = engine.add_task(jobs.add, 1, depends_on=parent)
    grandchild = engine.add_task(jobs.add, 2, depends_on=[child])
    with pytest.raises(DependencyFailedError) as info:
        grandchild.wait(WAIT)
    err = info.value
    assert err.parent_id == child.task_id and child.task_id in str(err)
    assert child.status is TaskStatus.FAILED and grandchild.status is TaskStatus.FAILED
    with pytest.raises(DependencyFailedError) as first:
        child.wait(WAIT)
    assert first.value.parent_id == parent.task_id and first.value.parent_name == "fail"
    assert isinstance(first.value.__cause__, ValueError)
    assert grandchild.started_at is None  # never ran


def test_a_failed_step_fails_the_rest_of_a_chain(make_engine):
    engine = make_engine(mode="thread")
    last = chain(sig(jobs.add, 1), sig(jobs.fail).set(max_retries=0), sig(jobs.add, 1)).apply(engine)
    with pytest.raises(DependencyFailedError):
        last.wait(WAIT)


def test_a_cancelled_parent_cancels_its_dependants_with_a_typed_error(make_engine):
    engine = make_engine(mode="thread", workers=1)
    gate = threading.Event()
    blocker = engine.add_task(jobs.wait_for, gate)
    parent = engine.add_task(jobs.add, 1)  # queued behind the blocker: cancellable
    child = engine.add_task(jobs.add, 2, depends_on=[parent])
    assert parent.cancel()
    with pytest.raises(DependencyCancelledError) as info:
        child.wait(WAIT)
    assert info.value.parent_id == parent.task_id
    assert isinstance(info.value, TaskCancelledError)
    assert child.status is TaskStatus.CANCELLED
    gate.set()
    blocker.wait(WAIT)


def test_a_held_dependant_can_be_cancelled_and_then_never_runs(make_engine):
    engine = make_engine(mode="thread")
    gate = threading.Event()
    parent = engine.add_task(jobs.wait_for, gate, 1)
    child = engine.add_task(jobs.add, 2, depends_on=[parent])
    assert child.cancel()
    assert child.status is TaskStatus.CANCELLED
    gate.set()
    assert parent.wait(WAIT) == 1
    with pytest.raises(TaskCancelledError):
        child.wait(WAIT)
    assert child.started_at is None


def test_depending_on_finished_tasks_queues_at_once(make_engine):
    engine = make_engine(mode="thread")
    parent = engine.add_task(jobs.add, 1)
    parent.wait(WAIT)
    assert engine.add_task(jobs.add, 3, depends_on=[parent]).wait(WAIT) == 3


def test_depends_on_refuses_what_is_not_a_task_result_and_submits_nothing(make_engine):
    engine = make_engine(mode="thread")
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, depends_on=["task_123"])
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, depends_on="task_123")
    with pytest.raises(ValueError):
        engine.add_task(jobs.add, 1, depends_on=[])
    assert not engine.unfinished()


def test_depends_on_refuses_a_task_of_another_engine(make_engine):
    one, two = make_engine(mode="thread"), make_engine(mode="thread")
    parent = one.add_task(jobs.add, 1)
    with pytest.raises(ValueError, match="another engine"):
        two.add_task(jobs.add, 1, depends_on=[parent])


def test_a_dependant_whose_arguments_cannot_be_pickled_fails_with_that_error_when_released(make_engine):
    engine = make_engine()  # process mode: the call is pickled to a worker when released
    parent = engine.add_task(jobs.add, 1)
    child = engine.add_task(jobs.add, threading.Lock(), depends_on=Dependencies([parent], feed="first"))
    with pytest.raises(SerializationError):
        child.wait(WAIT)
    assert child.status is TaskStatus.FAILED and child.started_at is None


def test_shutdown_without_waiting_cancels_held_dependants(make_engine):
    engine = make_engine(mode="thread")
    gate = threading.Event()
    parent = engine.add_task(jobs.wait_for, gate)
    child = engine.add_task(jobs.add, 2, depends_on=[parent])
    gate.set()
    engine.shutdown(wait_for_completion=False, timeout=10)
    assert child.done()
    assert child.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED)


def test_shutdown_with_waiting_runs_a_whole_chain(make_engine):
    engine = make_engine(mode="thread")
    last = chain(sig(jobs.sleep_then, 0.05, 1), sig(jobs.add, 1), sig(jobs.add, 1)).apply(engine)
    engine.shutdown(wait_for_completion=True, timeout=30)
    assert last.wait(1) == 3


def test_signature_set_refuses_what_is_not_an_add_task_option():
    with pytest.raises(TypeError, match="not add_task options"):
        sig(jobs.add, 1).set(colour="red")
