"""The submit and collect hot paths (issue 18): what got faster must mean the same.

Ids of a batch come from one slice of the thread's stream, calls of plain scalars
skip the buffer scans, the collector releases successes in its collect call and
settles a batch under one lock: every test here checks an outcome those shortcuts
could get wrong, never a time.
"""
from __future__ import annotations

import os
import pickle
import re
import threading

import pytest

from catzilla_mp import TaskStatus, serialization
from catzilla_mp.errors import SerializationError


def fail_on_odd(i):
    if i % 2:
        raise ValueError(f"odd {i}")
    return i * 10


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling this")


def test_issue_18_a_batchs_ids_are_unique_unguessable_tokens_with_their_own_numbers(make_engine):
    # Given a batch and single submissions from two threads
    engine = make_engine(mode="thread", workers=1)
    batch = engine.add_tasks(int, [(i,) for i in range(1500)])  # crosses id blocks
    other: list = []
    t = threading.Thread(target=lambda: other.extend(engine.add_tasks(int, range(300))))
    t.start()
    t.join()
    tasks = batch + other + [engine.add_task(int) for _ in range(10)]
    ids = [r.task_id for r in tasks]
    # Then every id is "task_" and 128 bits, unique, and consecutive ones share no prefix
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"task_[0-9a-f]{32}", i) for i in ids)
    common = [len(os.path.commonprefix([a, b])) - len("task_") for a, b in zip(ids, ids[1:])]
    assert max(common) < 8
    # And each task has a number of its own, increasing within the batch
    seqs = [r.seq for r in batch]
    assert seqs == sorted(seqs) and len(set(r.seq for r in tasks)) == len(tasks)
    # And each one is found by its id and finishes with its own result
    assert engine.get_task_result(batch[1234].task_id) is batch[1234]
    assert [r.wait(60) for r in batch[:5]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_issue_18_a_batch_of_successes_and_failures_settles_each_task_once(make_engine, mode):
    # Given a batch where every other call fails (the collector sees both in one batch)
    engine = make_engine(mode=mode)
    seen: dict = {}
    lock = threading.Lock()

    def listener(event, task, detail):
        if event in ("completed", "failed"):
            with lock:
                # accounted for before it completes: the listener sees it final
                seen.setdefault(task.task_id, []).append((event, task.status, task.done()))

    engine.monitor.add_listener(listener)
    tasks = engine.add_tasks(fail_on_odd, range(400), max_retries=0)
    # Then each task ends once, with its own outcome
    for i, r in enumerate(tasks):
        if i % 2:
            with pytest.raises(ValueError, match=f"odd {i}$"):
                r.wait(60)
            assert r.status is TaskStatus.FAILED
        else:
            assert r.wait(60) == i * 10 and r.status is TaskStatus.COMPLETED
    stats = engine.get_stats()
    assert (stats.total_tasks_processed, stats.failed_tasks) == (400, 200)
    assert len(seen) == 400 and all(len(v) == 1 for v in seen.values())
    for i, r in enumerate(tasks):
        event, status, done = seen[r.task_id][0]
        assert event == ("failed" if i % 2 else "completed")
        assert status is (TaskStatus.FAILED if i % 2 else TaskStatus.COMPLETED)
        assert done is False
    # And every task place is free again for the next submissions
    assert [r.wait(60) for r in engine.add_tasks(fail_on_odd, [0] * 512)] == [0] * 512


def test_issue_18_a_future_made_on_another_thread_after_the_end_has_the_result(make_engine):
    engine = make_engine()
    r = engine.add_task(fail_on_odd, 4)
    assert r.wait(60) == 40
    got: list = []
    t = threading.Thread(target=lambda: got.append(r.future.result(10)))
    t.start()
    t.join(30)
    assert got == [40] and r.future is r.future


def test_issue_18_plain_scalar_calls_pickle_as_before_and_anything_else_takes_the_full_path():
    plain = (1, "a", 2.5, None, True, 3j)
    # The fast path's bytes are the standard pickle of the call
    assert serialization.dumps_call(plain, {}) == pickle.dumps((plain, {}), serialization.PROTOCOL)
    assert serialization.dumps_calls([plain, (7,)], 1000) == [
        pickle.dumps((plain, {}), serialization.PROTOCOL),
        pickle.dumps(((7,), {}), serialization.PROTOCOL)]
    # A big buffer still becomes a frame, in a call of scalars or not
    big = b"x" * (serialization.BIG_BUFFER + 1)
    assert isinstance(serialization.dumps_call((1, big), {}), serialization.Frame)
    # The batch path gives way (None) to dumps_call for anything but small scalars
    assert serialization.dumps_calls([(1,), (big,)], 1 << 30) is None
    assert serialization.dumps_calls([(1,), ("y" * 500,)], 100) is None
    # And what cannot be pickled is refused as before
    with pytest.raises(SerializationError):
        serialization.dumps_call((Unpicklable(),), {})


def test_issue_18_the_one_by_one_plain_path_pickles_exactly_what_dumps_call_does():
    plain = (1, "a", 2.5, None, True, 3j)
    assert serialization.dumps_plain_call(plain, {}) == serialization.dumps_call(plain, {})
    # keyword arguments, non-scalars and big buffers take dumps_call's own way
    assert serialization.dumps_plain_call((1,), {"k": [2]}) == serialization.dumps_call((1,), {"k": [2]})
    assert serialization.dumps_plain_call(([1, 2],), {}) == serialization.dumps_call(([1, 2],), {})
    big = b"x" * (serialization.BIG_BUFFER + 1)
    assert isinstance(serialization.dumps_plain_call((1, big), {}), serialization.Frame)
    with pytest.raises(SerializationError):
        serialization.dumps_plain_call((Unpicklable(),), {})


def test_issue_18_an_outcome_is_read_as_a_pickle_a_frame_or_refused_whatever_its_first_byte():
    ok = serialization.OUTCOME_OK
    assert serialization.loads_outcome(ok, memoryview(pickle.dumps([1, 2], 5))) == (True, [1, 2])
    big = b"y" * (serialization.BIG_BUFFER + 1)
    flags, frame = serialization.dumps_result(big)
    data = memoryview(b"".join(bytes(p) for p in frame.parts))
    assert serialization.loads_outcome(flags, data) == (True, big)
    for bad in (b"", b"CZ", b"garbage"):
        got_ok, err = serialization.loads_outcome(ok, memoryview(bad))
        assert got_ok is False and isinstance(err, SerializationError)


def test_issue_18_a_priority_spelled_as_a_string_is_read_as_parse_reads_it():
    from catzilla_mp.records import TaskPriority, parse_priority

    for p in TaskPriority:
        assert parse_priority(p) is p
        assert parse_priority(p.name.lower()) is p is parse_priority(p.name)
        assert parse_priority(p.value) is p
    assert parse_priority(" High ") is TaskPriority.HIGH  # the general parse still serves the rest
    for bad in (True, "urgent", 9, None):
        with pytest.raises(ValueError):
            parse_priority(bad)
