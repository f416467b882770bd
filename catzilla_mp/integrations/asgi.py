"""ASGI integration: catzilla_mp for Starlette and FastAPI apps.

    from fastapi import FastAPI
    from catzilla_mp.integrations.asgi import AsgiTasks

    tasks = AsgiTasks(workers=2, mode="process", worker_niceness=10,
                      authorize=is_admin)       # who may see every task and the dashboard
    app = FastAPI(lifespan=tasks.lifespan)      # starts and shuts the engine, checks routes
    tasks.install(app)                          # routes under /tasks, request tracking

    @app.post("/resize")
    async def resize(url: str):
        return {"task_id": (await tasks.add_task_async(resize_image, url)).task_id}

    @app.get("/resize-now")
    async def resize_now(url: str):
        return {"result": await tasks.wait(await tasks.add_task_async(resize_image, url))}

``install(app)`` adds the status routes (plain Starlette routes, which
FastAPI's router accepts too), the live dashboard at ``/tasks/dashboard`` and
Prometheus metrics at ``/metrics`` (catzilla_mp.observability), the
request-tracking middleware and exception handlers for TaskHTTPError and
QueueFullError (503 with Retry-After). Who may call the routes is
access.py's policy: a task answers the session (or ``owner``) that
submitted it, the observability routes local clients, and ``authorize``
anyone it allows. The lifespan refuses to start when an app's own route
overlaps the engine's (RouteConflictError naming both). To mount them
elsewhere instead, use ``app.mount("/jobs", tasks.asgi_app())`` and add
``tasks.middleware`` yourself. The events route is a real stream: one SSE
event per change, closed after the task's final event; at most
``max_streams`` are open at once. The same events come over a WebSocket at
``{prefix}/{task_id}/ws`` and the dashboard's at ``{prefix}/dashboard/ws``,
under the same access rules and cap (integrations/websocket.py).
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket
except ImportError as exc:  # pragma: no cover
    raise ImportError("catzilla_mp.integrations.asgi needs Starlette (FastAPI includes it): "
                      'pip install -e ".[web]"') from exc

from ..engine import BackgroundTasks
from ..errors import QueueFullError
from ..records import TaskPriority
from ..results import TaskResult
from ..observability import instrument
from ..observability.asgi import CappedStream, dashboard_routes, metrics_route, refusal
from .access import PROXY_HEADERS, Authorize, Caller, OwnerOf, TaskAccess, is_local
from .routing import check_no_clash
from .status import (
    MAX_STREAMS,
    TaskHTTPError,
    TaskRoutes,
    await_result,
    sse,
    submit_failure,
    task_changes,
    wait_result,
)
from .websocket import message, refuse, send_all
from .tracking import REQUEST_ID_HEADER, RequestInfo, RequestLog, request_id_from, request_scope

T = TypeVar("T")

#: A comment line every so often keeps proxies from closing an idle stream.
HEARTBEAT_S = 15.0


def caller_of(request: Request, access: TaskAccess) -> Caller:
    """The access.Caller of a Starlette request: its socket peer, proxy headers, cookie."""
    return Caller(request, request.client.host if request.client else None,
                  any(h in request.headers for h in PROXY_HEADERS),
                  request.cookies.get(access.cookie_name))


def is_local_request(request: Request) -> bool:
    """True for a Starlette request from a loopback peer with no proxy header.

    For ``authorize`` hooks that keep the default's "local clients" and add
    others (an admin token, a session role).
    """
    return is_local(caller_of(request, _NO_ACCESS))


_NO_ACCESS = TaskAccess()


class RequestTrackingMiddleware:
    """Pure ASGI middleware: a request scope per HTTP request, id echoed in the response.

    Pure ASGI rather than BaseHTTPMiddleware so the scope's ContextVar is set
    in the task that runs the endpoint (and copied into its threadpool).
    With ``tasks``, the scope also carries the caller (access.py), and a
    session minted by a submission is set as a cookie on the response.
    """

    def __init__(self, app, header: str = REQUEST_ID_HEADER,
                 tasks: Optional["AsgiTasks"] = None) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.tasks = tasks

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or ()).get(self.header)
        info = RequestInfo(request_id_from(raw.decode("latin-1") if raw else None),
                           scope.get("method", ""), scope.get("path", ""))
        if self.tasks is not None:
            info.state["caller"] = caller_of(Request(scope), self.tasks.access)
        header = (self.header, info.id.encode("latin-1"))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                extra = [header]
                cookie = info.state.get("set_cookie")
                if cookie:
                    extra.append((b"set-cookie", cookie.encode("latin-1")))
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        with request_scope(info):
            await self.app(scope, receive, send_with_id)


class AsgiTasks:
    """A catzilla_mp engine for an ASGI app, with its status routes and request tracking.

    Args:
        engine: an engine to use (its owner shuts it down); None creates one
            at lifespan start from ``engine_options`` and shuts it at the end.
        prefix: where ``install`` puts the routes; None installs only the
            middleware and error handlers (mount ``asgi_app()`` yourself).
        debug: include worker tracebacks in error bodies and the dashboard.
        authorize: ``authorize(request) -> bool`` (sync or async, Starlette
            request): True lets a caller see every task, the dashboard,
            stats and metrics. See access.py for the policy without it.
        owner: ``owner(request) -> str | None``: who owns the tasks a request
            submits (e.g. your user id); default: a session cookie.
        secret: key for the session cookie (share it between processes).
        cookie_secure: send the session cookie over HTTPS only.
        max_streams: event streams open at once (503 + Retry-After beyond).
        metrics_path: where ``install`` puts Prometheus metrics (None: nowhere).
        **engine_options: BackgroundTasks arguments (workers=, mode=, ...).
    """

    def __init__(self, engine: Optional[BackgroundTasks] = None, *,
                 prefix: Optional[str] = "/tasks", debug: bool = False,
                 authorize: Optional[Authorize] = None, owner: Optional[OwnerOf] = None,
                 secret: Any = None, cookie_secure: bool = False,
                 max_streams: int = MAX_STREAMS, metrics_path: Optional[str] = "/metrics",
                 **engine_options: Any) -> None:
        self._engine = engine
        self._owned = engine is None
        self.engine_options = engine_options
        self.prefix = None if prefix is None else prefix.rstrip("/")
        self.metrics_path = metrics_path
        self.debug = debug
        self.access = TaskAccess(authorize, owner=owner, secret=secret,
                                 cookie_secure=cookie_secure)
        self.request_log = RequestLog()
        self.routes_logic = TaskRoutes(lambda: self._engine, self.request_log, debug=debug,
                                       access=self.access, max_streams=max_streams)
        self.middleware = RequestTrackingMiddleware
        self._ours: list[tuple[Optional[str], str, str]] = []

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
        """An app lifespan: the engine runs while the app serves.

        Raises:
            RouteConflictError: at startup, before the engine starts, if an
                app route overlaps one of the engine's (install()).
        """
        import anyio
        if app is not None and self._ours:
            self.check_routes(app)
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
        """BackgroundTasks.add_task, tagged with the current request (and its owner).

        In a sync endpoint (a threadpool thread) a full queue is waited for
        up to queue_full_timeout; the handler installed by install() turns
        the QueueFullError into 503 + Retry-After. Async endpoints should
        use add_task_async.
        """
        task = self.engine.add_task(func, *args, priority=priority, delay_ms=delay_ms,
                                    max_retries=max_retries, timeout_ms=timeout_ms,
                                    compile_to_c=compile_to_c, **kwargs)
        self.request_log.tag(task)
        return task

    async def add_task_async(self, func: Callable[..., T], *args: Any,
                             **kwargs: Any) -> TaskResult[T]:
        """BackgroundTasks.add_task_async (a full queue never blocks the loop), tagged.

        Raises:
            QueueFullError: still full after queue_full_timeout (install()
                answers it with 503 and Retry-After).
        """
        task = await self.engine.add_task_async(func, *args, **kwargs)
        self.request_log.tag(task)
        return task

    def task(self, priority: TaskPriority = TaskPriority.NORMAL, compile_to_c: Optional[bool] = None,
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

    def caller(self, request: Request) -> Caller:
        return caller_of(request, self.access)

    async def allow_observe(self, request: Request) -> bool:
        """The observability routes' check (access.TaskAccess.may_observe)."""
        return await self.access.may_observe(self.caller(request))

    def routes(self, prefix: Optional[str] = None) -> list[Route]:
        """The status routes under ``prefix`` (default: the instance's; "" for mounting)."""
        p = (self.prefix or "") if prefix is None else prefix.rstrip("/")
        logic = self.routes_logic

        def json_route(fn: Callable[..., Any], param: Optional[str] = None):
            async def endpoint(request: Request) -> Response:
                args = (request.path_params[param],) if param else ()
                code, body, headers = await logic.call(fn, self.caller(request), *args)
                return JSONResponse(body, status_code=code, headers=headers)
            return endpoint

        return [
            # observability (catzilla_mp.observability): {p}/dashboard[/events|/task/{id}],
            # {p}/metrics; first, or "{p}/{task_id}" below would take "dashboard" for a task id
            *dashboard_routes(lambda: self.engine, prefix=p, metrics_path=f"{p}/metrics",
                              allow=self.allow_observe, streams=logic.streams,
                              debug=self.debug),
            Route(f"{p}/stats", json_route(logic.stats), methods=["GET"], name="czmp_stats"),
            Route(f"{p}/requests/{{request_id}}", json_route(logic.request_tasks, "request_id"),
                  methods=["GET"], name="czmp_request_tasks"),
            Route(f"{p}/{{task_id}}", json_route(logic.status, "task_id"), methods=["GET"],
                  name="czmp_task_status"),
            Route(f"{p}/{{task_id}}/events", self._events, methods=["GET"],
                  name="czmp_task_events"),
            WebSocketRoute(f"{p}/{{task_id}}/ws", self._task_ws, name="czmp_task_ws"),
        ]

    async def _events(self, request: Request) -> Response:
        logic = self.routes_logic
        try:
            task = await logic.find(self.caller(request), request.path_params["task_id"])
            last = request.headers.get("last-event-id")
            if last and last.startswith("end:"):
                return Response(status_code=204)  # tells an EventSource to stop reconnecting
            logic.streams.take()
        except TaskHTTPError as exc:
            return refusal(exc)
        return CappedStream(self._stream(task, last), logic.streams,
                            media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _task_ws(self, socket: WebSocket) -> None:
        """{prefix}/{task_id}/ws: the task's events as JSON frames (integrations/websocket.py).

        The access rules of _events: the task's owner or ``authorize``; a
        task the caller may not read is refused as unknown.
        """
        logic = self.routes_logic
        try:
            task = await logic.find(caller_of(socket, self.access),  # type: ignore[arg-type]
                                    socket.path_params["task_id"])
            logic.streams.take()
        except TaskHTTPError as exc:
            await refuse(socket, exc)
            return
        try:
            await send_all(socket, self._ws_frames(task, socket.query_params.get("last_event_id")))
        finally:
            logic.streams.give()

    async def _ws_frames(self, task: TaskResult, last: Optional[str]) -> AsyncIterator[str]:
        # no hold_s: a WebSocket needs no keep-alive comments (the protocol pings)
        async for event, key, status in task_changes(task, last_key=last, debug=self.debug):
            yield message(event, key, status)

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
        """Add the routes, the tracking middleware and the error handlers to ``app``.

        Raises:
            RouteConflictError: one of the app's routes (so far) overlaps the
                engine's; the lifespan checks again at startup, once the app
                has all its routes.
        """
        ours: list[Route] = []
        if self.prefix is not None:
            ours.extend(self.routes())
        if self.metrics_path and self.metrics_path != f"{self.prefix}/metrics":
            ours.append(metrics_route(lambda: self.engine, self.metrics_path,
                                      allow=self.allow_observe))
        self._ours = [(None, r.path, r.name) for r in ours]
        self._our_routes = ours
        self.check_routes(app)
        app.router.routes.extend(ours)
        app.add_middleware(RequestTrackingMiddleware, tasks=self)
        app.add_exception_handler(TaskHTTPError, task_error_handler)
        app.add_exception_handler(QueueFullError, queue_full_handler)

    def check_routes(self, app: Any) -> None:
        """Raises RouteConflictError if one of ``app``'s own routes overlaps the engine's."""
        mine = {id(r) for r in getattr(self, "_our_routes", ())}
        theirs, mounts = [], []
        for r in app.router.routes:
            if id(r) in mine:
                continue
            path = getattr(r, "path", None)
            if path is None:
                continue
            if hasattr(r, "routes") and not hasattr(r, "endpoint"):  # a Mount
                mounts.append((path, getattr(r, "name", None) or "mount"))
                continue
            methods = getattr(r, "methods", None) or {None}
            for m in methods:
                theirs.append((m, path, getattr(r, "name", None) or "?"))
        check_no_clash([("GET", p, n) for _, p, n in self._ours], theirs, mounts)


async def task_error_handler(request: Request, exc: TaskHTTPError) -> JSONResponse:
    """Starlette/FastAPI exception handler: a failed task's JSON error answer."""
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


async def queue_full_handler(request: Request, exc: QueueFullError) -> JSONResponse:
    """Starlette/FastAPI exception handler: a full queue is 503 with Retry-After."""
    return refusal(submit_failure(exc))
