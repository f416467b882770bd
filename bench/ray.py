"""``python -m bench.ray``: catzilla_mp on Ray against plain Ray tasks and process mode.

One run, one local Ray (2 CPUs, its own temporary directory), repetitions
interleaved (the peers' order rotates each repetition, so a burst of load from
elsewhere on the machine hits them alike). Prints a table, or with ``--json``
one JSON object: the median of each key per peer, the spread (min, max) of
the repetitions, and the ratios the issue asks for.

Peers:
    czmp_ray        BackgroundTasks(mode="ray", workers=2): two tasks handed to Ray
                    at a time (the default: priorities and timeouts exact)
    czmp_ray_deep   the same with ray_max_in_flight=16 (a deeper Ray pipeline)
    plain_ray       ray.remote(fn).remote(...) and ray.get: what catzilla_mp's layer costs
    process         BackgroundTasks(mode="process", workers=2) on this machine

Keys:
    noop_tasks_per_s         NOOP_TASKS no-op tasks submitted one by one, end to end
    cpu_tasks_per_s          CPU_TASKS pure-Python tasks of ~CPU_MS each, end to end
    round_trip_us_p50 / p99  one no-op at a time, submit to result
    critical_ms_p50          a CRITICAL no-op submitted behind BACKLOG LOW CPU tasks:
                             submit to result (plain Ray has no priorities: its
                             "critical" task is just one more task)

Ratios (the issue's target: the layer costs < 10% of plain Ray's throughput):
    layer_noop_ratio[_deep]  czmp_ray[_deep] / plain_ray no-op rate
    layer_cpu_ratio          czmp_ray / plain_ray CPU-bound rate
    ray_vs_process_noop/cpu  czmp_ray / process rates: when to switch
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

#: Pure-Python work per CPU-bound task, in milliseconds (calibrated at start).
CPU_MS = 20
SIZES = {
    "quick": dict(noop=1500, cpu=60, round_trips=150, backlog=30, critical=4, reps=3),
    "full": dict(noop=5000, cpu=200, round_trips=500, backlog=60, critical=10, reps=5),
}
PEERS = ["czmp_ray", "czmp_ray_deep", "plain_ray", "process"]


# -- task functions (module level: Ray's and process mode's workers import them) -------

def noop():
    return None


def spin(n):
    s = 0
    for i in range(n):
        s += i
    return s


def _calibrate(ms: float) -> int:
    n = 100_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        took = time.perf_counter() - t0
        if took > 0.05:
            return max(1, int(n * (ms / 1000.0) / took))
        n *= 2


# -- peers --------------------------------------------------------------------------------

class _Engine:
    """A catzilla_mp engine as a peer."""

    def __init__(self, **options) -> None:
        from catzilla_mp import BackgroundTasks

        self.e = BackgroundTasks(workers=2, queue_size=20_000, memory_pool_mb=64, **options)
        self.e.add_task(noop).wait(120)  # workers up

    def run_all(self, fn, args_list, priority="normal"):
        tasks = [self.e.add_task(fn, *a, priority=priority) for a in args_list]
        return tasks

    def wait_all(self, tasks):
        for t in tasks:
            t.wait(600)

    def one(self, fn, *args, priority="normal"):
        return self.e.add_task(fn, *args, priority=priority).wait(600)

    def close(self) -> None:
        self.e.shutdown(wait_for_completion=False, timeout=10)


class _PlainRay:
    """Ray tasks as Ray's documentation writes them: no catzilla_mp in between."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.fns = {}
        self.one(noop)

    def _remote(self, fn):
        r = self.fns.get(fn)
        if r is None:
            r = self.fns[fn] = self.ray.remote(max_retries=0)(fn)
        return r

    def run_all(self, fn, args_list, priority="normal"):
        f = self._remote(fn)
        return [f.remote(*a) for a in args_list]

    def wait_all(self, refs):
        self.ray.get(refs)

    def one(self, fn, *args, priority="normal"):
        return self.ray.get(self._remote(fn).remote(*args))

    def close(self) -> None:
        pass


def _make(peer: str):
    if peer == "czmp_ray":
        return _Engine(mode="ray")
    if peer == "czmp_ray_deep":
        return _Engine(mode="ray", ray_max_in_flight=16)
    if peer == "plain_ray":
        return _PlainRay()
    return _Engine(mode="process")


