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
* ``TaskRoutes``: the four routes' logic as coroutines returning (status
  code, body), each asking the access policy (access.py) first; the Catzilla
  and ASGI integrations adapt it to their request/response types.
* Bounds: a result goes out as JSON up to RESULT_JSON_LIMIT (checked without
  serializing it: ``json_budget``), else as a clipped repr; every str/repr
  of a task's objects goes through observability/text.py (bounded, never
  raising); event streams are capped (``StreamSlots``, 503 + Retry-After),
  and a full queue answers 503 + Retry-After (``submit_failure``).
* SSE helpers: ``state_key`` names a visible state, ``sse`` formats one event,
  ``task_changes`` is the async poll loop both event routes use.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import threading
import time
from enum import Enum
from typing import Any, AsyncIterator, Callable, Optional

from ..errors import (
    EngineBrokenError,
    EngineClosedError,
    QueueFullError,
    RemoteTraceback,
    TaskCancelledError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerCrashedError,
)
from ..observability.text import clip, safe_repr, safe_str
from ..records import TaskStatus
from .access import Caller, TaskAccess
from .tracking import RequestLog

#: How often the event routes look at a task. A TaskResult read is a few
#: attribute loads (plus one shared-memory progress read), so 50 ms costs
#: nothing measurable and is below what a person notices.
POLL_S = 0.05
#: Max characters of a result's repr() when the result is not JSON (or too big).
REPR_LIMIT = 2000
#: Max size of a result sent as JSON in a status answer. A bigger result is
#: shown as a truncated repr with ``result_truncated``: a status route is for
#: watching a task, and one 15 MB answer per poll would be a denial of service.
RESULT_JSON_LIMIT = 64 * 1024
#: Max characters of an error message, and of a traceback (debug mode only).
MESSAGE_LIMIT = 2000
TRACEBACK_LIMIT = 16 * 1024
#: Containers nested deeper than this are not sent as JSON.
JSON_DEPTH_LIMIT = 32
#: Tasks listed by the per-request route (newest kept).
REQUEST_LIST_LIMIT = 100

_FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskHTTPError(Exception):
    """A task failed (or could not be queued); answer with ``status_code``, JSON ``body``, ``headers``."""

    def __init__(self, status_code: int, body: dict, headers: Optional[dict] = None) -> None:
        super().__init__(status_code, body)
        self.status_code = status_code
        self.body = body
        self.headers = headers or {}

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


#: json_budget's answers besides a budget left: spent, or not JSON at all.
TOO_BIG, NOT_JSON = -1, -2


