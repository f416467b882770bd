"""``catzilla_mp.Catzilla`` and ``catzilla_mp.enable``: Catzilla apps with catzilla_mp's tasks.

    from catzilla_mp import Catzilla                  # the subclass ...
    app = Catzilla(production=True, task_authorize=is_admin)
    app.enable_background_tasks(workers=2, mode="process", worker_niceness=10)

    import catzilla, catzilla_mp                      # ... or an existing app
    app = catzilla.Catzilla(production=True)
    catzilla_mp.enable(app, mode="process", workers=2, authorize=is_admin)

    @app.post("/resize")
    async def resize(request):
        task = await app.add_task_async(resize_image, request.json()["url"])
        return {"task_id": task.task_id}          # answered at once

On top of Catzilla's own app, the mixin here:

* backs ``enable_background_tasks`` / ``add_task`` / ``task`` /
  ``get_task_result`` / ``get_task_stats`` with catzilla_mp (the mixin in
  catzilla_mp.app; it comes first in the MRO so its methods win), and adds
  ``add_task_async``. Catzilla's ``self.tasks`` / ``_task_system_enabled``
  are the same attributes, and Catzilla's atexit hook is only registered by
  its own enable method, which is replaced: the engine's own atexit hook
  shuts it down.
* registers, when the server starts (``listen``, or ``install_task_routes()``),
  the status routes under ``tasks_prefix`` (see integrations/__init__), the
  live dashboard at ``{tasks_prefix}/dashboard`` and Prometheus metrics at
  ``/metrics``, after checking that none overlaps a route of the app's own
  (RouteConflictError naming both). Access follows access.py: a task answers
  the session (or ``task_owner``) that submitted it, the observability
  routes local clients, and ``task_authorize`` anyone it allows.
* opens a request scope around every handler (id from ``X-Request-ID`` or a
  new one, echoed in the response), so tasks carry the request that made them.
* never blocks Catzilla's event loop on a full queue: ``add_task`` inside a
  handler does not wait for room, and a QueueFullError answers 503 with
  Retry-After (``add_task_async`` waits for room without blocking).
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

from ..app import ALREADY_ENABLED, NOT_ENABLED, BackgroundTaskApp
from ..errors import TaskError
from ..observability import instrument
from ..observability.catzilla_routes import add_dashboard_routes
from ..records import TaskPriority
from ..results import TaskResult
from .access import PROXY_HEADERS, Authorize, Caller, OwnerOf, TaskAccess, is_local
from .catzilla_peer import catzilla_peer
from .routing import check_no_clash
from .status import (
    MAX_STREAMS,
    TaskHTTPError,
    TaskRoutes,
    await_result,
    sse,
    submit_failure,
    task_changes,
    task_http_error,
    wait_result,
)
from .tracking import (
    REQUEST_ID_HEADER,
    RequestInfo,
    RequestLog,
    current_request,
    request_id_from,
    request_scope,
)

T = TypeVar("T")

#: How long one events response waits for a change before answering with a
#: comment (the client reconnects and waits again).
SSE_HOLD_S = 15.0


def catzilla_caller(request: Any, access: TaskAccess) -> Caller:
    """The access.Caller of a Catzilla request: the socket's peer (never X-Forwarded-For,
    which Catzilla's own ``client_ip`` trusts), proxy headers, the owner cookie."""
    peer = catzilla_peer(request)
    proxied = any(request.get_header(h) for h in PROXY_HEADERS)
    return Caller(request, peer, proxied, access.cookie_from_header(request.get_header("Cookie")))


def is_local_request(request: Any) -> bool:
    """True for a Catzilla request from a loopback peer with no proxy header.

    For ``authorize`` hooks that keep the default's "local clients" and add
    others (an admin token, a session role).
    """
    return is_local(catzilla_caller(request, _NO_ACCESS))


_NO_ACCESS = TaskAccess()


