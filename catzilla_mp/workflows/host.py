"""WorkflowHost: what the workflows package may ask of its engine.

The engine (engine.py) hands the package one object implementing this
protocol; the package never reaches into the engine otherwise, so it sits
below the API layer (docs/architecture.md) and could serve another engine.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from ..records import TaskStatus
from ..results import TaskResult


class WorkflowHost(Protocol):
    """The engine's side of a workflow submission (engine.py's _WorkflowPort)."""

    def hold(self, task: TaskResult) -> None:
        """Enter a numbered task in the engine's table without queueing it.

        From here the engine counts it as in flight (shutdown waits for it)
        and get_task_result finds it.

        Raises:
            EngineClosedError, EngineBrokenError: the engine takes no task.
        """

    def forget(self, task: TaskResult) -> None:
        """Take a held task out of the table again (it was a duplicate; it never ran)."""

    def release(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                delay_s: float) -> Optional[BaseException]:
        """Queue a held task, ``delay_s`` seconds later than its own delay_ms.

        Returns:
            None once queued; else the error, with the task already finished
            FAILED by it (so whoever waits on it wakes up).
        """

    def prefeed(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                parent: TaskResult) -> Any:
        """Store a held task whose first argument will be ``parent``'s result, for
        the parent's worker to feed and queue without the app (issue 15).

        Returns:
            A handle with ``feed(value) -> "worker" | "app" | "back"`` and
            ``take_back() -> bool`` (see DependencyGraph.wait_for), or None
            where the backend cannot (thread, Ray, remote; see
            docs/workflows.md): the caller releases the task itself once the
            parent completed. Never raises: a task that cannot be stored now
            goes the app's way.
        """

    def finish(self, task: TaskResult, ok: bool, value: Any, status: TaskStatus) -> None:
        """Settle a held task that will never be queued (TaskLifecycle.finish)."""

    def owns(self, task: TaskResult) -> bool:
        """True if ``task`` was submitted to this engine."""

    def add_task(self, func: Callable, *args: Any, **kwargs: Any) -> TaskResult:
        """The engine's add_task (a schedule's runs go through it)."""

    def shared(self) -> Any:
        """The backend that applies rate limits, job ids and schedules for every
        process of a ``catzilla-mp serve`` (backends/remote.py), or None: this engine
        applies them itself."""

    def release_shared(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                       shared: dict) -> tuple[Optional[BaseException], Optional[str]]:
        """release() through the shared backend, with the task's rate limit and job key.

        Returns:
            (None, None) once queued; (None, first_id) if the server holds the
            job key for task ``first_id`` (the task was not queued and must be
            forgotten); (error, None) with the task finished FAILED by it.
        """

    def lookup(self, task_id: str) -> TaskResult:
        """The engine's get_task_result (a task of another process of the server).

        Raises:
            UnknownTaskError: no such task.
        """

    def schedule_store(self) -> Any:
        """Where a durable engine keeps its schedules' last runs (ScheduleStore), or None."""
