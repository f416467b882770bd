"""The engine's own threads under forced interleavings (issue 20; 10.1, 10.10, 10.11, 11.4).

Random load does not hit these windows, so each test forces its window:
most patch a pause into the engine's own code (said in the docstring),
some run the scenario in a child process because the old behaviour was a
segfault. Task functions live in thread_jobs.py.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import thread_jobs
from faultkit import books_balance, running_pid, wait_until, worker_pids
from fault_jobs import runs
from catzilla_mp import TaskStatus
from catzilla_mp.backends.process import backend as process_backend, supervisor as supervisor_mod
from catzilla_mp.errors import (EngineBrokenError, EngineClosedError, QueueFullError,
                                SerializationError, TaskTimeoutError)
from catzilla_mp.results import TaskResult

JOBS_DIR = os.path.dirname(os.path.abspath(thread_jobs.__file__))


def _slow_async_exc(monkeypatch, pause_s):
    """Patch a pause into every raise of an asynchronous exception (PyThreadState_SetAsyncExc).

    Both the old and the new engine raise timeouts into threads through
    this one call: the pause widens the window between "the task is past
    its deadline" and "the exception is pending in the thread".
    """
    real = ctypes.pythonapi.PyThreadState_SetAsyncExc

    def slow(ident, exc):
        if exc is not None:
            time.sleep(pause_s)
        return real(ident, exc)

    monkeypatch.setattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", slow)


def _worker_patch(monkeypatch, tmp_path, code: str) -> None:
    """Run ``code`` at the start of every worker process (a sitecustomize on their PYTHONPATH).

    Must be called before the engine is made: the supervisor copies sys.path then.
    """
    d = tmp_path / "worker_site"
    d.mkdir()
    (d / "sitecustomize.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(d))


# -- 20.1 / 10.10: nothing touches the segment after it is unmapped ----------------

SHUTDOWN_UNDER_A_HELD_COLLECTOR = r"""
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import thread_jobs
from catzilla_mp import BackgroundTasks
from catzilla_mp.backends.process import backend as process_backend
process_backend.COLLECTOR_JOIN_S = 0.5  # the old code waits its own 5 s
process_backend.CLOSE_DRAIN_S = 0.2
path = sys.argv[2]
engine = BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64)
armed, first_free, second_held, second_free = (threading.Event() for _ in range(4))
holds = []

def listener(event, task, detail):
    # the collector is held twice: first while every result piles up in the
    # ring, then on the first outcome of the batch it takes next
    if (event != "completed" or not armed.is_set()
            or threading.current_thread().name != "czmp-collector" or len(holds) >= 2):
        return
    holds.append(task)
    if len(holds) == 1:
        first_free.wait(30)
    else:
        second_held.set()
        second_free.wait(30)

engine.monitor.add_listener(listener)
engine.add_task(thread_jobs.mark_value, path, "warm", 0).wait(30)
armed.set()
tasks = [engine.add_task(thread_jobs.mark_value, path, i, i) for i in range(40)]
end = time.monotonic() + 30
while len(open(path).read().splitlines()) < 41 and time.monotonic() < end:
    time.sleep(0.01)
time.sleep(0.2)  # the last result published
first_free.set()
second_held.wait(30)  # the collector holds a batch of outcomes, only one settled
# observers running into the shutdown: each pauses just before it uses the backend
real_mem = process_backend.ProcessBackend.in_flight_memory
def slow_mem(self):
    time.sleep(0.3)
    return real_mem(self)
process_backend.ProcessBackend.in_flight_memory = slow_mem
observers = [threading.Thread(target=engine.get_stats) for _ in range(3)]
for t in observers:
    t.start()
engine.shutdown(wait_for_completion=True, timeout=0.2)
second_free.set()  # the collector resumes with outcomes of a closed engine
for t in observers:
    t.join()
time.sleep(1.0)
print(json.dumps([[t.status.name, type(t.exception(0)).__name__ if t.status.name != "COMPLETED" else None]
                  for t in tasks]))
