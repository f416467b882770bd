"""Native tasks against Python tasks: ``python -m bench.native_tasks [--json] [--quick]``.

Two kernels, each submitted three ways to the same engines:

    mandel    total escape iterations of a 96 x 96 Mandelbrot tile (floating point,
              a latency-bound loop: the hard case for a compiler's speed-up)
    checksum  a 32-bit multiply-add checksum over a 1 MiB bytes argument (the
              bytes travel to the worker through shared memory with every task)

    python    the Python function, as any task runs
    numba     the same function with compile_to_c=True (numba, nogil, in each worker)
    c         the same loop in C, built by TaskCompiler.compile_c (cffi)

on engines of 1 worker x 1 thread, 1 worker x 2 threads (threads scaling:
native code runs without the GIL) and N workers x 1 thread (N = cores),
all alive at once. Each figure is tasks per second over a batch, after a
warm-up that compiles (numba) or loads (C) in every worker; those one-off
costs are reported apart:

    compile.numba_worker_ms   per worker: numba import + compile (first task's compile_ms)
    compile.c_build_ms        in the app: building the C source (fresh private cache)
    compile.c_load_ms         per worker: loading the built module (first task's compile_ms)

Rounds are interleaved over engines and kinds (1x1 python, 1x1 numba, 1x1
c, 1x2 python, ...; then again) and each figure is the best round: on a
shared machine, the least disturbed one. Ratios compare figures of one run.
Targets (issue 17): numba >= 20x the Python task's throughput; threads
scaling (1 -> 2 threads) >= 1.8x. On a loaded machine the threads scaling
of *Python* tasks (the GIL-bound control, ideally 1.0) shows how much of
a scaling figure the scheduler's share gave rather than parallelism, and
``workers_cpu_per_wall_s`` (worker CPU seconds per wall second) shows the
parallelism itself: one worker's Python tasks cannot pass ~1 (the GIL),
its native tasks can reach its thread count when the cores are free.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import psutil

from catzilla_mp import BackgroundTasks, TaskCompiler

#: The tile every task computes: region, step, size, iteration cap.
TILE = (-2.0, -1.25, 2.5 / 96, 96, 96, 200)

MANDEL_C = """
#include <stdint.h>
int64_t mandel_c(double x0, double y0, double step, int64_t w, int64_t h, int64_t max_iter) {
    int64_t total = 0;
    for (int64_t j = 0; j < h; j++) {
        for (int64_t i = 0; i < w; i++) {
            double cr = x0 + i * step, ci = y0 + j * step, zr = 0.0, zi = 0.0;
            int64_t n = 0;
            while (n < max_iter && zr * zr + zi * zi <= 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                n++;
            }
            total += n;
        }
    }
    return total;
}
"""
MANDEL_DECL = ("int64_t mandel_c(double x0, double y0, double step, int64_t w, int64_t h, "
               "int64_t max_iter)")


def mandel(x0: float, y0: float, step: float, w: int, h: int, max_iter: int) -> int:
    """Total escape-time iterations of the tile (the Python and the numba kernel)."""
    total = 0
    for j in range(h):
        for i in range(w):
            cr = x0 + i * step
            ci = y0 + j * step
            zr = 0.0
            zi = 0.0
            n = 0
            while n < max_iter and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
                n += 1
            total += n
    return total


CHECKSUM_C = """
#include <stdint.h>
#include <stddef.h>
int64_t checksum_c(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s = (s * 31 + p[i]) & 0xFFFFFFFFu;
    return (int64_t)s;
}
"""
CHECKSUM_DECL = "int64_t checksum_c(const uint8_t *p, size_t n)"
#: The buffer every checksum task reads (sent with each task).
BUFFER = bytes(range(256)) * 4096


def checksum(data: bytes) -> int:
    """32-bit multiply-add checksum (the Python and the numba kernel)."""
    s = 0
    for b in data:
        s = (s * 31 + b) & 0xFFFFFFFF
    return s


#: kernel -> (function, its arguments, C source, C declaration)
KERNELS = {
    "mandel": (mandel, TILE, MANDEL_C, MANDEL_DECL),
    "checksum": (checksum, (BUFFER,), CHECKSUM_C, CHECKSUM_DECL),
}


def _submit(engine: BackgroundTasks, kind: str, kernel: tuple, ctask) -> object:
    fn, args = kernel[0], kernel[1]
    if kind == "python":
        return engine.add_task(fn, *args)
    if kind == "numba":
        return engine.add_task(fn, *args, compile_to_c=True)
    if fn is checksum:
        return engine.add_task(ctask, args[0], len(args[0]))
    return engine.add_task(ctask, *args)


def _warm(engine: BackgroundTasks, kind: str, kernel: tuple, ctask, threads: int,
          workers: int, expected: int) -> list[float]:
    """Run tasks until every worker has compiled/loaded; its one-off cost per worker (ms)."""
    costs: dict[int, float] = {}
    for _ in range(50):
        tasks = [_submit(engine, kind, kernel, ctask) for _ in range(2 * threads * workers)]
        for t in tasks:
            if t.wait(300) != expected:
                raise SystemExit(f"{kind}: the kernel gave a different answer")
            stats = t.get_stats()
            if kind != "python" and not stats.compiled:
                raise SystemExit(f"{kind}: the task did not run compiled: {stats.compile_error}")
            if stats.compile_ms:
                costs[stats.worker_id] = max(costs.get(stats.worker_id, 0.0), stats.compile_ms)
        if kind == "python" or len(costs) >= workers:
            break
    return sorted(costs.values())


def _workers_cpu_s() -> float:
    """CPU seconds used so far by this process's children (every engine's workers)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _throughput(engine: BackgroundTasks, kind: str, kernel: tuple, ctask,
                n: int) -> tuple[float, float]:
    """(tasks per second, worker CPU seconds per wall second) over one batch."""
    cpu0 = _workers_cpu_s()
    t0 = time.perf_counter()
    tasks = [_submit(engine, kind, kernel, ctask) for _ in range(n)]
    for t in tasks:
        t.wait(600)
    wall = time.perf_counter() - t0
    return n / wall, (_workers_cpu_s() - cpu0) / wall


