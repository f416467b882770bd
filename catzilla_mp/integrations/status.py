"""What the status routes answer, without any web framework.

* ``task_status(task)``: one task as a JSON-able dict (status, progress,
  timings, attempts, worker, request, and result or error).
* ``error_response(exc)``: the HTTP status code and JSON body for a task
  that failed, which the helpers raise as ``TaskHTTPError``:

      TaskTimeoutError      504  the task ran past its timeout_ms
      WorkerCrashedError    502  its worker process died (attempts used up)
      TaskCancelledError    409  cancelled before it ran
      EngineClosed/Broken   503  the engine is not there to run it
      wait timeout          504  the handler stopped waiting; the task still runs
      anything else         500  the task's own exception

  Tracebacks (the worker's, from ``__cause__``) are added only in debug mode.
* ``TaskRoutes``: the four routes' logic as (status code, body) pairs; the
  Catzilla and ASGI integrations adapt it to their request/response types.
* SSE helpers: ``state_key`` names a visible state, ``sse`` formats one event,
  ``task_changes`` is the async poll loop both event routes use.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import time
from enum import Enum
from typing import Any, AsyncIterator, Callable, Optional

from ..errors import (
    EngineBrokenError,
    EngineClosedError,
    RemoteTraceback,
    TaskCancelledError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerCrashedError,
)
from ..records import TaskStatus
from .tracking import RequestLog

#: How often the event routes look at a task. A TaskResult read is a few
#: attribute loads (plus one shared-memory progress read), so 50 ms costs
#: nothing measurable and is below what a person notices.
POLL_S = 0.05
#: Max characters of a result's repr() when the result is not JSON.
REPR_LIMIT = 2000

_FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskHTTPError(Exception):
    """A task failed; answer the request with ``status_code`` and JSON ``body``."""

    def __init__(self, status_code: int, body: dict) -> None:
        super().__init__(status_code, body)
        self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        err = self.body.get("error", {})
        return f"{self.status_code} {err.get('type')}: {err.get('message')}"


# -- JSON shapes ----------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """``value`` if json.dumps takes it as is (finite floats only), else None."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, OverflowError):
        return None
    return value


def _result_fields(value: Any) -> dict:
    if value is None or jsonable(value) is not None:
        return {"result": value}
    text = repr(value)
    if len(text) > REPR_LIMIT:
        text = text[:REPR_LIMIT] + "..."
    return {"result": None, "result_repr": text}


def error_info(exc: BaseException, *, debug: bool = False) -> dict:
    """``{"type", "message"}`` of an exception, plus ``traceback`` in debug mode."""
    info = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, WorkerCrashedError) and exc.exitcode is not None:
        info["exitcode"] = exc.exitcode
    if debug:
        cause = exc.__cause__
        if isinstance(cause, RemoteTraceback):
            info["traceback"] = cause.tb
        else:
            import traceback
            info["traceback"] = "".join(traceback.format_exception(exc))
    return info


