"""The dashboard's view of an engine: one JSON-ready dict, built at most ~1/s.

Everything here is read at the moment of the snapshot, from the engine's own
records: the supervisor's list of live worker processes and their records in
shared memory (so a worker that died and was replaced shows up as its new
pid, never as a ghost), the ring depths, and the recorder's counters and
history. Costly parts (psutil per worker, percentiles) run only here, and
:class:`Observer` caches the result so N open dashboards cost one snapshot.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Optional

import psutil

from .._native import ffi, lib
from ..errors import UnknownTaskError
from ..records import TaskPriority
from .recorder import HISTORY_S, Recorder
from .text import safe_repr, safe_str

if TYPE_CHECKING:
    from ..engine import BackgroundTasks
    from ..results import TaskResult

WORKER_STATES = {
    lib.CZMP_WORKER_EMPTY: "empty", lib.CZMP_WORKER_STARTING: "starting",
    lib.CZMP_WORKER_IDLE: "idle", lib.CZMP_WORKER_BUSY: "busy",
    lib.CZMP_WORKER_STOPPING: "stopping", lib.CZMP_WORKER_DEAD: "dead",
}
PRIORITIES = [p.name.lower() for p in TaskPriority]
#: A snapshot younger than this is served again from the cache.
CACHE_S = 0.5


class Observer:
    """Per-engine observability state: the recorder plus the worker samplers."""

    def __init__(self, engine: "BackgroundTasks") -> None:
        self.engine = engine
        self.recorder = Recorder(engine)
        self._ps: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._cached: Optional[dict] = None
        self._cached_at = 0.0

    def snapshot(self, max_age: float = CACHE_S) -> dict:
        """The dashboard dict (see :func:`build_snapshot`), cached for ``max_age`` seconds."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached_at > max_age:
                self._cached = build_snapshot(self)
                self._cached_at = now
            return self._cached

    # -- worker sampling ------------------------------------------------------

    def sample_process(self, pid: int) -> tuple[Optional[float], Optional[int]]:
        """(CPU % since the last sample, RSS bytes) of a worker; Nones if it is gone."""
        if not pid:
            return None, None
        ps = self._ps.get(pid)
        try:
            if ps is None:
                ps = self._ps[pid] = psutil.Process(pid)
                ps.cpu_percent(None)  # first call only starts the measurement
            return round(ps.cpu_percent(None), 1), ps.memory_info().rss
        except psutil.Error:
            self._ps.pop(pid, None)
            return None, None

    def forget_others(self, live: set[int]) -> None:
        for pid in [p for p in self._ps if p not in live]:
            del self._ps[pid]


def build_snapshot(obs: Observer) -> dict:
    """The engine now: queues, workers, totals, history, failures, recent tasks.

    Safe to call while workers die and are replaced, and after shutdown (the
    workers list is then empty and ``closed`` is true).
    """
    engine = obs.engine
    rec = obs.recorder
    backend = engine.backend
    stats = engine.get_stats()
    depths = list(backend.queue_depths()) if backend is not None else [0] * len(PRIORITIES)
    workers = _workers(obs, backend)
    sup = getattr(backend, "supervisor", None)
    return {
        "time": time.time(),
        "engine": {
            "mode": engine.options.mode, "pid": os.getpid(), "closed": engine.closed,
            "segment": getattr(getattr(backend, "seg", None), "name", None),
            "min_workers": engine.options.min_workers, "max_workers": engine.options.max_workers,
            "queue_size": engine.options.queue_size, "uptime_s": round(stats.uptime_seconds, 1),
            "workers_started": getattr(sup, "spawned", None),
            "worker_crashes": getattr(sup, "crashes", None),
        },
        "queues": dict(zip(PRIORITIES, depths)),
        "total_queued": sum(depths),
        "workers": workers,
        "totals": rec.totals(),
        "stats": {k: (round(v, 3) if isinstance(v, float) else v)
                  for k, v in dataclasses.asdict(stats).items()},
        "series": rec.history(HISTORY_S),
        "failures": rec.recent_failures(),
        "recent": [task_summary(t) for t in rec.recent_tasks()],
    }


