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
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import TaskTimeoutError
from ..records import EngineStats, TaskStatus

_CANCELLED = TaskStatus.CANCELLED  # a module constant: an Enum member lookup is ~50 ns

if TYPE_CHECKING:
    import psutil

    from ..results import TaskResult
    from .core import TaskLifecycle

log = logging.getLogger("catzilla_mp")

#: Width of the window tasks_per_second is measured over, in seconds.
RATE_WINDOW_S = 10
#: Completions are counted per bucket of this many seconds; the rate is the
#: exact count over [start of the oldest bucket in the window, now].
RATE_BUCKET_S = 0.1
_BUCKETS_PER_WINDOW = int(round(RATE_WINDOW_S / RATE_BUCKET_S))
#: one more than the window, so the bucket being filled never overwrites one counted
RATE_BUCKETS = _BUCKETS_PER_WINDOW + 1
#: Execution times kept for the percentiles.
LATENCY_SAMPLES = 10_000


class Monitor:
    """The counters of one lifecycle, and EngineStats snapshots of it.

    ``engine`` is the TaskLifecycle (the engine) whose lock, submission
    counters (``_last_seq``, ``_submit_failed``, ``_queue_full``) and backend
    it reads: the monitor is part of the lifecycle layer, and those are the
    lifecycle's own state.
    """

    def __init__(self, engine: "TaskLifecycle") -> None:
        self.engine = engine
        self.started = time.monotonic()
        self.processed = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.retries = 0
        self.timeouts = 0
        self.native = 0  # finished tasks that ran machine code (native_tasks); the rest ran Python
        self._exec_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        # per-second completion counts for the last RATE_WINDOW_S + 1 seconds
        self._buckets = [0] * RATE_BUCKETS
        self._bucket_sec = [0] * RATE_BUCKETS
        # psutil is imported by the first snapshot, not here: its ~5 ms import
        # was a tenth of the engine's start-up (issue 18). The app's own CPU
        # share is measured from os.times() marks, as psutil's cpu_percent()
        # does: since the previous snapshot, the first one since start.
        self._me: Optional[psutil.Process] = None
        self._cpu_mark = (self.started, _own_cpu_s())
        self._worker_ps: dict[int, psutil.Process] = {}
        self._last_busy: dict[int, tuple[float, int]] = {}
        self._listeners: tuple[Callable[[str, "TaskResult", Any], None], ...] = ()
        # (time.monotonic(), submissions so far) marks, one per rate bucket, for
        # submissions_per_second; taken on completions and snapshots (nothing on submit)
        self._sub_marks: list[tuple[float, int]] = [(self.started, 0)]

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

    def count_final_locked(self, task: "TaskResult", ok: bool, value: Any, status,
                           now: Optional[float] = None) -> None:
        """Count a task's final outcome; the caller holds the engine's lock (``now``: time.monotonic())."""
        if status is _CANCELLED:
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
        native = getattr(task, "native", None)  # None unless a native task ran
        if native is not None and native.get("compiled"):
            self.native += 1
        if now is None:
            now = time.monotonic()
        n = int(now / RATE_BUCKET_S)
        b = n % RATE_BUCKETS
        if self._bucket_sec[b] != n:
            self._bucket_sec[b] = n
            self._buckets[b] = 0
            self._mark_submissions(now)
        self._buckets[b] += 1

    # -- snapshots ---------------------------------------------------------------

    def tasks_per_second(self) -> float:
        """Completions per second over the last RATE_WINDOW_S seconds, exactly.

        The count of every bucket from the oldest one in the window up to the
        one being filled, over the time from that bucket's start (or the
        engine's start, if later) to now.
        """
        now = time.monotonic()
        n = int(now / RATE_BUCKET_S)
        first = n - _BUCKETS_PER_WINDOW + 1
        with self.engine._lock:
            total = sum(c for c, s in zip(self._buckets, self._bucket_sec) if first <= s <= n)
        span = now - max(first * RATE_BUCKET_S, self.started)
        return total / span if span > 0 else 0.0

    def _mark_submissions(self, now: float) -> None:
        """Note how many tasks were submitted by ``now`` (once per rate bucket)."""
        marks = self._sub_marks
        marks.append((now, self.engine._last_seq))
        while len(marks) > 1 and marks[1][0] <= now - RATE_WINDOW_S:
            marks.pop(0)

    def submissions_per_second(self) -> float:
        """Tasks submitted per second since the oldest mark in the window (exact over that span)."""
        now = time.monotonic()
        with self.engine._lock:
            self._mark_submissions(now)
            marks = self._sub_marks
            t0, seq0 = marks[0]
            if t0 < now - RATE_WINDOW_S and len(marks) > 1:
                t0, seq0 = marks[1]
        seq = self.engine._last_seq
        span = now - t0
        return (seq - seq0) / span if span > 0 else 0.0

    def snapshot(self) -> EngineStats:
        e = self.engine
        backend = e.backend
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
            s.native_executions = self.native
            s.python_executions = self.processed - self.native
            s.error_rate = self.failed / self.processed if self.processed else 0.0
        if samples:
            s.avg_execution_time_ms = sum(samples) / len(samples)
            s.p95_execution_time_ms = _percentile(samples, 0.95)
            s.p99_execution_time_ms = _percentile(samples, 0.99)
        s.tasks_per_second = self.tasks_per_second()
        s.submissions_per_second = self.submissions_per_second()
        s.total_tasks_submitted = e._last_seq - e._submit_failed
        s.queue_full_rejections = e._queue_full
        s.uptime_seconds = time.monotonic() - self.started
        now, cpu = time.monotonic(), _own_cpu_s()
        t0, cpu0 = self._cpu_mark
        self._cpu_mark = (now, cpu)
        s.engine_cpu_usage = round(100.0 * (cpu - cpu0) / (now - t0), 1) if now > t0 else 0.0
        import psutil
        try:
            if self._me is None or self._me.pid != os.getpid():  # or a forked child's
                self._me = psutil.Process(os.getpid())
            s.engine_memory_usage = self._me.memory_info().rss
        except psutil.Error:
            pass
        return s

    def _fill_workers(self, s: EngineStats, backend: Any) -> None:
        import psutil
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

    def external_payload_bytes(self) -> int:
        """Bytes held now in payload segments of their own (capped by max_external_bytes).

        Not an EngineStats field: EngineStats keeps Catzilla's 26 fields.
        """
        external = getattr(self.engine.backend, "external_bytes", None)
        return external() if external is not None else 0


def _percentile(sorted_values: list[float], q: float) -> float:
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def _own_cpu_s() -> float:
    """CPU seconds this process has used (user + system, all its threads)."""
    t = os.times()
    return t.user + t.system
