"""rate_limit="N/s|m|h": tasks over a name's limit are delayed, never failed; counted over windows."""
from __future__ import annotations

import pytest

import wf_jobs as jobs
from catzilla_mp import TaskStatus
from catzilla_mp.workflows.ratelimit import RateLimit, RateLimits, WindowLimiter, parse

WAIT = 60


def _max_in_window(starts: list[float], period: float) -> int:
    """The most start times in any half-open window [t, t + period)."""
    starts = sorted(starts)
    best, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] <= t - period + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("spec, count, period", [
    ("10/s", 10, 1.0), ("100/m", 100, 60.0), ("5/h", 5, 3600.0), ("1000/d", 1000, 86400.0),
    ("3/10s", 3, 10.0), (" 7 / min ", 7, 60.0), ("2/hour", 2, 3600.0),
])
def test_rate_limit_specs_parse_to_a_count_per_period(spec, count, period):
    assert parse(spec) == RateLimit(count, period)


@pytest.mark.parametrize("spec", ["10", "10/x", "0/s", "-1/s", "ten/s", "10/0s", ""])
def test_bad_rate_limit_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse(spec)


def test_a_burst_over_the_limit_is_spread_so_no_window_holds_more_than_the_limit(clock):
    limiter = WindowLimiter(parse("10/s"), clock)
    starts = [clock() + limiter.reserve() for _ in range(25)]
    assert _max_in_window(starts, 1.0) == 10
    # 10 now, 10 one period later, 5 two periods later
    assert [round(s - clock()) for s in starts] == [0] * 10 + [1] * 10 + [2] * 5


def test_the_limit_holds_over_a_window_while_the_clock_moves(clock):
    limiter = WindowLimiter(parse("5/s"), clock)
    starts = []
    for step in range(200):  # 200 submissions over ~20 s of fake time: 10/s offered
        starts.append(clock() + limiter.reserve())
        clock.advance(0.1)
    assert _max_in_window(starts, 1.0) == 5
    assert all(b >= a for a, b in zip(starts, starts[1:]))  # never reordered


def test_a_quiet_name_runs_at_once_after_the_window_passed(clock):
    limiter = WindowLimiter(parse("2/m"), clock)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 60.0]
    clock.advance(1000)
    assert limiter.reserve() == 0.0


def test_limits_are_per_name_and_the_last_limit_given_applies(clock):
    limits = RateLimits(clock)
    a, b = limits.limiter("mod.a", "1/s"), limits.limiter("mod.b", "1/s")
    assert a is not b and a.reserve() == 0.0 and b.reserve() == 0.0
    assert limits.limiter("mod.a", "1/s") is a
    assert limits.limiter("mod.a", "2/s").limit == RateLimit(2, 1.0)
    assert limits.limiter("mod.a", None) is None


def test_add_task_delays_the_tasks_over_the_limit_instead_of_failing_them(make_engine):
    engine = make_engine(mode="thread")
    tasks = [engine.add_task(jobs.add, i, rate_limit="5/m") for i in range(12)]
    delays = sorted(t.delay_ms for t in tasks)
    # Then 5 run now, 5 one minute later, 2 two minutes later: none failed
    assert sum(d < 30_000 for d in delays) == 5
    assert sum(30_000 <= d < 90_000 for d in delays) == 5
    assert sum(d >= 90_000 for d in delays) == 2
    assert [t.wait(WAIT) for t in tasks[:5]] == [0, 1, 2, 3, 4]
    assert all(t.status is TaskStatus.PENDING for t in tasks[5:])
    assert tasks[-1].cancel()  # a delayed task can be cancelled as any delayed task


def test_a_task_decorator_rate_limit_applies_to_every_add_task_of_the_function(make_engine):
    engine = make_engine(mode="thread")

    @engine.task(rate_limit="2/h")
    def limited(x):
        return x

    tasks = [engine.add_task(limited, i) for i in range(3)] + [limited.submit(3)]
    assert sum(t.delay_ms > 0 for t in tasks) == 2
    assert tasks[0].wait(WAIT) == 0
    # other functions are not limited by it
    assert engine.add_task(jobs.add, 1).delay_ms == 0


def test_a_bad_rate_limit_on_the_decorator_or_add_task_is_refused(make_engine):
    engine = make_engine(mode="thread")
    with pytest.raises(ValueError):
        engine.task(rate_limit="fast")
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, rate_limit=10)
    assert not engine.unfinished()
