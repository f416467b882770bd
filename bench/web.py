"""``python -m bench.web``: does a Catzilla server stay responsive while CPU-heavy jobs run?

One real Catzilla server per mode (a subprocess on 127.0.0.1). A prober sends
GET /ping one after another on a keep-alive connection and records each
latency, while a submitter POSTs ``--jobs`` CPU-heavy jobs (pure Python,
~``--job-ms`` each) and waits until the server has finished them all:

    idle       no jobs: the baseline
    inline     each handler runs its job itself (the usual mistake)
    threads    Catzilla 0.2.3's own background tasks (a thread pool in the app process)
    process    catzilla_mp.Catzilla, enable_background_tasks(workers=2, mode="process")
               with every other option at its default, as a new user writes it
    asgi_idle  no jobs, the same route in a Starlette app under uvicorn: the ASGI baseline
    asgi       that app with catzilla_mp.integrations.asgi.AsgiTasks(workers=2), defaults

``--niceness N`` passes worker_niceness=N to both catzilla_mp modes (default:
not passed, the engine's default). Output (``--json``: one object):
``<mode>_p50_ms``, ``<mode>_p99_ms``, ``<mode>_jobs_per_s`` (jobs finished per
second of the loaded window), ``process_p99_over_idle`` and
``asgi_p99_over_idle`` (against asgi_idle; the target of both is <= 2). Each
mode runs ``--repeat`` times; medians are reported. Catzilla 0.2.3's TaskResult.wait never returns,
so its completions are counted by a wrapper the pool runs, not by waiting.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

MODES = ("idle", "inline", "threads", "process", "asgi_idle", "asgi")
#: Jobs run (and waited for) before a loaded mode's probes start.
WARM_JOBS = 4


# -- the job and the server (runs in the server subprocess) ---------------------------------

def burn(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL of whichever process runs it."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calibrate(job_ms: float) -> int:
    """The n for which burn(n) takes about ``job_ms`` here."""
    n = 20_000
    while True:
        t = time.perf_counter()
        burn(n)
        dt = time.perf_counter() - t
        if dt > 0.02:
            return max(1, int(n * job_ms / 1000.0 / dt))
        n *= 2


def _tuning(niceness: "int | None") -> dict:
    """Engine options beyond a new user's: none unless --niceness was given."""
    return {} if niceness is None else {"worker_niceness": niceness}