def json_budget(value: Any, budget: int, depth: int = 0) -> int:
    """``budget`` minus the size of ``value`` as JSON (roughly), TOO_BIG or NOT_JSON.

    Stops as soon as the budget is spent, so a 2M-element list costs what
    its first few thousand elements cost. NOT_JSON for anything json.dumps
    would refuse or mangle (other types, NaN, non-string keys, deep nesting).
    """
    if budget < 0:
        return TOO_BIG
    if depth > JSON_DEPTH_LIMIT:
        return NOT_JSON
    kind = type(value)
    if value is None or kind is bool:
        left = budget - 5
    elif kind is int:
        left = budget - (value.bit_length() * 3 // 10 + 2)
    elif kind is float:
        if not math.isfinite(value):
            return NOT_JSON
        left = budget - 24
    elif kind is str:
        left = budget - len(value) - 2
    elif kind is list or kind is tuple:
        left = budget - 2
        for item in value:
            left = json_budget(item, left - 1, depth + 1)
            if left < 0:
                return left
    elif kind is dict:
        left = budget - 2
        for key, item in value.items():
            if type(key) is not str:
                return NOT_JSON
            left = json_budget(item, left - len(key) - 4, depth + 1)
            if left < 0:
                return left
    else:
        return NOT_JSON
    return left if left >= 0 else TOO_BIG


def _result_fields(value: Any) -> dict:
    left = json_budget(value, RESULT_JSON_LIMIT)
    if left >= 0:
        return {"result": value}
    out = {"result": None, "result_repr": safe_repr(value, REPR_LIMIT)}
    if left == TOO_BIG:
        out["result_truncated"] = True
    return out


def error_info(exc: BaseException, *, debug: bool = False) -> dict:
    """``{"type", "message"}`` of an exception, plus ``traceback`` in debug mode.

    The message is bounded and never raises (an exception's ``__str__`` is
    the task's code); nothing of the traceback is sent outside debug mode.
    """
    info = {"type": type(exc).__name__, "message": safe_str(exc, MESSAGE_LIMIT)}
    if isinstance(exc, WorkerCrashedError) and exc.exitcode is not None:
        info["exitcode"] = exc.exitcode
    if debug:
        cause = exc.__cause__
        if isinstance(cause, RemoteTraceback) and isinstance(cause.tb, str):
            text = cause.tb
        else:
            import traceback
            try:
                text = "".join(traceback.format_exception(exc))
            except Exception:  # noqa: BLE001 - a broken __str__ inside the chain
                text = f"{type(exc).__name__}: {info['message']}"
        info["traceback"] = text[-TRACEBACK_LIMIT:]
    return info


def _ms(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round((b - a) * 1000.0, 3)


def task_status(task, *, debug: bool = False, with_result: bool = True) -> dict:
    """A task as a JSON-able dict. Reads only TaskResult's public API (and ``meta``).

    Sizes are bounded: the result (RESULT_JSON_LIMIT, else a clipped repr),
    the error message, the progress message. ``with_result=False`` leaves
    the result and error out (for lists of tasks).
    """
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
        "message": None if message is None else safe_str(message, MESSAGE_LIMIT),
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
    if with_result and task.is_ready():
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


# -- refusals ------------------------------------------------------------------------------

#: Seconds a client is told to wait (Retry-After) when the queue is full or
#: the streams are all taken: long enough for a few tasks to finish.
RETRY_AFTER_S = 2
#: Event streams open at once per integration (task events and the dashboard's).
MAX_STREAMS = 32


def busy_error(kind: str, message: str) -> TaskHTTPError:
    """503 with Retry-After: the server is fine, just full right now."""
    return TaskHTTPError(503, {"error": {"type": kind, "message": message}},
                         {"Retry-After": str(RETRY_AFTER_S)})


def submit_failure(exc: BaseException) -> Optional[TaskHTTPError]:
    """The HTTP answer for an exception raised by add_task in a handler, if it has one.

    QueueFullError: 503 + Retry-After. EngineClosed/Broken: 503.
    """
    if isinstance(exc, QueueFullError):
        return busy_error("QueueFull", "the task queue is full; try again shortly")
    if isinstance(exc, (EngineClosedError, EngineBrokenError)):
        return TaskHTTPError(503, {"error": {"type": type(exc).__name__,
                                             "message": "the task engine is not running"}})
    return None


def not_found(task_id: str) -> TaskHTTPError:
    """The one answer for a task that does not exist and a task that is not the caller's."""
    task_id = clip(task_id, 200)
    return TaskHTTPError(404, {"task_id": task_id, "error": {
        "type": "UnknownTask", "message": f"no task {task_id!r}"}})


FORBIDDEN = TaskHTTPError(403, {"error": {
    "type": "Forbidden",
    "message": "this route answers local clients only, or those the app's authorize hook allows"}})


class StreamSlots:
    """A cap on concurrent event streams: ``take()`` or 503, ``give()`` when the stream ends."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        """Raises: TaskHTTPError 503 with Retry-After when ``limit`` streams are open."""
        with self._lock:
            if self.open >= self.limit:
                raise busy_error("TooManyStreams",
                                 f"{self.limit} event streams are open; try again shortly")
            self.open += 1

    def give(self) -> None:
        with self._lock:
            self.open -= 1


# -- the routes' logic ---------------------------------------------------------------------

class TaskRoutes:
    """The status routes as coroutines returning (HTTP status, JSON body).

    ``engine_of()`` returns the running engine or None (the routes then
    answer 503): the engine may start after the routes are registered.
    Every route asks ``access`` (access.py) first; ``caller`` is the
    access.Caller of the request.
    """

    def __init__(self, engine_of: Callable[[], Any], requests: RequestLog, *,
                 debug: bool = False, access: Optional[TaskAccess] = None,
                 max_streams: int = MAX_STREAMS) -> None:
        self.engine_of = engine_of
        self.requests = requests
        self.debug = debug
        self.access = access or TaskAccess()
        self.streams = StreamSlots(max_streams)
        if requests.owner_of is None:
            requests.owner_of = self.access.owner_for_submission

    def _engine(self):
        engine = self.engine_of()
        if engine is None:
            raise TaskHTTPError(503, {"error": {
                "type": "NotEnabled",
                "message": "background tasks are not enabled on this app"}})
        return engine

    async def find(self, caller: Caller, task_id: str):
        """The TaskResult if it exists and ``caller`` may read it; else TaskHTTPError 404 (or 503)."""
        try:
            task = self._engine().get_task_result(task_id)
        except UnknownTaskError:
            raise not_found(task_id) from None
        if not await self.access.may_read(caller, task):
            raise not_found(task_id)
        return task

    async def status(self, caller: Caller, task_id: str) -> tuple[int, dict]:
        return 200, task_status(await self.find(caller, task_id), debug=self.debug)

    async def observe(self, caller: Caller) -> None:
        """Raises TaskHTTPError 403 unless ``caller`` may see the observability routes."""
        if not await self.access.may_observe(caller):
            raise FORBIDDEN

    async def stats(self, caller: Caller) -> tuple[int, dict]:
        await self.observe(caller)
        return 200, engine_stats(self._engine())

    async def request_tasks(self, caller: Caller, request_id: str) -> tuple[int, dict]:
        engine = self._engine()
        admin = await self.access.may_observe(caller)
        ids = self.requests.task_ids(request_id, self.access.caller_owner(caller),
                                     any_owner=admin)
        if ids is None:
            request_id = clip(request_id, 200)
            return 404, {"request_id": request_id, "error": {
                "type": "UnknownRequest",
                "message": f"no tasks of yours recorded for request {request_id!r}"}}
        tasks = []
        for tid in ids[-REQUEST_LIST_LIMIT:]:
            try:
                tasks.append(task_status(engine.get_task_result(tid), debug=self.debug,
                                         with_result=False))
            except UnknownTaskError:
                tasks.append({"task_id": tid, "status": "FORGOTTEN"})
        return 200, {"request_id": request_id, "tasks": tasks,
                     "truncated": len(ids) > REQUEST_LIST_LIMIT}

    async def call(self, fn: Callable[..., Any], *args: Any) -> tuple[int, dict, dict]:
        """Run one route coroutine: (status, body, headers), TaskHTTPError turned into its answer."""
        try:
            code, body = await fn(*args)
            return code, body, {}
        except TaskHTTPError as exc:
            return exc.status_code, exc.body, exc.headers
