"""``catzilla-mp demo`` (also ``python -m catzilla_mp.demo``): the engine doing its job.

What a newcomer runs first. A web app's background work, all CPU-heavy and
pure Python (demo_jobs.py), goes through ``BackgroundTasks(mode="process")``
with one worker per CPU:

    CRITICAL  password hashes (a user waits on the sign-up page)
    HIGH      photo thumbnails, a webhook whose receiver fails twice (retried)
    NORMAL    sales reports, an export that loops for ever (timeout_ms stops it)
    LOW       prime-count analytics (reporting progress), e-mail digests (delay_ms)

A live display (rich) shows tasks done, throughput, busy workers and the
depth of each priority queue while it runs. Then the same jobs run serially
in this process, as an app without a task engine would run them, and a
report compares the two. ``--quick`` takes a few seconds; ``--json`` prints a
machine-readable summary on stdout (the display and report go to stderr).

Ctrl-C (or SIGTERM) stops at once: tasks not started are cancelled, running
ones are stopped, and no worker process or shared-memory segment is left.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from . import demo_jobs as jobs
from .records import EngineStats, TaskPriority, TaskStatus

#: Display refreshes per second; each one takes an EngineStats snapshot.
REFRESH_PER_S = 4
#: How long a stopped (Ctrl-C) engine gives running tasks before killing them.
INTERRUPT_GRACE_S = 0.5
#: Exit status after Ctrl-C, as a shell reports a SIGINT death.
EXIT_INTERRUPTED = 130


@dataclass
class Job:
    """One task of the plan: what add_task gets, plus the kind it is reported under."""

    kind: str
    fn: Callable[..., Any]
    args: tuple
    priority: TaskPriority
    delay_ms: int = 0
    max_retries: int = 3
    timeout_ms: int = 30000
    # False for the two jobs that show failure handling: the serial baseline skips them
    regular: bool = True


@dataclass
class Sizes:
    """How much of each kind of work one run does."""

    passwords: int
    thumbnails: int
    reports: int
    digests: int
    primes: int
    report_orders: int
    prime_limit: int
    digest_delays_ms: tuple[int, int]
    runaway_timeout_ms: int


QUICK = Sizes(passwords=20, thumbnails=8, reports=4, digests=2, primes=2, report_orders=20_000,
              prime_limit=100_000, digest_delays_ms=(300, 900), runaway_timeout_ms=500)
FULL = Sizes(passwords=120, thumbnails=40, reports=16, digests=6, primes=6, report_orders=30_000,
             prime_limit=220_000, digest_delays_ms=(1000, 5000), runaway_timeout_ms=1000)
#: Photo sizes uploads come in (thumbnails are 1/5 of the width).
PHOTO_SIZES = ((320, 240), (480, 360), (640, 480))


def plan(sizes: Sizes, scratch: str, seed: int = 2024) -> list[Job]:
    """The jobs of one run, in submission order (a burst, as after a traffic spike)."""
    rng = random.Random(seed)
    P = TaskPriority
    out: list[Job] = []
    for i in range(sizes.passwords):
        out.append(Job("password hash", jobs.hash_password,
                       (f"user{i}-correct-horse", rng.randbytes(16), 100_000), P.CRITICAL))
    for i in range(sizes.thumbnails):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        out.append(Job("thumbnail", jobs.make_thumbnail, (rng.randrange(1 << 30), w, h, w // 5),
                       P.HIGH))
    out.append(Job("webhook (flaky)", jobs.deliver_webhook,
                   (os.path.join(scratch, "webhook-attempts"), 2, rng.randrange(1 << 30)),
                   P.HIGH, max_retries=3, regular=False))
    for i in range(sizes.reports):
        out.append(Job("sales report", jobs.build_sales_report,
                       (rng.randrange(1 << 30), sizes.report_orders), P.NORMAL))
    out.append(Job("runaway export", jobs.runaway_export, (60.0,), P.NORMAL,
                   timeout_ms=sizes.runaway_timeout_ms, regular=False))
    for i in range(sizes.primes):
        limit = sizes.prime_limit + i * sizes.prime_limit // 8
        out.append(Job("prime count", jobs.count_primes, (limit,), P.LOW))
    lo, hi = sizes.digest_delays_ms
    for i in range(sizes.digests):
        out.append(Job("digest (delayed)", jobs.build_sales_report,
                       (rng.randrange(1 << 30), sizes.report_orders // 2), P.LOW,
                       delay_ms=lo + (hi - lo) * i // max(1, sizes.digests - 1)))
    return out


# -- the engine run ---------------------------------------------------------------

@dataclass
class Tracked:
    job: Job
    task: Any  # TaskResult
    retry_errors: list[str] = field(default_factory=list)


class EngineRun:
    """Submits the plan and follows it: events from the engine's monitor, stats on demand."""

    def __init__(self, engine, plan_: list[Job]) -> None:
        self.engine = engine
        self.plan = plan_
        self.tracked: dict[str, Tracked] = {}
        self.done = 0
        self.failed = 0
        self.events: collections.deque[str] = collections.deque(maxlen=4)
        self.finished = threading.Event()
        self.started_at = 0.0
        self.ended_at: Optional[float] = None
        self._lock = threading.Lock()

    def submit(self) -> None:
        self.engine.monitor.add_listener(self._on_event)
        self.started_at = time.monotonic()
        for job in self.plan:
            task = self.engine.add_task(job.fn, *job.args, priority=job.priority,
                                        delay_ms=job.delay_ms, max_retries=job.max_retries,
                                        timeout_ms=job.timeout_ms)
            with self._lock:
                self.tracked[task.task_id] = Tracked(job, task)
                # a task may have ended before it was tracked (a fast worker)
                if task.is_ready():
                    self._count_final(task)

    def _on_event(self, event: str, task, detail) -> None:
        # runs on the engine's threads: a few assignments, never blocking
        with self._lock:
            t = self.tracked.get(task.task_id)
            if event == "retrying" and t is not None:
                t.retry_errors.append(f"{type(detail).__name__}: {detail}")
                self.events.append(f"[yellow]retry[/] {t.job.kind}: attempt {task.attempt} "
                                   f"failed ({type(detail).__name__}), retrying")
            elif event in ("completed", "failed", "cancelled") and t is not None:
                self._count_final(task)

    def _count_final(self, task) -> None:
        t = self.tracked[task.task_id]
        if getattr(t, "_counted", False):
            return
        t._counted = True  # type: ignore[attr-defined]
        self.done += 1
        if task.status is not TaskStatus.COMPLETED:
            self.failed += 1
            exc = task._value
            self.events.append(f"[red]failed[/] {t.job.kind}: {type(exc).__name__}: {exc}")
        elif t.retry_errors:
            self.events.append(f"[green]recovered[/] {t.job.kind}: succeeded on attempt "
                               f"{task.attempt + 1}")
        if self.done == len(self.plan):
            self.ended_at = time.monotonic()
            self.finished.set()

    def wait(self) -> None:
        # short waits: a Ctrl-C reaches the main thread between them
        while not self.finished.wait(0.1):
            pass

    def elapsed(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def delayed_waiting(self) -> int:
        """Tasks whose delay_ms has not passed yet (the engine holds them outside the queues)."""
        now = time.monotonic() - self.started_at
        return sum(1 for job in self.plan if job.delay_ms and job.delay_ms / 1000 > now)

    def running(self) -> list[tuple[Tracked, Optional[float], str]]:
        """Tasks in a worker right now, with their last reported progress."""
        with self._lock:
            pending = [t for t in self.tracked.values() if not t.task.is_ready()]
        out = []
        for t in pending:
            if t.task.get_stats().status is TaskStatus.RUNNING:
                frac, msg = t.task.progress
                out.append((t, frac, msg or ""))
        return out


# -- the live display ------------------------------------------------------------

class LiveView:
    """What rich's Live redraws: progress, throughput, workers, queues, tasks running."""

    def __init__(self, run: EngineRun) -> None:
        self.run = run

    def __rich__(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        run = self.run
        try:
            stats = run.engine.get_stats()
        except Exception:  # noqa: BLE001 - a display glitch must not end the demo
            stats = EngineStats()
        total = len(run.plan)
        elapsed = run.elapsed()
        head = Table.grid(padding=(0, 2))
        head.add_row(ProgressBar(total=total, completed=run.done, width=40),
                     f"[bold]{run.done}[/]/{total} tasks", f"{elapsed:5.1f} s",
                     f"{run.done / elapsed if elapsed > 0 else 0:6.1f} tasks/s")
        info = Table.grid(padding=(0, 2))
        info.add_row("workers", f"[bold]{stats.active_workers}[/] busy / {stats.total_workers}",
                     "queued", f"critical {stats.critical_queue_size}  high {stats.high_queue_size}"
                     f"  normal {stats.normal_queue_size}  low {stats.low_queue_size}"
                     f"  (+{run.delayed_waiting()} delayed)")
        info.add_row("failed", str(stats.failed_tasks), "retries / timeouts",
                     f"{stats.retry_count} / {stats.timeout_count}")
        rows = [head, info]
        running = run.running()
        if running:
            now = time.time()
            table = Table(box=None, show_header=False, padding=(0, 2), pad_edge=False)
            for width in (8, 16, 8, 6, 20):  # fixed, so rows do not jump between frames
                table.add_column(min_width=width, no_wrap=True)
            for t, frac, msg in running[:8]:
                since = t.task.started_at
                table.add_row(f"[dim]worker {t.task.worker_id}[/]", t.job.kind,
                              t.job.priority.name.lower(),
                              f"{now - since:4.1f} s" if since else "",
                              f"{frac:4.0%} {msg}" if frac is not None else "")
            rows.append(table)
        rows.extend(run.events)
        return Group(*rows)


# -- the serial baseline -----------------------------------------------------------

def run_serial(plan_: list[Job], fraction: float, on_step: Callable[[int, int], None]) -> dict:
    """Run the regular jobs (or every k-th of each kind) in this process, one after another.

    Returns per-kind measured seconds and counts, and the total scaled to all
    the regular jobs: each kind's mean times its count.
    """
    by_kind: dict[str, list[Job]] = collections.defaultdict(list)
    for job in plan_:
        if job.regular:
            by_kind[job.kind].append(job)
    chosen = []
    for kind, kind_jobs in by_kind.items():
        n = max(1, round(len(kind_jobs) * fraction))
        step = len(kind_jobs) / n
        chosen.extend(kind_jobs[int(i * step)] for i in range(n))
    measured: dict[str, list[float]] = collections.defaultdict(list)
    for i, job in enumerate(chosen):
        on_step(i, len(chosen))
        t0 = time.perf_counter()
        job.fn(*job.args)
        measured[job.kind].append(time.perf_counter() - t0)
    on_step(len(chosen), len(chosen))
    kinds = {k: {"count": len(by_kind[k]), "ran": len(v), "mean_ms": 1000 * sum(v) / len(v)}
             for k, v in measured.items()}
    return {"fraction": fraction, "tasks_run": len(chosen),
            "seconds_measured": sum(sum(v) for v in measured.values()),
            "seconds": sum(k["mean_ms"] * k["count"] for k in kinds.values()) / 1000,
            "kinds": kinds}


# -- the report ---------------------------------------------------------------------

def summarise(run: EngineRun, workers: int, startup_s: float, stats, serial: Optional[dict],
              app_pid: int, quick: bool, interrupted: bool) -> dict:
    kinds: dict[str, dict] = {}
    retried = timed_out = None
    counts = collections.Counter()
    worker_ids = set()
    for t in run.tracked.values():
        task = t.task
        st = task.get_stats()
        counts[st.status.name.lower()] += 1
        k = kinds.setdefault(t.job.kind, {"priority": t.job.priority.name, "count": 0,
                                          "completed": 0, "failed": 0, "cancelled": 0,
                                          "_ms": [], "delayed": 0})
        k["count"] += 1
        k[{"COMPLETED": "completed", "CANCELLED": "cancelled"}.get(st.status.name, "failed")] += 1
        k["delayed"] += bool(t.job.delay_ms)
        if st.execution_time_ms is not None:
            k["_ms"].append(st.execution_time_ms)
        if st.worker_id is not None:
            worker_ids.add(st.worker_id)
        exc = task._value if st.status is not TaskStatus.COMPLETED else None
        outcome = {"task_id": task.task_id, "kind": t.job.kind, "status": st.status.name,
                   "retries": st.retries, "attempt_errors": t.retry_errors,
                   "error": type(exc).__name__ if exc is not None else None,
                   "message": str(exc) if exc is not None else None}
        if t.job.fn is jobs.deliver_webhook:
            retried = outcome
        elif t.job.fn is jobs.runaway_export:
            timed_out = dict(outcome, timeout_ms=t.job.timeout_ms)
    for k in kinds.values():
        ms = k.pop("_ms")
        k["mean_ms"] = round(sum(ms) / len(ms), 1) if ms else None
    if serial:
        for name, s in serial["kinds"].items():
            kinds[name]["serial_mean_ms"] = round(s["mean_ms"], 1)
    engine_s = run.elapsed()
    speedup = serial["seconds"] / engine_s if serial and engine_s > 0 and not interrupted else None
    return {
        "run": "quick" if quick else "default", "interrupted": interrupted,
        "load_average": round(os.getloadavg()[0], 2),
        "workers": workers, "cpu_count": os.cpu_count(), "app_pid": app_pid,
        # a Ctrl-C during submission leaves part of the plan never submitted
        "tasks": {"total": len(run.plan), "not_submitted": len(run.plan) - len(run.tracked),
                  "accounted": len(run.plan) - len(run.tracked) + sum(counts.values()),
                  **counts},
        "kinds": kinds, "retried": retried, "timed_out": timed_out,
        "startup_seconds": round(startup_s, 3), "engine_seconds": round(engine_s, 3),
        "serial": None if serial is None else {
            "fraction": serial["fraction"], "tasks_run": serial["tasks_run"],
            "seconds_measured": round(serial["seconds_measured"], 3),
            "seconds": round(serial["seconds"], 3)},
        "speedup": round(speedup, 2) if speedup is not None else None,
        "engine_stats": None if stats is None else {
            "total_tasks_processed": stats.total_tasks_processed,
            "failed_tasks": stats.failed_tasks, "retry_count": stats.retry_count,
            "timeout_count": stats.timeout_count,
            "p95_execution_time_ms": round(stats.p95_execution_time_ms, 1)},
    }


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "<1 ms" if value < 1 else f"{value:,.0f} ms"


def print_report(console, s: dict) -> None:
    from rich.table import Table

    table = Table(title="What ran (times are means per task)", title_justify="left", box=None,
                  padding=(0, 1))
    table.add_column("job", no_wrap=True)
    table.add_column("priority", no_wrap=True)
    for col in ("tasks", "ok", "not ok", "in a worker", "serially"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, k in s["kinds"].items():
        note = ", delayed" if k["delayed"] else ""
        table.add_row(name, k["priority"].lower() + note, str(k["count"]), str(k["completed"]),
                      str(k["failed"] + k["cancelled"]), _ms(k["mean_ms"]),
                      _ms(k.get("serial_mean_ms")))
    console.print()
    console.print(table)
    r, t = s["retried"], s["timed_out"]
    console.print()
    for name, outcome in (("Retried", r), ("Timed out", t)):
        if outcome and outcome["status"] == "CANCELLED":
            console.print(f"[bold]{name}:[/] {outcome['kind']}: cancelled before it ran")
    r = r if r and r["status"] != "CANCELLED" else None
    t = t if t and t["status"] != "CANCELLED" else None
    if r:
        failures = "; ".join(r["attempt_errors"]) or "no failure"
        ending = (f"failed for good with {r['error']}" if r["error"]
                  else f"succeeded on attempt {r['retries'] + 1}")
        console.print(f"[bold]Retried:[/] {r['kind']}: {failures}; then {ending} ({r['status']})")
    if t:
        console.print(f"[bold]Timed out:[/] {t['kind']}: stopped at timeout_ms={t['timeout_ms']} "
                      f"with {t['error']} ({t['status']}, not retried); its worker ran on")
    tasks = s["tasks"]
    console.print(f"[bold]Engine:[/] {tasks['total']} tasks in {s['engine_seconds']:.1f} s on "
                  f"{s['workers']} worker processes ({s['startup_seconds']:.1f} s more to start "
                  f"them): {tasks.get('completed', 0)} completed, {tasks.get('failed', 0)} failed, "
                  f"{tasks.get('cancelled', 0)} cancelled")
    serial = s["serial"]
    if serial is None:
        return
    if serial["fraction"] >= 1.0:
        how = (f"the same {serial['tasks_run']} regular jobs, one after another: "
               f"{serial['seconds']:.1f} s")
    else:
        how = (f"{serial['tasks_run']} of the regular jobs (~{serial['fraction']:.0%} of each "
               f"kind) took {serial['seconds_measured']:.1f} s; each kind's mean times its count "
               f"gives {serial['seconds']:.1f} s for all of them")
    console.print(f"[bold]Serial, in the app's own process:[/] {how}")
    if s["speedup"] is not None:
        console.print(f"[bold]Speed-up:[/] [bold green]{s['speedup']:.2f}x[/] with {s['workers']} "
                      f"workers on {s['cpu_count']} CPUs. The engine's time also covers the "
                      "webhook's retries, the export's timeout and the delays.")
    load = s["load_average"]
    if load and load > 0.5:
        console.print(f"[dim]Load average {load:.1f} on {s['cpu_count']} CPUs during the run: "
                      "other processes shared the CPUs, so these times are noisy.[/]")


# -- main ---------------------------------------------------------------------------

class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop now."""


#: A signal that arrived while _deferred_signals() held it back.
_pending_signal: list[int] = []


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _note_signal(signum, frame):
    _pending_signal.append(signum)


@contextlib.contextmanager
def _deferred_signals():
    """Hold Ctrl-C/SIGTERM back while the engine starts or stops, then raise it.

    An exception in the middle of BackgroundTasks() or shutdown() could
    leave a worker or the segment behind; a fraction of a second's wait
    cannot.
    """
    before = {s: signal.signal(s, _note_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if _pending_signal:
        raise Interrupted(signal.Signals(_pending_signal.pop()).name)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="catzilla-mp demo",
        description="Run a web app's CPU-heavy background jobs through catzilla_mp's process "
                    "engine with a live display, then the same jobs serially in this process, "
                    "and compare. Nothing to configure.")
    p.add_argument("--quick", action="store_true", help="a smaller run of a few seconds")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (display and report go to stderr)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--serial-fraction", type=float, default=1.0, metavar="F",
                   help="share of each kind of job the serial baseline runs, scaled up to all "
                        "(default 1: all of them); 0 skips the baseline")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not 0.0 <= args.serial_fraction <= 1.0:
        print("catzilla-mp demo: --serial-fraction must be in [0, 1]", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("catzilla-mp demo: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        print("catzilla-mp demo needs rich for its display: pip install rich", file=sys.stderr)
        return 2

    from .engine import BackgroundTasks

    console = Console(file=sys.stderr if args.json else sys.stdout, highlight=False)
    scratch = tempfile.mkdtemp(prefix="catzilla-mp-demo-")
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    engine = run = stats = serial = None
    interrupted = False
    startup_s = 0.0
    workers = 0
    try:
        the_plan = plan(QUICK if args.quick else FULL, scratch)
        t0 = time.monotonic()
        with _deferred_signals():
            engine = BackgroundTasks(workers=args.workers, mode="process")
        startup_s = time.monotonic() - t0
        workers = engine.options.workers
        run = EngineRun(engine, the_plan)
        console.print(f"[bold]catzilla-mp demo[/]: {len(the_plan)} background jobs of a web app, "
                      f"{workers} worker processes (Ctrl-C stops)")
        with Live(LiveView(run), console=console, refresh_per_second=REFRESH_PER_S):
            run.submit()
            run.wait()
        if not console.is_terminal:
            console.print()  # rich leaves its last frame without a line end there
        stats = engine.get_stats()
        with _deferred_signals():
            engine.shutdown(wait_for_completion=True, timeout=10)
        if args.serial_fraction > 0:
            serial = _serial_with_progress(console, the_plan, args.serial_fraction)
    except Interrupted as why:
        interrupted = True
        # a second Ctrl-C must not cut the clean-up short
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        what = ("the serial baseline" if engine is not None and engine.closed and stats
                else "the engine; tasks not started are cancelled")
        console.print(f"\n[bold red]{why}[/]: stopping {what}")
    finally:
        if engine is not None:
            engine.shutdown(wait_for_completion=False, timeout=INTERRUPT_GRACE_S)
        shutil.rmtree(scratch, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if run is None:
        return EXIT_INTERRUPTED if interrupted else 1
    summary = summarise(run, workers, startup_s, stats, serial, os.getpid(), args.quick,
                        interrupted)
    print_report(console, summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    return EXIT_INTERRUPTED if interrupted else 0


def _serial_with_progress(console, the_plan: list[Job], fraction: float) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("same jobs, serially in this process (the baseline)")

        def step(i: int, n: int) -> None:
            progress.update(bar, total=n, completed=i)

        return run_serial(the_plan, fraction, step)


if __name__ == "__main__":
    sys.exit(main())
