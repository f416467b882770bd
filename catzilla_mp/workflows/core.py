"""Workflows: one engine's dependency graph, unique-job table, rate limiters and scheduler.

    engine.add_task(fn, ..., depends_on= / job_id= / unique_for= / rate_limit=)
          │  (engine.py: the task numbered and validated as every task, then)
          ▼
    Workflows.submit(task, fn, args, kwargs, ...)
          │ host.hold(task)                      in the engine's table, not queued
          │ unique:  UniqueJobs.claim ─ taken ──► host.forget(task); the first's TaskResult
          │ depends: DependencyGraph.wait_for ──► held until the parents complete
          ▼ release (now, or from a parent's callback)
    RateLimits: delay_s = limiter.reserve()  ──► host.release(task, fn, args, kwargs, delay_s)

With ``server=`` (one engine per server, backends/remote.py) the rate limit,
the job key and schedules are not applied here but in the server, once for
every process using it:

    submit: options checked here ─► host.release_shared(task, ..., {"rate_limit", "job"})
              ─► "submit" with them ─► server: its limiter reserves the start, its
                 job table dedupes (the answer names the first task if taken)
    schedule: spec checked here ─► "schedule" (key, fn, spec) ─► server: one Schedule
              per key in its engine, kept while a process that registered it is connected

The engine makes one Workflows on the first submission that needs it; a
plain add_task never comes here.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..errors import EngineClosedError
from ..records import TaskStatus
from ..results import TaskResult
from . import ratelimit, unique
from .dependencies import Dependencies, DependencyGraph
from .host import WorkflowHost
from .schedule import Schedule, Scheduler, check_when, schedule_key


class Workflows:
    """The workflow state of one engine.

    Args:
        host: the engine's WorkflowHost.
        clock: monotonic seconds for rate limits and unique_for (tests inject one).
        wall_clock: wall-clock seconds for schedules (tests inject one).
        scheduler_thread: False in tests that drive ``scheduler.tick`` themselves.
    """

    def __init__(self, host: WorkflowHost, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 scheduler_thread: bool = True) -> None:
        self.host = host
        self.graph = DependencyGraph(host)
        self.unique = unique.UniqueJobs(clock)
        self.limits = ratelimit.RateLimits(clock)
        # a host that predates shared workflows (a test's stub) shares nothing, stores nothing
        self._shared: Callable[[], Any] = getattr(host, "shared", lambda: None)
        store = getattr(host, "schedule_store", None)
        self.scheduler = Scheduler(self._fire, clock=wall_clock, thread=scheduler_thread,
                                   store=store() if store is not None else None)
        self._shared_lock = threading.Lock()
        self._shared_schedules: dict[str, SharedSchedule] = {}  # server=: ours, by key
        #: chain steps fed worker-to-worker where the backend can (issue 15);
        #: bench/workflows.py turns it off to time the app's hand-off in the same run
        self.direct_feed = True

    def submit(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict, *,
               name: str, depends_on: Any = None, job_id: Optional[str] = None,
               unique_for: Optional[float] = None, rate_limit: Any = None) -> TaskResult:
        """Submit ``task`` (numbered by the engine, not yet in its table) with workflow options.

        Args:
            name: the rate-limit and uniqueness name of the task's function.
        Returns:
            ``task``, or the TaskResult already holding its job_id / arguments.
        Raises:
            TypeError, ValueError: a bad option (nothing was submitted).
            EngineClosedError, EngineBrokenError: as add_task.
            Any error of queueing the task now (SerializationError,
            QueueFullError, ...); the task was not queued.
        """
        # every check before anything is held: bad input submits nothing
        limiter = self.limits.limiter(name, rate_limit)
        deps = None if depends_on is None else Dependencies.of(depends_on)
        if deps is not None:
            self.graph.check(deps)
        key = None
        if job_id is not None or unique_for is not None:
            unique_for = unique.check_unique_for(unique_for)
            key = unique.key_of(job_id, name, args, kwargs)
        shared = self._shared()
        if shared is not None:
            wf = {"rate_limit": None if limiter is None else (name, limiter.limit),
                  "job": None if key is None else (key, unique_for)}
            return self._submit_shared(task, func, args, kwargs, deps, wf)
        self.host.hold(task)
        if key is not None:
            first = self.unique.claim(key, task, unique_for)
            if first is not task:
                self.host.forget(task)
                return first
        if deps is None:
            err = self._release(task, limiter, func, args, kwargs)
            if err is not None:
                if key is not None:
                    self.unique.drop(key, task)
                raise err
            return task

        def release(fed: tuple) -> None:
            self._release(task, limiter, func, fed + args, kwargs)

        stored = None
        if deps.feed == "first" and limiter is None and self.direct_feed:
            # a chain step: its parent's worker may feed it (worker-to-worker)
            stored = self.host.prefeed(task, func, args, kwargs, deps.parents[0])
        self.graph.wait_for(task, deps, release, stored)
        return task

    def _release(self, task: TaskResult, limiter: Optional[ratelimit.WindowLimiter],
                 func: Callable, args: tuple, kwargs: dict) -> Optional[BaseException]:
        delay_s = limiter.reserve() if limiter is not None else 0.0
        return self.host.release(task, func, args, kwargs, delay_s)

    def _submit_shared(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                       deps: Optional[Dependencies], wf: dict) -> TaskResult:
        """submit() with server=: the server applies the rate limit and the job key."""
        self.host.hold(task)
        if deps is None:
            err, first = self.host.release_shared(task, func, args, kwargs, wf)
            if err is not None:
                raise err
            if first is None:
                return task
            self.host.forget(task)
            return self._first(first, task)

        def release(fed: tuple) -> None:
            err, first = self.host.release_shared(task, func, fed + args, kwargs, wf)
            if first is not None:
                # already returned to the caller: it ends with the first's outcome
                self._follow(task, self._first(first, task))

        self.graph.wait_for(task, deps, release)
        return task

    def _first(self, task_id: str, dup: TaskResult) -> TaskResult:
        """The TaskResult of the task holding a job key on the server."""
        try:
            return self.host.lookup(task_id)
        except Exception as exc:  # noqa: BLE001 - gone already: the duplicate says so
            self.host.hold(dup)
            self.host.finish(dup, False, exc, TaskStatus.FAILED)
            return dup

    def _follow(self, task: TaskResult, first: TaskResult) -> None:
        if first is task:
            return

        def settle(value: Any) -> None:
            self.host.finish(task, first.status is TaskStatus.COMPLETED, value, first.status)

        first.add_callback(settle)

    def cancel_held(self, task: TaskResult) -> bool:
        """Cancel ``task`` if it waits for a parent here (TaskResult.cancel of a dependant)."""
        return self.graph.cancel(task)

    def job(self, job_id: str) -> Optional[TaskResult]:
        """The TaskResult holding ``job_id`` now, or None (with server=: on the server)."""
        key = unique.key_of(job_id, "", (), {})
        shared = self._shared()
        if shared is not None:
            holder = shared.job_holder(key)
            return None if holder is None else self.host.lookup(holder)
        return self.unique.find(key)

    # -- schedules ---------------------------------------------------------------

    def schedule(self, fn: Callable, args: tuple, kwargs: dict, **when: Any) -> Schedule:
        """A periodic run of ``fn(*args, **kwargs)`` (kwargs may hold add_task options); see Scheduler.add."""
        if self.scheduler.closed:
            raise EngineClosedError("the engine is shut down; it takes no new schedules")
        shared = self._shared()
        if shared is None:
            return self.scheduler.add(fn, args, kwargs, **when)
        return self._schedule_shared(shared, fn, args, kwargs, **when)

    def _schedule_shared(self, backend: Any, fn: Callable, args: tuple, kwargs: dict, *,
                         cron: Optional[str] = None, every: Any = None, tz: Any = None,
                         missed: str = "once", name: Optional[str] = None) -> "SharedSchedule":
        """server=: register the schedule on the server (one per key there)."""
        cron, every_s, zone = check_when(fn, cron, every, tz, missed)
        args, kwargs = tuple(args), dict(kwargs)
        key = schedule_key(fn, args, kwargs, cron=cron, every_s=every_s, tz=zone, missed=missed,
                           name=name)
        spec = {"cron": cron, "every": every_s, "tz": zone, "missed": missed}
        backend.register_schedule(key, fn, args, kwargs, spec)
        handle = SharedSchedule(self, backend, key, name or getattr(fn, "__qualname__", key),
                                spec)
        with self._shared_lock:
            self._shared_schedules[key] = handle
        return handle

    def schedules(self) -> list:
        """This engine's active schedules (with server=: the ones it registered there)."""
        with self._shared_lock:
            shared = list(self._shared_schedules.values())
        return self.scheduler.schedules() + shared

    def _unregister(self, handle: "SharedSchedule") -> bool:
        with self._shared_lock:
            if self._shared_schedules.get(handle.key) is not handle:
                return False
            del self._shared_schedules[handle.key]
        return bool(handle._backend.unregister_schedule(handle.key))

    def _fire(self, sched: Schedule, due: float) -> TaskResult:
        return self.host.add_task(sched.fn, *sched.args, **sched.kwargs)

    def stop_schedules(self) -> None:
        """No more runs (shutdown starts); server=: the registrations go with the connection."""
        self.scheduler.close()
        with self._shared_lock:
            self._shared_schedules.clear()

    def close(self) -> None:
        """The engine closed: cancel every task still waiting for a parent."""
        self.scheduler.close()
        self.graph.cancel_all()


