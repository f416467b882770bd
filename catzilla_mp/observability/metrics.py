"""Prometheus metrics of one engine, in its own CollectorRegistry.

Counters and histograms come from the recorder (counted as task events
happen); gauges are read at scrape time from the same snapshot the dashboard
uses. A custom collector, not Counter/Histogram objects, because the engine's
listener runs on its hot threads: there it only bumps integers under one lock,
and label lookups, float formatting and the like happen when Prometheus asks.

Families (all prefixed ``catzilla_mp_``; labels ``priority`` and ``task``,
the function's qualified name):

    tasks_{submitted,started,completed,failed,retried,timed_out,crashed,cancelled}_total
    task_execution_seconds                  histogram
    queue_depth{priority}                   gauge
    workers{state="total"|"active"|"idle"}  gauge
    worker_memory_bytes / worker_cpu_percent{worker}   gauges, live workers only
    worker_memory_bytes_total, engine_memory_bytes, tasks_per_second, uptime_seconds
    submissions_per_second, queue_full_rejections_total

"started" is counted when an attempt ends (the worker stamps its start; the
app learns it with the outcome), so it trails the real start by one run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .recorder import COUNTER_NAMES, EXEC_BUCKETS

if TYPE_CHECKING:
    from .snapshot import Observer

PREFIX = "catzilla_mp"
_HELP = {
    "submitted": "Tasks accepted by add_task/add_tasks/submit/map.",
    "started": "Task attempts that started running in a worker (counted when the attempt ends).",
    "completed": "Tasks that finished with a result.",
    "failed": "Tasks that failed for good (after their retries).",
    "retried": "Failed attempts that were scheduled to run again.",
    "timed_out": "Attempts that ran past their timeout.",
    "crashed": "Attempts whose worker process died under them.",
    "cancelled": "Tasks cancelled before they started.",
}


class EngineCollector:
    """Yields the engine's metric families on each scrape."""

    def __init__(self, observer: "Observer") -> None:
        self.observer = observer

    def describe(self) -> list[Metric]:
        return []  # families depend on live data; nothing to check at register time

    def collect(self) -> Iterator[Metric]:
        yield from self._task_families()
        yield from self._gauges(self.observer.snapshot())

    def _task_families(self) -> Iterator[Metric]:
        counts = self.observer.recorder.counts_copy()
        labels = ["priority", "task"]
        for i, name in enumerate(COUNTER_NAMES):
            fam = CounterMetricFamily(f"{PREFIX}_tasks_{name}", _HELP[name], labels=labels)
            for (prio, task), ks in sorted(counts.items()):
                fam.add_metric([prio, task], ks.counts[i])
            yield fam
        hist = HistogramMetricFamily(f"{PREFIX}_task_execution_seconds",
                                     "Time tasks ran in a worker (final attempts).",
                                     labels=labels)
        for (prio, task), ks in sorted(counts.items()):
            cumulative, running = [], 0
            for bound, n in zip(list(EXEC_BUCKETS) + [float("inf")], ks.buckets):
                running += n
                cumulative.append((_bound(bound), running))
            hist.add_metric([prio, task], cumulative, ks.exec_sum)
        yield hist

    def _gauges(self, snap: dict) -> Iterator[Metric]:
        q = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Tasks waiting in the queue of each priority.",
                              labels=["priority"])
        for prio, n in snap["queues"].items():
            q.add_metric([prio], n)
        yield q
        workers = snap["workers"]
        busy = sum(1 for w in workers if w["current_task"] is not None or w["state"] == "busy")
        w = GaugeMetricFamily(f"{PREFIX}_workers", "Worker processes (or threads) by state.",
                              labels=["state"])
        w.add_metric(["total"], len(workers))
        w.add_metric(["active"], busy)
        w.add_metric(["idle"], len(workers) - busy)
        yield w
        mem = GaugeMetricFamily(f"{PREFIX}_worker_memory_bytes", "Resident memory of each live worker.",
                                labels=["worker"])
        cpu = GaugeMetricFamily(f"{PREFIX}_worker_cpu_percent",
                                "CPU use of each live worker since the previous sample.",
                                labels=["worker"])
        total_rss = 0
        for wk in workers:
            if wk["rss_bytes"] is not None:
                mem.add_metric([str(wk["index"])], wk["rss_bytes"])
                total_rss += wk["rss_bytes"]
            if wk["cpu_percent"] is not None:
                cpu.add_metric([str(wk["index"])], wk["cpu_percent"])
        yield mem
        yield cpu
        yield GaugeMetricFamily(f"{PREFIX}_worker_memory_bytes_total",
                                "Resident memory of all live workers together.", value=total_rss)
        st = snap["stats"]
        yield GaugeMetricFamily(f"{PREFIX}_engine_memory_bytes",
                                "Resident memory of the app process running the engine.",
                                value=st["engine_memory_usage"])
        yield GaugeMetricFamily(f"{PREFIX}_tasks_per_second",
                                "Completions per second over the engine's recent window.",
                                value=st["tasks_per_second"])
        yield GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the engine started.",
                                value=st["uptime_seconds"])
        # issue 13.11 (compat): submission rate and refused submissions
        yield GaugeMetricFamily(f"{PREFIX}_submissions_per_second",
                                "Submissions per second over the engine's recent window.",
                                value=st.get("submissions_per_second", 0.0))
        yield CounterMetricFamily(f"{PREFIX}_queue_full_rejections",
                                  "Submissions refused with QueueFullError (nothing was queued).",
                                  value=st.get("queue_full_rejections", 0))
        eng = snap["engine"]
        if eng["worker_crashes"] is not None:
            yield CounterMetricFamily(f"{PREFIX}_worker_crashes", "Worker processes that died unasked.",
                                      value=eng["worker_crashes"])
            yield CounterMetricFamily(f"{PREFIX}_workers_started",
                                      "Worker processes started (first ones and replacements).",
                                      value=eng["workers_started"])


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def make_registry(observer: "Observer") -> CollectorRegistry:
    """A fresh registry holding only this engine's collector (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(observer))
    return registry
