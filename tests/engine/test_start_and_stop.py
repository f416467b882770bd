"""Start-up and shutdown cost (issue 18): what an engine imports before its first result (and
that the parts loaded later still work when used); what shutdown does while it waits.

Outcomes only (which modules are loaded, what a call returns), never timings: the figures
are bench.engine's first_result_ms and shutdown_ms.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import engine_jobs as jobs
from engine_helpers import wait_running

ROOT = Path(__file__).resolve().parent.parent.parent


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter from the repository root; its stdout."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_engine_serves_its_first_result_without_importing_asyncio_psutil_or_cloudpickle():
    # Given a fresh app that imports catzilla_mp and makes a process engine
    # When it gets its first result, from a module-level function
    out = _run("""
        import sys
        from catzilla_mp import BackgroundTasks
        with BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64) as engine:
            assert engine.add_task(pow, 2, 10).wait(timeout=60) == 1024
            print(sorted(m for m in ("asyncio", "psutil", "ssl", "cloudpickle")
                         if m in sys.modules))
            # and a lambda, which needs cloudpickle, still works (loaded on first use)
            assert engine.add_task(lambda x: x + 1, 41).wait(timeout=60) == 42
    """)
    # Then neither asyncio (~10 ms), psutil (~5 ms) nor cloudpickle (~5 ms) was loaded
    assert out.strip() == "[]"


def test_a_module_level_function_pickles_as_cloudpickle_would_without_it():
    import cloudpickle

    from catzilla_mp import serialization

    # Given module-level and built-in functions, and one registered to go by value
    for fn in (jobs.noop, jobs.sleep_then, pow, len, textwrap.dedent):
        # When the engine pickles them, Then the bytes are cloudpickle's, a reference
        assert serialization.dumps_function(fn) == cloudpickle.dumps(fn, serialization.PROTOCOL)
    reference = serialization.dumps_function(jobs.noop)
    # and when a module is registered to go by value, its functions still do
    cloudpickle.register_pickle_by_value(jobs)
    try:
        by_value = serialization.dumps_function(jobs.noop)
        assert by_value == cloudpickle.dumps(jobs.noop, serialization.PROTOCOL)
        assert by_value != reference
    finally:
        cloudpickle.unregister_pickle_by_value(jobs)


def test_awaiting_a_result_loads_asyncio_on_first_use():
    # Given an engine made before asyncio was ever imported
    out = _run("""
        import sys
        from catzilla_mp import BackgroundTasks
        engine = BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64)
        assert "asyncio" not in sys.modules
        import asyncio

        async def main():
            # When a coroutine awaits a task and submits through add_task_async
            first = await engine.add_task(pow, 3, 3)
            second = await (await engine.add_task_async(pow, 2, 5))
            return first, second

        try:
            print(asyncio.run(main()))
        finally:
            engine.shutdown()
    """)
    # Then both work as they did with asyncio imported up front
    assert out.strip() == "(27, 32)"


def test_the_first_stats_snapshot_measures_the_apps_cpu_since_start(make_engine):
    # Given an engine (psutil not used yet) and an app thread busy for a while
    engine = make_engine(workers=1)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    # When stats are read for the first time
    stats = engine.get_stats()
    # Then the app's CPU share since start and its memory are there, as psutil gave them
    assert stats.engine_cpu_usage > 0
    assert stats.engine_memory_usage > 0
    assert stats.total_workers == 1
    # and the next snapshot measures from this one
    assert engine.get_stats().engine_cpu_usage >= 0


def test_the_collector_pauses_instead_of_spinning_while_shutdown_stops_the_workers(make_engine):
    # Given an engine whose worker is still busy for ~0.5 s when shutdown stops it
    engine = make_engine(workers=1)
    wait_running(engine.add_task(jobs.sleep_then, 0.5, "done"))
    backend = engine._backend
    calls = []
    collect = backend._collect

    def counting(batch, timeout_ns):
        calls.append(timeout_ns)
        return collect(batch, timeout_ns)

    backend._collect = counting
    # When the engine shuts down without waiting (close() waits for the worker's exit)
    engine.shutdown(wait_for_completion=False, timeout=0)
    # Then the collector looked about once a millisecond at most, not in a busy loop
    # (it spun: hundreds of thousands of looks in half a second)
    assert len(calls) < 5000, len(calls)


def test_the_segment_is_unmapped_after_the_engines_own_threads_are_joined(make_engine):
    # Given an engine, with its thread joins and its backend's unmap observed
    engine = make_engine(workers=1)
    assert engine.add_task(jobs.noop).wait(timeout=30) is None
    backend, order = engine._backend, []

    def observed(obj, name, label):
        original = getattr(obj, name)

        def call(*args, **kwargs):
            result = original(*args, **kwargs)
            order.append(label)
            return result
        setattr(obj, name, call)

    observed(backend, "_unmap", "unmap")
    observed(engine._delays, "stop", "delays joined")
    observed(engine._callback_runner, "stop", "callbacks joined")
    # When it shuts down
    engine.shutdown()
    # Then the unmap (which makes every thread start and exit of the app wait)
    # came after the joins
    assert order == ["delays joined", "callbacks joined", "unmap"]


def test_the_pool_prefault_thread_starts_after_the_engines_other_threads(make_engine, monkeypatch):
    import threading

    # Given thread starts observed
    started = []
    start = threading.Thread.start

    def observed(thread):
        started.append(thread.name)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", observed)
    # When a process engine with populate=True (the default) is made
    engine = make_engine(workers=1, populate=True)
    monkeypatch.undo()
    assert engine.add_task(pow, 2, 5).wait(timeout=30) == 32
    # Then its first madvise (which makes thread creation wait) came after the
    # collector and supervisor threads were made
    ours = [n for n in started if n in ("czmp-collector", "czmp-supervisor", "czmp-prefault")]
    assert ours == ["czmp-collector", "czmp-supervisor", "czmp-prefault"]


def test_the_backends_slot_pointers_are_the_c_cores_own(make_engine):
    from catzilla_mp._native import lib

    # Given a process engine (its slot pointers are computed, not asked of C one by one)
    engine = make_engine(workers=1, queue_size=300)
    backend = engine._backend
    # Then each is the one czmp_slot gives, the last included
    assert len(backend.slots) == 300
    assert all(backend.slots[i] == lib.czmp_slot(backend.raw, i) for i in (0, 1, 150, 299))
