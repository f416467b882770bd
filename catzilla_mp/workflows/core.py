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

The engine makes one Workflows on the first submission that needs it; a
plain add_task never comes here.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from ..errors import EngineClosedError
from ..results import TaskResult
from . import ratelimit, unique
from .dependencies import Dependencies, DependencyGraph
from .host import WorkflowHost
from .schedule import Schedule, Scheduler


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
        self.scheduler = Scheduler(self._fire, clock=wall_clock, thread=scheduler_thread)
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

    def cancel_held(self, task: TaskResult) -> bool:
        """Cancel ``task`` if it waits for a parent here (TaskResult.cancel of a dependant)."""
        return self.graph.cancel(task)

    def job(self, job_id: str) -> Optional[TaskResult]:
        """The TaskResult holding ``job_id`` now, or None."""
        return self.unique.find(unique.key_of(job_id, "", (), {}))

    # -- schedules ---------------------------------------------------------------

    def schedule(self, fn: Callable, args: tuple, kwargs: dict, **when: Any) -> Schedule:
        """A periodic run of ``fn(*args, **kwargs)`` (kwargs may hold add_task options); see Scheduler.add."""
        if self.scheduler.closed:
            raise EngineClosedError("the engine is shut down; it takes no new schedules")
        return self.scheduler.add(fn, args, kwargs, **when)

    def _fire(self, sched: Schedule, due: float) -> TaskResult:
        return self.host.add_task(sched.fn, *sched.args, **sched.kwargs)

    def stop_schedules(self) -> None:
        """No more runs (shutdown starts)."""
        self.scheduler.close()

    def close(self) -> None:
        """The engine closed: cancel every task still waiting for a parent."""
        self.scheduler.close()
        self.graph.cancel_all()