class CatzillaTasks(BackgroundTaskApp):
    """The mixin that makes a Catzilla app class (or one app, see ``enable``) use catzilla_mp."""

    def _init_task_integration(self, *, tasks_prefix: Optional[str] = "/tasks",
                               task_debug: bool = False, track_requests: bool = True,
                               sse_hold_s: float = SSE_HOLD_S,
                               task_authorize: Optional[Authorize] = None,
                               task_owner: Optional[OwnerOf] = None, task_secret: Any = None,
                               task_cookie_secure: bool = False,
                               max_streams: int = MAX_STREAMS,
                               metrics_path: Optional[str] = "/metrics") -> None:
        self.task_debug = task_debug
        self.track_requests = track_requests
        self.request_log = RequestLog()
        self.task_access = TaskAccess(task_authorize, owner=task_owner, secret=task_secret,
                                      cookie_secure=task_cookie_secure)
        self.task_routes = TaskRoutes(lambda: getattr(self, "tasks", None), self.request_log,
                                      debug=task_debug, access=self.task_access,
                                      max_streams=max_streams)
        self._sse_hold_s = sse_hold_s
        self._tasks_prefix = None if tasks_prefix is None else tasks_prefix.rstrip("/")
        self._metrics_path = metrics_path
        self._task_routes_installed = False

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
        """Submit a task (see BackgroundTasks.add_task), tagged with the current request.

        Inside a handler it does not wait for room (Catzilla runs handlers
        on its event loop): a full queue raises QueueFullError at once, which
        the app answers with 503 and Retry-After.
        """
        options = dict(priority=priority, delay_ms=delay_ms, max_retries=max_retries,
                       timeout_ms=timeout_ms, compile_to_c=compile_to_c)
        if current_request() is not None:
            task = self._engine().add_task_nowait(func, *args, **options, **kwargs)
        else:
            task = super().add_task(func, *args, **options, **kwargs)
        self.request_log.tag(task)
        return task

    async def add_task_async(self, func: Callable[..., T], *args: Any,
                             **kwargs: Any) -> TaskResult[T]:
        """Submit from an async handler: a full queue is awaited without blocking the loop.

        Raises:
            QueueFullError: still full after queue_full_timeout (answered 503 + Retry-After).
        """
        task = await super().add_task_async(func, *args, **kwargs)
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
        info = RequestInfo(rid, request.method, request.path.split("?", 1)[0])
        info.state["caller"] = catzilla_caller(request, self.task_access)
        return info

    def _with_request_id(self, response: Any, info: RequestInfo) -> Any:
        response = self._normalize_response_value(response)
        return self._stamp(response, info)

    @staticmethod
    def _stamp(response: Any, info: RequestInfo) -> Any:
        response.set_header(REQUEST_ID_HEADER, info.id)
        cookie = info.state.get("set_cookie")
        if cookie:
            response.set_header("Set-Cookie", cookie)
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
        self._stamp(result[0], info)
        return result

    def _handle_exception(self, request, exception: Exception):
        # sync handlers' exceptions arrive wrapped in Catzilla's ExecutionError
        http = _task_failure(exception, self.task_debug)
        if http is not None:
            return JSONResponse(http.body, status_code=http.status_code, headers=dict(http.headers))
        return super()._handle_exception(request, exception)

    # -- the status routes -------------------------------------------------------------

    def listen(self, *args: Any, **kwargs: Any) -> Any:
        """Catzilla's listen, after adding the engine's routes (install_task_routes)."""
        self.install_task_routes()
        return super().listen(*args, **kwargs)

    def install_task_routes(self) -> None:
        """Add the engine's routes now (listen() does it at startup). Idempotent.

        Raises:
            RouteConflictError: one of the app's own routes overlaps the
                engine's; nothing was added.
        """
        if self._task_routes_installed:
            return
        prefix, metrics = self._tasks_prefix, self._metrics_path
        ours = []
        if prefix is not None:
            base = prefix + "/dashboard"
            ours += [("GET", p, n) for p, n in (
                (base, "czmp_dashboard"), (base + "/events", "czmp_dashboard_events"),
                (base + "/task/{task_id}", "czmp_dashboard_task"),
                (f"{prefix}/stats", "czmp_task_stats"),
                (f"{prefix}/requests/{{request_id}}", "czmp_request_tasks"),
                (f"{prefix}/{{task_id}}", "czmp_task_status"),
                (f"{prefix}/{{task_id}}/events", "czmp_task_events"))]
        if metrics:
            ours.append(("GET", metrics, "czmp_metrics"))
        theirs = [(r.get("method"), r.get("path"), r.get("handler_name", "?"))
                  for r in self.router.routes_list()]
        check_no_clash(ours, theirs)
        self._task_routes_installed = True
        if prefix is not None:
            self._register_task_routes(prefix)
        if metrics:
            add_dashboard_routes(self, self._observed_engine, prefix=None, metrics_path=metrics,
                                 allow=self._allow_observe)

    async def _allow_observe(self, request) -> bool:
        return await self.task_access.may_observe(catzilla_caller(request, self.task_access))

    def _register_task_routes(self, prefix: str) -> None:
        routes = self.task_routes
        # observability (catzilla_mp.observability): {prefix}/dashboard[/events|/task/{id}];
        # first, or "{prefix}/{task_id}" below would take "dashboard" for a task id
        add_dashboard_routes(self, self._observed_engine, prefix=prefix, metrics_path=None,
                             allow=self._allow_observe, streams=routes.streams,
                             debug=self.task_debug)

        def caller(request) -> Caller:
            return catzilla_caller(request, self.task_access)

        def answer(triple: tuple[int, dict, dict]) -> Response:
            return JSONResponse(triple[1], status_code=triple[0], headers=dict(triple[2]))

        # static paths first: the router must not read "stats" as a task id
        @self.get(f"{prefix}/stats")
        async def czmp_task_stats(request):
            return answer(await routes.call(routes.stats, caller(request)))

        @self.get(f"{prefix}/requests/{{request_id}}")
        async def czmp_request_tasks(request):
            return answer(await routes.call(routes.request_tasks, caller(request),
                                            request.path_params["request_id"]))

        @self.get(f"{prefix}/{{task_id}}")
        async def czmp_task_status(request):
            return answer(await routes.call(routes.status, caller(request),
                                            request.path_params["task_id"]))

        @self.get(f"{prefix}/{{task_id}}/events")
        async def czmp_task_events(request):
            return await self._events_response(request)

    async def _events_response(self, request) -> Response:
        routes = self.task_routes
        try:
            task = await routes.find(catzilla_caller(request, self.task_access),
                                     request.path_params["task_id"])
        except TaskHTTPError as exc:
            return JSONResponse(exc.body, status_code=exc.status_code, headers=dict(exc.headers))
        last = request.get_header("Last-Event-ID") or request.query_params.get("last_event_id")
        headers = {"Cache-Control": "no-cache"}
        if last and last.startswith("end:"):
            # the client saw the final state: 204 tells an EventSource to stop
            return Response(status_code=204, body="", headers=headers)
        try:
            routes.streams.take()  # a held response is a stream too: capped
        except TaskHTTPError as exc:
            return JSONResponse(exc.body, status_code=exc.status_code, headers=dict(exc.headers))
        try:
            async for event, key, status in task_changes(task, last_key=last,
                                                         debug=self.task_debug,
                                                         hold_s=self._sse_hold_s):
                ident = f"end:{key}" if event == "end" else key
                return Response(status_code=200, content_type="text/event-stream",
                                body=sse(status, event=event, id=ident, retry_ms=0),
                                headers=headers)
        finally:
            routes.streams.give()
        # nothing changed within the hold: a comment, and the client asks again
        return Response(status_code=200, content_type="text/event-stream",
                        body=": no change\nretry: 0\n\n", headers=headers)