def _ms(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round((b - a) * 1000.0, 3)


def task_status(task, *, debug: bool = False) -> dict:
    """A task as a JSON-able dict. Reads only TaskResult's public API (and ``meta``)."""
    stats = task.get_stats()  # refreshes worker and start time while running
    fraction, message = task.progress
    if stats.status is TaskStatus.COMPLETED:
        # the last report may land after the final poll of a fast task
        fraction = 1.0
    out = {
        "task_id": task.task_id,
        "status": stats.status.name,
        "done": task.is_ready(),
        "progress": fraction,
        "message": message,
        "priority": getattr(getattr(task, "priority", None), "name", None),
        "attempts": stats.retries + (0 if stats.started_at is None else 1),
        "retries": stats.retries,
        "worker": stats.worker_id,
        "created_at": stats.created_at,
        "started_at": stats.started_at,
        "completed_at": stats.completed_at,
        "queued_ms": _ms(stats.created_at, stats.started_at),
        "execution_time_ms": stats.execution_time_ms,
        "request": (task.meta or {}).get("request") if isinstance(task.meta, dict) else None,
    }
    if task.is_ready():
        exc = task.exception(timeout=0)
        if exc is None:
            out.update(_result_fields(task.wait(0)))
        else:
            out["error"] = error_info(exc, debug=debug)
    return out


def engine_stats(engine) -> dict:
    """EngineStats as a dict, with non-finite floats as None (JSON has no NaN)."""
    stats = dataclasses.asdict(engine.get_stats())
    for k, v in stats.items():
        if isinstance(v, float) and not math.isfinite(v):
            stats[k] = None
        elif isinstance(v, Enum):
            stats[k] = v.name
    return stats


# -- errors as HTTP answers --------------------------------------------------------

def error_status(exc: BaseException) -> int:
    """The HTTP status code for a task that ended with ``exc`` (see the module doc)."""
    if isinstance(exc, TaskTimeoutError):
        return 504
    if isinstance(exc, WorkerCrashedError):
        return 502
    if isinstance(exc, TaskCancelledError):
        return 409
    if isinstance(exc, (EngineClosedError, EngineBrokenError)):
        return 503
    return 500


def task_http_error(task, exc: BaseException, *, debug: bool = False) -> TaskHTTPError:
    """The TaskHTTPError for ``task`` failing with ``exc``."""
    body = {"task_id": getattr(task, "task_id", None), "status": "FAILED",
            "error": error_info(exc, debug=debug)}
    status = getattr(getattr(task, "status", None), "name", None)
    if status:
        body["status"] = status
    return TaskHTTPError(error_status(exc), body)


def wait_timeout_error(task, timeout: Optional[float]) -> TaskHTTPError:
    """The handler gave up waiting; the task itself keeps running."""
    return TaskHTTPError(504, {
        "task_id": task.task_id, "status": task.status.name,
        "error": {"type": "WaitTimeout",
                  "message": f"task {task.task_id} did not finish within {timeout} s; "
                             "it is still running, poll its status"}})


def wait_result(task, timeout: Optional[float] = None, *, debug: bool = False) -> Any:
    """Block until ``task`` ends and return its result.

    Raises:
        TaskHTTPError: the task failed (status code per the module doc), or
            ``timeout`` passed first (504, type "WaitTimeout").
    """
    try:
        return task.wait(timeout)
    except TimeoutError as exc:
        if not task.is_ready():
            raise wait_timeout_error(task, timeout) from None
        raise task_http_error(task, exc, debug=debug) from exc
    except Exception as exc:  # noqa: BLE001 - every task failure becomes an HTTP answer
        raise task_http_error(task, exc, debug=debug) from exc


async def await_result(task, timeout: Optional[float] = None, *, debug: bool = False) -> Any:
    """``wait_result`` without blocking the event loop."""
    try:
        return await asyncio.wait_for(asyncio.shield(task.future), timeout)
    except asyncio.TimeoutError as exc:
        if not task.is_ready():
            raise wait_timeout_error(task, timeout) from None
        raise task_http_error(task, exc, debug=debug) from exc
    except asyncio.CancelledError:
        if task.cancelled():
            raise task_http_error(task, task.exception(0), debug=debug) from None
        raise
    except Exception as exc:  # noqa: BLE001
        raise task_http_error(task, exc, debug=debug) from exc


# -- Server-Sent Events ------------------------------------------------------------------

def state_key(status: dict) -> str:
    """A short id for what a client sees of a task; it changes iff the state shown changes."""
    seen = (status["status"], status["progress"], status["message"], status["attempts"],
            status["worker"])
    return hashlib.sha1(repr(seen).encode()).hexdigest()[:16]


def sse(data: dict, *, event: Optional[str] = None, id: Optional[str] = None,
        retry_ms: Optional[int] = None) -> str:
    """One SSE event. JSON has no raw newlines, so ``data`` is one line."""
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {int(retry_ms)}")
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


async def task_changes(task, *, last_key: Optional[str] = None, debug: bool = False,
                       poll_s: float = POLL_S, hold_s: Optional[float] = None
                       ) -> AsyncIterator[tuple[str, str, dict]]:
    """Yield ``(event, key, status)`` each time the task's visible state changes.

    ``event`` is "status" while the task runs and "end" for its final state,
    after which the iterator stops. A state whose key equals ``last_key`` is
    not repeated. With ``hold_s``, stops (without an end) after that long
    without a change.
    """
    quiet_since = time.monotonic()
    while True:
        status = task_status(task, debug=debug)
        key = state_key(status)
        final = status["done"]
        if key != last_key or final:
            if not (final and key == last_key):
                yield ("end" if final else "status"), key, status
            if final:
                return
            last_key, quiet_since = key, time.monotonic()
        elif hold_s is not None and time.monotonic() - quiet_since >= hold_s:
            return
        await asyncio.sleep(poll_s)


# -- the routes' logic ---------------------------------------------------------------------

class TaskRoutes:
    """The status routes as plain functions returning (HTTP status, JSON body).

    ``engine_of()`` returns the running engine or None (the routes then
    answer 503): the engine may start after the routes are registered.
    """

    def __init__(self, engine_of: Callable[[], Any], requests: RequestLog, *,
                 debug: bool = False) -> None:
        self.engine_of = engine_of
        self.requests = requests
        self.debug = debug

    def _engine(self):
        engine = self.engine_of()
        if engine is None:
            raise TaskHTTPError(503, {"error": {
                "type": "NotEnabled",
                "message": "background tasks are not enabled on this app"}})
        return engine

    def find(self, task_id: str):
        """The TaskResult, or TaskHTTPError 404/503."""
        try:
            return self._engine().get_task_result(task_id)
        except UnknownTaskError as exc:
            raise TaskHTTPError(404, {"task_id": task_id, "error": {
                "type": "UnknownTask", "message": str(exc)}}) from None

    def status(self, task_id: str) -> tuple[int, dict]:
        return 200, task_status(self.find(task_id), debug=self.debug)

    def stats(self) -> tuple[int, dict]:
        return 200, engine_stats(self._engine())

    def request_tasks(self, request_id: str) -> tuple[int, dict]:
        engine = self._engine()
        ids = self.requests.task_ids(request_id)
        if ids is None:
            return 404, {"request_id": request_id, "error": {
                "type": "UnknownRequest",
                "message": f"no tasks recorded for request {request_id!r}"}}
        tasks = []
        for tid in ids:
            try:
                tasks.append(task_status(engine.get_task_result(tid), debug=self.debug))
            except UnknownTaskError:
                tasks.append({"task_id": tid, "status": "FORGOTTEN"})
        return 200, {"request_id": request_id, "tasks": tasks}

    def call(self, fn: Callable[..., tuple[int, dict]], *args: Any) -> tuple[int, dict]:
        """Run one route function, turning TaskHTTPError into its answer."""
        try:
            return fn(*args)
        except TaskHTTPError as exc:
            return exc.status_code, exc.body
