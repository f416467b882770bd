"""The workloads every peer runs, and the task functions they send to workers.

A workload is a function ``run(peer, p, deadline) -> {metric: value}``: ``peer`` is a started
:class:`bench.peers.Peer` (or a Peer class, see ``Workload.engine``), ``p``
the size parameters (``QUICK`` or ``FULL``), ``deadline`` a ``time.perf_counter()`` instant
after which every wait gives up, so a stuck peer fails its workload instead of the run.
Both ``python -m bench`` and ``python -m bench.engine`` run these same functions.

Task functions live at module level so every engine can pickle them by reference; each takes
a distinct task index first (see ``peers.Catzilla.submit`` for why).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

MIB = 1 << 20


# ---------------------------------------------------------------------------- task functions

def noop(i):
    return i


def cpu_work(i, iterations):
    """Pure-Python CPU work: holds the GIL the whole time, as real app code does."""
    x = 0
    for k in range(iterations):
        x = (x + k * k) % 1_000_003
    return x


def spin(i, ms):
    """Busy for ``ms`` milliseconds of wall time (CPU-bound, duration fixed)."""
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass
    return i


def payload_size(i, data):
    """Receives a large payload; returns something small so the figure is one direction."""
    return len(data) if isinstance(data, (bytes, bytearray)) else int(data.nbytes)


# ---------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Params:
    noop_tasks: int          # no-op throughput and submission rate
    round_trips: int         # sequential round trips (after warm-up)
    cpu_tasks: int           # CPU-bound tasks for the speedup
    cpu_iterations: int      # loop length of one CPU-bound task (~85 ms per million here)
    payloads: int            # 16 MiB payloads per transfer workload
    payload_bytes: int
    mixed_seconds: float     # duration of the web-style load
    idle_seconds: float      # idle CPU measurement window
    timeout: float           # per workload


# The quick CPU run splits the same work in 16 tasks, not 8: with dynamic dispatch a worker
# that starts late can be left one task behind at the end, 25% of the run with 8 tasks of
# ~50 ms, 6% with 16 of ~25 ms (the engine's cost per task is microseconds either way).
QUICK = Params(noop_tasks=5_000, round_trips=500, cpu_tasks=16, cpu_iterations=300_000,
               payloads=6, payload_bytes=16 * MIB, mixed_seconds=1.5, idle_seconds=1.5,
               timeout=30.0)
FULL = Params(noop_tasks=20_000, round_trips=3_000, cpu_tasks=16, cpu_iterations=1_500_000,
              payloads=16, payload_bytes=16 * MIB, mixed_seconds=4.0, idle_seconds=4.0,
              timeout=90.0)


def left(deadline: float) -> float:
    """Seconds until ``deadline``; raises TimeoutError once it has passed."""
    rest = deadline - time.perf_counter()
    if rest <= 0:
        raise TimeoutError("workload deadline passed")
    return rest


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------------------- workloads

def noop_single(peer, p: Params, deadline: float) -> dict:
    """Submit ``noop_tasks`` no-ops one call each, then wait for all: end-to-end rate."""
    peer.wait(peer.submit(noop, -1), left(deadline))  # warm: worker started, fn cached
    n = p.noop_tasks
    t0 = time.perf_counter()
    handles = [peer.submit(noop, i) for i in range(n)]
    t1 = time.perf_counter()
    for h in handles:
        peer.wait(h, left(deadline))
    t2 = time.perf_counter()
    return {"tasks_per_s": n / (t2 - t0), "submit_per_s": n / (t1 - t0)}


def noop_batch(peer, p: Params, deadline: float) -> dict:
    """The same no-ops through the library's batch call (add_tasks / map, chunksize 1)."""
    peer.wait(peer.submit(noop, -1), left(deadline))
    n = p.noop_tasks
    args = [(i,) for i in range(n)]
    t0 = time.perf_counter()
    handle = peer.submit_batch(noop, args)
    t1 = time.perf_counter()
    values = peer.wait_batch(handle, left(deadline))
    t2 = time.perf_counter()
    if len(values) != n:
        raise RuntimeError(f"batch returned {len(values)} results for {n} tasks")
    return {"tasks_per_s": n / (t2 - t0), "batch_submit_per_s": n / (t1 - t0)}


