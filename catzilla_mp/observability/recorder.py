"""The recorder: one task-event listener per engine that every view reads.

    engine.monitor ──(event, task, detail)──► Recorder.on_event   (engine threads)
                                                 │ under one lock, a few list increments
                                                 ▼
        counts[(priority, task name)]   per-second buckets   recent failures / tasks
                 │                              │                      │
           metrics.py (scrape)          snapshot.py (dashboard, ~1/s) ─┘

Listeners run on the engine's own threads (submitters, the collector, the
supervisor), so ``on_event`` only bumps integers and appends references;
percentiles, dicts and strings are built when somebody looks.
"""
from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from ..errors import TaskTimeoutError, WorkerCrashedError
from ..records import TaskPriority
from .text import safe_str

if TYPE_CHECKING:
    from ..engine import BackgroundTasks
    from ..results import TaskResult

#: Counter positions in a key's count list (and the metric each becomes).
SUBMITTED, STARTED, COMPLETED, FAILED, RETRIED, TIMED_OUT, CRASHED, CANCELLED = range(8)
COUNTER_NAMES = ("submitted", "started", "completed", "failed", "retried", "timed_out",
                 "crashed", "cancelled")

#: Upper bounds (seconds) of the execution-time histogram buckets; +Inf is implied.
EXEC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Distinct task names kept as label values; later ones count as "other" so a
#: program that makes a new function per request cannot blow up the series.
MAX_TASK_NAMES = 200
OTHER_NAME = "other"
#: Seconds of per-second history kept for the dashboard's charts.
HISTORY_S = 300
#: Execution times kept per second for its percentiles (a uniform sample above that).
SAMPLES_PER_SECOND = 2000
#: Failures and finished tasks remembered for the dashboard's lists.
RECENT_FAILURES = 50
RECENT_TASKS = 20


class KeyStats:
    """Counters and the execution-time histogram of one (priority, task name)."""

    __slots__ = ("counts", "buckets", "exec_sum")

    def __init__(self) -> None:
        self.counts = [0] * len(COUNTER_NAMES)
        self.buckets = [0] * (len(EXEC_BUCKETS) + 1)  # not cumulative; last is +Inf
        self.exec_sum = 0.0


class Second:
    """What happened during one wall-clock second."""

    __slots__ = ("t", "submitted", "completed", "failed", "samples", "seen")

    def __init__(self, t: int) -> None:
        self.t = t
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.samples: list[float] = []   # execution times, ms
        self.seen = 0                    # execution times offered (for the reservoir)

    def add_sample(self, ms: float) -> None:
        # a busy second keeps its last SAMPLES_PER_SECOND times: within one
        # second that is as good as a uniform sample, at the cost of one store
        if self.seen < SAMPLES_PER_SECOND:
            self.samples.append(ms)
        else:
            self.samples[self.seen % SAMPLES_PER_SECOND] = ms
        self.seen += 1

    def point(self) -> dict:
        s = sorted(self.samples)
        return {"t": self.t, "submitted": self.submitted, "completed": self.completed,
                "failed": self.failed, "p50": _pct(s, 0.50), "p95": _pct(s, 0.95),
                "p99": _pct(s, 0.99)}


