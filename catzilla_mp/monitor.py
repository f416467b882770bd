"""Engine statistics: counters kept as tasks end, and EngineStats snapshots.

Counting happens on the completion path, so it is a handful of integer
operations under one lock. Everything costly (psutil, percentiles, arena
scans) happens only when someone asks for a snapshot.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable

import psutil

from .errors import TaskTimeoutError
from .records import EngineStats, TaskStatus

if TYPE_CHECKING:
    from .engine import BackgroundTasks
    from .results import TaskResult

log = logging.getLogger("catzilla_mp")

#: Width of the window tasks_per_second is measured over, in seconds.
RATE_WINDOW_S = 10
RATE_BUCKETS = RATE_WINDOW_S + 1
#: Execution times kept for the percentiles.
LATENCY_SAMPLES = 10_000


class Monitor:
    def __init__(self, engine: "BackgroundTasks") -> None:
        self.engine = engine
        self.started = time.monotonic()
        self.processed = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.retries = 0
        self.timeouts = 0
        self._exec_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        # per-second completion counts for the last RATE_WINDOW_S + 1 seconds
        self._buckets = [0] * RATE_BUCKETS
        self._bucket_sec = [0] * RATE_BUCKETS
        self._me = psutil.Process(os.getpid())
        self._me.cpu_percent(None)
        self._worker_ps: dict[int, psutil.Process] = {}
        self._last_busy: dict[int, tuple[float, int]] = {}
        self._listeners: tuple[Callable[[str, "TaskResult", Any], None], ...] = ()

    # -- listeners ---------------------------------------------------------

    def add_listener(self, listener: Callable[[str, "TaskResult", Any], None]) -> None:
        """Call ``listener(event, task, detail)`` on each task event.

        Events: "submitted"; "retrying" (detail: the attempt's exception);
        "completed" (detail: the result), "failed" (detail: the exception),
        "cancelled". Listeners run on the engine's threads (the submitter's,
        the collector's, the supervisor's): they must be quick and must not
        block; one that raises is logged and kept.
        """
        self._listeners = self._listeners + (listener,)

    def remove_listener(self, listener: Callable[[str, "TaskResult", Any], None]) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def emit(self, event: str, task: "TaskResult", detail: Any = None) -> None:
        for listener in self._listeners:
            try:
                listener(event, task, detail)
            except BaseException:  # noqa: BLE001 - observers must not break the engine
                log.exception("task listener %r failed on %s", listener, event)

    # -- counting (hot path) ------------------------------------------------

    def count_retry(self, task: "TaskResult", exc: BaseException) -> None:
        with self.engine._lock:
            self.retries += 1
        if self._listeners:
            self.emit("retrying", task, exc)

    def count_final_locked(self, task: "TaskResult", ok: bool, value: Any, status) -> None:
        """Count a task's final outcome; the caller holds the engine's lock."""
        if status is TaskStatus.CANCELLED:
            self.cancelled += 1
            return
        self.processed += 1
        if ok:
            self.completed += 1
        else:
            self.failed += 1
            if isinstance(value, TaskTimeoutError):
                self.timeouts += 1
        if task.exec_ms is not None:
            self._exec_ms.append(task.exec_ms)
        sec = int(time.monotonic())
        b = sec % RATE_BUCKETS
        if self._bucket_sec[b] != sec:
            self._bucket_sec[b] = sec
            self._buckets[b] = 0
        self._buckets[b] += 1

    # -- snapshots ---------------------------------------------------------------

    def tasks_per_second(self) -> float:
        """Completions per second over the last RATE_WINDOW_S full seconds."""
        now = int(time.monotonic())
        with self.engine._lock:
            total = sum(n for n, s in zip(self._buckets, self._bucket_sec)
                        if now - RATE_WINDOW_S <= s < now)
        span = min(RATE_WINDOW_S, max(1, now - int(self.started)))
        return total / span

    def snapshot(self) -> EngineStats:
        e = self.engine
        backend = e._backend
        s = EngineStats()
        if backend is not None:
            depths = backend.queue_depths()
            (s.critical_queue_size, s.high_queue_size,
             s.normal_queue_size, s.low_queue_size) = depths
            s.total_queued = sum(depths)
            s.queue_pressure = s.total_queued / e.options.queue_size
            self._fill_workers(s, backend)
            self._fill_memory(s, backend)
        with e._lock:
            samples = sorted(self._exec_ms)
            s.failed_tasks = self.failed
            s.retry_count = self.retries
            s.timeout_count = self.timeouts
            s.total_tasks_processed = self.processed
            s.error_rate = self.failed / self.processed if self.processed else 0.0
        if samples:
            s.avg_execution_time_ms = sum(samples) / len(samples)
            s.p95_execution_time_ms = _percentile(samples, 0.95)
            s.p99_execution_time_ms = _percentile(samples, 0.99)
        s.tasks_per_second = self.tasks_per_second()
        s.uptime_seconds = time.monotonic() - self.started
        try:
            s.engine_cpu_usage = self._me.cpu_percent(None)
            s.engine_memory_usage = self._me.memory_info().rss
        except psutil.Error:
            pass
        return s

    def _fill_workers(self, s: EngineStats, backend: Any) -> None:
        records = backend.worker_records()
        s.total_workers = len(records)
        busy_now = 0
        cpu = 0.0
        rss = 0
        utils = []
        now = time.monotonic()
        for proc, rec in records:
            busy_now += bool(rec.current_slot)
            utils.append(self._utilisation(proc.pid or id(rec), now, rec.busy_ns))
            if not proc.pid:
                continue  # a thread of the app: no process of its own to measure
            ps = self._worker_ps.get(proc.pid)
            try:
                if ps is None:
                    ps = self._worker_ps[proc.pid] = psutil.Process(proc.pid)
                    ps.cpu_percent(None)
                cpu += ps.cpu_percent(None)
                rss += ps.memory_info().rss
            except psutil.Error:
                self._worker_ps.pop(proc.pid, None)
        # forget workers that are gone, or a long run grows these tables for ever
        live = {proc.pid or id(rec) for proc, rec in records}
        for table in (self._worker_ps, self._last_busy):
            for pid in [p for p in list(table) if p not in live]:
                table.pop(pid, None)
        s.active_workers = busy_now
        s.idle_workers = s.total_workers - busy_now
        s.avg_worker_utilization = sum(utils) / len(utils) if utils else 0.0
        s.worker_cpu_usage = cpu
        s.worker_memory_usage = rss

    def _utilisation(self, pid: int, now: float, busy_ns: int) -> float:
        """Share of wall time the worker spent running tasks since the last snapshot."""
        last = self._last_busy.get(pid)
        self._last_busy[pid] = (now, busy_ns)
        if last is None or now <= last[0]:
            return 0.0
        return max(0.0, min(1.0, (busy_ns - last[1]) / 1e9 / (now - last[0])))

    def _fill_memory(self, s: EngineStats, backend: Any) -> None:
        used, chunks = backend.in_flight_memory()
        s.memory_usage_mb = chunks / (1 << 20)
        s.memory_efficiency = used / chunks if chunks else 1.0


def _percentile(sorted_values: list[float], q: float) -> float:
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]