def round_trip(peer, p: Params, deadline: float) -> dict:
    """One no-op at a time: submit, wait for its result, repeat. Latency percentiles."""
    for i in range(50):  # warm both workers and every cache on the path
        peer.wait(peer.submit(noop, i), left(deadline))
    lat = []
    for i in range(p.round_trips):
        t0 = time.perf_counter()
        peer.wait(peer.submit(noop, i), left(deadline))
        lat.append(time.perf_counter() - t0)
    return {"p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6}


def cpu_speedup(peer, p: Params, deadline: float) -> dict:
    """``cpu_tasks`` pure-Python tasks on the workers vs. the same tasks run serially in-process."""
    # Warm every worker, not just the first (a worker's first task imports this module:
    # ~10 ms, 5% of the quick parallel run): tasks of ~5 ms, more than there are workers.
    warm = [peer.submit(cpu_work, -1, 60_000) for _ in range(4 * peer.workers)]
    for h in warm:
        peer.wait(h, left(deadline))
    half = p.cpu_tasks // 2

    def serial(indices):
        t0 = time.perf_counter()
        for i in indices:
            cpu_work(i, p.cpu_iterations)
        return time.perf_counter() - t0

    # Serial halves before and after the parallel run, so a drift of the machine's speed
    # (a VM's neighbours, frequency) weighs on both sides alike.
    before = serial(range(half))
    t0 = time.perf_counter()
    handles = [peer.submit(cpu_work, i, p.cpu_iterations) for i in range(p.cpu_tasks)]
    for h in handles:
        peer.wait(h, left(deadline))
    parallel = time.perf_counter() - t0
    after = serial(range(half, p.cpu_tasks))
    return {"speedup": (before + after) / parallel}


def _bare_worker(indices, iterations):
    for i in indices:
        cpu_work(i, iterations)


def cpu_ceiling(peer_cls, p: Params, deadline: float) -> dict:
    """No engine: 2 bare processes split the CPU-bound tasks. What this machine allows."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    half = p.cpu_tasks // 2
    t0 = time.perf_counter()
    _bare_worker(range(half), p.cpu_iterations)
    before = time.perf_counter() - t0
    procs = [ctx.Process(target=_bare_worker, args=(range(k, p.cpu_tasks, 2), p.cpu_iterations))
             for k in range(2)]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(left(deadline))
    parallel = time.perf_counter() - t0
    t0 = time.perf_counter()
    _bare_worker(range(half, p.cpu_tasks), p.cpu_iterations)
    after = time.perf_counter() - t0
    return {"speedup": (before + after) / parallel}


def _payload_rate(peer, p: Params, deadline: float, data) -> dict:
    nbytes = payload_size(0, data)
    # Warm-up, one pipelined round like the measured one: every worker, not just the first,
    # has seen the payload's type (a worker's first NumPy payload imports NumPy: ~50 ms,
    # which the figure is not about), and pools and page tables are built.
    warm = [peer.submit(payload_size, -1, data) for _ in range(p.payloads)]
    for h in warm:
        peer.wait(h, left(deadline))
    t0 = time.perf_counter()
    handles = [peer.submit(payload_size, i, data) for i in range(p.payloads)]
    for h in handles:
        if peer.wait(h, left(deadline)) != nbytes:
            raise RuntimeError("payload arrived with the wrong size")
    elapsed = time.perf_counter() - t0
    return {"mib_per_s": p.payloads * nbytes / MIB / elapsed}


def payload_bytes(peer, p: Params, deadline: float) -> dict:
    """16 MiB ``bytes`` arguments sent to workers, pipelined: MiB/s delivered."""
    return _payload_rate(peer, p, deadline, random.Random(1).randbytes(p.payload_bytes))


def payload_numpy(peer, p: Params, deadline: float) -> dict:
    """16 MiB float64 NumPy arrays sent to workers, pipelined: MiB/s delivered."""
    import numpy
    arr = numpy.random.default_rng(1).random(p.payload_bytes // 8)
    return _payload_rate(peer, p, deadline, arr)


# Mixed web-style load: every 50 ms a burst of short request-side tasks in random priority
# order (3 CRITICAL, 6 HIGH, 12 NORMAL, 9 LOW; 1 ms of CPU each), and every 500 ms one
# 150 ms LOW batch job. Mean load is under half of 2 workers, but it arrives in bursts, so a
# queue forms behind every burst and every long job: an engine with priorities runs the
# CRITICAL tasks next, a FIFO pool after whatever came before them.
_BURST = ["critical"] * 3 + ["high"] * 6 + ["normal"] * 12 + ["low"] * 9
_BURST_EVERY, _SHORT_MS, _LONG_EVERY, _LONG_MS = 0.050, 1.0, 0.500, 150.0


def mixed_web(peer, p: Params, deadline: float) -> dict:
    """Open-loop bursts of short tasks plus long ones; latency of the CRITICAL tasks."""
    for i in range(20):
        peer.wait(peer.submit(spin, i, 0.1), left(deadline))
    rng = random.Random(7)
    submitted, done = {}, {}
    lock = threading.Lock()

    def finisher(k):
        def cb():
            t = time.perf_counter()
            with lock:
                done[k] = t
        return cb

    handles, crit, k = [], [], 0
    start = time.perf_counter()
    bursts = int(p.mixed_seconds / _BURST_EVERY)
    per_long = int(round(_LONG_EVERY / _BURST_EVERY))
    for b in range(bursts):
        target = start + b * _BURST_EVERY
        pause = target - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        batch = [(prio, _SHORT_MS) for prio in _BURST]
        if b % per_long == 0:
            batch.append(("low", _LONG_MS))
        rng.shuffle(batch)
        for prio, ms in batch:
            submitted[k] = time.perf_counter()
            handles.append(peer.submit(spin, k, ms, priority=prio, on_done=finisher(k)))
            if prio == "critical":
                crit.append(k)
            k += 1
        left(deadline)
    for h in handles:
        peer.wait(h, left(deadline))
    # A done-callback may run a moment after wait() returns; give it that moment.
    while len(done) < k and time.perf_counter() < deadline:
        time.sleep(0.001)
    lat = [(done[c] - submitted[c]) * 1e3 for c in crit]
    return {"critical_p50_ms": percentile(lat, 50), "critical_p99_ms": percentile(lat, 99),
            "all_tasks_s": time.perf_counter() - start}


def _cpu_seconds(proc) -> float:
    """CPU time of every thread of ``proc``, in ns precision where Linux gives it.

    /proc/<pid>/task/<tid>/schedstat counts on-CPU nanoseconds; psutil's cpu_times() counts
    10 ms clock ticks, too coarse to tell 0.3% from 1% over a second or two.
    """
    import psutil
    try:
        total = 0
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except FileNotFoundError:
        try:  # not Linux, or the process (or one thread) just went: ticks will do
            t = proc.cpu_times()
            return t.user + t.system
        except psutil.NoSuchProcess:
            return 0.0


def idle_cpu(peer, p: Params, deadline: float) -> dict:
    """CPU the app process and all its children burn while the engine has no work."""
    import psutil
    peer.wait(peer.submit(noop, 0), left(deadline))
    time.sleep(0.2)  # let any post-task housekeeping settle
    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    c0, t0 = sum(map(_cpu_seconds, procs)), time.perf_counter()
    time.sleep(min(p.idle_seconds, left(deadline)))
    c1, t1 = sum(map(_cpu_seconds, procs)), time.perf_counter()
    return {"cpu_percent": 100.0 * (c1 - c0) / (t1 - t0), "processes": len(procs)}


def startup(peer_cls, p: Params, deadline: float):
    """Fresh engine: constructor to the first result. The engine goes on to the next workloads."""
    t0 = time.perf_counter()
    peer = peer_cls(workers=2)
    peer.start()
    peer.wait(peer.submit(noop, 0), left(deadline))
    return {"first_result_ms": (time.perf_counter() - t0) * 1e3}, peer


def stamp(ms):
    """Sleep ``ms`` ms; (this worker's pid, CLOCK_MONOTONIC now: comparable across processes)."""
    time.sleep(ms / 1000)
    return os.getpid(), time.monotonic()


def _serving_pids(peer):
    """Pids of the peer's worker processes serving now; None if the peer cannot say."""
    backend = getattr(getattr(peer, "engine", None), "_backend", None)
    if backend is not None and hasattr(backend, "supervisor"):  # catzilla_mp, process mode
        return [w.pid for w, rec in backend.supervisor.snapshot() if rec.pid == w.pid]
    # ProcessPoolExecutor breaks when a worker dies; multiprocessing.Pool replaces it but
    # may hang for good (a worker killed holding its task queue's lock): neither is measured
    return None


def replacement(peer_cls, p: Params, deadline: float) -> dict:
    """SIGKILL one of 2 workers while tasks are queued: until a new worker completes a task.

    Peers that do not replace a dead worker safely report nothing (see _serving_pids).
    """
    peer = peer_cls(workers=2)
    peer.start()
    try:
        peer.wait(peer.submit(noop, 0), left(deadline))
        pids = _serving_pids(peer)
        if pids is None:
            return {}
        while len(pids) < 2:
            time.sleep(0.001)
            left(deadline)
            pids = _serving_pids(peer)
        old = set(pids)
        handles = [peer.submit(stamp, 2) for _ in range(300)]  # ~0.3 s of work for 2 workers
        time.sleep(0.02)
        killed = time.monotonic()
        os.kill(min(old), signal.SIGKILL)
        first_new = None
        for h in handles:
            budget = min(2.0, left(deadline))  # past the workload's deadline: TimeoutError
            try:  # a peer may lose the dead worker's task (multiprocessing.Pool does)
                pid, done = peer.wait(h, budget)
            except Exception:  # noqa: BLE001 - that task's loss is not what is measured
                continue
            if pid not in old:
                first_new = done if first_new is None else min(first_new, done)
        return {} if first_new is None else {"replacement_ms": (first_new - killed) * 1e3}
    finally:
        peer.shutdown()


def shutdown(peer, p: Params, deadline: float) -> dict:
    """Shutdown of the engine after all the workloads before it, now idle."""
    t0 = time.perf_counter()
    peer.shutdown()
    return {"shutdown_ms": (time.perf_counter() - t0) * 1e3}


# ---------------------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    better: str  # "higher" or "lower"
    label: str


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable
    metrics: tuple
    #: "own": run() gets the peer class, runs on an engine of its own; "creates": run() gets
    #: the peer class and returns (metrics, started peer) for the workloads after it;
    #: "ends": run() shuts the shared engine down.
    engine: str = "shared"
    doc: str = field(default="")


def _w(name, run, *metrics, engine="shared"):
    return Workload(name, run, tuple(Metric(*m) for m in metrics), engine,
                    (run.__doc__ or "").strip())


# In running order: start-up first (its engine serves the rest), shutdown last.
ALL = (
    _w("startup", startup, ("first_result_ms", "ms", "lower", "start-up to first result"),
       engine="creates"),
    _w("noop_single", noop_single, ("tasks_per_s", "tasks/s", "higher", "no-op end-to-end, one by one"),
       ("submit_per_s", "tasks/s", "higher", "submission rate, one by one")),
    _w("noop_batch", noop_batch, ("tasks_per_s", "tasks/s", "higher", "no-op end-to-end, batch"),
       ("batch_submit_per_s", "tasks/s", "higher", "submission rate, batch")),
    _w("round_trip", round_trip, ("p50_us", "µs", "lower", "round trip p50"),
       ("p99_us", "µs", "lower", "round trip p99")),
    _w("cpu_speedup", cpu_speedup, ("speedup", "×", "higher", "CPU-bound speedup over serial")),
    _w("payload_bytes", payload_bytes, ("mib_per_s", "MiB/s", "higher", "16 MiB bytes payloads")),
    _w("payload_numpy", payload_numpy, ("mib_per_s", "MiB/s", "higher", "16 MiB NumPy payloads")),
    _w("mixed_web", mixed_web, ("critical_p50_ms", "ms", "lower", "mixed load: CRITICAL p50"),
       ("critical_p99_ms", "ms", "lower", "mixed load: CRITICAL p99"),
       ("all_tasks_s", "s", "lower", "mixed load: time to finish all")),
    _w("idle_cpu", idle_cpu, ("cpu_percent", "% core", "lower", "idle engine CPU"),
       ("processes", "", "lower", "processes measured")),
    _w("replacement", replacement, ("replacement_ms", "ms", "lower",
                                    "a killed worker's replacement serving"), engine="own"),
    _w("shutdown", shutdown, ("shutdown_ms", "ms", "lower", "shutdown after the run"),
       engine="ends"),
)
#: Not run by default: context for reading the others.
EXTRA = (
    _w("cpu_ceiling", cpu_ceiling, ("speedup", "×", "higher", "2 bare processes over serial"),
       engine="own"),
)
BY_NAME = {w.name: w for w in ALL + EXTRA}