def serve_asgi(mode: str, port: int, job_n: int, niceness: "int | None") -> None:
    """A Starlette app under uvicorn; with AsgiTasks as its docs show it (mode "asgi")."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = threading.Lock()
    done = [0]

    def finished(_value=None) -> None:
        with lock:
            done[0] += 1

    tasks = None
    if mode == "asgi":
        from catzilla_mp.integrations.asgi import AsgiTasks
        tasks = AsgiTasks(workers=2, mode="process", **_tuning(niceness))

    async def ping(request):
        return JSONResponse({"ok": 1})

    async def get_done(request):
        return JSONResponse({"done": done[0]})

    async def job(request):
        r = await tasks.add_task_async(burn, job_n, max_retries=0, timeout_ms=600_000)
        r.add_callback(finished)
        return JSONResponse({"ok": 1})

    routes = [Route("/ping", ping), Route("/done", get_done), Route("/job", job, methods=["POST"])]
    if tasks is None:
        app = Starlette(routes=routes)
    else:
        app = Starlette(routes=routes, lifespan=tasks.lifespan)
        tasks.install(app)
    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve(mode: str, port: int, job_n: int, niceness: "int | None") -> None:
    if mode.startswith("asgi"):
        serve_asgi(mode, port, job_n, niceness)
        return
    lock = threading.Lock()
    done = [0]

    def finished(_value=None) -> None:
        with lock:
            done[0] += 1

    if mode == "process":
        from catzilla_mp import Catzilla
        app = Catzilla(production=True, show_banner=False, log_requests=False, tasks_prefix=None)
        app.enable_background_tasks(workers=2, mode="process", **_tuning(niceness))
    else:
        from catzilla import Catzilla
        app = Catzilla(production=True, show_banner=False, log_requests=False)
        if mode == "threads":
            app.enable_background_tasks(workers=2, min_workers=2)

    def counted_burn(n: int) -> None:
        burn(n)
        finished()

    @app.get("/ping")
    def ping(request):
        return {"ok": 1}

    @app.get("/done")
    def get_done(request):
        return {"done": done[0]}

    @app.post("/job")
    def job(request):
        if mode == "inline":
            burn(job_n)
            finished()
        elif mode == "threads":
            app.add_task(counted_burn, job_n)
        elif mode == "process":
            app.add_task(burn, job_n, max_retries=0, timeout_ms=600_000).add_callback(finished)
        return {"ok": 1}

    print("ready", flush=True)
    app.listen(port, "127.0.0.1")


# -- the client (runs in the bench process) -----------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str) -> dict:
        self.conn.request(method, path, body=b"" if method == "POST" else None)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mode: str, job_n: int, niceness: "int | None") -> tuple[subprocess.Popen, int]:
    port = _free_port()
    tuning = [] if niceness is None else ["--niceness", str(niceness)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.web", "--serve", mode, "--port", str(port),
         "--job-n", str(job_n), *tuning],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # "ready" (after the engine started)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = Client(port)
            c.request("GET", "/ping")
            c.close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    _stop(proc)
    raise RuntimeError(f"{mode} server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_mode(mode: str, jobs: int, job_n: int, niceness: "int | None", idle_s: float,
             gap_s: float) -> dict:
    proc, port = _start(mode, job_n, niceness)
    try:
        warm = Client(port)
        for _ in range(50):  # warm the route and the connection
            warm.request("GET", "/ping")
        base = 0
        if not mode.endswith("idle"):
            # Steady state, not start-up: a few jobs first, so the workers have started and
            # imported the job's module, and the engine's start-up work (pool pre-faulting in a
            # thread of the app) is over before the probes count.
            for _ in range(WARM_JOBS):
                warm.request("POST", "/job")
            deadline = time.monotonic() + 120
            while warm.request("GET", "/done")["done"] < WARM_JOBS:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: warm-up jobs did not finish")
                time.sleep(0.02)
            base = WARM_JOBS
            time.sleep(0.5)
        warm.close()
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            c = Client(port)
            while not stop.is_set():
                t = time.perf_counter()
                c.request("GET", "/ping")
                latencies.append((time.perf_counter() - t) * 1000.0)
                time.sleep(gap_s)
            c.close()

        prober = threading.Thread(target=probe, name="probe")
        start = time.perf_counter()
        prober.start()
        if mode.endswith("idle"):
            time.sleep(idle_s)
            elapsed = time.perf_counter() - start
        else:
            submitter = Client(port)
            for _ in range(jobs):
                submitter.request("POST", "/job")
            deadline = time.monotonic() + 600  # bounded: a broken mode cannot hang the bench
            while submitter.request("GET", "/done")["done"] < base + jobs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: jobs did not finish")
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
            submitter.close()
        stop.set()
        prober.join()
    finally:
        _stop(proc)
    out = {"p50_ms": _pct(latencies, 0.50), "p99_ms": _pct(latencies, 0.99),
           "probes": len(latencies)}
    if not mode.endswith("idle"):
        out["jobs_per_s"] = jobs / elapsed
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--job-ms", type=float, default=50.0)
    ap.add_argument("--niceness", type=int, default=None,
                    help="catzilla_mp modes: pass worker_niceness=N (default: the engine's "
                         "default, as a new user gets it)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=2.0)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="pause between probes")
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--job-n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.job_n, args.niceness)
        return

    job_n = calibrate(args.job_ms)
    modes = [m for m in args.modes.split(",") if m]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeat):  # interleaved, so drift on the machine hits every mode
        for m in modes:
            runs[m].append(run_mode(m, args.jobs, job_n, args.niceness, args.idle_s,
                                    args.gap_ms / 1000.0))
    result: dict = {"jobs": args.jobs, "job_ms": args.job_ms, "job_n": job_n,
                    "niceness": args.niceness, "repeat": args.repeat,
                    "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}
    for m in modes:
        for key in ("p50_ms", "p99_ms", "jobs_per_s"):
            vals = [r[key] for r in runs[m] if key in r]
            if vals:
                result[f"{m}_{key}"] = round(statistics.median(vals), 3)
    for loaded, idle in (("process", "idle"), ("asgi", "asgi_idle")):
        if f"{idle}_p99_ms" in result and f"{loaded}_p99_ms" in result:
            result[f"{loaded}_p99_over_idle"] = round(
                result[f"{loaded}_p99_ms"] / result[f"{idle}_p99_ms"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")


if __name__ == "__main__":
    main()
