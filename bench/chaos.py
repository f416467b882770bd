"""``python -m bench.chaos``: many tasks while workers are SIGKILLed; nothing may be lost.

One engine runs ``--tasks`` small tasks (every tenth returns a result big
enough to need an arena chunk) while a killer thread SIGKILLs a random
serving worker every 20-50 ms (``--kill-every-ms``). Each task is submitted
with enough attempts to survive the kills, so every one must come back with
its correct value, delivered once. Prints a table, or with ``--json`` one
JSON object:

    tasks           tasks submitted
    kills           workers SIGKILLed (each at most once)
    idle_ticks      killer ticks that found no serving worker (all were starting up)
    crashes         worker deaths the supervisor saw (kills plus any others)
    spawned         worker processes started in all (replacements included)
    retries         attempts re-run after a kill
    lost            tasks with no outcome by the deadline
    wrong           tasks that came back with a wrong value or an error
    duplicated      tasks whose outcome was delivered more than once
    leaked_chunks   arena chunks in use after draining (function table excluded)
    leaked_slots    task slots not free after draining
    queued_after    ring cells still holding task hints after draining
    wall_s          submit of the first task to the outcome of the last
    tasks_per_s     tasks / wall_s
    kills_per_s     kills / wall_s

``--wrap`` is the ring-wrapping mode: a queue of 16 slots (task rings of 64
cells) and no-op tasks at full speed, so every ring wraps hundreds of times
while workers die mid-take; ``ring_laps`` then says how many times the rings
went round (pushes / ring capacity, approximately).

A kill only targets a worker that is serving (its record carries its pid):
killing processes still starting up would measure interpreter start-up, not
recovery. ``--quick`` (20,000 tasks) runs in well under 60 s. Exit status 1
if anything was lost, wrong, duplicated or leaked.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time

#: Every tenth task returns this many bytes: past the slot's inline room, so
#: results go through arena chunks, which a kill must not leak.
BIG_RESULT = 4000
#: Attempts per task: kills land on running tasks, and a task hit more times
#: than this would fail with WorkerCrashedError (counted as wrong).
MAX_RETRIES = 1000
#: Seconds allowed for the books to balance after the last outcome (ring
#: cells left by a dead worker are repaired within two one-second ticks).
SETTLE_S = 15.0


def chaos_task(i: int, work_us: int = 0):
    """The task: cheap (or ``work_us`` of busy work), and its value proves which input it ran on."""
    if work_us:
        end = time.perf_counter() + work_us / 1e6
        while time.perf_counter() < end:
            pass
    if i % 10 == 0:
        return bytes([i % 251]) * BIG_RESULT
    return i * 7 + 3


def expected(i: int):
    return bytes([i % 251]) * BIG_RESULT if i % 10 == 0 else i * 7 + 3


def noop_task(i: int, work_us: int = 0):
    """The --wrap mode's task: no work and a small result, so the rings, not the tasks, set the pace."""
    return i * 7 + 3


#: The --wrap mode's queue: 16 slots, so each task ring has 64 cells.
WRAP_QUEUE_SIZE = 16


class Killer(threading.Thread):
    """SIGKILLs a random serving worker of ``engine`` every ``lo``-``hi`` ms until stopped."""

    def __init__(self, engine, lo_ms: float, hi_ms: float, seed: int) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.engine, self.lo, self.hi = engine, lo_ms / 1000, hi_ms / 1000
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.idle_ticks = 0  # ticks with no serving worker to kill
        self._killed: set[int] = set()

    def run(self) -> None:
        sup = self.engine._backend.supervisor
        while not self.stop.wait(self.rng.uniform(self.lo, self.hi)):
            serving = [w.pid for w, rec in sup.snapshot()
                       if rec.pid == w.pid and w.pid not in self._killed]
            if not serving:
                self.idle_ticks += 1
                continue
            pid = self.rng.choice(serving)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self._killed.add(pid)
            self.kills += 1