"""


def test_shutdown_under_a_held_collector_touches_no_freed_memory_and_cancels_no_finished_task(
        spawn, tmp_path):
    """Issue 20.1 / 10.10: a collector held up (in a listener) past shutdown's join must
    not use the unmapped segment when it resumes (the old code segfaulted), and the
    tasks it had taken off the ring -- they ran and finished -- are not reported as
    "cancelled before it started". get_stats() racing the shutdown (a pause patched in
    before it reads the slots) must not crash either."""
    p = spawn(SHUTDOWN_UNDER_A_HELD_COLLECTOR, JOBS_DIR, str(tmp_path / "runs"),
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-3000:]}"
    outcomes = json.loads(out.strip().splitlines()[-1])
    assert len(outcomes) == 40
    # every task ran (the runs file says so): none may say it never started
    assert not [o for o in outcomes if o[0] == "CANCELLED"], outcomes
    assert all(o[0] == "COMPLETED" or o[1] == "EngineClosedError" for o in outcomes), outcomes


# -- 20.2: thread-mode timeouts hit their own task only -------------------------------

def test_a_thread_mode_timeout_never_lands_in_the_next_task_or_an_idle_thread(make_engine,
                                                                                monkeypatch):
    """Issue 20.2. A pause patched into the raise (see _slow_async_exc) lets the timed-out
    task end and its thread take the next one before the exception is raised: the old
    code raised it into the next task (or killed the idle thread, leaving later tasks
    PENDING for ever)."""
    _slow_async_exc(monkeypatch, 0.4)
    engine = make_engine(mode="thread", workers=1)
    a = engine.add_task(time.sleep, 0.35, timeout_ms=200, max_retries=0)
    b = engine.add_task(time.sleep, 0.8, max_retries=0)
    with pytest.raises(TaskTimeoutError):
        a.wait(10)
    assert b.wait(10) is None  # not TaskTimeoutError
    # the idle variant: nothing queued when the raise comes
    c = engine.add_task(time.sleep, 0.3, timeout_ms=100, max_retries=0)
    with pytest.raises(TaskTimeoutError):
        c.wait(10)
    time.sleep(0.8)
    assert engine.add_task(sum, (1, 2)).wait(10) == 3  # the thread still serves
    backend = engine._backend
    wait_until(lambda: backend._in_use == 0, 10, "capacity back to zero in use")


A_TIMEOUT_THEN_A_PROFILED_TASK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import thread_jobs
from catzilla_mp import BackgroundTasks
from catzilla_mp.errors import TaskTimeoutError
mode = sys.argv[2]
opts = dict(mode="thread", workers=1) if mode == "thread" else dict(
    workers=1, min_workers=1, threads_per_worker=2, memory_pool_mb=16)
out = []
with BackgroundTasks(**opts) as engine:
    slow = engine.add_task(thread_jobs.spin_then, sys.argv[3], "A", 5.0, timeout_ms=200,
                           max_retries=0)
    try:
        slow.wait(30)
        out.append("no timeout")
    except TaskTimeoutError:
        out.append("timed out")
    # the same thread (one thread, or one of two in the same worker) runs it
    for _ in range(4):
        task = engine.add_task(sum, (1, 2), enable_profiling=True, timeout_ms=10_000,
                               max_retries=0)
        try:
            out.append(task.wait(30))
        except TaskTimeoutError:
            out.append("hung")
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_withdrawn_timeout_raise_leaves_no_profiled_task_hanging(spawn, tmp_path, mode):
    """A timeout raised into a thread was withdrawn with PyThreadState_SetAsyncExc(id, NULL)
    once its run ended; that leaves CPython's "asynchronous exception pending" flag set for
    good, and CPython 3.11 then loops for ever in the next function run under a profiler
    (enable_profiling, cProfile, coverage): the old code's profiled tasks in the same
    process hung until their own timeout. Run in a child: the old flag would stay set in
    the test process."""
    p = spawn(A_TIMEOUT_THEN_A_PROFILED_TASK, JOBS_DIR, mode, str(tmp_path / "runs"),
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-3000:]}"
    assert json.loads(out.strip().splitlines()[-1]) == ["timed out", 3, 3, 3, 3]


# -- 20.3 / 10.11: threads_per_worker > 1, soft timeouts --------------------------------

def test_a_soft_timeout_in_a_multithreaded_worker_never_lands_in_the_next_task(
        make_engine, monkeypatch, tmp_path):
    """Issue 20.3 / 10.11. In the workers, a pause is patched into the raise of the
    timeout (PyThreadState_SetAsyncExc, via a sitecustomize): the timed-out task ends
    and its thread takes the next task first. The old code then failed that task, or
    killed the thread right after its take and stranded the slot RUNNING for ever."""
    _worker_patch(monkeypatch, tmp_path, """
        import ctypes, time
        _real = ctypes.pythonapi.PyThreadState_SetAsyncExc
        def _slow(ident, exc):
            if exc is not None:
                time.sleep(0.5)
            return _real(ident, exc)
        ctypes.pythonapi.PyThreadState_SetAsyncExc = _slow
    """)
    engine = make_engine(workers=1, threads_per_worker=2, timeout_grace_ms=10_000)
    path = str(tmp_path / "runs")
    slow = [engine.add_task(thread_jobs.spin_then, path, "A", 0.6, "A", timeout_ms=300,
                            max_retries=0) for _ in range(2)]
    # enough short tasks that the thread is inside one when the raise comes
    quick = [engine.add_task(thread_jobs.spin_then, path, f"b{i}", 0.01, i, max_retries=0)
             for i in range(200)]
    assert [t.wait(60) for t in quick] == list(range(200))
    for t in slow:  # ended by the timeout, or finished just before it landed
        assert t.wait(60) == "A" if t.exception(60) is None else True
    late = [engine.add_task(thread_jobs.mark_value, path, f"c{i}", i) for i in range(10)]
    assert [t.wait(60) for t in late] == list(range(10))
    counts = runs(path)
    assert all(counts[f"b{i}"] == 1 for i in range(200)), counts
    books_balance(engine)


# -- 20.4: a hard-timeout kill re-checks what the worker runs ---------------------------

def test_a_hard_timeout_kill_never_hits_the_task_after_the_slow_one(make_engine, monkeypatch,
                                                                    tmp_path):
    """Issue 20.4. A pause is patched into the supervisor's SIGKILL (supervisor._signal):
    during it the slow task ends and the worker starts the next one. The old code then
    killed the worker anyway and re-ran the next task: executed twice with
    max_retries=0."""
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    real_signal = supervisor_mod._signal

    def paused_signal(w, sig):
        if sig == signal.SIGKILL and w.killed_for_timeout:
            release.touch()  # the slow task ends now...
            end = time.monotonic() + 3
            while runs(path).get("B", 0) < 1 and time.monotonic() < end:
                time.sleep(0.01)  # ...and the next one starts, if the worker can run
        real_signal(w, sig)

    monkeypatch.setattr(supervisor_mod, "_signal", paused_signal)
    engine = make_engine(workers=1, timeout_grace_ms=300)
    engine.add_task(sum, (1,)).wait(60)
    a = engine.add_task(thread_jobs.deaf_until, path, "A", str(release), timeout_ms=200,
                        max_retries=0)
    b = engine.add_task(thread_jobs.spin_then, path, "B", 0.5, "B", max_retries=0)
    assert b.wait(60) == "B"
    a.exception(60)
    assert runs(path).get("B") == 1, runs(path)


def test_cancel_with_force_never_kills_a_worker_that_replaced_the_owner(make_engine,
                                                                       monkeypatch, tmp_path):
    """Issue 20.4: kill_for_cancel picked the process by worker index only. A pause is
    patched in before it (Supervisor.kill_for_cancel): meanwhile the task's worker dies
    and a replacement starts at the same index. The old code then killed the
    replacement, which had nothing to do with the task."""
    engine = make_engine(workers=1)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    t = engine.add_task(thread_jobs.deaf_until, path, "x", str(release), max_retries=0)
    wait_until(lambda: runs(path).get("x") == 1, 60, "the task running")
    old_pid = running_pid(engine, t)
    real = supervisor_mod.Supervisor.kill_for_cancel

    def late(self, *args):
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: [p for p in worker_pids(engine) if p != old_pid], 60,
                   "a replacement serving")
        return real(self, *args)

    monkeypatch.setattr(supervisor_mod.Supervisor, "kill_for_cancel", late)
    t.cancel(force=True)
    new_pids = [p for p in worker_pids(engine) if p != old_pid]
    time.sleep(0.5)  # a kill would be reaped by now
    assert engine.add_task(sum, (1, 2)).wait(30) == 3
    assert new_pids and new_pids[0] in worker_pids(engine)
    release.touch()


# -- 20.5: callbacks that wait -------------------------------------------------------

@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_callback_that_waits_on_another_task_does_not_freeze_delivery(make_engine, mode):
    """Issue 20.5: callbacks ran on the thread that delivers results (the collector, or
    the executor thread in thread mode): waiting there for another task blocked the only
    thread that could deliver it."""
    engine = make_engine(mode=mode, workers=1)
    slow = engine.add_task(time.sleep, 0.3)
    first = engine.add_task(sum, (1, 2))
    seen, where = [], []

    def callback(value):
        where.append(threading.current_thread().name)
        seen.append(slow.wait(20))

    first.add_callback(callback)
    assert slow.wait(10) is None
    assert first.wait(10) == 3
    wait_until(lambda: seen == [None], 20, "the callback's wait to return")
    assert where[0].startswith("czmp-callbacks")


# -- 20.6 / 11.4: engine threads survive what user code raises -----------------------

@pytest.mark.parametrize("mode", ["process", "thread"])
def test_sys_exit_in_a_callback_or_listener_kills_no_engine_thread(make_engine, mode):
    """Issue 20.6: SystemExit from a callback or a listener ended the collector (or the
    thread-mode executor); every later task stayed PENDING."""
    engine = make_engine(mode=mode, workers=1)
    t = engine.add_task(sum, (1, 2))
    t.add_callback(lambda v: sys.exit(3))
    assert t.wait(10) == 3

    def listener(event, task, detail):
        if event == "completed":
            raise SystemExit(4)

    engine.monitor.add_listener(listener)
    assert [engine.add_task(sum, (i, 1)).wait(10) for i in range(5)] == [1, 2, 3, 4, 5]
    engine.monitor.remove_listener(listener)
    t2 = engine.add_task(sum, (5, 5))
    t2.add_callback(lambda v: sys.exit(5))
    assert t2.wait(10) == 10
    assert engine.add_task(sum, (2, 2)).wait(10) == 4


def test_sys_exit_in_the_callback_of_a_crashed_task_keeps_the_supervisor(make_engine):
    """Issue 20.6: the supervisor settles a task whose worker died; a SystemExit from its
    callback ended the supervisor thread, and with it (PDEATHSIG) every worker."""
    engine = make_engine(workers=1)
    t = engine.add_task(os._exit, 9, max_retries=0)
    t.add_callback(lambda v: sys.exit(3))
    with pytest.raises(Exception):
        t.wait(30)
    assert engine._backend.supervisor._thread.is_alive()
    t2 = engine.add_task(os._exit, 9, max_retries=0)  # a second crash is still handled
    with pytest.raises(Exception):
        t2.wait(30)
    assert engine.add_task(sum, (2, 2)).wait(30) == 4


def test_a_result_whose_unpickling_raises_system_exit_fails_that_task_only(make_engine):
    """Issue 11.4: only Exception was caught while decoding a result; SystemExit ended
    the collector and every later task stayed PENDING."""
    engine = make_engine(workers=1)
    bad = engine.add_task(thread_jobs.exit_on_unpickle)
    with pytest.raises(SerializationError):
        bad.wait(30)
    assert [engine.add_task(sum, (i, 1)).wait(30) for i in range(5)] == [1, 2, 3, 4, 5]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_engine_thread_that_dies_anyway_fails_every_waiter_with_engine_broken(
        make_engine, monkeypatch):
    """Issue 11.4 / 20.6: if an engine thread dies anyway (here the collector: a
    SystemExit patched in outside its per-outcome guard), waiters get EngineBrokenError
    instead of hanging, and new tasks are refused with it."""
    engine = make_engine(workers=1)
    engine.add_task(sum, (1,)).wait(30)
    real = process_backend.ProcessBackend._collect

    def dying(self, batch, timeout_ns):
        if threading.current_thread().name == "czmp-collector":
            raise SystemExit("collector bug")
        return real(self, batch, timeout_ns)

    t = engine.add_task(time.sleep, 3.0)  # still running when the collector dies
    monkeypatch.setattr(process_backend.ProcessBackend, "_collect", dying)
    with pytest.raises(EngineBrokenError) as info:
        t.wait(30)
    assert isinstance(info.value.__cause__, SystemExit)
    with pytest.raises(EngineBrokenError):
        engine.add_task(sum, (1,))


def test_workers_that_cannot_start_back_off_then_break_the_engine(make_engine, monkeypatch):
    """Issue 11.4 (and 10.9's tight loop): a worker that exits before serving was
    replaced at every tick for ever, and waiters hung. Now: back-off, then
    EngineBrokenError naming the exit."""
    monkeypatch.setattr(supervisor_mod, "START_BACKOFF_S", 0.05, raising=False)
    monkeypatch.setattr(supervisor_mod.sys, "executable", "/bin/false")
    engine = make_engine(workers=1)
    t = engine.add_task(sum, (1,))
    with pytest.raises(EngineBrokenError) as info:
        t.wait(60)
    assert "exited with code 1" in str(info.value) + str(info.value.__cause__)
    assert engine._backend.supervisor.spawned <= 8


# -- 20.7: batches on a small queue ----------------------------------------------------

def test_concurrent_maps_on_a_small_queue_do_not_deadlock(make_engine, monkeypatch):
    """Issue 20.7: each add_tasks()/map() caller held the slots of its batch while it
    waited for more; on a small queue they held all of them with nothing queued. A
    pause is patched into the pickling of each call (serialization.dumps_call, and
    dumps_calls, the batch's fast path), between the look at the free slots and the
    taking of them."""
    real_dumps = process_backend.serialization.dumps_call
    real_dumps_many = process_backend.serialization.dumps_calls

    def slow_dumps(*a, **kw):
        time.sleep(0.002)
        return real_dumps(*a, **kw)

    def slow_dumps_many(calls, limit):
        time.sleep(0.002 * len(calls))
        return real_dumps_many(calls, limit)

    monkeypatch.setattr(process_backend.serialization, "dumps_call", slow_dumps)
    monkeypatch.setattr(process_backend.serialization, "dumps_calls", slow_dumps_many)
    engine = make_engine(workers=1, queue_size=4, queue_full_timeout=8)
    results, errors = {}, []

    def mapper(k):
        try:
            results[k] = list(engine.map(abs, range(-k * 100, -k * 100 + 60), timeout=60))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=mapper, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {k: [abs(x) for x in range(-k * 100, -k * 100 + 60)] for k in range(6)}


# -- 20.9: shutdown races -------------------------------------------------------------

def test_a_second_shutdown_returns_only_when_the_first_is_done(make_engine, monkeypatch):
    """Issue 20.9: the loser of two concurrent shutdown() calls returned at once, while
    the winner was still closing (workers and segment still there). A pause is patched
    into the winner's close."""
    engine = make_engine(workers=1)
    engine.add_task(sum, (1,)).wait(30)
    real_close = process_backend.ProcessBackend.close
    closed = threading.Event()

    def slow_close(self, abandon):
        time.sleep(0.5)
        real_close(self, abandon)
        closed.set()

    monkeypatch.setattr(process_backend.ProcessBackend, "close", slow_close)
    winner = threading.Thread(target=engine.shutdown)
    winner.start()
    time.sleep(0.1)
    engine.shutdown()
    assert closed.is_set()
    winner.join()


def test_a_submitter_racing_shutdown_gets_engine_closed(make_engine, monkeypatch):
    """Issue 20.9: a submitter admitted just before shutdown() swapped the backend out
    got AttributeError. A pause is patched in after admission."""
    engine = make_engine(workers=1)
    admitted, shut = threading.Event(), threading.Event()
    real_admit = type(engine)._admit

    def slow_admit(self, task):
        real_admit(self, task)
        if threading.current_thread().name == "racer":
            admitted.set()
            shut.wait(30)

    monkeypatch.setattr(type(engine), "_admit", slow_admit)
    errors = []

    def racer():
        try:
            engine.add_task(sum, (1,))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=racer, name="racer")
    t.start()
    admitted.wait(30)
    engine.shutdown(timeout=0.5)
    shut.set()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], EngineClosedError), errors