class Recorder:
    """Listens to one engine's task events; see the module docstring."""

    def __init__(self, engine: "BackgroundTasks") -> None:
        self.engine = engine
        self.started = time.time()
        self._lock = threading.Lock()
        self.keys: dict[tuple[TaskPriority, str], KeyStats] = {}
        self._names: set[str] = set()
        self._open: dict[int, Second] = {}
        self._closed: collections.deque[dict] = collections.deque(maxlen=HISTORY_S)
        self.failures: collections.deque[dict] = collections.deque(maxlen=RECENT_FAILURES)
        self.recent: collections.deque["TaskResult"] = collections.deque(maxlen=RECENT_TASKS)
        engine.monitor.add_listener(self.on_event)

    def close(self) -> None:
        self.engine.monitor.remove_listener(self.on_event)

    # -- the listener (engine threads) ----------------------------------------

    def on_event(self, event: str, task: "TaskResult", detail: Any) -> None:
        # hot: runs once per submit and once per outcome, on the engine's threads
        t = int(time.time())
        with self._lock:
            ks = self.keys.get((task.priority, task.name))
            if ks is None:
                ks = self._new_key(task)
            sec = self._open.get(t)
            if sec is None:
                sec = self._second(t)
            c = ks.counts
            if event == "submitted":
                c[SUBMITTED] += 1
                sec.submitted += 1
                return
            if event == "completed":
                c[COMPLETED] += 1
                sec.completed += 1
                if task.started_at is not None:
                    c[STARTED] += 1
                _count_exec_time(ks, sec, task.exec_ms)
                self.recent.append(task)
                return
            if event == "cancelled":
                c[CANCELLED] += 1
                self.recent.append(task)
                return
            # a failed attempt: final ("failed") or to be run again ("retrying")
            if task.started_at is not None:
                c[STARTED] += 1
            if isinstance(detail, WorkerCrashedError):
                c[CRASHED] += 1
            elif isinstance(detail, TaskTimeoutError):
                c[TIMED_OUT] += 1
            if event == "retrying":
                c[RETRIED] += 1
            else:
                c[FAILED] += 1
                sec.failed += 1
                _count_exec_time(ks, sec, task.exec_ms)
                self.recent.append(task)
        self._remember_failure(event, task, detail, time.time())

    def _new_key(self, task: "TaskResult") -> KeyStats:
        """Stats of a (priority, name) seen for the first time (lock held)."""
        name = task.name or "?"
        if name not in self._names:
            if len(self._names) >= MAX_TASK_NAMES:
                ks = self.keys.get((task.priority, OTHER_NAME))
                if ks is None:
                    ks = self.keys[(task.priority, OTHER_NAME)] = KeyStats()
                return ks  # not cached under its own name: the table stays bounded
            self._names.add(name)
        ks = self.keys[(task.priority, task.name)] = KeyStats()
        return ks

    def _second(self, t: int) -> Second:
        sec = self._open.get(t)
        if sec is None:
            self._close_before(t)
            sec = self._open[t] = Second(t)
        return sec

    def _close_before(self, t: int) -> None:
        """Turn every open second older than ``t`` into a history point (lock held)."""
        for old in sorted(k for k in self._open if k < t):
            self._closed.append(self._open.pop(old).point())

    def _remember_failure(self, event: str, task: "TaskResult", exc: Any, now: float) -> None:
        entry = {
            "task_id": task.task_id, "name": task.name, "priority": task.priority.name.lower(),
            "error_type": type(exc).__name__ if exc is not None else "?",
            "message": _short(safe_str(exc) if exc is not None else "", 300),
            "attempt": task.attempt, "final": event == "failed", "at": now,
            "worker_id": task.worker_id,
        }
        with self._lock:
            self.failures.append(entry)

    # -- readers ----------------------------------------------------------------

    def counts_copy(self) -> dict[tuple[str, str], KeyStats]:
        """A consistent copy of every key's counters and histogram."""
        out = {}
        with self._lock:
            for (prio, name), ks in self.keys.items():
                cp = KeyStats()
                cp.counts = list(ks.counts)
                cp.buckets = list(ks.buckets)
                cp.exec_sum = ks.exec_sum
                out[(prio.name.lower(), name or "?")] = cp
        return out

    def totals(self) -> dict[str, int]:
        sums = [0] * len(COUNTER_NAMES)
        with self._lock:
            for ks in self.keys.values():
                for i, n in enumerate(ks.counts):
                    sums[i] += n
        return dict(zip(COUNTER_NAMES, sums))

    def history(self, seconds: int = HISTORY_S) -> list[dict]:
        """One point per second for the last ``seconds`` full seconds (quiet seconds as zeros)."""
        now = int(time.time())
        with self._lock:
            self._close_before(now)
            have = {p["t"]: p for p in self._closed}
        first = max(now - seconds, int(self.started))
        return [have.get(t) or _empty_point(t) for t in range(first, now)]

    def recent_failures(self) -> list[dict]:
        with self._lock:
            return list(self.failures)[::-1]

    def recent_tasks(self) -> list["TaskResult"]:
        with self._lock:
            return list(self.recent)[::-1]


def _empty_point(t: int) -> dict:
    return {"t": t, "submitted": 0, "completed": 0, "failed": 0,
            "p50": None, "p95": None, "p99": None}


def _pct(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return round(sorted_values[k], 3)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count_exec_time(ks, sec, ms) -> None:
    """One finished attempt's execution time, into the histogram and the second's samples."""
    if ms is not None:
        ks.buckets[bisect.bisect_left(EXEC_BUCKETS, ms / 1000.0)] += 1
        ks.exec_sum += ms / 1000.0
        sec.add_sample(ms)