class Catzilla(CatzillaTasks, _catzilla.Catzilla):
    """Catzilla's app class whose background tasks run in catzilla_mp."""

    def __init__(self, *args: Any, tasks_prefix: Optional[str] = "/tasks",
                 task_debug: bool = False, track_requests: bool = True,
                 sse_hold_s: float = SSE_HOLD_S, task_authorize: Optional[Authorize] = None,
                 task_owner: Optional[OwnerOf] = None, task_secret: Any = None,
                 task_cookie_secure: bool = False, max_streams: int = MAX_STREAMS,
                 metrics_path: Optional[str] = "/metrics", **kwargs: Any) -> None:
        """Catzilla's arguments, plus:

        Args:
            tasks_prefix: where the engine's routes go (added at ``listen``);
                None adds none.
            task_debug: include worker tracebacks in error bodies and the dashboard.
            track_requests: tag tasks with the request that submitted them.
            sse_hold_s: how long one events response waits for a change.
            task_authorize: ``authorize(request) -> bool`` (sync or async):
                True lets a caller see every task, the dashboard, stats and
                metrics (see catzilla_mp.integrations.access).
            task_owner: ``owner(request) -> str | None``: who owns the tasks
                a request submits; default: a session cookie.
            task_secret: key that signs the session cookie.
            task_cookie_secure: send the session cookie over HTTPS only.
            max_streams: event responses held open at once (503 beyond).
            metrics_path: where Prometheus metrics go (None: nowhere).
        """
        super().__init__(*args, **kwargs)
        self._init_task_integration(
            tasks_prefix=tasks_prefix, task_debug=task_debug, track_requests=track_requests,
            sse_hold_s=sse_hold_s, task_authorize=task_authorize, task_owner=task_owner,
            task_secret=task_secret, task_cookie_secure=task_cookie_secure,
            max_streams=max_streams, metrics_path=metrics_path)