def test_shutdown_cancelling_while_submitters_add_tasks_does_not_raise(make_engine,
                                                                        monkeypatch):
    """Issue 20.9: _cancel_not_started iterated the task table while submitters changed
    it (RuntimeError). Pauses are patched into TaskResult.done, which the scan calls,
    and into the submitters' store into the table (after their "closed?" check)."""
    engine = make_engine(workers=1, queue_size=4096)
    real_done = TaskResult.done

    def slow_done(self):
        if threading.current_thread().name == "MainThread":
            time.sleep(0.0005)
        return real_done(self)

    stop = threading.Event()

    def submitter():
        while not stop.is_set():
            try:
                engine.add_task(time.sleep, 0.01, delay_ms=60_000)
            except BaseException:  # noqa: BLE001 - closed: expected
                return
            time.sleep(0.0005)

    for i in range(200):
        engine.add_task(time.sleep, 0.01)
    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    class SlowStore(dict):
        def __setitem__(self, key, value):
            time.sleep(0.005)
            super().__setitem__(key, value)

    engine._tasks = SlowStore(engine._tasks)
    time.sleep(0.05)
    monkeypatch.setattr(TaskResult, "done", slow_done)
    try:
        engine.shutdown(wait_for_completion=False, timeout=5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)


EXIT_AFTER_SHUTDOWN_NO_WAIT = r"""
import sys
from catzilla_mp import BackgroundTasks
engine = BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64)
assert engine.add_task(sum, (1, 2)).wait(30) == 3
engine.shutdown(wait=False)
"""


