"""A chain step fed worker-to-worker (issue 15): the parent's worker hands its result on.

In process mode chain(a, b) stores b WAITING in its own slot with a
continuation on a's slot; the worker that finishes a copies a's outcome into
b's slot and queues b before publishing a (native/slots.c, czmp_tasks_feed).
These tests prove the app takes no part without timing anything: the
workflows' counters of app-side and worker-side feeds, and the host's
release (the app path) must not be called. Then the cases where the app
takes the step back (failed or cancelled parent, no feed possible), and
workers killed at the feed's two named points (CZMP_FAULT_FEED_CLAIMED: b
FEEDING, a RUNNING; CZMP_FAULT_FEED_QUEUED: b QUEUED, a not yet DONE): b
runs exactly once and nothing leaks.

Each test gates its first step on a file, so the chain is wired before the
first step can finish (otherwise the app feeds, correctly, but that is
another test).
"""
from __future__ import annotations

import time

import pytest

import chain_jobs as jobs
from catzilla_mp import TaskStatus, WorkerCrashedError
from catzilla_mp._core import SLOT_FREE, SLOT_WAITING, state_kind
from catzilla_mp.errors import DependencyCancelledError, DependencyFailedError
from catzilla_mp.workflows import Dependencies, chain, sig

WAIT = 60


