"""``python -m bench.durable``: what the durable journal costs, with Huey's SqliteHuey as the peer.

Measures in one run, repetitions interleaved (memory, durable, huey, memory, ...),
2 worker processes each, ``--tasks`` no-op tasks per trial:

    submit_per_s        add_task calls per second (Huey: ``task(x)`` enqueues)
    batch_submit_per_s  tasks per second through add_tasks (one journal transaction);
                        Huey has no batch enqueue: its figure is submit_per_s again
    end_to_end_per_s    tasks per second from the first submission to the last result

for ``memory`` (catzilla_mp, no journal), ``durable`` (``durable=`` a SQLite file in a
temporary directory; WAL, synchronous=NORMAL), ``huey`` (SqliteHuey as shipped: WAL,
SQLite's default synchronous=FULL, an fsync per commit; a consumer process with 2
worker threads as ``huey_consumer -w 2``; no-op tasks, so its GIL does not matter) and
``huey_nofsync`` (SqliteHuey(fsync=False): synchronous=OFF, weaker than NORMAL), and
the ratios durable/memory and durable/each Huey; and ``served``: the in-memory trial
from an app process that is a client of a ``catzilla-mp serve`` process (2 workers),
what one engine per server costs an app process (served/memory). ``--json`` prints one JSON object. Huey is the bench
extra (``pip install huey``); without it its figures are null.

The journal's file lives where ``--dir`` says (default: a temporary directory, which
is on disk here, not tmpfs: ``df`` it to know what is measured).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
#: Tasks per Huey trial at most: at its ~100-300 tasks/s with fsync a trial of
#: thousands takes minutes; rates are per second, so a smaller count compares.
HUEY_TASKS = 1000


def noop(x: int) -> int:
    return x


def _catzilla(kind: str, n: int, workdir: str) -> dict:
    from catzilla_mp import BackgroundTasks

    durable = os.path.join(workdir, f"journal-{time.monotonic_ns()}.db") \
        if kind == "durable" else None
    engine = BackgroundTasks(workers=2, min_workers=2, enable_auto_scaling=False,
                             queue_size=max(4096, 2 * n), memory_pool_mb=64, durable=durable)
    try:
        engine.add_task(noop, 0).wait(60)  # workers up
        t0 = time.perf_counter()
        tasks = [engine.add_task(noop, i) for i in range(n)]
        t1 = time.perf_counter()
        for t in tasks:
            t.wait(120)
        t2 = time.perf_counter()
        b0 = time.perf_counter()
        batch = engine.add_tasks(noop, [(i,) for i in range(n)])
        b1 = time.perf_counter()
        for t in batch:
            t.wait(120)
    finally:
        engine.shutdown()
    if durable:
        for side in ("", "-wal", "-shm", ".lock"):
            try:
                os.unlink(durable + side)
            except FileNotFoundError:
                pass
    return {"submit_per_s": n / (t1 - t0), "batch_submit_per_s": n / (b1 - b0),
            "end_to_end_per_s": n / (t2 - t0)}


def _served(n: int, workdir: str) -> dict:
    """The same trial through a `catzilla-mp serve` process (2 workers): an app process's cost."""
    from catzilla_mp import BackgroundTasks

    sock = os.path.join(workdir, f"s{time.monotonic_ns() % 10**9}", "czmp.sock")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from catzilla_mp.cli import main; sys.exit(main())",
         "serve", "--socket", sock, "--workers", "2", "--queue-size", str(max(4096, 2 * n)),
         "--memory-pool-mb", "64"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("catzilla-mp serve did not start")
            time.sleep(0.05)
        engine = BackgroundTasks(server=sock)
        try:
            engine.add_task(noop, 0).wait(60)
            t0 = time.perf_counter()
            tasks = [engine.add_task(noop, i) for i in range(n)]
            t1 = time.perf_counter()
            for t in tasks:
                t.wait(120)
            t2 = time.perf_counter()
            b0 = time.perf_counter()
            batch = engine.add_tasks(noop, [(i,) for i in range(n)])
            b1 = time.perf_counter()
            for t in batch:
                t.wait(120)
        finally:
            engine.shutdown()
    finally:
        server.terminate()
        server.wait(60)
    return {"submit_per_s": n / (t1 - t0), "batch_submit_per_s": n / (b1 - b0),
            "end_to_end_per_s": n / (t2 - t0)}