def test_shutdown_without_waiting_then_exit_leaves_nothing(spawn):
    """Issue 20.9: shutdown(wait=False) and then interpreter exit left the segment in
    /dev/shm (4 runs of 6): the exit handler's shutdown returned while the background
    one was still closing. The leak guard fails the test if anything is left."""
    from catzilla_mp.segment_janitor import parse_segment_name

    for _ in range(4):
        p = spawn(EXIT_AFTER_SHUTDOWN_NO_WAIT, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        mine = [n for n in os.listdir("/dev/shm")
                if (parsed := parse_segment_name(n)) is not None and parsed.pid == p.pid]
        assert not mine, mine


# -- 20.10: memory that grows -------------------------------------------------------------

def test_thread_mode_drops_each_task_timer_when_the_task_ends(make_engine):
    """Issue 20.10: thread mode kept a timeout timer per task (holding it and its result)
    for the whole timeout after the task ended."""
    # result_ttl_s=0: the engine's own result-expiry timer is no task's, and
    # would show in the count of timers below
    engine = make_engine(mode="thread", workers=2, keep_finished=10, result_ttl_s=0)
    ref = weakref.ref(engine.add_task(_Big).wait(10))
    for t in [engine.add_task(sum, (i,)) for i in range(300)]:
        t.wait(10)
    del t
    assert len(engine._delays) == 0
    gc.collect()
    assert ref() is None  # neither its task (forgotten) nor a timer holds the result


class _Big:
    def __init__(self):
        self.ballast = bytearray(1 << 20)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_cancelled_delayed_task_releases_its_timer_at_once(make_engine, mode):
    """Issue 20.10: a cancelled delayed task kept its timer (and itself) until due."""
    engine = make_engine(mode=mode, workers=1, result_ttl_s=0)  # no result-expiry timer
    t = engine.add_task(sum, (1,), delay_ms=600_000)
    assert t.cancel() is True
    assert len(engine._delays) == 0


def test_waiting_again_on_a_failed_task_does_not_grow_its_traceback(make_engine):
    """Issue 20.10: wait() re-raised the same exception object, so each call appended the
    caller's frames to its traceback (and kept them alive)."""
    engine = make_engine(workers=1)
    t = engine.add_task(int, "not a number", max_retries=0)

    def depth():
        try:
            t.wait(30)
        except ValueError as exc:
            n, tb = 0, exc.__traceback__
            while tb is not None:
                n, tb = n + 1, tb.tb_next
            return n

    first = depth()
    assert [depth() for _ in range(5)] == [first] * 5


def test_the_monitor_forgets_workers_that_are_gone(make_engine):
    """Issue 20.10: the monitor's per-pid tables were never pruned."""
    engine = make_engine(workers=1, max_tasks_per_worker=1)
    for i in range(4):
        engine.add_task(sum, (i,)).wait(30)
        engine.get_stats()
    wait_until(lambda: len(engine._backend.supervisor.procs) == 1, 30, "one worker")
    time.sleep(0.3)
    engine.get_stats()
    live = {w.pid for w in engine._backend.supervisor.procs.values()}
    assert set(engine.monitor._worker_ps) <= live
    assert set(engine.monitor._last_busy) <= live


# -- 20.11: get_stats never turns a finished task back to RUNNING -------------------------

def test_get_stats_never_turns_a_finished_task_back_to_running(make_engine, monkeypatch,
                                                               tmp_path):
    """Issue 20.11: observe() checked the slot, then wrote RUNNING without re-checking.
    A pause is patched in between the check and the write (the look-up of
    TaskStatus.RUNNING, on the observing thread only) while the task finishes."""
    engine = make_engine(workers=1)
    path = str(tmp_path / "runs")
    t = engine.add_task(thread_jobs.spin_then, path, "x", 0.4, "x")
    wait_until(lambda: t.get_stats().status is TaskStatus.RUNNING, 30, "running")
    class SlowStatus:
        """TaskStatus, with a pause when the observing thread looks up RUNNING to write it."""

        def __getattr__(self, name):
            if name == "RUNNING" and threading.current_thread().name == "observer":
                time.sleep(1.0)
            return getattr(TaskStatus, name)

    monkeypatch.setattr(process_backend, "TaskStatus", SlowStatus())
    obs = threading.Thread(target=t.get_stats, name="observer")
    obs.start()
    assert t.wait(30) == "x"
    obs.join(30)
    assert t.status is TaskStatus.COMPLETED


# -- 20.12 / 10.1: a push that fails is never reported as queued ---------------------------

class _FailingPushes:
    """process_backend's ``lib`` with every push failing (as a ring that stays full)."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        if name in ("czmp_tasks_submit", "czmp_tasks_submit_inline",
                    "czmp_tasks_submit_inline_many"):
            return lambda *a: 0
        return getattr(self._lib, name)


def test_a_task_whose_push_fails_is_not_reported_as_queued(make_engine, monkeypatch):
    """Issue 20.12 / 10.1: the count returned by czmp_tasks_submit* was ignored: a task
    whose push failed came back as queued and never ran. Now it fails with
    QueueFullError and gives its slot back; the engine works on."""
    engine = make_engine(workers=1)
    engine.add_task(sum, (1,)).wait(30)
    monkeypatch.setattr(process_backend, "PUSH_RETRY_S", 0.1, raising=False)
    monkeypatch.setattr(process_backend, "lib", _FailingPushes(process_backend.lib))
    with pytest.raises(QueueFullError):
        engine.add_task(sum, (1, 2))
    with pytest.raises(QueueFullError):
        engine.add_tasks(abs, range(10))
    with pytest.raises(QueueFullError):
        engine.add_task(sum, (b"x" * 100_000,))  # args in a chunk: the other path
    monkeypatch.undo()
    books_balance(engine)
    assert engine.add_task(sum, (1, 2)).wait(30) == 3
    assert [t.wait(30) for t in engine.add_tasks(abs, range(-5, 0))] == [5, 4, 3, 2, 1]


def test_reported_start_times_follow_the_wall_clock(make_engine, monkeypatch):
    """Issue 20.12: the monotonic-to-wall offset was taken once at start, so a wall-clock
    jump skewed every reported time."""
    engine = make_engine(workers=1)
    engine.add_task(sum, (1,)).wait(30)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    t = engine.add_task(sum, (1,))
    t.wait(30)
    assert abs(t.get_stats().started_at - time.time()) < 600
