"""Periodic tasks: cron and every=, time zones, the missed-runs policy (an injected clock, no sleeps)."""
from __future__ import annotations

import datetime as dt
import time

import pytest

import wf_jobs as jobs
from catzilla_mp import EngineClosedError
from catzilla_mp.app import BackgroundTaskApp
from catzilla_mp.workflows.schedule import MAX_CATCH_UP, MISSED_GRACE_S, Scheduler

WAIT = 60
UTC = dt.timezone.utc


def _epoch(*args, tz=UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


class Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[str, float]] = []

    def __call__(self, sched, due: float):
        self.runs.append((sched.name, due))
        return len(self.runs)


@pytest.fixture
def sched_clock(clock):
    clock.now = _epoch(2026, 12, 1, 10, 0, 30)
    return clock


def test_a_cron_schedule_fires_at_each_matching_minute_and_not_between(sched_clock):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    s = sch.add(jobs.add, cron="*/5 * * * *", name="five")
    assert s.next_run == _epoch(2026, 12, 1, 10, 5)
    sched_clock.now = _epoch(2026, 12, 1, 10, 4, 59)
    assert sch.tick() == [] and rec.runs == []
    sched_clock.now = _epoch(2026, 12, 1, 10, 5) + 0.2
    assert [due for _, due in sch.tick()] == [_epoch(2026, 12, 1, 10, 5)]
    assert sch.tick() == []  # fired once only
    assert s.runs == 1 and s.last_result == 1 and s.next_run == _epoch(2026, 12, 1, 10, 10)


def test_every_runs_on_a_fixed_grid_that_does_not_drift(sched_clock):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    start = sched_clock.now
    s = sch.add(jobs.add, every=dt.timedelta(seconds=10))
    for k in range(1, 6):
        sched_clock.now = start + 10 * k + 0.7  # each tick a little late
        sch.tick()
    assert [due - start for _, due in rec.runs] == [10, 20, 30, 40, 50]
    assert s.skipped == 0


@pytest.mark.parametrize("policy, fired, skipped", [
    ("once", 1, 11), ("skip", 0, 12), ("catch_up", 12, 0),
])
def test_the_missed_runs_policy_decides_what_an_hour_asleep_fires(sched_clock, policy, fired,
                                                                  skipped):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    s = sch.add(jobs.add, cron="*/5 * * * *", missed=policy)
    # Given the process slept from 10:00:30 to 11:03: runs 10:05 ... 11:00 were missed
    sched_clock.now = _epoch(2026, 12, 1, 11, 3)
    sch.tick()
    assert len(rec.runs) == fired and s.skipped == skipped
    if policy == "once":
        assert rec.runs[0][1] == _epoch(2026, 12, 1, 11, 0)  # the latest due time
    if policy == "catch_up":
        assert [due for _, due in rec.runs] == sorted(due for _, due in rec.runs)
    # and afterwards every policy is back on the grid
    assert s.next_run == _epoch(2026, 12, 1, 11, 5)
    sched_clock.now = _epoch(2026, 12, 1, 11, 5) + 0.5
    sch.tick()
    assert rec.runs[-1][1] == _epoch(2026, 12, 1, 11, 5)


def test_skip_still_fires_a_run_found_within_the_grace(sched_clock):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    sch.add(jobs.add, cron="*/5 * * * *", missed="skip")
    sched_clock.now = _epoch(2026, 12, 1, 10, 5) + MISSED_GRACE_S / 2
    sch.tick()
    assert len(rec.runs) == 1


def test_catch_up_fires_at_most_max_catch_up_runs_and_counts_the_rest(sched_clock):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    s = sch.add(jobs.add, every=1.0, missed="catch_up")
    sched_clock.advance(MAX_CATCH_UP + 50.5)
    sch.tick()
    assert len(rec.runs) == MAX_CATCH_UP and s.skipped == 50


def test_a_cron_in_a_time_zone_fires_once_a_day_across_both_dst_changes(clock):
    riga = pytest.importorskip("zoneinfo").ZoneInfo("Europe/Riga")
    clock.now = _epoch(2026, 3, 27, 12, 0, tz=riga)
    rec = Recorder()
    sch = Scheduler(rec, clock=clock, thread=False)
    sch.add(jobs.add, cron="30 3 * * *", tz="Europe/Riga", missed="catch_up")
    # from before spring-forward (29 March) to after fall-back (25 October): one run a day
    clock.now = _epoch(2026, 10, 27, 12, 0, tz=riga)
    sch.tick()
    days = [dt.datetime.fromtimestamp(due, riga).date() for _, due in rec.runs]
    assert len(days) == len(set(days)) == (dt.date(2026, 10, 27) - dt.date(2026, 3, 28)).days + 1
    local = [dt.datetime.fromtimestamp(due, riga) for _, due in rec.runs]
    # 03:30 does not exist on 29 March: that day's run is the first minute after the gap
    assert all((t.hour, t.minute) == (3, 30) for t in local if t.date() != dt.date(2026, 3, 29))


