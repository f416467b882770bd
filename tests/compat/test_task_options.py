"""Issue 13, items 8, 9, 10, 14: options of the task API that must really apply."""
from __future__ import annotations

import pytest

import compat_jobs as jobs
from catzilla_mp import MemoryLimitError, TaskStatus


# -- item 8: memory_limit_mb ----------------------------------------------------------------

def test_issue_13_8_a_task_over_its_memory_limit_fails_with_memory_limit_error(engine):
    first_pid = engine.add_task(jobs.pid).wait(60)
    result = engine.add_task(jobs.allocate_in_steps, 120, memory_limit_mb=20, max_retries=0)
    with pytest.raises(MemoryLimitError) as info:
        result.wait(60)
    assert info.value.limit_mb == 20 and info.value.peak_mb > 20
    assert result.get_stats().status is TaskStatus.FAILED
    # the worker was recycled: the next task runs in a fresh process
    assert engine.add_task(jobs.pid).wait(60) != first_pid


def test_issue_13_8_a_spike_between_samples_is_caught_by_the_kernels_peak_mark(engine):
    """One allocation that returns at once: the sampler may never see it; VmHWM does."""
    result = engine.add_task(jobs.allocate_mb, 120, memory_limit_mb=20, max_retries=0)
    with pytest.raises(MemoryLimitError):
        result.wait(60)


def test_issue_13_8_the_limit_applies_from_task_and_is_not_retried(engine):
    @engine.task(memory_limit_mb=20, max_retries=3)
    def hungry(mb):
        return jobs.allocate_in_steps(mb)

    result = engine.add_task(hungry, 120)
    with pytest.raises(MemoryLimitError):
        result.wait(60)
    assert result.attempt == 0  # a retry would fail the same way


def test_issue_13_8_a_task_under_its_limit_and_a_task_without_one_run_untouched(engine):
    assert engine.add_task(jobs.allocate_mb, 10, memory_limit_mb=200).wait(60) == 10

    @engine.task(max_retries=0)  # no memory_limit_mb: Catzilla's 100 MB default is not imposed
    def big(mb):
        return jobs.allocate_mb(mb)

    assert big._task_config.memory_limit_mb == 100
    assert engine.add_task(big, 150).wait(60) == 150


def test_issue_13_8_bad_memory_limits_are_rejected(engine):
    with pytest.raises(ValueError):
        engine.add_task(jobs.add, 1, memory_limit_mb=0)
    with pytest.raises(TypeError):
        engine.task(memory_limit_mb="lots")


# -- item 9: retry_backoff --------------------------------------------------------------------

def test_issue_13_9_an_unknown_backoff_policy_is_rejected(engine):
    with pytest.raises(ValueError, match="retry_backoff"):
        engine.task(retry_backoff="sometimes")
    with pytest.raises(ValueError, match="retry_backoff"):
        engine.add_task(jobs.add, 1, retry_backoff="sometimes")
    with pytest.raises(TypeError):
        engine.task(retry_backoff=3)


def test_issue_13_9_a_callable_backoff_is_called_for_each_retry(engine, tmp_path):
    calls = []

    def backoff(attempt):
        calls.append(attempt)
        return 0.0

    result = engine.add_task(jobs.fail_with, "value", str(tmp_path / "n"), max_retries=2,
                             retry_backoff=backoff)
    with pytest.raises(ValueError):
        result.wait(60)
    assert calls == [1, 2]
    assert (tmp_path / "n").read_text() == "xxx"


@pytest.mark.parametrize("policy, expected", [
    ("fixed", [0.4, 0.4, 0.4, 0.4]),
    ("linear", [0.4, 0.8, 1.2, 1.6]),
])
def test_issue_13_9_fixed_and_linear_policies_give_their_delays(make_engine, policy, expected):
    engine = make_engine(retry_backoff_base=0.4, retry_backoff_cap=10.0)

    @engine.task(retry_backoff=policy)
    def f():
        return None

    task = engine.add_task(f)
    assert [engine._backoff_s(n, task) for n in (1, 2, 3, 4)] == pytest.approx(expected)