class Gate:
    """A file the first step of a chain waits for (chain_jobs.gated)."""

    def __init__(self, path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def open(self) -> None:
        self.path.write_text("open")


@pytest.fixture
def gate(tmp_path):
    return Gate(tmp_path / "gate")


@pytest.fixture
def arm_fault(monkeypatch, tmp_path):
    """arm_fault("c13"): the first worker to reach that C fault point SIGKILLs itself, once.

    Before the engine is made: workers inherit the environment (worker.py, FAULT_ENV).
    """
    def arm(point: str) -> None:
        monkeypatch.setenv("CZMP_WORKER_FAULT", f"{point}:1:{tmp_path / 'fault-claim'}")

    arm.fired = lambda: (tmp_path / "fault-claim").exists()
    return arm


def _app_releases(engine) -> list:
    """Record every task the workflows release through the app (the old hand-off)."""
    wf = engine._workflow_state()
    calls: list = []
    real = wf.host.release

    def release(task, *rest):
        calls.append(task)
        return real(task, *rest)

    wf.host.release = release
    return calls


def _slot_kind(engine, task) -> int:
    return state_kind(engine._backend.seg.slot_state(task.slot))


def _wait_until(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def _books_balance(engine, timeout=15.0) -> None:
    """Every slot free and on the free list, no chunk held but the function table's, rings empty."""
    backend = engine._backend
    n = engine.options.queue_size

    def state():
        used = sum(c.used for c in backend.seg.class_stats())
        return dict(chunks_used=used - backend.functions._next, free_list=len(backend._free),
                    free_states=sum(1 for i in range(n)
                                    if state_kind(backend.seg.slot_state(i)) == SLOT_FREE),
                    queued=sum(backend.seg.queue_depths()),
                    owned=sum(1 for t in backend._slot_task if t is not None))

    want = dict(chunks_used=0, free_list=n, free_states=n, queued=0, owned=0)
    deadline = time.monotonic() + timeout
    while (got := state()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"slots or chunks leaked: {got}, want {want}")
        time.sleep(0.05)


def _three_steps(engine, gate, runs, **first):
    return chain(sig(jobs.gated, str(gate), runs, "a", 3).set(**first),
                 sig(jobs.step, runs, "b", 10), sig(jobs.step, runs, "c", 2)).apply(engine)


def test_each_chain_step_is_fed_by_the_previous_steps_worker_not_by_the_app(make_engine, gate,
                                                                            tmp_path):
    engine = make_engine()
    released = _app_releases(engine)
    runs = str(tmp_path / "runs")
    last = _three_steps(engine, gate, runs)
    graph = engine._workflow_state().graph
    middle = graph.held()[0] if graph.held()[0] is not last else graph.held()[1]
    # Given the first step held at its gate, the later steps wait in slots of their own
    assert _slot_kind(engine, middle) == SLOT_WAITING and _slot_kind(engine, last) == SLOT_WAITING
    assert middle.status is TaskStatus.PENDING and last.status is TaskStatus.PENDING
    gate.open()
    assert last.wait(WAIT) == 3 * 10 * 2
    assert middle.wait(WAIT) == 30
    # Then no result went through the app: both hops were the workers'
    _wait_until(lambda: graph.direct_feeds == 2, "both hops counted")
    assert graph.app_feeds == 0 and released == []
    assert jobs.runs(runs) == {"a": 1, "b": 1, "c": 1}
    _books_balance(engine)


def test_a_step_whose_parent_ended_before_it_was_stored_is_fed_by_the_app(make_engine, tmp_path):
    engine = make_engine()
    parent = engine.add_task(jobs.step, 4, str(tmp_path / "runs"), "a", 2)
    assert parent.wait(WAIT) == 8
    child = engine.add_task(jobs.step, str(tmp_path / "runs"), "b", 5,
                            depends_on=Dependencies([parent], feed="first"))
    assert child.wait(WAIT) == 40
    graph = engine._workflow_state().graph
    _wait_until(lambda: graph.app_feeds == 1, "the app's feed counted")
    assert graph.direct_feeds == 0
    _books_balance(engine)


def test_a_step_its_parents_worker_missed_is_fed_by_the_app_in_place_and_feeds_the_next(
        make_engine, gate, tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 3)
    middle = engine.add_task(jobs.step, runs, "b", 10, depends_on=Dependencies([first], "first"))
    last = engine.add_task(jobs.step, runs, "c", 2, depends_on=Dependencies([middle], "first"))
    # Given the parent's worker read its continuation before the app wrote it
    # (simulated: the word cleared), nobody feeds the middle step on the way
    engine._backend.slots[first.slot].next = 0
    gate.open()
    assert last.wait(WAIT) == 60
    graph = engine._workflow_state().graph
    _wait_until(lambda: graph.app_feeds + graph.direct_feeds == 2, "both hops counted")
    # Then the app fed it in its own slot, whose continuation still named the
    # last step: that hop stayed worker-to-worker
    assert (graph.app_feeds, graph.direct_feeds) == (1, 1)
    assert jobs.runs(runs) == {"a": 1, "b": 1, "c": 1}
    _books_balance(engine)


def test_a_result_in_a_payload_segment_goes_through_the_app(make_engine, gate, tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 1)
    big = engine.add_task(jobs.big, 2 << 20, depends_on=Dependencies([first], feed="first"))
    size = chain(sig(len)).apply(engine, depends_on=Dependencies([big], feed="first"))
    gate.open()
    assert size.wait(WAIT) == 2 << 20
    graph = engine._workflow_state().graph
    # first -> big: its worker fed it; big -> len: a Frame result, so the app did
    _wait_until(lambda: graph.direct_feeds + graph.app_feeds == 2, "both hops counted")
    assert (graph.direct_feeds, graph.app_feeds) == (1, 1)
    _books_balance(engine)


def test_a_failed_parent_fails_the_waiting_steps_and_frees_their_slots(make_engine, gate,
                                                                       tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    last = chain(sig(jobs.gated_fail, str(gate), runs, "a").set(max_retries=0),
                 sig(jobs.step, runs, "b", 10), sig(jobs.step, runs, "c", 2)).apply(engine)
    middle = next(t for t in engine._workflow_state().graph.held() if t is not last)
    assert _slot_kind(engine, middle) == SLOT_WAITING
    gate.open()
    with pytest.raises(DependencyFailedError) as info:
        last.wait(WAIT)
    assert info.value.parent_id == middle.task_id
    with pytest.raises(DependencyFailedError) as first:
        middle.wait(WAIT)
    assert isinstance(first.value.__cause__, ValueError)
    assert jobs.runs(runs) == {"a": 1}  # b and c never ran
    _books_balance(engine)


def test_a_waiting_step_cancelled_is_never_fed_and_its_dependants_are_cancelled(make_engine, gate,
                                                                                tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 3)
    middle = engine.add_task(jobs.step, runs, "b", 10, depends_on=Dependencies([first], "first"))
    last = engine.add_task(jobs.step, runs, "c", 2, depends_on=Dependencies([middle], "first"))
    graph = engine._workflow_state().graph
    assert _slot_kind(engine, middle) == SLOT_WAITING
    assert middle.cancel()
    assert middle.status is TaskStatus.CANCELLED
    with pytest.raises(DependencyCancelledError):
        last.wait(WAIT)
    gate.open()
    assert first.wait(WAIT) == 3
    assert jobs.runs(runs) == {"a": 1}
    assert graph.direct_feeds == 0
    _books_balance(engine)


def test_a_fed_step_that_fails_is_retried_with_the_same_fed_value(make_engine, gate, tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    last = chain(sig(jobs.gated, str(gate), runs, "a", 41),
                 sig(jobs.fails_once, runs, "b").set(max_retries=2)).apply(engine)
    gate.open()
    assert last.wait(WAIT) == 42
    assert last.get_stats().retries == 1
    assert jobs.runs(runs) == {"a": 1, "b": 2}
    graph = engine._workflow_state().graph
    _wait_until(lambda: graph.direct_feeds == 1, "the hop counted")
    assert graph.app_feeds == 0
    _books_balance(engine)


def test_a_chain_on_the_thread_backend_is_still_fed_by_the_app(make_engine, tmp_path):
    engine = make_engine(mode="thread")
    runs = str(tmp_path / "runs")
    last = chain(sig(jobs.step, 1, runs, "a", 3), sig(jobs.step, runs, "b", 10)).apply(engine)
    assert last.wait(WAIT) == 30
    graph = engine._workflow_state().graph
    assert graph.app_feeds == 1 and graph.direct_feeds == 0


# -- workers killed inside the feed (CZMP_FAULT_FEED_*) ----------------------------------

@pytest.mark.parametrize("point", ["c13", "c14"])
def test_a_worker_killed_while_feeding_runs_the_next_step_exactly_once(make_engine, arm_fault,
                                                                       gate, tmp_path, point):
    # c13: b FEEDING(w), its fed chunk written, a RUNNING(w): the reap puts b back
    #      WAITING (chunk freed) and re-runs a, whose retry feeds b.
    # c14: b QUEUED with its fed value, a not DONE: b runs on the other worker; a
    #      re-runs and finds b no longer WAITING, so it does not feed it again.
    arm_fault(point)
    engine = make_engine(workers=1)  # the one armed worker (and its replacement) runs every step
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 3, max_retries=2)
    last = chain(sig(jobs.step, runs, "b", 10)).apply(
        engine, depends_on=Dependencies([first], feed="first"))
    gate.open()
    assert last.wait(WAIT) == 30
    assert first.wait(WAIT) == 3 and first.get_stats().retries == 1
    assert arm_fault.fired()
    assert engine._backend.supervisor.crashes == 1
    assert jobs.runs(runs) == {"a": 2, "b": 1}
    graph = engine._workflow_state().graph
    _wait_until(lambda: graph.direct_feeds == 1, "the hop counted")
    assert graph.app_feeds == 0
    _books_balance(engine)


def test_a_worker_killed_while_feeding_with_no_retry_left_fails_the_next_step_clearly(
        make_engine, arm_fault, gate, tmp_path):
    arm_fault("c13")
    engine = make_engine(workers=1)
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 3, max_retries=0)
    last = engine.add_task(jobs.step, runs, "b", 10,
                           depends_on=Dependencies([first], feed="first"))
    gate.open()
    with pytest.raises(WorkerCrashedError):
        first.wait(WAIT)
    with pytest.raises(DependencyFailedError) as info:
        last.wait(WAIT)
    assert info.value.parent_id == first.task_id
    assert isinstance(info.value.__cause__, WorkerCrashedError)
    assert jobs.runs(runs) == {"a": 1}
    _books_balance(engine)


def test_shutting_down_with_chain_steps_still_waiting_settles_them_and_leaves_nothing(
        make_engine, gate, tmp_path):
    engine = make_engine()
    runs = str(tmp_path / "runs")
    first = engine.add_task(jobs.gated, str(gate), runs, "a", 3)
    middle = engine.add_task(jobs.step, runs, "b", 10, depends_on=Dependencies([first], "first"))
    last = engine.add_task(jobs.step, runs, "c", 2, depends_on=Dependencies([middle], "first"))
    assert _slot_kind(engine, middle) == SLOT_WAITING
    engine.shutdown(wait_for_completion=False, timeout=5)
    for t in (first, middle, last):
        assert t.done() and t.status in (TaskStatus.CANCELLED, TaskStatus.FAILED), t
    assert "b" not in jobs.runs(runs) and "c" not in jobs.runs(runs)


class _FeedingNow:
    """A stored step whose parent's worker is feeding it right now (take_back loses),
    and whose feed then fails, so that the app has it back when the parent completes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def take_back(self) -> bool:
        self.calls.append("take_back")
        return False

    def feed(self, value) -> str:
        self.calls.append("feed")
        return "back"


def test_a_cancel_that_loses_to_a_feeding_worker_leaves_the_step_to_its_parent(make_engine):
    import threading

    import wf_jobs

    engine = make_engine(mode="thread")
    event = threading.Event()
    parent = engine.add_task(wf_jobs.wait_for, event, 5)
    child = engine.add_task(wf_jobs.add, 1, depends_on=Dependencies([parent], feed="first"))
    graph = engine._workflow_state().graph
    stored = graph._held[child.task_id].stored = _FeedingNow()
    # When the cancel finds the step being fed, it is refused and the step stays held
    assert not child.cancel()
    assert graph.held() == [child]
    event.set()
    # Then when the parent completes and the feed turns out to have failed, the app feeds it
    assert child.wait(WAIT) == 6
    assert stored.calls == ["take_back", "feed"]
