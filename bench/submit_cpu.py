"""``python -m bench.submit_cpu``: the app-side CPU time of one no-op task, per thread.

The submission rates of ``bench.engine`` are wall-clock figures: on a shared
2-core machine they move by 2x from one minute to the next with the other
load. This measures what the app's threads spend per task instead, in
thread CPU time, which the other load inflates far less:

    submit_cpu_us       add_task, one by one (the submitting thread)
    batch_cpu_us        add_tasks of 20,000 (the submitting thread)
    collect_cpu_us      the collector thread, settling add_task's tasks
    collect_batch_cpu_us  the same for add_tasks' tasks

The workers are stopped (SIGSTOP) while the tasks are submitted, so the
submitting thread shares the GIL with nobody, then resumed; the waiting
thread sleeps first, so the collector alone settles the tasks (a waiter
would otherwise collect some itself). Medians of ``--reps`` repetitions.

    app thread ──add_task x N──► slots (workers stopped)       submit_cpu_us
    workers resumed ──results──► collector thread ──► TaskResult   collect_cpu_us

``--root DIR`` runs the code of another checkout (its ``catzilla_mp``): for
an A/B, run it for both trees, interleaved, in the same period.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import sys
import threading
import time

N = 20_000


def _thread_cpu_ns(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0])


def measure(reps: int) -> dict:
    from catzilla_mp import BackgroundTasks

    from bench.workloads import noop

    engine = BackgroundTasks(workers=2, min_workers=2, max_workers=2, enable_auto_scaling=False,
                             queue_size=32_768)
    try:
        engine.add_task(noop, 1).wait(60)
        pids = [w.pid for w, _rec in engine._backend.supervisor.snapshot()]
        collector = next(t for t in threading.enumerate() if t.name == "czmp-collector")
        got: dict[str, list[float]] = {"submit_cpu_us": [], "batch_cpu_us": [],
                                       "collect_cpu_us": [], "collect_batch_cpu_us": []}
        for _ in range(reps):
            for batch in (False, True):
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    gc.collect()
                    t0 = time.thread_time_ns()
                    tasks = (engine.add_tasks(noop, [(i,) for i in range(N)]) if batch
                             else [engine.add_task(noop, i) for i in range(N)])
                    t1 = time.thread_time_ns()
                    c0 = _thread_cpu_ns(collector.native_id)
                finally:
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                time.sleep(0.3)  # the collector alone settles them
                for t in tasks:
                    t.wait(60)
                c1 = _thread_cpu_ns(collector.native_id)
                got["batch_cpu_us" if batch else "submit_cpu_us"].append((t1 - t0) / N / 1e3)
                got["collect_batch_cpu_us" if batch else "collect_cpu_us"].append(
                    (c1 - c0) / N / 1e3)
                del tasks
    finally:
        engine.shutdown(wait_for_completion=False, timeout=10)
    return {k: round(statistics.median(v), 3) for k, v in got.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.submit_cpu",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--root", help="a checkout whose catzilla_mp to measure")
    args = ap.parse_args(argv)
    if args.root:
        sys.path.insert(0, os.path.abspath(args.root))
        for name in [m for m in sys.modules if m == "catzilla_mp" or m.startswith("catzilla_mp.")]:
            del sys.modules[name]
    import catzilla_mp
    res = measure(args.reps)
    res["code"] = os.path.dirname(os.path.dirname(os.path.abspath(catzilla_mp.__file__)))
    res["load_average"] = os.getloadavg()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