def run_kernel(name: str, engines: dict, *, quick: bool, rounds: int, cache: str) -> dict:
    kernel = KERNELS[name]
    fn, args, source, decl = kernel
    expected = fn(*args)
    t0 = time.perf_counter()
    ctask = TaskCompiler(cache_dir=cache).compile_c(source, decl)
    c_build_ms = (time.perf_counter() - t0) * 1e3
    # a batch is ~0.5-1 s of work at one thread
    batch = {"python": 6 if quick else 10, "numba": 120 if quick else 250,
             "c": 120 if quick else 250}
    costs: dict[str, dict[str, list[float]]] = {"numba": {}, "c": {}}
    for cname, (engine, workers, threads) in engines.items():
        for kind in batch:
            cost = _warm(engine, kind, kernel, ctask, threads, workers, expected)
            if kind in costs:
                costs[kind][cname] = cost
    every: dict[str, dict[str, list[float]]] = {k: {c: [] for c in engines} for k in batch}
    cpu: dict[str, dict[str, list[float]]] = {k: {c: [] for c in engines} for k in batch}
    for _ in range(rounds):
        for cname, (engine, _, _) in engines.items():
            for kind, n in batch.items():
                rate, busy = _throughput(engine, kind, kernel, ctask, n)
                every[kind][cname].append(rate)
                cpu[kind][cname].append(busy)
    best = {k: {c: max(v) for c, v in per.items()} for k, per in every.items()}
    allc = [c for c in engines if c not in ("1x1", "1x2")][0]
    ratios = {
        "numba_vs_python_1x1": best["numba"]["1x1"] / best["python"]["1x1"],
        "c_vs_python_1x1": best["c"]["1x1"] / best["python"]["1x1"],
        "numba_vs_python_all_cores": best["numba"][allc] / best["python"][allc],
        "numba_threads_scaling_1_to_2": best["numba"]["1x2"] / best["numba"]["1x1"],
        "c_threads_scaling_1_to_2": best["c"]["1x2"] / best["c"]["1x1"],
        "python_threads_scaling_1_to_2": best["python"]["1x2"] / best["python"]["1x1"],
        f"numba_process_scaling_1_to_{allc}": best["numba"][allc] / best["numba"]["1x1"],
    }
    return {
        "answer": expected, "batch": batch,
        "tasks_per_s": best, "tasks_per_s_every_round": every,
        "round_spread_max_over_min": {k: {c: max(v) / min(v) for c, v in per.items()}
                                      for k, per in every.items()},
        # CPU seconds the workers used per wall second (best round): at most ~1 for
        # Python tasks in one worker (the GIL), up to the thread count for native ones,
        # whatever the load does to throughput
        "workers_cpu_per_wall_s": {k: {c: max(v) for c, v in per.items()}
                                   for k, per in cpu.items()},
        "compile": {"numba_worker_ms": costs["numba"], "c_build_ms": c_build_ms,
                    "c_load_ms": costs["c"]},
        "ratios": ratios,
        "targets": {"numba_vs_python_ge_20": ratios["numba_vs_python_1x1"] >= 20,
                    "numba_threads_scaling_ge_1_8": ratios["numba_threads_scaling_1_to_2"] >= 1.8,
                    "c_threads_scaling_ge_1_8": ratios["c_threads_scaling_1_to_2"] >= 1.8},
    }