class SharedSchedule:
    """A schedule registered on a ``catzilla-mp serve`` (server=): a handle, not the timer.

    The server fires the runs (one schedule per key whatever the number of
    processes registering it); ``info()`` asks it for the state.

    Attributes:
        key: the schedule's key (schedule_key). name: for logs.
        cron / every_s / tz / missed: as given.
    """

    def __init__(self, workflows: Workflows, backend: Any, key: str, name: str,
                 spec: dict) -> None:
        self._workflows = workflows
        self._backend = backend
        self.key, self.name = key, name
        self.cron, self.every_s = spec["cron"], spec["every"]
        self.tz, self.missed = spec["tz"], spec["missed"]

    def info(self) -> Optional[dict]:
        """The server's view: next_run, last_run, runs, skipped, registered (processes); or None.

        Raises:
            EngineBrokenError: the server does not answer.
        """
        return self._backend.schedule_info(self.key)

    def cancel(self) -> bool:
        """Withdraw this process's registration; the server stops the schedule once no
        process is registered. True if this process was registered."""
        return self._workflows._unregister(self)

    @property
    def active(self) -> bool:
        with self._workflows._shared_lock:
            return self._workflows._shared_schedules.get(self.key) is self

    def __repr__(self) -> str:
        when = self.cron if self.cron is not None else f"every {self.every_s:g} s"
        return f"<SharedSchedule {self.key!r} {when} {'active' if self.active else 'cancelled'}>"
