"""Issue 13, item 13: imap / imap_unordered stream with bounded in-flight tasks."""
from __future__ import annotations

import itertools

import pytest

import compat_jobs as jobs


class Counted:
    """An iterable that counts how many items were taken from it."""

    def __init__(self, it) -> None:
        self.it = iter(it)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        value = next(self.it)
        self.taken += 1
        return value


def test_issue_13_13_imap_yields_in_order_and_reads_ahead_only_max_in_flight(engine):
    source = Counted(range(200))
    stream = engine.imap(jobs.square, source, max_in_flight=4)
    assert next(stream) == 0
    assert source.taken <= 5  # 4 in flight, plus the one whose result we got
    rest = list(stream)
    assert [0] + rest == [i * i for i in range(200)]


def test_issue_13_13_imap_streams_an_endless_iterable(engine):
    out = list(itertools.islice(engine.imap(jobs.add, itertools.count(), itertools.repeat(1),
                                            max_in_flight=3), 10))
    assert out == list(range(1, 11))


def test_issue_13_13_imap_unordered_yields_everything_once_with_bounded_reads(make_engine):
    engine = make_engine(workers=2)
    source = Counted(range(100))
    stream = engine.imap_unordered(jobs.square, source, max_in_flight=5)
    first = next(stream)
    assert first in {i * i for i in range(100)}
    assert source.taken <= 6
    assert sorted([first] + list(stream)) == [i * i for i in range(100)]


def test_issue_13_13_a_failing_task_raises_at_its_place_and_the_rest_is_cancelled(engine):
    stream = engine.imap(jobs.fail_with, ["value"], max_in_flight=2)
    with pytest.raises(ValueError):
        next(stream)


def test_issue_13_13_bad_max_in_flight_is_rejected(engine):
    with pytest.raises(ValueError):
        next(engine.imap(jobs.square, [1], max_in_flight=0))
    with pytest.raises(TypeError):
        next(engine.imap_unordered(jobs.square, [1], max_in_flight="3"))
