"""``python -m bench.stress``: every public operation from many threads at once; the books must balance.

The engine's own threads (collector, supervisor, delay timer, callback pool,
thread-mode executors, executor threads in workers) meet the app's threads
in every order they can (issue 20). One engine per configuration; for
``--seconds`` these actors run at once:

    submitters   add_task (plain, delayed, failing with a retry, past a soft
                 timeout), add_tasks, map, Executor.submit
    cancellers   cancel() of random tasks; cancel(force=True) of running ones
                 (process mode with one thread per worker only: a kill with
                 threads_per_worker > 1 re-runs the other tasks of that
                 worker, by design)
    waiters      wait()/exception() with short timeouts, futures' result()
    callbacks    add_callback() whose callback submits a task and waits on it
    observers    get_stats(), task.get_stats(), progress, get_task_result()

then two threads call shutdown() at once while the others keep going.

Checked at the end (each a count in the report; exit status 1 unless all 0):

    not_final       tasks handed to a caller that have no final state
    wrong           completed tasks whose value is not the expected one
    over_run        tasks executed more often than their attempts allow
                    (each run appends its tag to a file, O_APPEND)
    ran_cancelled   tasks cancelled "before it started" that did run
    callbacks_off   counted callbacks not delivered exactly once
    unexpected      exceptions an operation raised that the API does not name
    thread_deaths   threads (the engine's or ours) that ended with an exception
    broken          1 if the engine declared itself broken
    shm_left        /dev/shm entries of this process after shutdown
    children_left   child processes alive after shutdown

``--quick`` runs the three configurations (process, thread, process with
two threads per worker) for a few seconds each: the CI test
(tests/engine/test_concurrency_stress.py) runs that.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from typing import Any, Optional

#: The configurations run by default: (mode, threads_per_worker).
CONFIGS = (("process", 1), ("thread", 1), ("process", 2))


# -- task functions (module level: workers import them by name) -----------------------

def _trace(path: str, tag: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)


def job(path: str, tag: str, value: int, kind: str = "ok") -> int:
    """One run of a stress task: recorded in ``path``, then behaves as ``kind`` says."""
    _trace(path, tag)
    if kind == "fail":
        raise ValueError(f"{tag} fails on purpose")
    if kind in ("slow", "timeout"):
        end = time.monotonic() + (0.05 if kind == "slow" else 2.0)
        while time.monotonic() < end:
            pass
    return value * 2


def job_abs(path: str, tag: str, value: int) -> int:
    _trace(path, tag)
    return abs(value)


# -- the run -----------------------------------------------------------------------

class _Books:
    """What the actors handed out and saw, for the checks at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # task -> (tag, expected value or None, attempts allowed)
        self.tasks: dict[Any, tuple[str, Optional[int], int]] = {}
        self.callbacks: dict[str, int] = {}
        self.counted: list[Any] = []
        self.unexpected: list[str] = []
        self.thread_deaths: list[str] = []
        self._tags = iter(range(1 << 62))

    def tag(self) -> str:
        with self.lock:
            return f"t{next(self._tags)}"

    def add(self, task, tag: str, expected: Optional[int], attempts: int) -> None:
        with self.lock:
            self.tasks[task] = (tag, expected, attempts)

    def odd(self, what: str, exc: BaseException) -> None:
        with self.lock:
            self.unexpected.append(f"{what}: {type(exc).__name__}: {exc}")


