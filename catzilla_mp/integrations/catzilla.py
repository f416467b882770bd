"""``catzilla_mp.Catzilla``: the Catzilla web framework's app, with catzilla_mp's tasks.

    from catzilla_mp import Catzilla
    app = Catzilla(production=True)
    app.enable_background_tasks(workers=2, mode="process", worker_niceness=10)

    @app.post("/resize")
    def resize(request):
        task = app.add_task(resize_image, request.json()["url"])
        return {"task_id": task.task_id}          # answered at once

On top of Catzilla's own app this class:

* backs ``enable_background_tasks`` / ``add_task`` / ``task`` /
  ``get_task_result`` / ``get_task_stats`` with catzilla_mp (the mixin in
  catzilla_mp.app; it comes first in the MRO so its methods win). Catzilla's
  ``self.tasks`` / ``_task_system_enabled`` are the same attributes, and
  Catzilla's atexit hook is only registered by its own enable method, which
  is replaced: the engine's own atexit hook shuts it down.
* registers the status routes under ``tasks_prefix`` (see integrations/__init__),
  the live dashboard at ``{tasks_prefix}/dashboard`` and Prometheus metrics at
  ``/metrics`` (catzilla_mp.observability).
* opens a request scope around every handler (id from ``X-Request-ID`` or a
  new one, echoed in the response), so tasks carry the request that made them.
* answers ``TaskHTTPError`` (from ``wait_for``) and escaped TaskErrors with
  their JSON error body and status code.

Catzilla 0.2.3 streams responses on its event-loop thread: a long-lived
stream would stall every other request. So the events route here answers
one change per response (an async handler waits for it without blocking the
loop) with ``retry: 0``; an EventSource reconnects at once with
``Last-Event-ID``, and the final response makes later reconnects answer 204,
which tells an EventSource to stop. The ASGI integration streams for real.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

try:
    import catzilla as _catzilla
    from catzilla import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "catzilla_mp.Catzilla needs the Catzilla web framework, an optional extra: "
        'pip install -e ".[catzilla]"  (or: pip install "catzilla==0.2.3")') from exc

from ..app import NOT_ENABLED, BackgroundTaskApp
from ..errors import TaskError
from ..observability import instrument
from ..observability.catzilla_routes import add_dashboard_routes
from ..records import TaskPriority
from ..results import TaskResult
from .status import (
    TaskHTTPError,
    TaskRoutes,
    await_result,
    sse,
    task_changes,
    task_http_error,
    wait_result,
)
from .tracking import REQUEST_ID_HEADER, RequestInfo, RequestLog, request_id_from, request_scope

T = TypeVar("T")

#: How long one events response waits for a change before answering with a
#: comment (the client reconnects and waits again).
SSE_HOLD_S = 15.0


class Catzilla(BackgroundTaskApp, _catzilla.Catzilla):
    """Catzilla's app class whose background tasks run in catzilla_mp."""

    def __init__(self, *args: Any, tasks_prefix: Optional[str] = "/tasks",
                 task_debug: bool = False, track_requests: bool = True,
                 sse_hold_s: float = SSE_HOLD_S, **kwargs: Any) -> None:
        """Catzilla's arguments, plus:

        Args:
            tasks_prefix: where the status routes go; None registers none.
            task_debug: include worker tracebacks in error bodies.
            track_requests: tag tasks with the request that submitted them.
            sse_hold_s: how long one events response waits for a change.
        """
        super().__init__(*args, **kwargs)
        self.task_debug = task_debug
        self.track_requests = track_requests
        self.request_log = RequestLog()
        self.task_routes = TaskRoutes(lambda: self.tasks, self.request_log, debug=task_debug)
        self._sse_hold_s = sse_hold_s
        if tasks_prefix is not None:
            self._register_task_routes(tasks_prefix.rstrip("/"))

    # -- the task API ------------------------------------------------------------

    def enable_background_tasks(self, *args: Any, **kwargs: Any) -> None:
        """Catzilla's enable_background_tasks (see BackgroundTaskApp), then start observing."""
        super().enable_background_tasks(*args, **kwargs)
        instrument(self.tasks)  # observability: dashboard and /metrics count from the start

    def _observed_engine(self):
        if getattr(self, "tasks", None) is None:
            raise TaskHTTPError(503, {"error": {"type": "RuntimeError", "message": NOT_ENABLED}})
        return self.tasks

    def add_task(self, func: Callable[..., T], *args: Any,
                 priority: TaskPriority = TaskPriority.NORMAL, delay_ms: int = 0,
                 max_retries: int = 3, timeout_ms: int = 30000,
                 compile_to_c: Optional[bool] = None, **kwargs: Any) -> TaskResult[T]:
        """Submit a task (see BackgroundTasks.add_task), tagged with the current request."""
        task = super().add_task(func, *args, priority=priority, delay_ms=delay_ms,
                                max_retries=max_retries, timeout_ms=timeout_ms,
                                compile_to_c=compile_to_c, **kwargs)
        self.request_log.tag(task)
        return task

    def wait_for(self, task: TaskResult[T], timeout: Optional[float] = None) -> T:
        """Block this handler until ``task`` ends; its result, or TaskHTTPError.

        Blocking a sync handler blocks Catzilla's event loop: prefer an async
        handler with ``await app.wait_for_async(task)``.
        """
        return wait_result(task, timeout, debug=self.task_debug)

    async def wait_for_async(self, task: TaskResult[T], timeout: Optional[float] = None) -> T:
        """Await ``task`` in an async handler; its result, or TaskHTTPError."""
        return await await_result(task, timeout, debug=self.task_debug)

    # -- request scope and errors (Catzilla 0.2.3's dispatch methods) -------------------

    def _request_info(self, request) -> RequestInfo:
        rid = request_id_from(request.get_header(REQUEST_ID_HEADER))
        return RequestInfo(rid, request.method, request.path.split("?", 1)[0])

    def _with_request_id(self, response: Any, info: RequestInfo) -> Any:
        response = self._normalize_response_value(response)
        response.set_header(REQUEST_ID_HEADER, info.id)
        return response

    def _execute_handler_hybrid(self, handler: Callable, request) -> Any:
        # sync handlers (and async ones Catzilla runs to completion here)
        if not self.track_requests:
            return super()._execute_handler_hybrid(handler, request)
        info = self._request_info(request)
        with request_scope(info):
            response = super()._execute_handler_hybrid(handler, request)
        return self._with_request_id(response, info)

    async def _execute_async_route_request(self, route, request, response_size_for):
        # async handlers run as this coroutine on Catzilla's asyncio thread:
        # the scope set here belongs to this request's task only
        if not self.track_requests:
            return await super()._execute_async_route_request(route, request, response_size_for)
        info = self._request_info(request)
        with request_scope(info):
            result = await super()._execute_async_route_request(route, request, response_size_for)
        result[0].set_header(REQUEST_ID_HEADER, info.id)
        return result

    def _handle_exception(self, request, exception: Exception):
        # sync handlers' exceptions arrive wrapped in Catzilla's ExecutionError
        http = _task_failure(exception, self.task_debug)
        if http is not None:
            return JSONResponse(http.body, status_code=http.status_code)
        return super()._handle_exception(request, exception)

    # -- the status routes -------------------------------------------------------------

    def _register_task_routes(self, prefix: str) -> None:
        routes = self.task_routes
        # observability (catzilla_mp.observability): {prefix}/dashboard[/events|/task/{id}] and
        # /metrics; first, or "{prefix}/{task_id}" below would take "dashboard" for a task id
        add_dashboard_routes(self, self._observed_engine, prefix=prefix)

        def answer(pair: tuple[int, dict]) -> Response:
            return JSONResponse(pair[1], status_code=pair[0])

        # static paths first: the router must not read "stats" as a task id
        @self.get(f"{prefix}/stats")
        def czmp_task_stats(request):
            return answer(routes.call(routes.stats))

        @self.get(f"{prefix}/requests/{{request_id}}")
        def czmp_request_tasks(request):
            return answer(routes.call(routes.request_tasks, request.path_params["request_id"]))

        @self.get(f"{prefix}/{{task_id}}")
        def czmp_task_status(request):
            return answer(routes.call(routes.status, request.path_params["task_id"]))

        @self.get(f"{prefix}/{{task_id}}/events")
        async def czmp_task_events(request):
            return await self._events_response(request)

    async def _events_response(self, request) -> Response:
        routes = self.task_routes
        try:
            task = routes.find(request.path_params["task_id"])
        except TaskHTTPError as exc:
            return JSONResponse(exc.body, status_code=exc.status_code)
        last = request.get_header("Last-Event-ID") or request.query_params.get("last_event_id")
        headers = {"Cache-Control": "no-cache"}
        if last and last.startswith("end:"):
            # the client saw the final state: 204 tells an EventSource to stop
            return Response(status_code=204, body="", headers=headers)
        async for event, key, status in task_changes(task, last_key=last, debug=self.task_debug,
                                                     hold_s=self._sse_hold_s):
            ident = f"end:{key}" if event == "end" else key
            return Response(status_code=200, content_type="text/event-stream",
                            body=sse(status, event=event, id=ident, retry_ms=0),
                            headers=headers)
        # nothing changed within the hold: a comment, and the client asks again
        return Response(status_code=200, content_type="text/event-stream",
                        body=": no change\nretry: 0\n\n", headers=headers)


def _task_failure(exc: BaseException, debug: bool) -> Optional[TaskHTTPError]:
    """The TaskHTTPError (or TaskError) in ``exc``'s cause chain, as a TaskHTTPError."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TaskHTTPError):
            return exc
        if isinstance(exc, TaskError):
            return task_http_error(None, exc, debug=debug)
        exc, seen = exc.__cause__, seen + 1
    return None