def run(tasks: int = 20_000, kill_every_ms: tuple[float, float] = (20, 50), workers: int = 2,
        seed: int = 1, deadline_s: float = 300.0, work_us: int = 0, wrap: bool = False) -> dict:
    """One chaos run; returns the figures described in the module docstring.

    ``wrap``: the ring-wrapping mode (WRAP_QUEUE_SIZE slots, no-op tasks).
    """
    from catzilla_mp import BackgroundTasks

    engine = BackgroundTasks(
        workers=workers, max_workers=workers, enable_auto_scaling=False, memory_pool_mb=32,
        queue_size=WRAP_QUEUE_SIZE if wrap else min(tasks, 4096), retry_backoff_base=0.001,
        retry_backoff_cap=0.01, queue_full_timeout=deadline_s, timeout_grace_ms=1000)
    try:
        figures = _run(engine, tasks, kill_every_ms, seed, deadline_s, work_us,
                       noop_task if wrap else chaos_task)
        if wrap:
            cap = engine._backend.seg.task_ring(0).capacity
            figures["ring_laps"] = round((figures["tasks"] + figures["retries"]) / cap)
        return figures
    finally:
        engine.shutdown(wait_for_completion=False, timeout=10)


def _run(engine, n: int, kill_every_ms, seed: int, deadline_s: float, work_us: int,
         task=chaos_task) -> dict:
    delivered = [0] * n
    lock = threading.Lock()

    def counter(i):
        def count(_outcome):
            with lock:
                delivered[i] += 1
        return count

    engine.add_task(task, 1).wait(60)  # workers up before the clock starts
    killer = Killer(engine, *kill_every_ms, seed=seed)
    t0 = time.monotonic()
    killer.start()
    results = []
    batch = 512
    for start in range(0, n, batch):
        chunk = engine.add_tasks(task, [(i, work_us) for i in range(start, min(n, start + batch))],
                                 max_retries=MAX_RETRIES)
        for k, r in enumerate(chunk):
            r.add_callback(counter(start + k))
        results.extend(chunk)
    lost = wrong = 0
    end = t0 + deadline_s
    for i, r in enumerate(results):
        try:
            if r.wait(max(0.0, end - time.monotonic())) != (expected(i) if task is chaos_task
                                                             else noop_task(i)):
                wrong += 1
        except TimeoutError:
            lost += 1
        except Exception:  # noqa: BLE001 - an error is a wrong outcome here
            wrong += 1
    wall = time.monotonic() - t0
    killer.stop.set()
    killer.join()
    time.sleep(0.2)  # callbacks of the last outcomes run right after wait() returns
    books = settle(engine)
    sup = engine._backend.supervisor
    return dict(
        tasks=n, kills=killer.kills, crashes=sup.crashes, spawned=sup.spawned,
        idle_ticks=killer.idle_ticks,
        retries=sum(r.get_stats().retries for r in results), lost=lost, wrong=wrong,
        duplicated=sum(1 for d in delivered if d > 1),
        undelivered_callbacks=sum(1 for d in delivered if d == 0), **books,
        wall_s=round(wall, 2), tasks_per_s=round(n / wall), kills_per_s=round(killer.kills / wall, 1))


def settle(engine, timeout: float = SETTLE_S) -> dict:
    """Wait for the accounting to come back to empty; return what is still out."""
    from catzilla_mp._core import SLOT_FREE, state_kind

    backend = engine._backend
    seg, nslots = backend.seg, engine.options.queue_size

    def books():
        used = sum(c.used for c in seg.class_stats()) - backend.functions._next
        free = sum(1 for i in range(nslots) if state_kind(seg.slot_state(i)) == SLOT_FREE)
        return dict(leaked_chunks=used, leaked_slots=nslots - min(free, len(backend._free)),
                    queued_after=sum(seg.queue_depths()))

    deadline = time.monotonic() + timeout
    while any((b := books()).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return b


def bad(figures: dict) -> bool:
    return any(figures[k] for k in ("lost", "wrong", "duplicated", "undelivered_callbacks",
                                    "leaked_chunks", "leaked_slots", "queued_after"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--kill-every-ms", default="20-50",
                    help="kill interval in ms, uniform in LO-HI (or one number)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work-us", type=int, default=0,
                    help="busy work per task, so a run lasts long enough for many kills")
    ap.add_argument("--wrap", action="store_true",
                    help="a 16-slot queue and no-op tasks: the rings wrap hundreds of times")
    ap.add_argument("--quick", action="store_true", help="20,000 tasks: well under 60 s")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    lo, _, hi = args.kill_every_ms.partition("-")
    interval = (float(lo), float(hi or lo))
    tasks = 20_000 if args.quick else args.tasks
    figures = run(tasks=tasks, kill_every_ms=interval, workers=args.workers, seed=args.seed,
                  work_us=args.work_us, wrap=args.wrap)
    figures.update(workers=args.workers, kill_every_ms=args.kill_every_ms, wrap=args.wrap)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>22}  {v}")
    return 1 if bad(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
