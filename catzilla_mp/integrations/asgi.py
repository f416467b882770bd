"""ASGI integration: catzilla_mp for Starlette and FastAPI apps.

    from fastapi import FastAPI
    from catzilla_mp.integrations.asgi import AsgiTasks

    tasks = AsgiTasks(workers=2, mode="process", worker_niceness=10)
    app = FastAPI(lifespan=tasks.lifespan)      # starts and shuts the engine
    tasks.install(app)                          # routes under /tasks, request tracking

    @app.post("/resize")
    def resize(url: str):
        return {"task_id": tasks.add_task(resize_image, url).task_id}

    @app.get("/resize-now")
    async def resize_now(url: str):
        return {"result": await tasks.wait(tasks.add_task(resize_image, url))}

``install(app)`` adds the status routes (plain Starlette routes, which
FastAPI's router accepts too), the live dashboard at ``/tasks/dashboard`` and
Prometheus metrics at ``/metrics`` (catzilla_mp.observability), the
request-tracking middleware and an exception handler for TaskHTTPError. To mount them elsewhere instead, use
``app.mount("/jobs", tasks.asgi_app())`` and add ``tasks.middleware``
yourself. The events route is a real stream: one SSE event per change,
closed after the task's final event.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover
    raise ImportError("catzilla_mp.integrations.asgi needs Starlette (FastAPI includes it): "
                      'pip install -e ".[web]"') from exc

from ..engine import BackgroundTasks
from ..records import TaskPriority
from ..results import TaskResult
from ..observability import instrument
from ..observability.asgi import dashboard_routes, metrics_route
from .status import TaskHTTPError, TaskRoutes, await_result, sse, task_changes, wait_result
from .tracking import REQUEST_ID_HEADER, RequestInfo, RequestLog, request_id_from, request_scope

T = TypeVar("T")

#: A comment line every so often keeps proxies from closing an idle stream.
HEARTBEAT_S = 15.0


class RequestTrackingMiddleware:
    """Pure ASGI middleware: a request scope per HTTP request, id echoed in the response.

    Pure ASGI rather than BaseHTTPMiddleware so the scope's ContextVar is set
    in the task that runs the endpoint (and copied into its threadpool).
    """

    def __init__(self, app, header: str = REQUEST_ID_HEADER) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or ()).get(self.header)
        info = RequestInfo(request_id_from(raw.decode("latin-1") if raw else None),
                           scope.get("method", ""), scope.get("path", ""))
        header = (self.header, info.id.encode("latin-1"))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with request_scope(info):
            await self.app(scope, receive, send_with_id)


class AsgiTasks:
    """A catzilla_mp engine for an ASGI app, with its status routes and request tracking.

    Args:
        engine: an engine to use (its owner shuts it down); None creates one
            at lifespan start from ``engine_options`` and shuts it at the end.
        prefix: where ``install`` puts the routes.
        debug: include worker tracebacks in error bodies.
        **engine_options: BackgroundTasks arguments (workers=, mode=, ...).
    """

    def __init__(self, engine: Optional[BackgroundTasks] = None, *, prefix: str = "/tasks",
                 debug: bool = False, **engine_options: Any) -> None:
        self._engine = engine
        self._owned = engine is None
        self.engine_options = engine_options
        self.prefix = prefix.rstrip("/")
        self.debug = debug
        self.request_log = RequestLog()
        self.routes_logic = TaskRoutes(lambda: self._engine, self.request_log, debug=debug)
        self.middleware = RequestTrackingMiddleware

    # -- engine lifetime ----------------------------------------------------------

    @property
    def engine(self) -> BackgroundTasks:
        if self._engine is None:
            raise RuntimeError("the task engine is not started: pass lifespan=tasks.lifespan "
                               "to the app, or call tasks.start()")
        return self._engine

    def start(self) -> BackgroundTasks:
        if self._engine is None:
            self._engine = BackgroundTasks(**self.engine_options)
            instrument(self._engine)  # observability: dashboard and /metrics count from the start
        return self._engine

    def shutdown(self, wait_for_completion: bool = True, timeout: float = 30.0) -> None:
        engine = self._engine
        if engine is not None and self._owned:
            self._engine = None
            engine.shutdown(wait_for_completion=wait_for_completion, timeout=timeout)

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """An app lifespan: the engine runs while the app serves."""
        import anyio
        # starting spawns processes and maps memory: keep it off the event loop
        await anyio.to_thread.run_sync(self.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.shutdown)

    # -- the task API ------------------------------------------------------------

    def add_task(self, func: Callable[..., T], *args: Any,
                 priority: TaskPriority = TaskPriority.NORMAL, delay_ms: int = 0,
                 max_retries: int = 3, timeout_ms: int = 30000,
                 compile_to_c: Optional[bool] = None, **kwargs: Any) -> TaskResult[T]:
        """BackgroundTasks.add_task, tagged with the current request."""
        task = self.engine.add_task(func, *args, priority=priority, delay_ms=delay_ms,
                                    max_retries=max_retries, timeout_ms=timeout_ms,
                                    compile_to_c=compile_to_c, **kwargs)
        self.request_log.tag(task)
        return task

    def task(self, priority: TaskPriority = TaskPriority.NORMAL, compile_to_c: bool = True,
             **config_kwargs: Any):
        return self.engine.task(priority=priority, compile_to_c=compile_to_c, **config_kwargs)

    def get_task_result(self, task_id: str) -> TaskResult:
        return self.engine.get_task_result(task_id)

    def get_task_stats(self):
        return self.engine.get_stats()

    async def wait(self, task: TaskResult[T], timeout: Optional[float] = None) -> T:
        """Await ``task``'s result; TaskHTTPError if it failed (install() answers it)."""
        return await await_result(task, timeout, debug=self.debug)

    def wait_sync(self, task: TaskResult[T], timeout: Optional[float] = None) -> T:
        """``wait`` for sync endpoints (they run in a threadpool, so blocking is fine)."""
        return wait_result(task, timeout, debug=self.debug)

    # -- routes ----------------------------------------------------------------------

    def routes(self, prefix: Optional[str] = None) -> list[Route]:
        """The status routes under ``prefix`` (default: the instance's; "" for mounting)."""
        p = self.prefix if prefix is None else prefix.rstrip("/")
        logic = self.routes_logic

        def json_route(fn: Callable[..., tuple[int, dict]], param: Optional[str] = None):
            async def endpoint(request: Request) -> Response:
                args = (request.path_params[param],) if param else ()
                code, body = logic.call(fn, *args)
                return JSONResponse(body, status_code=code)
            return endpoint

        return [
            # observability (catzilla_mp.observability): {p}/dashboard[/events|/task/{id}], {p}/metrics;
            # first, or "{p}/{task_id}" below would take "dashboard" for a task id
            *dashboard_routes(lambda: self.engine, prefix=p, metrics_path=f"{p}/metrics"),
            Route(f"{p}/stats", json_route(logic.stats), methods=["GET"], name="czmp_stats"),
            Route(f"{p}/requests/{{request_id}}", json_route(logic.request_tasks, "request_id"),
                  methods=["GET"], name="czmp_request_tasks"),
            Route(f"{p}/{{task_id}}", json_route(logic.status, "task_id"), methods=["GET"],
                  name="czmp_task_status"),
            Route(f"{p}/{{task_id}}/events", self._events, methods=["GET"],
                  name="czmp_task_events"),
        ]

    async def _events(self, request: Request) -> Response:
        try:
            task = self.routes_logic.find(request.path_params["task_id"])
        except TaskHTTPError as exc:
            return JSONResponse(exc.body, status_code=exc.status_code)
        last = request.headers.get("last-event-id")
        if last and last.startswith("end:"):
            return Response(status_code=204)  # tells an EventSource to stop reconnecting
        return StreamingResponse(self._stream(task, last), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(self, task: TaskResult, last: Optional[str]) -> AsyncIterator[str]:
        while True:
            changed = False
            async for event, key, status in task_changes(task, last_key=last, debug=self.debug,
                                                         hold_s=HEARTBEAT_S):
                changed, last = True, key
                ident = f"end:{key}" if event == "end" else key
                yield sse(status, event=event, id=ident)
                if event == "end":
                    return
            if not changed:
                yield ": keep-alive\n\n"

    def asgi_app(self) -> Starlette:
        """The routes as a Starlette app for ``app.mount(prefix, ...)``."""
        return Starlette(routes=self.routes(prefix=""))

    def install(self, app: Any) -> None:
        """Add the routes, the tracking middleware and the TaskHTTPError handler to ``app``."""
        app.router.routes.extend(self.routes())
        if self.prefix:  # Prometheus looks at /metrics by default
            app.router.routes.append(metrics_route(lambda: self.engine, "/metrics"))
        app.add_middleware(RequestTrackingMiddleware)
        app.add_exception_handler(TaskHTTPError, task_error_handler)


async def task_error_handler(request: Request, exc: TaskHTTPError) -> JSONResponse:
    """Starlette/FastAPI exception handler: a failed task's JSON error answer."""
    return JSONResponse(exc.body, status_code=exc.status_code)