def _workers(obs: Observer, backend: Any) -> list[dict]:
    if backend is None:
        return []
    out = []
    now_ns = lib.czmp_now_ns()
    live = set()
    for proc, rec in backend.worker_records():
        pid = getattr(proc, "pid", 0) or 0
        live.add(pid)
        cpu, rss = obs.sample_process(pid)
        is_shm = isinstance(rec, ffi.CData)
        current = _current_task(backend, rec)
        if is_shm:
            state = WORKER_STATES.get(rec.state, str(rec.state))
            if state == "idle" and rec.current_slot:
                state = "busy"  # the slot being run is the truth, whatever the state word says
            beat = (now_ns - rec.heartbeat_ns) / 1e9 if rec.heartbeat_ns else None
            failed, index = rec.tasks_failed, getattr(proc, "index", None)
        else:  # thread mode: a thread of the app
            state = "busy" if rec.current_slot else "idle"
            beat, failed, index = None, None, len(out)
        out.append({
            "index": index, "pid": pid, "state": state, "cpu_percent": cpu, "rss_bytes": rss,
            "tasks_done": rec.tasks_done, "tasks_failed": failed,
            "heartbeat_age_s": None if beat is None else round(max(0.0, beat), 3),
            "current_task": current,
            "uptime_s": round(time.monotonic() - proc.started, 1) if hasattr(proc, "started") else None,
        })
    obs.forget_others(live)
    out.sort(key=lambda w: (w["index"] is None, w["index"]))
    return out


def _current_task(backend: Any, rec: Any) -> Optional[dict]:
    """The task a worker runs now, from its record's current slot."""
    task = getattr(rec, "current", None)  # thread mode keeps the TaskResult itself
    if task is None and rec.current_slot:
        table = getattr(backend, "_slot_task", None)
        idx = rec.current_slot - 1
        if table is not None and 0 <= idx < len(table):
            task = table[idx]
    if task is None:
        return None
    started = task.started_at
    return {"task_id": task.task_id, "name": task.name,
            "running_s": round(time.time() - started, 3) if started else None}


# -- tasks ---------------------------------------------------------------------

def task_summary(task: "TaskResult") -> dict:
    return {"task_id": task.task_id, "name": task.name, "status": task.status.name.lower(),
            "priority": task.priority.name.lower(), "exec_ms": _r(task.exec_ms),
            "completed_at": task.completed_at, "attempts": task.attempt + 1,
            "worker_id": task.worker_id}


def task_detail(engine: "BackgroundTasks", task_id: str, *, debug: bool = False) -> Optional[dict]:
    """Everything known about one task (None if the engine does not know it).

    The result is shown as a truncated repr, the error as its type and
    message, plus the (remote) traceback in debug mode only: the dashboard
    is for looking, not for fetching data. Never raises for a task's own
    broken ``__repr__``/``__str__``.
    """
    try:
        task = engine.get_task_result(task_id)
    except UnknownTaskError:
        return None
    stats = task.get_stats()  # refreshes RUNNING from the slot
    d = task_summary(task)
    fraction, message = task.progress
    d.update({
        "status": stats.status.name.lower(), "created_at": stats.created_at,
        "started_at": stats.started_at, "completed_at": stats.completed_at,
        "exec_ms": _r(stats.execution_time_ms), "retries": stats.retries,
        "max_retries": task.max_retries, "timeout_ms": task.timeout_ms,
        "delay_ms": task.delay_ms, "worker_id": stats.worker_id,
        "progress": fraction, "progress_message": message,
        "wait_ms": _r((stats.started_at - stats.created_at) * 1000)
        if stats.started_at and stats.created_at else None,
        "result": None, "error": None,
    })
    if task.is_ready():
        exc = task.exception(0)
        if exc is None:
            d["result"] = _repr(task.wait(0))
        else:
            d["error"] = {"type": type(exc).__name__, "message": safe_str(exc, 2000),
                          "traceback": _traceback(exc) if debug else None}
    return d


def _traceback(exc: BaseException) -> str:
    cause = exc.__cause__
    remote = getattr(cause, "tb", None)
    if isinstance(remote, str):
        return remote[-8000:]
    try:
        return "".join(traceback.format_exception_only(type(exc), exc))[-8000:]
    except Exception:  # noqa: BLE001 - a broken __str__
        return f"{type(exc).__name__}: {safe_str(exc, 2000)}"


def _repr(value: Any, limit: int = 500) -> str:
    return safe_repr(value, limit)  # bounded, and a broken __repr__ must not break the page


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 3)
