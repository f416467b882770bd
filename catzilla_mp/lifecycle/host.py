"""TaskHost: what a backend may ask of the task lifecycle above it.

A backend (backends/thread.py, backends/process/backend.py, a Ray backend, a
durable journal) is constructed with one object implementing this protocol
(the engine, a TaskLifecycle) and reaches the lifecycle through it only:
never through engine.py, never through a private name. The backend moves
bytes and runs attempts; every decision about a task's fate is the host's:

    backend                               host (lifecycle/core.py)
    -------                               ------------------------
    an attempt ended, ok        ──►       finish(task, True, value, COMPLETED)
    an attempt failed           ──►       attempt_failed(task, exc)?  True: retry
                                              backoff_s(task.attempt, task) → park
                                          False: finish(task, False, exc, FAILED)
    a delayed start / a back-off ──►      schedule(delay_s, fn) → timer; unschedule(timer)
    one of its threads died     ──►       thread_died(name, exc): the engine is broken
    closing                     ──►       unfinished(): what to abandon

Rules a backend keeps:
  * ``finish`` is called at most once per task by whoever settles it (the
    host ignores a second call); after it the backend frees what it holds for
    the task (slot, chunks, timers) or has freed it already.
  * ``lock`` guards a task's status fields: a backend that writes
    ``task.status``/``started_at``/``worker_id`` holds it, and writes only
    while ``task.done()`` is False.
  * Callbacks given to ``schedule`` run on the host's delay thread: they must
    be short and must not block.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional, Protocol

if TYPE_CHECKING:
    from ..records import TaskStatus
    from ..results import TaskResult
    from .monitor import Monitor


class TaskHost(Protocol):
    """The lifecycle as a backend sees it (implemented by TaskLifecycle)."""

    #: the engine's validated options (EngineOptions): sizes, timeouts, workers
    options: Any
    #: statistics and event listeners (lifecycle/monitor.py)
    monitor: "Monitor"
    #: process mode: what every worker process is started with (logs, initializer)
    worker_extras: dict

    @property
    def lock(self) -> ContextManager[Any]:
        """The lock under which a task's status fields change."""

    def queue_wait_s(self) -> float:
        """How long a submission on this thread may wait for room (0: do not wait)."""

    def finish(self, task: "TaskResult", ok: bool, value: Any, status: "TaskStatus") -> None:
        """Settle ``task`` for good: count it, keep it findable, complete its result."""

    def finish_many(self, settled: list) -> None:
        """finish() for a batch of ``(task, ok, value, status)``, in order (one lock, one clock)."""

    def attempt_failed(self, task: "TaskResult", exc: BaseException) -> bool:
        """After a failed attempt: True if it is retried (the backend keeps its input)."""

    def backoff_s(self, attempt: int, task: Optional["TaskResult"] = None) -> float:
        """Seconds to wait before retry ``attempt`` of ``task``."""

    def schedule(self, delay_s: float, fn: Callable[[], None]) -> Any:
        """Call ``fn()`` on the delay thread in ``delay_s`` s; returns a timer for unschedule."""

    def unschedule(self, timer: Any) -> None:
        """Drop a timer of schedule() that is no longer needed."""

    def thread_died(self, name: str, exc: BaseException) -> None:
        """A backend thread ended unexpectedly: every unfinished task fails, the engine is broken."""

    def unfinished(self) -> list["TaskResult"]:
        """Every task submitted and not yet final."""
