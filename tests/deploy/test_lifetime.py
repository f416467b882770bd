"""What the engine keeps, for how long, and how futures settle (issue 11.8, 11.10, 11.11, 11.13, 11.14).

Executor users expect concurrent.futures semantics; web apps expect an engine
that holds no more than it must: nothing the caller dropped may stay alive
because of the engine.
"""
from __future__ import annotations

import concurrent.futures
import gc
import time
import os
import threading
import weakref

import psutil
import pytest

import deploy_jobs
from catzilla_mp import BackgroundTasks, UnknownTaskError
from faultkit_deploy import wait_until


def test_a_future_cancelled_before_it_ran_counts_as_done_for_wait_and_as_completed(make_engine,
                                                                                tmp_path):
    """Issue 11.10: a cancelled future stayed in wait()'s not_done, and as_completed() blocked."""
    engine = make_engine()
    go = str(tmp_path / "go")
    blocker = engine.submit(deploy_jobs.wait_for_file, go)
    wait_until(blocker.running, what="the blocker running")
    queued = engine.submit(deploy_jobs.square, 3)
    assert queued.cancel()
    done, not_done = concurrent.futures.wait([queued], timeout=10)
    assert done == {queued} and not not_done
    assert list(concurrent.futures.as_completed([queued], timeout=10)) == [queued]
    # and those cancelled by shutdown(cancel_futures=True)
    more = [engine.submit(deploy_jobs.square, i) for i in range(4)]
    engine.shutdown(wait=False, cancel_futures=True)
    wait_until(lambda: all(f.cancelled() for f in more), what="the queued futures cancelled")
    open(go, "w").close()
    done, not_done = concurrent.futures.wait(more + [blocker], timeout=60)
    assert not not_done
    assert sorted(f.cancelled() for f in done) == [False] + [True] * 4
    assert len(list(concurrent.futures.as_completed(more, timeout=10))) == 4


def test_running_is_true_while_the_task_runs_and_only_then(make_engine, tmp_path):
    """Issue 11.11: TaskFuture.running() was never True."""
    engine = make_engine()
    go = str(tmp_path / "go")
    fut = engine.submit(deploy_jobs.wait_for_file, go)
    wait_until(fut.running, what="running() True")
    assert not fut.done()
    open(go, "w").close()
    assert fut.result(60) >= 0
    assert not fut.running() and fut.done()


def test_a_bound_method_task_does_not_keep_its_instance_alive(make_engine):
    """Issue 11.13: the function-info cache, keyed by the bound method, kept its instance."""
    engine = make_engine()
    holder = deploy_jobs.Holder(3)
    ref = weakref.ref(holder)
    assert engine.add_task(holder.times, 5).wait(60) == 15
    assert engine.submit(holder.times, 2).result(60) == 6
    del holder
    gc.collect()
    assert ref() is None


def test_map_lets_go_of_the_results_it_yielded(make_engine):
    """Issue 11.13: map()'s iterator kept every result it had already yielded."""
    engine = make_engine()
    results = engine.map(deploy_jobs.make_blob, [10, 20, 30])
    first = next(results)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None
    assert [b.data for b in results] == [b"b" * 20, b"b" * 30]


def test_a_finished_submit_result_goes_when_the_caller_drops_its_future(make_engine):
    """Issue 11.13: keep_finished kept a submit() result after its future was dropped."""
    engine = make_engine()
    fut = engine.submit(deploy_jobs.make_blob, 1000)
    value = fut.result(60)
    task_id = fut.task_id
    assert engine.get_task_result(task_id).result(1) is value  # findable while held
    ref = weakref.ref(value)
    del value, fut
    # the future's done-callbacks run on the engine's callback threads and may
    # still hold it for a moment after result() returned: gone soon, not at once
    assert _eventually_collected(ref)
    with pytest.raises(UnknownTaskError, match="kept only while its future is"):
        engine.get_task_result(task_id)