# -- workloads ----------------------------------------------------------------------------

def _rate(p, fn, args_list) -> float:
    t0 = time.perf_counter()
    p.wait_all(p.run_all(fn, args_list))
    return len(args_list) / (time.perf_counter() - t0)


def _round_trips(p, k: int) -> tuple[float, float]:
    samples = []
    for _ in range(k):
        t0 = time.perf_counter_ns()
        p.one(noop)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def _critical(p, backlog: int, n_spin: int, samples: int) -> float:
    took = []
    for _ in range(samples):
        low = p.run_all(spin, [(n_spin,)] * backlog, priority="low")
        time.sleep(0.05)  # the backlog is queued and running
        t0 = time.perf_counter()
        p.one(noop, priority="critical")
        took.append((time.perf_counter() - t0) * 1000.0)
        p.wait_all(low)
    return statistics.median(took)


def measure(quick: bool, log=lambda s: None) -> dict:
    from catzilla_mp.backends import ray as ray_backend

    size = SIZES["quick" if quick else "full"]
    n_spin = _calibrate(CPU_MS)
    ray_backend.connect("local", num_cpus=2)
    raw: dict[str, dict[str, list[float]]] = {p: {} for p in PEERS}
    try:
        for rep in range(size["reps"]):
            order = PEERS[rep % len(PEERS):] + PEERS[:rep % len(PEERS)]
            for peer in order:
                p = _make(peer)
                try:
                    got = raw[peer]
                    got.setdefault("noop_tasks_per_s", []).append(
                        _rate(p, noop, [()] * size["noop"]))
                    got.setdefault("cpu_tasks_per_s", []).append(
                        _rate(p, spin, [(n_spin,)] * size["cpu"]))
                    p50, p99 = _round_trips(p, size["round_trips"])
                    got.setdefault("round_trip_us_p50", []).append(p50)
                    got.setdefault("round_trip_us_p99", []).append(p99)
                    got.setdefault("critical_ms_p50", []).append(
                        _critical(p, size["backlog"], n_spin, size["critical"]))
                finally:
                    p.close()
                log(f"rep {rep + 1}/{size['reps']} {peer}: "
                    + ", ".join(f"{k}={v[-1]:.1f}" for k, v in raw[peer].items()))
    finally:
        ray_backend.disconnect()
    med = {p: {k: statistics.median(v) for k, v in keys.items()} for p, keys in raw.items()}
    spread = {p: {k: [round(min(v), 1), round(max(v), 1)] for k, v in keys.items()}
              for p, keys in raw.items()}
    ratios = {
        "layer_noop_ratio": med["czmp_ray"]["noop_tasks_per_s"] / med["plain_ray"]["noop_tasks_per_s"],
        "layer_noop_ratio_deep": (med["czmp_ray_deep"]["noop_tasks_per_s"]
                                  / med["plain_ray"]["noop_tasks_per_s"]),
        "layer_cpu_ratio": med["czmp_ray"]["cpu_tasks_per_s"] / med["plain_ray"]["cpu_tasks_per_s"],
        "ray_vs_process_noop": med["czmp_ray"]["noop_tasks_per_s"] / med["process"]["noop_tasks_per_s"],
        "ray_vs_process_cpu": med["czmp_ray"]["cpu_tasks_per_s"] / med["process"]["cpu_tasks_per_s"],
    }
    return {"host": socket.gethostname().split(".")[0],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "mode": "quick" if quick else "full", "sizes": size, "cpu_task_ms": CPU_MS,
            "median": {p: {k: round(v, 1) for k, v in keys.items()} for p, keys in med.items()},
            "spread": spread, "ratios": {k: round(v, 3) for k, v in ratios.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 repetitions")
    args = ap.parse_args(argv)
    out = measure(args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    keys = list(next(iter(out["median"].values())))
    print(f"{'key':24}" + "".join(f"{p:>16}" for p in PEERS))
    for k in keys:
        print(f"{k:24}" + "".join(f"{out['median'][p][k]:16.1f}" for p in PEERS))
    for k, v in out["ratios"].items():
        print(f"{k:24}{v:16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