def test_a_cancelled_schedule_never_fires_again(sched_clock):
    rec = Recorder()
    sch = Scheduler(rec, clock=sched_clock, thread=False)
    s = sch.add(jobs.add, every=60)
    assert s.cancel() and not s.active and not s.cancel()
    sched_clock.advance(3600)
    assert sch.tick() == [] and rec.runs == []


def test_a_submission_that_raises_is_kept_and_the_schedule_goes_on(sched_clock):
    def submit(sched, due):
        raise RuntimeError("queue full")

    sch = Scheduler(submit, clock=sched_clock, thread=False)
    s = sch.add(jobs.add, every=60)
    sched_clock.advance(61)
    sch.tick()
    assert isinstance(s.last_error, RuntimeError) and s.runs == 1 and s.active


@pytest.mark.parametrize("kwargs, error", [
    (dict(), ValueError), (dict(cron="* * * * *", every=5), ValueError),
    (dict(cron="not cron"), ValueError), (dict(cron="61 * * * *"), ValueError),
    (dict(every=0), ValueError), (dict(every="5s"), TypeError),
    (dict(cron="* * * * *", tz="Mars/Base"), ValueError),
    (dict(cron="* * * * *", missed="sometimes"), ValueError),
])
def test_bad_schedules_are_refused(sched_clock, kwargs, error):
    sch = Scheduler(Recorder(), clock=sched_clock, thread=False)
    with pytest.raises(error):
        sch.add(jobs.add, **kwargs)
    assert sch.schedules() == []


def test_an_engine_schedule_submits_runs_on_its_thread_until_cancelled(make_engine):
    engine = make_engine(mode="thread")
    s = engine.periodic(jobs.add, 2, 3, every=dt.timedelta(seconds=0.05))
    deadline = time.monotonic() + WAIT
    while s.runs < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.runs >= 3
    assert s.last_result.wait(WAIT) == 5
    assert engine.schedules() == [s]
    s.cancel()
    assert engine.schedules() == []


def test_shutdown_stops_every_schedule_and_its_thread(make_engine):
    engine = make_engine(mode="thread")
    s = engine.periodic(jobs.add, 1, every=3600)
    engine.shutdown()
    assert not s.active
    with pytest.raises(EngineClosedError):
        engine.periodic(jobs.add, 1, every=3600)
    import threading
    assert not any(t.name == "czmp-scheduler" and t.is_alive() for t in threading.enumerate())


def test_app_periodic_registers_a_cron_schedule_on_the_apps_engine():
    app = BackgroundTaskApp()
    with pytest.raises(RuntimeError):
        app.periodic("*/5 * * * *")
    app.enable_background_tasks(workers=1, mode="thread")
    try:
        @app.periodic("*/5 * * * *", tz="UTC", priority="high")
        def report():
            return "done"

        assert report() == "done"  # the function is unchanged
        s = report.schedule
        assert s.cron == "*/5 * * * *" and s.active
        assert dt.datetime.fromtimestamp(s.next_run, UTC).minute % 5 == 0
        assert app.tasks.schedules() == [s]
    finally:
        app.disable_background_tasks()


def test_a_schedule_key_names_the_function_spec_and_arguments_or_the_given_name(sched_clock):
    sch = Scheduler(Recorder(), clock=sched_clock, thread=False)
    one = sch.add(jobs.add, (1, 2), every=60)
    same = sch.add(jobs.add, (1, 2), every=60)
    other_args = sch.add(jobs.add, (1, 3), every=60)
    other_spec = sch.add(jobs.add, (1, 2), every=30)
    named = sch.add(jobs.add, (1, 2), every=60, name="adder")
    assert one.key == same.key and "wf_jobs.add" in one.key
    assert len({one.key, other_args.key, other_spec.key, named.key}) == 4
    assert named.key == "adder"
    with pytest.raises(TypeError, match="name"):
        sch.add(jobs.add, every=60, name=42)