def test_issue_13_9_the_exponential_policy_doubles_within_its_jitter(make_engine):
    engine = make_engine(retry_backoff_base=0.4, retry_backoff_cap=10.0)
    task = engine.add_task(jobs.add, 1, retry_backoff="exponential")
    for n, ceiling in ((1, 0.4), (2, 0.8), (3, 1.6)):
        assert ceiling * 0.5 <= engine._backoff_s(n, task) <= ceiling


# -- item 10: enable_profiling ----------------------------------------------------------------

def test_issue_13_10_a_profiled_task_returns_its_top_functions_with_its_stats(engine):
    result = engine.add_task(jobs.busy_python, 20, enable_profiling=True)
    assert result.wait(60) > 0
    profile = result.get_stats().profile
    assert profile and any("busy_python" in row["function"] for row in profile)
    assert all({"function", "calls", "total_ms", "cumulative_ms"} <= set(row) for row in profile)


def test_issue_13_10_an_engine_with_profiling_profiles_every_task_and_one_without_none(make_engine):
    on = make_engine(enable_profiling=True)
    assert on.add_task(jobs.busy_python, 5).wait(60) > 0
    # the task that ran under the engine's setting has a profile
    r = on.add_task(jobs.busy_python, 5)
    r.wait(60)
    assert any("inner" in row["function"] for row in r.get_stats().profile)
    off = make_engine()
    r = off.add_task(jobs.busy_python, 5)
    r.wait(60)
    assert r.get_stats().profile is None


def test_issue_13_10_task_decorator_enables_profiling(engine):
    @engine.task(enable_profiling=True)
    def work(n):
        return jobs.busy_python(n)

    r = engine.add_task(work, 3)
    r.wait(60)
    assert r.get_stats().profile


# -- item 14: retry_on / retry_if ---------------------------------------------------------------

def test_issue_13_14_only_exceptions_in_retry_on_are_retried(engine, tmp_path):
    retried, not_retried = tmp_path / "retried", tmp_path / "not"
    a = engine.add_task(jobs.fail_with, "os", str(retried), max_retries=2, retry_on=(OSError,))
    b = engine.add_task(jobs.fail_with, "value", str(not_retried), max_retries=2,
                        retry_on=(OSError,))
    for r in (a, b):
        with pytest.raises(Exception):
            r.wait(60)
    assert retried.read_text() == "xxx"
    assert not_retried.read_text() == "x"


def test_issue_13_14_retry_if_decides_and_task_carries_both(engine, tmp_path):
    @engine.task(max_retries=3, retry_on=KeyError, retry_if=lambda e: "key" in str(e))
    def flaky(path):
        return jobs.fail_with("key", path)

    r = engine.add_task(flaky, str(tmp_path / "k"))
    with pytest.raises(KeyError):
        r.wait(60)
    assert (tmp_path / "k").read_text() == "xxxx"

    seen = []
    r = engine.add_task(jobs.fail_with, "value", str(tmp_path / "v"), max_retries=3,
                        retry_if=lambda e: seen.append(type(e)) or False)
    with pytest.raises(ValueError):
        r.wait(60)
    assert seen == [ValueError] and (tmp_path / "v").read_text() == "x"


def test_issue_13_14_bad_retry_on_is_a_type_error(engine):
    with pytest.raises(TypeError):
        engine.add_task(jobs.add, 1, retry_on="ValueError")
    with pytest.raises(TypeError):
        engine.task(retry_if=42)


def test_issue_13_8_a_task_stuck_in_c_over_its_limit_is_stopped_by_ending_its_worker(engine):
    """time.sleep() never sees the MemoryLimitError raised into it: the worker ends itself."""
    result = engine.add_task(jobs.allocate_then_block_in_c, 120, 60, memory_limit_mb=20,
                             max_retries=2)
    with pytest.raises(MemoryLimitError, match="did not stop"):
        result.wait(60)
    assert result.attempt == 0
    assert engine.add_task(jobs.add, 1, 1).wait(60) == 2
