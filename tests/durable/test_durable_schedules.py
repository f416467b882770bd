"""Durable schedules (issue 15): a schedule's last run survives a restart (an injected clock)."""
from __future__ import annotations

import datetime as dt
import sqlite3
import time

import pytest

import durable_jobs
from catzilla_mp import BackgroundTasks
from catzilla_mp.backends.journal import Journal, ScheduleStore
from catzilla_mp.workflows.schedule import Scheduler
from conftest import SMALL

UTC = dt.timezone.utc
HOUR = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _epoch(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def _run_then_restart(journal_path: str, missed: str, down_hours: float):
    """A scheduler fires an hourly run, "restarts" after ``down_hours`` down: its fires then."""
    clock = Clock(_epoch(2026, 12, 1, 10, 0, 0))
    journal = Journal(journal_path)
    fired: list[float] = []
    sch = Scheduler(lambda s, due: fired.append(due), clock=clock, thread=False,
                    store=ScheduleStore(journal))
    sch.add(len, cron="0 * * * *", missed=missed, name="hourly")
    clock.now = _epoch(2026, 12, 1, 11) + 0.5
    sch.tick()
    assert fired == [_epoch(2026, 12, 1, 11)]
    sch.close()
    journal.close()
    # the engine is down; it starts again down_hours later
    clock.now += down_hours * HOUR
    journal = Journal(journal_path)
    fired.clear()
    sch = Scheduler(lambda s, due: fired.append(due), clock=clock, thread=False,
                    store=ScheduleStore(journal))
    s = sch.add(len, cron="0 * * * *", missed=missed, name="hourly")
    restored = (s.last_run, s.next_run)
    sch.tick()
    after = (s.next_run, s.skipped)
    sch.close()
    journal.close()
    return restored, fired, after


@pytest.mark.parametrize("missed, expected", [
    ("once", [14]),                # the runs of 12, 13 and 14 h fired as one
    ("catch_up", [12, 13, 14]),    # each fired, in order
    ("skip", []),                  # all late: dropped; it goes on at 15 h
])
def test_a_restarted_schedule_continues_from_its_journaled_last_run(journal_path, missed,
                                                                   expected):
    (last, nxt), fired, (next_run, skipped) = _run_then_restart(journal_path, missed, down_hours=3.2)
    # Then it knows its last run from before the restart
    assert last == _epoch(2026, 12, 1, 11) and nxt == _epoch(2026, 12, 1, 12)
    # and the missed-runs policy decides what of the runs missed while down fires
    assert fired == [_epoch(2026, 12, 1, h) for h in expected]
    assert next_run == _epoch(2026, 12, 1, 15)
    assert skipped == 3 - len(expected)


def test_without_a_journal_a_restarted_schedule_starts_afresh(journal_path):
    clock = Clock(_epoch(2026, 12, 1, 10, 0, 0))
    sch = Scheduler(lambda s, due: None, clock=clock, thread=False)
    s = sch.add(len, cron="0 * * * *", name="hourly")
    assert s.last_run is None and s.next_run == _epoch(2026, 12, 1, 11)


def test_an_every_schedule_keeps_its_grid_across_a_restart(journal_path):
    clock = Clock(1_000_000.0)
    journal = Journal(journal_path)
    sch = Scheduler(lambda s, due: None, clock=clock, thread=False, store=ScheduleStore(journal))
    sch.add(len, every=10, name="ten")
    clock.now += 10.2
    sch.tick()
    sch.close()
    journal.close()
    clock.now += 4  # back within the same interval: nothing missed
    journal = Journal(journal_path)
    sch = Scheduler(lambda s, due: None, clock=clock, thread=False, store=ScheduleStore(journal))
    s = sch.add(len, every=10, name="ten")
    assert s.last_run == 1_000_010.0 and s.next_run == 1_000_020.0
    assert sch.tick() == []
    sch.close()
    journal.close()


def test_a_durable_engine_journals_its_schedules_last_run_and_resumes_it(journal_path, tmp_path):
    engine = BackgroundTasks(durable=journal_path, **SMALL)
    try:
        s = engine.periodic(durable_jobs.slow, 0.0, every=0.2, name="often")
        end = time.monotonic() + 60
        while s.runs < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert s.runs >= 1
    finally:
        engine.shutdown()
    last = s.last_run  # once shut down: the scheduler thread has stopped firing
    with sqlite3.connect(journal_path) as db:
        assert db.execute("SELECT key, last_run FROM schedules").fetchall() == [("often", last)]
    engine = BackgroundTasks(durable=journal_path, **SMALL)
    try:
        s = engine.periodic(durable_jobs.slow, 0.0, every=0.2, name="often")
        assert s.last_run == last  # continues from the run before the restart
    finally:
        engine.shutdown()