def make_huey(path: str, fsync: Optional[bool] = None):
    from huey import SqliteHuey

    # fsync=None: SQLite's default synchronous=FULL (an fsync per commit, as Huey ships);
    # fsync=False: synchronous=OFF, weaker than the journal's NORMAL
    huey = SqliteHuey("czmp-bench", filename=path, fsync=fsync)
    return huey, huey.task(name="noop")(noop)


def consume(path: str, workers: int, fsync: Optional[bool] = None) -> None:
    """The Huey consumer process of a trial (``python -c`` runs it)."""
    huey, _ = make_huey(path, fsync)
    huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                         check_worker_health=False).run()


def _huey(n: int, workdir: str, fsync: Optional[bool]) -> Optional[dict]:
    try:
        import huey  # noqa: F401
    except ImportError:
        return None
    n = min(n, HUEY_TASKS)
    path = os.path.join(workdir, f"huey-{time.monotonic_ns()}.db")
    hq, task = make_huey(path, fsync)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    consumer = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bench.durable import consume; "
         f"consume(sys.argv[1], 2, {fsync!r})", path], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        task(0).get(blocking=True, timeout=60)  # consumer up
        t0 = time.perf_counter()
        results = [task(i) for i in range(n)]
        t1 = time.perf_counter()
        for r in results:
            r.get(blocking=True, timeout=120, backoff=1.0, max_delay=0.01)
        t2 = time.perf_counter()
    finally:
        consumer.terminate()
        consumer.wait(30)
        for side in ("", "-wal", "-shm"):
            try:
                os.unlink(path + side)
            except FileNotFoundError:
                pass
    rate = n / (t1 - t0)
    return {"submit_per_s": rate, "batch_submit_per_s": rate, "end_to_end_per_s": n / (t2 - t0)}


def run(n: int, reps: int, workdir: str) -> dict:
    trials: dict[str, list[dict]] = {"memory": [], "durable": [], "served": [], "huey": [],
                                     "huey_nofsync": []}
    for _ in range(reps):
        trials["memory"].append(_catzilla("memory", n, workdir))
        trials["durable"].append(_catzilla("durable", n, workdir))
        trials["served"].append(_served(n, workdir))
        for peer, fsync in (("huey", None), ("huey_nofsync", False)):
            h = _huey(n, workdir, fsync)
            if h is not None:
                trials[peer].append(h)
    out: dict = {"tasks": n, "huey_tasks": min(n, HUEY_TASKS), "reps": reps, "workers": 2,
                 "dir": workdir}
    keys = ("submit_per_s", "batch_submit_per_s", "end_to_end_per_s")
    for peer, runs in trials.items():
        for key in keys:
            values = [r[key] for r in runs]
            out[f"{peer}_{key}"] = round(statistics.median(values)) if values else None
            out[f"{peer}_{key}_spread"] = (round(min(values)), round(max(values))) \
                if values else None
    for key in keys:
        d, m = out[f"durable_{key}"], out[f"memory_{key}"]
        out[f"durable_over_memory_{key}"] = round(d / m, 3) if d and m else None
        sv = out[f"served_{key}"]
        out[f"served_over_memory_{key}"] = round(sv / m, 3) if sv and m else None
        for peer in ("huey", "huey_nofsync"):
            h = out[f"{peer}_{key}"]
            out[f"durable_over_{peer}_{key}"] = round(d / h, 2) if d and h else None
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=5000, help="no-op tasks per trial")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--dir", default=None, help="where the journal and Huey's file go")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    workdir = args.dir or tempfile.mkdtemp(prefix="czmp-bench-durable-")
    try:
        out = run(args.tasks, args.reps, workdir)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:45} {value}")
    return 0


if __name__ == "__main__":
    # run as bench.durable, not __main__: the tasks are then found by that name in the
    # workers, the journal and Huey's consumer, as an app's would be
    from bench import durable as _self

    sys.exit(_self.main())