def test_results_past_keep_finished_bytes_are_dropped_keeping_their_status(make_engine):
    """Issue 11.8: 150 results of 1 MiB grew the app by 152 MiB while the caller kept none."""
    engine = make_engine(keep_finished_bytes=(3 << 20) + (1 << 19))  # 3 results and a bit
    tasks = [engine.add_task(deploy_jobs.make_blob, 1 << 20) for _ in range(8)]
    for t in tasks:
        t.wait(60)
    ids = [t.task_id for t in tasks]
    refs = [weakref.ref(t.wait(0)) for t in tasks]
    del tasks, t
    # Three results fit; the other five are dropped, oldest finished first.
    # Which five is not fixed: outcomes are settled by the collector and by
    # waiting threads alike, so finishing order may differ from submission
    # order by a task or two. An engine thread may also hold a just-dropped
    # result for a moment, so: eventually.
    deadline = time.monotonic() + 10
    while sum(r() is not None for r in refs) != 3 and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    alive = [r() is not None for r in refs]
    assert sum(alive) == 3, alive
    for task_id, kept in zip(ids, alive):
        if kept:
            assert engine.get_task_result(task_id).wait(0).data == b"b" * (1 << 20)
        else:
            with pytest.raises(UnknownTaskError,
                               match=r"finished \(COMPLETED\).*keep_finished_bytes"):
                engine.get_task_result(task_id)


def test_results_older_than_result_ttl_s_are_dropped_keeping_their_status(make_engine):
    """Issue 11.8: results were kept however old; now by age too (result_ttl_s)."""
    engine = make_engine(result_ttl_s=0.2)
    t = engine.add_task(deploy_jobs.make_blob, 100)
    ref = weakref.ref(t.wait(60))
    task_id = t.task_id
    del t
    gc.collect()

    def dropped():
        gc.collect()
        return ref() is None
    wait_until(dropped, what="the result dropped after result_ttl_s")
    with pytest.raises(UnknownTaskError, match=r"finished \(COMPLETED\).*result_ttl_s"):
        engine.get_task_result(task_id)


def test_an_engine_dropped_without_shutdown_stops_its_workers_and_removes_its_segment():
    """Issue 11.14: `del engine` kept workers, threads and segment until the interpreter exited."""
    engine = BackgroundTasks(workers=1, memory_pool_mb=8, queue_size=64)
    assert engine.add_task(deploy_jobs.square, 4).wait(60) == 16
    assert engine.submit(deploy_jobs.square, 5).result(60) == 25
    seg = engine._backend.seg.name
    # a worker forked by the zygote can serve before the supervisor reads its pid
    wait_until(lambda: engine._backend.supervisor.snapshot(), what="the worker registered")
    procs = [psutil.Process(w.pid) for w, _ in engine._backend.supervisor.snapshot()]
    assert procs and os.path.exists(f"/dev/shm/{seg}")
    ref = weakref.ref(engine)
    del engine
    # a finished future's callbacks (on the callback threads) hold its task,
    # and so the engine, for a moment after result() returned
    assert _eventually_collected(ref)
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                               for p in procs), what="the workers stopped")
    wait_until(lambda: not os.path.exists(f"/dev/shm/{seg}"), what="the segment removed")
    engine_threads = {"czmp-collector", "czmp-supervisor", "czmp-delays", "czmp-prefault",
                      "czmp-orphan-shutdown"}
    wait_until(lambda: not any(t.name in engine_threads for t in threading.enumerate()),
               what="the engine's threads ended")


def test_an_engine_dropped_with_a_task_in_flight_finishes_it_then_stops(tmp_path):
    """Issue 11.14: a task in flight keeps its engine alive; once it is done the engine goes."""
    engine = BackgroundTasks(workers=1, memory_pool_mb=8, queue_size=64)
    go, out = str(tmp_path / "go"), str(tmp_path / "out")
    engine.add_task(deploy_jobs.wait_for_file, go).add_callback(
        lambda value: open(out, "w").write(repr(value)))
    seg = engine._backend.seg.name
    ref = weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is not None, "collected with a task in flight"
    open(go, "w").close()

    def gone():
        gc.collect()
        return ref() is None
    wait_until(gone, what="the engine collected once its task finished")
    assert os.path.exists(out)  # the task's outcome was delivered first
    wait_until(lambda: not os.path.exists(f"/dev/shm/{seg}"), what="the segment removed")


def _eventually_collected(ref, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
