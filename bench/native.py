"""Benchmarks of the native core: ``python -m bench.native [--json] [--quick]``.

Not a test: figures depend on the machine and its load. Throughputs are the
best of a few repetitions (the least disturbed run on a shared machine),
latencies are percentiles of one run.

    c_mpmc_items_per_s          2 producer + 2 consumer processes in C, one task
                                ring, batches of 32 (push_many/pop_many)
    c_mpmc_single_items_per_s   the same with single czmp_ring_push/pop
    py_push_pop_per_s           one Python thread: submit a 64-byte payload into
                                a slot (czmp_tasks_submit_inline: inline copy +
                                ring push) and take it back (czmp_tasks_take_copy:
                                ring pop + copy out); slots are recycled between
                                timed rounds, outside the timing
    py_push_pop_chunk_per_s     the same payload through an arena chunk from
                                Python: alloc, memmove, push, pop, read, free
    py_batch_push_pop_per_s     ring push_many + pop_many of 256 values
    arena_alloc_free_ns         C, alloc + free pair, {"64": .., "65536": ..}
    wake_round_trip_us_p50/p99  C: submit to a worker process asleep in
                                czmp_tasks_take, wait for its result

The C parts run bench/native_driver.c, compiled here with gcc against the
core's own sources (catzilla_mp/native/*.c).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from catzilla_mp._core import Segment, SizeClass, state_gen, state_make, SLOT_FREE
from catzilla_mp._native import ffi, lib
from catzilla_mp.segment_janitor import new_segment_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "catzilla_mp" / "native"
DRIVER = pathlib.Path(__file__).resolve().parent / "native_driver.c"


# ---- C side ------------------------------------------------------------------

def build_driver(workdir: str) -> str:
    exe = os.path.join(workdir, "czmp_native_driver")
    sources = [str(DRIVER)] + sorted(str(p) for p in NATIVE.glob("*.c"))
    subprocess.run(["gcc", "-O2", "-std=gnu11", "-march=native", f"-I{NATIVE}", *sources,
                    "-lpthread", "-lrt", "-o", exe], check=True)
    return exe


def run_driver(exe: str, *args) -> str:
    name = "/" + new_segment_name()   # unlinked by the driver right after creation
    out = subprocess.run([exe, args[0], name, *map(str, args[1:])], check=True,
                         capture_output=True, text=True, timeout=300)
    return out.stdout


def c_mpmc(exe: str, items: int, batch: int, reps: int) -> float:
    best = 0.0
    for _ in range(reps):
        n, secs = run_driver(exe, "mpmc", 2, 2, items, batch).split()
        best = max(best, int(n) / float(secs))
    return best


def c_arena(exe: str, size: int, iters: int, reps: int) -> float:
    return min(float(run_driver(exe, "arena", size, iters)) for _ in range(reps))


def c_wake(exe: str, rounds: int, gap_us: int) -> tuple[float, float]:
    rts = [float(x) for x in run_driver(exe, "wake", rounds, gap_us).split()]
    return statistics.median(rts), rts[min(len(rts) - 1, int(len(rts) * 0.99))]


# ---- Python side ---------------------------------------------------------------

def _segment(nslots: int) -> Segment:
    seg = Segment.create(new_segment_name(), nslots=nslots, nworkers=2, nfuncs=1,
                         classes=[SizeClass(256, 1024)], populate=True)
    seg.unlink()   # the mapping stays; nothing is left in /dev/shm
    return seg


def py_push_pop(items: int, reps: int) -> float:
    nslots = 4096
    seg = _segment(nslots)
    S = seg.raw
    payload = b"p" * 64
    idx, ln, buf = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("char[]", 256)
    submit, take = lib.czmp_tasks_submit_inline, lib.czmp_tasks_take_copy
    best = 0.0
    try:
        for _ in range(reps):
            done, elapsed = 0, 0.0
            while done < items:
                t0 = time.perf_counter()
                for i in range(nslots):
                    submit(S, 2, i, 0, i, payload, 64)
                    take(S, 0, idx, buf, 256, ln, 0)
                elapsed += time.perf_counter() - t0
                done += nslots
                for i in range(nslots):   # recycle, untimed: RUNNING -> FREE
                    st = lib.czmp_slot_state(S, i)
                    lib.czmp_slot_cas(S, i, st, state_make(state_gen(st) + 1, 0, SLOT_FREE))
            best = max(best, done / elapsed)
    finally:
        seg.detach()
    return best


def py_push_pop_chunk(items: int, reps: int) -> float:
    seg = _segment(64)
    S = seg.raw
    ring = lib.czmp_segment_task_ring(S, 0)
    payload = b"p" * 64
    h, v = ffi.new("uint64_t *"), ffi.new("uint32_t *")
    alloc, ptr, free = lib.czmp_arena_alloc, lib.czmp_arena_ptr, lib.czmp_arena_free
    push, pop, memmove, buffer = lib.czmp_ring_push, lib.czmp_ring_pop, ffi.memmove, ffi.buffer
    best = 0.0
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(items):
                alloc(S, 64, 1, h)
                hh = h[0]
                memmove(ptr(S, hh), payload, 64)
                push(ring, hh & 0xFFFFFFFF)
                pop(ring, v)
                buffer(ptr(S, hh), 64)[:]
                free(S, hh, 1)
            best = max(best, items / (time.perf_counter() - t0))
    finally:
        seg.detach()
    return best


def py_batch_push_pop(items: int, reps: int, batch: int = 256) -> float:
    seg = _segment(1024)
    ring = lib.czmp_segment_task_ring(seg.raw, 0)
    buf = ffi.new("uint32_t[]", list(range(batch)))
    push_many, pop_many = lib.czmp_ring_push_many, lib.czmp_ring_pop_many
    rounds = max(1, items // batch)
    best = 0.0
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(rounds):
                push_many(ring, buf, batch)
                pop_many(ring, buf, batch)
            best = max(best, rounds * batch / (time.perf_counter() - t0))
    finally:
        seg.detach()
    return best


# ---- report ----------------------------------------------------------------------

TARGETS = {
    "c_mpmc_items_per_s": 20e6,
    "py_push_pop_per_s": 1e6,
    "py_batch_push_pop_per_s": 5e6,
}


def measure(quick: bool) -> dict:
    reps = 3
    with tempfile.TemporaryDirectory(prefix="czmp-bench-") as tmp:
        exe = build_driver(tmp)
        c_items = 4_000_000 if quick else 20_000_000
        res = {
            "c_mpmc_items_per_s": c_mpmc(exe, c_items, 32, reps),
            "c_mpmc_single_items_per_s": c_mpmc(exe, c_items // 2, 1, reps),
            "arena_alloc_free_ns": {
                "64": c_arena(exe, 64, 500_000 if quick else 2_000_000, reps),
                "65536": c_arena(exe, 65536, 500_000 if quick else 2_000_000, reps),
            },
        }
        p50, p99 = c_wake(exe, 200 if quick else 1000, 2000)
        res["wake_round_trip_us_p50"] = p50
        res["wake_round_trip_us_p99"] = p99
    py_items = 200_000 if quick else 1_000_000
    res["py_push_pop_per_s"] = py_push_pop(py_items, reps)
    res["py_push_pop_chunk_per_s"] = py_push_pop_chunk(py_items // 2, reps)
    res["py_batch_push_pop_per_s"] = py_batch_push_pop(py_items * 5, reps)
    res["load_avg_1m"] = os.getloadavg()[0]
    res["cpus"] = os.cpu_count()
    return res


def table(res: dict) -> str:
    rows = [("metric", "value", "target")]
    for key, val in res.items():
        if isinstance(val, dict):
            for sub, v in val.items():
                rows.append((f"{key}[{sub}]", f"{v:,.1f}", ""))
            continue
        target = TARGETS.get(key)
        mark = "" if target is None else (f">= {target:,.0f} " + ("ok" if val >= target else "MISSED"))
        rows.append((key, f"{val:,.1f}" if isinstance(val, float) else str(val), mark))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.native", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, under 30 s")
    args = ap.parse_args(argv)
    res = measure(args.quick)
    print(json.dumps(res) if args.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