def run(mode: str = "process", threads_per_worker: int = 1, seconds: float = 4.0,
        actors: int = 2, seed: Optional[int] = None, workdir: Optional[str] = None) -> dict:
    """One engine under every operation at once for ``seconds``; returns the report (counts)."""
    import tempfile

    import psutil

    from catzilla_mp import BackgroundTasks, TaskStatus
    from catzilla_mp.errors import CatzillaMPError
    from catzilla_mp.segment_janitor import parse_segment_name

    rng_seed = seed if seed is not None else random.randrange(1 << 30)
    # processes this run did not start (a test session's local Ray, which
    # starts and stops its workers under its own parent meanwhile) are not its leftovers
    already = psutil.Process().children(recursive=True)
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    path = os.path.join(tmp.name, "runs")
    books = _Books()
    force_cancel = mode == "process" and threads_per_worker == 1
    engine = BackgroundTasks(workers=2, min_workers=2, max_workers=3, mode=mode,
                             threads_per_worker=threads_per_worker, memory_pool_mb=16,
                             queue_size=256, queue_full_timeout=2.0, retry_backoff_base=0.01,
                             retry_backoff_cap=0.05, timeout_grace_ms=3000, keep_finished=100_000)
    stop = threading.Event()
    ours: list[threading.Thread] = []
    old_hook = threading.excepthook

    def hook(args) -> None:
        with books.lock:
            books.thread_deaths.append(f"{args.thread.name if args.thread else '?'}: "
                                       f"{args.exc_type.__name__}: {args.exc_value}")
        old_hook(args)

    threading.excepthook = hook
    from concurrent.futures import CancelledError

    expected_errors = (CatzillaMPError, TimeoutError, ValueError, CancelledError)

    def guarded(what, fn, *args) -> Any:
        try:
            return fn(*args)
        except expected_errors:
            return None
        except BaseException as exc:  # noqa: BLE001 - recorded, the run goes on
            books.odd(what, exc)
            return None

    def pick():
        with books.lock:
            if not books.tasks:
                return None
            return random.choice(list(books.tasks))

    def submit_one(rng: random.Random):
        tag, value = books.tag(), rng.randrange(1000)
        roll = rng.random()
        if roll < 0.55:
            t = engine.add_task(job, path, tag, value, "ok", max_retries=0)
            books.add(t, tag, value * 2, 1)
        elif roll < 0.65:
            t = engine.add_task(job, path, tag, value, "ok", delay_ms=rng.randrange(1, 200),
                                max_retries=0)
            books.add(t, tag, value * 2, 1)
        elif roll < 0.72:
            t = engine.add_task(job, path, tag, value, "fail", max_retries=1)
            books.add(t, tag, None, 2)
        elif roll < 0.85:
            t = engine.add_task(job, path, tag, value, "slow", max_retries=0)
            books.add(t, tag, value * 2, 1)
        elif roll < 0.88:
            t = engine.add_task(job, path, tag, value, "timeout", max_retries=0, timeout_ms=100)
            books.add(t, tag, None, 1)
        elif roll < 0.94:
            t = engine.submit(job, path, tag, value)._task
            books.add(t, tag, value * 2, 1)
        else:
            tags = [books.tag() for _ in range(rng.randrange(2, 30))]
            vals = [rng.randrange(-500, 500) for _ in tags]
            if rng.random() < 0.5:
                ts = engine.add_tasks(job_abs, [(path, g, v) for g, v in zip(tags, vals)],
                                      max_retries=0)
                for t, g, v in zip(ts, tags, vals):
                    books.add(t, g, abs(v), 1)
            else:
                it = engine.map(job_abs, [path] * len(tags), tags, vals, timeout=30)
                got = list(it)
                if got != [abs(v) for v in vals]:
                    books.odd("map", AssertionError(f"map returned {got}"))
            return
        if rng.random() < 0.1:
            with books.lock:
                books.callbacks[tag] = 0
                books.counted.append(t)

            def count(_value, tag=tag) -> None:
                with books.lock:
                    books.callbacks[tag] += 1

            t.add_callback(count)
        if rng.random() < 0.05:
            t.add_callback(lambda _v: nested(rng))

    def nested(rng: random.Random) -> None:
        # a callback that submits a task and waits on it (issue 20.5)
        tag, value = books.tag(), rng.randrange(1000)
        t = guarded("nested add_task", lambda: engine.add_task(job, path, tag, value, "ok",
                                                               max_retries=0))
        if t is not None:
            books.add(t, tag, value * 2, 1)
            guarded("nested wait", t.wait, 10)

    def submitter(i: int) -> None:
        rng = random.Random(rng_seed + i)
        while not stop.is_set():
            guarded("submit", submit_one, rng)
            time.sleep(rng.random() * 0.002)

    def canceller(i: int) -> None:
        rng = random.Random(rng_seed + 100 + i)
        while not stop.is_set():
            t = pick()
            if t is not None and not t.done():
                force = force_cancel and rng.random() < 0.05
                guarded("cancel", t.cancel, force)
            time.sleep(rng.random() * (0.02 if force_cancel else 0.005))

    def waiter(i: int) -> None:
        rng = random.Random(rng_seed + 200 + i)
        while not stop.is_set():
            t = pick()
            if t is not None:
                if rng.random() < 0.5:
                    guarded("wait", t.wait, rng.random() * 0.05)
                elif rng.random() < 0.5:
                    guarded("exception", t.exception, rng.random() * 0.05)
                else:
                    guarded("future", t.future.exception, rng.random() * 0.05)
            else:
                time.sleep(0.001)

    def observer(i: int) -> None:
        rng = random.Random(rng_seed + 300 + i)
        while not stop.is_set():
            guarded("get_stats", engine.get_stats)
            t = pick()
            if t is not None:
                guarded("task stats", t.get_stats)
                guarded("progress", lambda: t.progress)
                guarded("get_task_result", engine.get_task_result, t.task_id)
            time.sleep(rng.random() * 0.01)

    for role in (submitter, canceller, waiter, observer):
        for i in range(actors):
            th = threading.Thread(target=role, args=(i,), name=f"stress-{role.__name__}-{i}",
                                  daemon=True)
            ours.append(th)
    t0 = time.monotonic()
    for th in ours:
        th.start()
    time.sleep(seconds)
    # two shutdowns at once, while the actors keep going (issue 20.9)
    closers = [threading.Thread(target=engine.shutdown, kwargs=dict(wait_for_completion=w,
                                                                    timeout=5.0),
                                name=f"stress-shutdown-{w}") for w in (False, True)]
    for th in closers:
        th.start()
    for th in closers:
        th.join(120)
    stop.set()
    for th in ours:
        th.join(60)
    wall = time.monotonic() - t0
    threading.excepthook = old_hook

    runs: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                runs[line.strip()] = runs.get(line.strip(), 0) + 1
    except FileNotFoundError:
        pass
    report = dict(mode=mode, threads_per_worker=threads_per_worker, seed=rng_seed,
                  tasks=len(books.tasks), runs=sum(runs.values()), wall_s=round(wall, 2))
    statuses: dict[str, int] = {}
    not_final = wrong = over_run = ran_cancelled = 0
    for t, (tag, expected, attempts) in books.tasks.items():
        statuses[t.status.name] = statuses.get(t.status.name, 0) + 1
        if not t.done() or t.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED,
                                            TaskStatus.CANCELLED):
            not_final += 1
            continue
        n = runs.get(tag, 0)
        if n > attempts:
            over_run += 1
        if t.status is TaskStatus.COMPLETED:
            value = t.wait(0)
            if expected is None or value != expected or n == 0:
                wrong += 1
        elif (t.status is TaskStatus.CANCELLED and n and attempts == 1
              and "before it started" in str(t.exception(0))):
            ran_cancelled += 1
    callbacks_off = sum(1 for t in books.counted
                        if t.done() and books.callbacks[books.tasks[t][0]] != 1)
    me = os.getpid()
    shm_left = [n for n in os.listdir("/dev/shm")
                if (p := parse_segment_name(n)) is not None and p.pid == me]
    theirs = {p.pid for p in already}
    for p in already:
        try:
            theirs.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            pass
    children = [c for c in psutil.Process().children(recursive=True)
                if c.pid not in theirs and c.status() != psutil.STATUS_ZOMBIE]
    report.update(statuses=statuses, not_final=not_final, wrong=wrong, over_run=over_run,
                  ran_cancelled=ran_cancelled, callbacks_off=callbacks_off,
                  unexpected=len(books.unexpected), thread_deaths=len(books.thread_deaths),
                  broken=int(getattr(engine, "_broken", None) is not None), shm_left=len(shm_left),
                  children_left=len(children),
                  details=(books.unexpected + books.thread_deaths)[:10])
    tmp.cleanup()
    return report


FAILURES = ("not_final", "wrong", "over_run", "ran_cancelled", "callbacks_off", "unexpected",
            "thread_deaths", "broken", "shm_left", "children_left")


def failed(report: dict) -> list[str]:
    """The names of the checks a report fails."""
    return [k for k in FAILURES if report[k]]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="load per configuration")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every configuration")
    ap.add_argument("--actors", type=int, default=3, help="threads per role")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="3 s per configuration, one round")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.rounds = 3.0, 1
    import faulthandler

    faulthandler.enable()
    bad = 0
    for r in range(a.rounds):
        for mode, tpw in CONFIGS:
            seed = None if a.seed is None else a.seed + r
            rep = run(mode, tpw, a.seconds, a.actors, seed)
            bad += bool(failed(rep))
            if a.json:
                print(json.dumps(rep))
            else:
                print(f"{mode:7} tpw={tpw} seed={rep['seed']:<10} tasks={rep['tasks']:<6} "
                      f"runs={rep['runs']:<6} {rep['wall_s']:>6} s  {rep['statuses']}  "
                      f"failed: {', '.join(failed(rep)) or 'none'}")
                for d in rep["details"]:
                    print("   ", d)
            sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
