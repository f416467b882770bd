"""Backend: what the engine asks of whatever runs a task's attempts.

A backend sits below the task lifecycle. It is constructed with the
lifecycle's TaskHost (lifecycle/host.py) and never imports engine.py:

    engine.py (API) ──► TaskLifecycle ──────── host ────────┐
         │  dispatch / cancel / close / stats                │ finish, attempt_failed,
         ▼                                                   │ backoff_s, schedule, ...
    Backend (this protocol) ◄────────────────────────────────┘
         ├─ backends/thread.py            threads of the app process
         ├─ backends/process/backend.py   worker processes over shared memory
         └─ (a Ray backend, a durable journal: implement this protocol)

The division of labour:
  * The backend owns the *resources* of a task in flight (a queue place, a
    slot and its payload chunks, a thread, a remote object reference) and
    frees them exactly once: when it settles the task, when a retry is
    parked (it keeps the input), or in ``close``.
  * The host owns the task's *fate*: whether a failed attempt is retried and
    when (attempt_failed, backoff_s), delays (schedule), the final status
    (finish), what a closed engine does with what is left (the ``abandon``
    given to close).

A third backend implements the methods below with the documented failure
contracts; the lifecycle and the API do not change. A durable journal is a
backend wrapper: it records dispatch and finish, and re-dispatches on start
what was dispatched and never finished.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol

if TYPE_CHECKING:
    from ..results import TaskResult


class Backend(Protocol):
    """What the engine and the lifecycle call on a backend (see the module docstring)."""

    def dispatch(self, task: "TaskResult", fn: Callable, args: tuple, kwargs: dict) -> None:
        """Queue one attempt of ``fn(*args, **kwargs)`` for ``task`` (after ``task.delay_ms``).

        Waits up to ``host.queue_wait_s()`` for room.

        Raises:
            QueueFullError, SerializationError, PayloadTooLargeError,
            EngineClosedError: the task was not queued and holds nothing.
        """

    def dispatch_many(self, tasks: list["TaskResult"], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        """``dispatch`` of ``fn(*calls[i])`` for each ``tasks[i]``, in order.

        ``done[0]`` counts the tasks queued so far: on an error the first
        ``done[0]`` are queued, the rest hold nothing.
        """

    def cancel(self, task: "TaskResult") -> bool:
        """Withdraw ``task`` if no attempt has started; True if withdrawn.

        The caller (the host) then finishes it as CANCELLED; the backend has
        freed what it held for it.
        """

    def terminate(self, task: "TaskResult") -> bool:
        """Stop a running attempt by force (cancel(force=True)); False if it cannot.

        The attempt then ends through the backend's usual path (the host's
        ``finish`` with CANCELLED).
        """

    def observe(self, task: "TaskResult") -> None:
        """Bring ``task.status``/``started_at``/``worker_id`` up to date (under ``host.lock``)."""

    def is_running(self, task: "TaskResult") -> bool:
        """True if an attempt of ``task`` runs now (reads only)."""

    def live_progress(self, task: "TaskResult") -> Optional[tuple[float, str]]:
        """The (fraction, message) ``task`` last reported while running, or None."""

    def help_collect(self, task: "TaskResult", timeout: Optional[float]) -> None:
        """Let a thread waiting on ``task`` collect outcomes itself for a moment (may do nothing)."""

    def queue_depths(self) -> list[int]:
        """Tasks queued and not started, per priority (CRITICAL, HIGH, NORMAL, LOW)."""

    def worker_records(self) -> Iterable[tuple[Any, Any]]:
        """(process, record) of each worker: ``process.pid`` (0 for a thread),
        ``record.current_slot`` (busy if true) and ``record.busy_ns``."""

    def in_flight_memory(self) -> tuple[int, int]:
        """(bytes used, bytes reserved) by payloads of tasks in flight."""

    def close(self, abandon: Callable[["TaskResult"], None]) -> None:
        """Stop every thread and process of the backend and free everything it holds.

        Every task still unfinished is handed to ``abandon`` (the host
        finishes it as CANCELLED or FAILED). Idempotent; never raises for a
        task's sake.
        """
