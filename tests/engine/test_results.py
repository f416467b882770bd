"""Submitting work and getting results back: values, errors, function kinds, futures."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os

import pytest

import engine_jobs as jobs
from catzilla_mp import (
    RemoteTraceback, SerializationError, TaskError, TaskFuture, TaskStatus, UnknownTaskError)


@pytest.mark.modes("process", "ray")
def test_a_task_runs_in_a_worker_process_and_returns_its_value(engine):
    assert engine.add_task(jobs.add, 2, b=3).wait(10) == 5
    assert engine.add_task(jobs.pid).wait(10) != os.getpid()


@pytest.mark.modes("process", "thread")
def test_many_tasks_all_come_back_correct(engine):
    results = [engine.add_task(jobs.square, i) for i in range(3000)]
    assert [r.wait(30) for r in results] == [i * i for i in range(3000)]


@pytest.mark.modes("process", "thread", "ray")
def test_lambdas_closures_partials_and_bound_methods_run(engine):
    base = 10
    assert engine.add_task(lambda x: x + 1, 1).wait(10) == 2
    assert engine.add_task(lambda: base * 2).wait(10) == 20
    assert engine.add_task(functools.partial(jobs.add, 5), 6).wait(10) == 11
    assert engine.add_task(jobs.Counter(100).bump, 5).wait(10) == 105
    assert engine.add_task(len, [1, 2, 3]).wait(10) == 3


def test_a_module_function_is_sent_once_not_with_every_task(engine):
    for i in range(50):
        engine.add_task(jobs.square, i)
    engine.add_task(jobs.square, 1).wait(10)
    table = engine._backend.functions
    assert table._next == 1  # one entry for jobs.square, however many tasks
    assert engine._backend.slots[0].args_len < 64  # and the payload carries only the arguments


@pytest.mark.modes("process", "ray")
def test_the_tasks_own_exception_comes_back_with_the_remote_traceback(engine):
    r = engine.add_task(jobs.fail, "bad input", max_retries=0)
    with pytest.raises(ValueError, match="bad input") as info:
        r.wait(10)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in fail" in str(info.value.__cause__)
    assert r.get_stats().status is TaskStatus.FAILED


@pytest.mark.modes("process", "thread", "ray")
def test_custom_exception_keeps_its_type_and_attributes(engine):
    with pytest.raises(jobs.CustomError) as info:
        engine.add_task(jobs.fail_custom, max_retries=0).wait(10)
    assert (info.value.code, info.value.detail) == (42, "custom detail")


@pytest.mark.modes("process", "ray")
@pytest.mark.parametrize("fn", [jobs.fail_unrecreatable, jobs.fail_unpicklable])
def test_an_exception_that_cannot_travel_becomes_a_serialization_error(engine, fn):
    with pytest.raises(SerializationError, match="cannot be sent back"):
        engine.add_task(fn, max_retries=0).wait(10)
    assert engine.add_task(jobs.add, 1, 1).wait(10) == 2


@pytest.mark.modes("process", "ray")
def test_a_result_that_cannot_be_pickled_is_a_clear_error(engine):
    with pytest.raises(SerializationError, match="result"):
        engine.add_task(jobs.return_unpicklable).wait(10)
    assert engine.add_task(jobs.add, 1, 1).wait(10) == 2


@pytest.mark.modes("process", "ray")
def test_arguments_that_cannot_be_pickled_are_refused_at_submit(engine):
    import threading

    with pytest.raises(SerializationError):
        engine.add_task(jobs.add, threading.Lock())
    with pytest.raises(SerializationError):
        engine.add_task(jobs.add, (i for i in range(3)))
    assert engine.get_stats().total_queued == 0
    assert engine.add_task(jobs.add, 1, 1).wait(10) == 2


@pytest.mark.modes("process", "thread", "ray")
@pytest.mark.parametrize("kind", ["exit", "kbd", "gen"])
def test_base_exceptions_in_a_task_are_reported_not_raised_into_the_app(engine, kind):
    with pytest.raises(TaskError, match=("SystemExit" if kind == "exit" else
                                         "KeyboardInterrupt" if kind == "kbd" else "GeneratorExit")):
        engine.add_task(jobs.raise_base, kind, max_retries=0).wait(10)
    assert engine.add_task(jobs.add, 2, 2).wait(10) == 4


@pytest.mark.modes("process", "thread", "ray")
def test_deep_recursion_fails_the_task_only(engine):
    with pytest.raises(RecursionError):
        engine.add_task(jobs.recurse, 0, max_retries=0).wait(20)
    assert engine.add_task(jobs.add, 2, 2).wait(10) == 4


@pytest.mark.modes("process", "thread", "ray")
def test_wait_with_a_timeout_raises_the_builtin_timeout_error(engine):
    r = engine.add_task(jobs.sleep_then, 1.0, "late")
    with pytest.raises(TimeoutError):
        r.wait(0.05)
    assert not r.is_ready()
    assert r.wait(10) == "late"
    assert r.is_ready()


@pytest.mark.modes("process", "thread", "ray")
def test_callbacks_get_the_result_or_the_exception(engine):
    import threading

    got, done = [], threading.Event()
    r = engine.add_task(jobs.add, 1, 2)
    r.add_callback(lambda v: (got.append(v), done.set()))
    assert done.wait(10) and got == [3]
    late = []
    r.add_callback(late.append)  # already finished: runs at once
    assert late == [3]
    failed, done2 = [], threading.Event()
    f = engine.add_task(jobs.fail, max_retries=0)
    f.add_callback(lambda e: (failed.append(e), done2.set()))
    assert done2.wait(10) and isinstance(failed[0], ValueError)


@pytest.mark.modes("process", "thread", "ray")
def test_stats_of_a_task_have_real_times_and_the_worker(engine):
    r = engine.add_task(jobs.sleep_then, 0.05, 1)
    r.wait(10)
    s = r.get_stats()
    assert s.status is TaskStatus.COMPLETED and s.task_id == r.task_id
    assert s.created_at <= s.started_at <= s.completed_at
    assert s.execution_time_ms >= 40
    assert s.worker_id in (0, 1)
    assert s.retries == 0


@pytest.mark.modes("process", "thread", "ray")
def test_get_task_result_finds_tasks_by_id_and_refuses_unknown_ids(engine):
    r = engine.add_task(jobs.add, 4, 4)
    assert engine.get_task_result(r.task_id) is r
    assert engine.get_task_result(r.task_id).wait(10) == 8
    with pytest.raises(UnknownTaskError):
        engine.get_task_result("task_nope")
    with pytest.raises(KeyError):
        engine.get_task_result("task_nope")


@pytest.mark.modes("process", "thread", "ray")
def test_task_future_is_a_concurrent_future_with_then_and_catch(engine):
    fut = engine.add_task(jobs.add, 20, 1).future
    assert isinstance(fut, concurrent.futures.Future) and isinstance(fut, TaskFuture)
    assert fut.then(lambda v: v * 2).result(10) == 42
    bad = engine.add_task(jobs.fail, max_retries=0).future
    assert bad.catch(lambda e: f"handled {type(e).__name__}").result(10) == "handled ValueError"
    assert engine.add_task(jobs.add, 1, 1).future.catch(lambda e: 0).result(10) == 2


@pytest.mark.modes("process", "thread", "ray")
def test_results_are_awaitable_without_blocking_the_event_loop(engine):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        value = await engine.add_task(jobs.sleep_then, 0.3, "ok").future
        also = await engine.add_task(jobs.add, 1, 1)
        t.cancel()
        return value, also, ticks

    value, also, ticks = asyncio.run(main())
    assert (value, also) == ("ok", 2)
    assert ticks >= 10  # the loop kept running while the task did


@pytest.mark.modes("process", "thread", "ray")
def test_add_tasks_submits_a_batch(engine):
    results = engine.add_tasks(jobs.add, [(i, i) for i in range(2000)])
    assert [r.wait(30) for r in results] == [2 * i for i in range(2000)]


def test_functions_and_classes_of_main_travel_inside_arguments(engine, tmp_path):
    import subprocess
    import sys

    # __main__ of a script is not importable in a worker: such arguments must go by value
    script = tmp_path / "app.py"
    script.write_text(
        "from dataclasses import dataclass\n"
        "from catzilla_mp import BackgroundTasks\n"
        "@dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "    y: int\n"
        "def norm(p):\n"
        "    return p.x * p.x + p.y * p.y\n"
        "def apply(fn, value):\n"
        "    return fn(value)\n"
        "with BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=32) as e:\n"
        "    print(e.add_task(apply, norm, Point(3, 4)).wait(20))\n"
        "    print(list(e.map(norm, [Point(1, 1)] * 3, chunksize=2)))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["25", "[2, 2, 2]"]


@pytest.mark.modes("process", "thread", "ray")
def test_big_bytes_and_arrays_travel_out_of_band_both_ways(make_engine):
    import numpy as np

    engine = make_engine(memory_pool_mb=96)
    blob = os.urandom(3 << 20)
    arr = np.arange(1 << 19, dtype=np.float64)  # 4 MiB
    n, head, tail = engine.add_task(jobs.echo_bytes, blob).wait(30)
    assert (n, head, tail) == (len(blob), blob[:16], blob[-16:])
    back = engine.add_task(jobs.identity, arr, scale=2.0).wait(30)
    assert isinstance(back, np.ndarray) and np.array_equal(back, arr * 2.0)
    assert back.flags.writeable  # a private copy, not a view of shared memory
    big = engine.add_task(jobs.big_result, 2 << 20).wait(30)
    assert big == b"r" * (2 << 20)


def test_a_payload_bigger_than_the_arena_goes_through_a_segment_of_its_own(make_engine):
    engine = make_engine(memory_pool_mb=4)  # no class holds 8 MiB
    blob = os.urandom(8 << 20)
    assert engine.add_task(jobs.echo_bytes, blob).wait(30)[0] == len(blob)
    assert engine.add_task(jobs.big_result, 9 << 20).wait(30) == b"r" * (9 << 20)