def run(*, quick: bool = False, rounds: int = 3, kernels: tuple = tuple(KERNELS)) -> dict:
    cores = os.cpu_count() or 1
    shapes = {"1x1": (1, 1), "1x2": (1, 2), f"{cores}x1": (cores, 1)}
    cache = tempfile.mkdtemp(prefix="czmp-bench-native-")
    engines: dict[str, tuple] = {}
    load_before = list(os.getloadavg())
    try:
        for cname, (workers, threads) in shapes.items():
            engines[cname] = (BackgroundTasks(
                workers=workers, min_workers=workers, max_workers=workers,
                enable_auto_scaling=False, threads_per_worker=threads, memory_pool_mb=64,
                queue_size=1024), workers, threads)
        results = {k: run_kernel(k, engines, quick=quick, rounds=rounds, cache=cache)
                   for k in kernels}
    finally:
        for engine, _, _ in engines.values():
            engine.shutdown(timeout=30)
        shutil.rmtree(cache, ignore_errors=True)
    return {"cores": cores, "rounds": rounds, "engines": list(shapes), "kernels": results,
            "loadavg_before": load_before, "loadavg_after": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.native_tasks",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller batches, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per configuration")
    ap.add_argument("--kernel", action="append", choices=sorted(KERNELS),
                    help="run only this kernel (repeatable)")
    args = ap.parse_args(argv)
    try:
        import numba  # noqa: F401
    except ImportError:
        print("bench.native_tasks needs numba (pip install numba)", file=sys.stderr)
        return 2
    result = run(quick=args.quick, rounds=args.rounds or (2 if args.quick else 3),
                 kernels=tuple(args.kernel or KERNELS))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for kname, res in result["kernels"].items():
        print(f"kernel {kname}: tasks/s")
        for kind, per in res["tasks_per_s"].items():
            print(f"  {kind:7s}" + "".join(f"  {c}: {v:9.1f}" for c, v in per.items()))
        for name, value in res["ratios"].items():
            print(f"  {name:34s} {value:8.2f}")
        print(f"  compile: {res['compile']}")
        print(f"  targets: {res['targets']}")
    print(f"loadavg before {result['loadavg_before']} after {result['loadavg_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
