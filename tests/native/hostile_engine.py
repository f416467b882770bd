"""Child process of test_hostile_segment.py: a real engine whose segment is vandalised while it runs.

    python hostile_engine.py REGION SEED SECONDS

Starts a BackgroundTasks engine (2 workers, 32 slots), runs tasks, then for
SECONDS seconds writes random bytes into REGION of its live segment (a thread
of this process does the writing, as a stray process of the same uid could)
while tasks keep being submitted and waited for. Every outcome is allowed
except dying: a task may fail, time out, the engine may refuse work or
declare itself broken. At the end it shuts the engine down and prints one
JSON line: the outcome counts and the exit code of every worker that ended,
so the parent can tell a worker killed by SIGSEGV from one that exited.

Regions: header (each named field of czmp_header_t but the class table),
classes (the arena's class table in the header), task_rings, result_ring,
slots, workers, funcs, arena_tags (the holder tags of every class).
"""
from __future__ import annotations

import json
import operator
import random
import sys
import threading
import time

from catzilla_mp import BackgroundTasks
from catzilla_mp._native import ffi, lib
from catzilla_mp.errors import CatzillaMPError

#: Header fields worth a write each (everything but magic and the class table,
#: which has a region of its own), as (name, size).
HEADER_FIELDS = [
    "version", "header_size", "total_size", "owner_uid", "owner_pid", "owner_start",
    "nslots", "nworkers", "nfuncs", "nclasses", "ring_cap", "ready", "tasks_off",
    "results_off", "slots_off", "workers_off", "funcs_off", "arena_off", "ring_bytes",
    "shutdown", "task_wake", "result_wake",
]


def regions(hdr) -> dict[str, list[tuple[int, int]]]:
    """(offset, length) ranges of each region, from the header as created (read once)."""
    ring_bytes = hdr.ring_bytes
    types = dict(ffi.typeof("czmp_header_t").fields)
    fields = [(ffi.offsetof("czmp_header_t", n), ffi.sizeof(types[n].type)) for n in HEADER_FIELDS]
    classes_off = ffi.offsetof("czmp_header_t", "classes")
    return {
        "header": fields,
        "classes": [(classes_off + 64 * c + k, 8) for c in range(hdr.nclasses) for k in (0, 8, 16, 24, 32)],
        "task_rings": [(hdr.tasks_off, 4 * ring_bytes)],
        "result_ring": [(hdr.results_off, ring_bytes)],
        "slots": [(hdr.slots_off, hdr.nslots * lib.CZMP_SLOT_SIZE)],
        "workers": [(hdr.workers_off, hdr.nworkers * ffi.sizeof("czmp_worker_t"))],
        "funcs": [(hdr.funcs_off, hdr.nfuncs * ffi.sizeof("czmp_func_t"))],
        "arena_tags": [(hdr.classes[c].tags_off, 4 * hdr.classes[c].nchunks)
                       for c in range(hdr.nclasses)],
    }


class Vandal(threading.Thread):
    """Writes random bytes into the chosen ranges, a few writes every millisecond or so."""

    def __init__(self, base, ranges, rng: random.Random) -> None:
        super().__init__(name="vandal", daemon=True)
        self.base, self.ranges, self.rng = base, ranges, rng
        self.stop = threading.Event()
        self.writes = 0

    def run(self) -> None:
        mem = ffi.cast("unsigned char *", self.base)
        while not self.stop.is_set():
            off, length = self.rng.choice(self.ranges)
            n = min(length, self.rng.choice((1, 2, 4, 8)))
            at = off + self.rng.randrange(0, max(1, length - n + 1))
            for k in range(n):
                mem[at + k] = self.rng.choice((0, 0xFF, self.rng.randrange(256)))
            self.writes += 1
            if self.writes % 4 == 0:
                time.sleep(0.001)


def main() -> int:
    region, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(seed)
    exits: list[int] = []
    from catzilla_mp.backends.process import supervisor as sup_mod
    on_exit = sup_mod.Supervisor._on_exit

    def record_exit(self, w, code):
        exits.append(code)
        return on_exit(self, w, code)

    sup_mod.Supervisor._on_exit = record_exit
    counts = {"ok": 0, "task_error": 0, "timeout": 0, "refused": 0, "other": 0}
    engine = BackgroundTasks(workers=2, max_workers=2, enable_auto_scaling=False, queue_size=32,
                             memory_pool_mb=4, populate=False, queue_full_timeout=0.5,
                             retry_backoff_base=0.001, retry_backoff_cap=0.01,
                             timeout_grace_ms=200, shutdown_timeout=5)
    try:
        assert engine.add_task(operator.mul, 6, 7).wait(60) == 42  # workers are up
        seg = engine._backend.seg
        ranges = regions(seg.header)[region]
        vandal = Vandal(lib.czmp_segment_base(seg.raw), ranges, rng)
        vandal.start()
        # rounds of 8 tasks for as long as asked (not a count of rounds: on a
        # healthy engine a round takes a millisecond, and the vandal needs time)
        deadline = time.monotonic() + seconds
        r = 0
        while time.monotonic() < deadline:
            r += 1
            futs = []
            for i in range(8):
                try:
                    if i % 4 == 0:
                        futs.append(engine.add_task(bytes, 3000 + i, timeout_ms=2000, max_retries=1))
                    else:
                        futs.append(engine.add_task(operator.mul, r, i, timeout_ms=2000, max_retries=1))
                except CatzillaMPError:
                    counts["refused"] += 1
                except Exception:  # noqa: BLE001 - any other typed error is allowed too
                    counts["other"] += 1
            # one budget per round, not per task: a vandalised ring may strand
            # tasks (they time out here: allowed), and the run must still end
            round_end = time.monotonic() + 1.0
            for f in futs:
                try:
                    f.wait(max(0.0, round_end - time.monotonic()))
                    counts["ok"] += 1
                except TimeoutError:
                    counts["timeout"] += 1
                except CatzillaMPError:
                    counts["task_error"] += 1
                except Exception:  # noqa: BLE001
                    counts["other"] += 1
        vandal.stop.set()
        vandal.join()
        counts["writes"] = vandal.writes
    finally:
        engine.shutdown(wait_for_completion=False, timeout=5)
    print(json.dumps({"region": region, "seed": seed, "counts": counts, "worker_exits": exits}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