_ENABLED_CLASSES: dict[type, type] = {}


def enable(app: Any, mode: str = "process", *, tasks_prefix: Optional[str] = "/tasks",
           debug: bool = False, authorize: Optional[Authorize] = None,
           owner: Optional[OwnerOf] = None, secret: Any = None, cookie_secure: bool = False,
           max_streams: int = MAX_STREAMS, metrics_path: Optional[str] = "/metrics",
           track_requests: bool = True, **engine_options: Any) -> Any:
    """Give an existing ``catzilla.Catzilla`` app catzilla_mp's engine, methods and routes.

    ``catzilla_mp.enable(app, mode="process", workers=4)`` is the one-line
    switch for an app made with ``catzilla.Catzilla(...)``: afterwards
    ``app.add_task`` / ``add_task_async`` / ``task`` / ``get_task_result`` /
    ``get_task_stats`` run on catzilla_mp, and ``app.listen`` adds the
    engine's routes (as ``catzilla_mp.Catzilla`` does). The app's class is
    swapped for a subclass with the mixin first; its routes, middleware and
    settings stay as they are.

    Args:
        app: a catzilla.Catzilla instance (not yet listening).
        mode: "process" (default) or "thread".
        tasks_prefix, debug, authorize, owner, secret, cookie_secure,
        max_streams, metrics_path, track_requests: as catzilla_mp.Catzilla's
            tasks_prefix, task_debug, task_authorize, ... (see its __init__).
        **engine_options: enable_background_tasks / BackgroundTasks options.

    Returns:
        ``app`` itself, now an instance of the enabled subclass.

    Raises:
        TypeError: ``app`` is not a Catzilla app.
        RuntimeError: background tasks are already enabled on it.
    """
    if not isinstance(app, _catzilla.Catzilla):
        raise TypeError(f"catzilla_mp.enable() takes a catzilla.Catzilla app, "
                        f"not {type(app).__name__}")
    if isinstance(app, CatzillaTasks):
        if getattr(app, "tasks", None) is not None:
            raise RuntimeError(ALREADY_ENABLED)
        given = [k for k, v in (("tasks_prefix", tasks_prefix != "/tasks"), ("debug", debug),
                                ("authorize", authorize), ("owner", owner), ("secret", secret),
                                ("cookie_secure", cookie_secure),
                                ("max_streams", max_streams != MAX_STREAMS),
                                ("metrics_path", metrics_path != "/metrics"),
                                ("track_requests", not track_requests)) if v]
        if given:
            raise TypeError(f"{', '.join(given)}: this app is a catzilla_mp.Catzilla already; "
                            "give them to its constructor (task_authorize=, tasks_prefix=, ...)")
    else:
        if getattr(app, "_task_system_enabled", False):
            raise RuntimeError("Catzilla's own background task system is already enabled "
                               "on this app; enable catzilla_mp instead of it, not after it")
        base = type(app)
        cls = _ENABLED_CLASSES.get(base)
        if cls is None:
            cls = _ENABLED_CLASSES[base] = type(base.__name__, (CatzillaTasks, base),
                                                {"__module__": base.__module__})
        app.__class__ = cls
        app.tasks = None
        app._init_task_integration(
            tasks_prefix=tasks_prefix, task_debug=debug, track_requests=track_requests,
            task_authorize=authorize, task_owner=owner, task_secret=secret,
            task_cookie_secure=cookie_secure, max_streams=max_streams,
            metrics_path=metrics_path)
    app.enable_background_tasks(mode=mode, **engine_options)
    return app


def _task_failure(exc: BaseException, debug: bool) -> Optional[TaskHTTPError]:
    """The TaskHTTPError (or TaskError, or full queue) in ``exc``'s cause chain, as a TaskHTTPError."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TaskHTTPError):
            return exc
        if isinstance(exc, TaskError):
            return task_http_error(None, exc, debug=debug)
        busy = submit_failure(exc)
        if busy is not None:
            return busy
        exc, seen = exc.__cause__, seen + 1
    return None
