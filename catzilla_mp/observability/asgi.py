"""Starlette routes for the dashboard and /metrics (FastAPI apps take them too).

    from catzilla_mp.observability.asgi import dashboard_routes
    app = Starlette(routes=[..., *dashboard_routes(lambda: engine, prefix="/tasks")])
    # FastAPI: app.router.routes.extend(dashboard_routes(lambda: engine, prefix="/tasks"))

``engine`` may be the engine or a zero-argument callable returning it (an
app whose lifespan starts the engine has none yet when routes are built).

Every route asks ``allow(request)`` (an async callable) first and answers
403 when it says no. The default lets in local clients only (a loopback
peer and no proxy header: see catzilla_mp.integrations.access); pass your
own to put the routes behind the app's auth. Event streams are capped
(``streams``, 503 with Retry-After beyond it); the task detail shows a
traceback only with ``debug=True``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Union

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import dashboard_html, instrument, metrics_text, task_detail
from ..integrations.access import PROXY_HEADERS, is_loopback
from ..integrations.status import FORBIDDEN, StreamSlots, TaskHTTPError
from ..integrations.websocket import message, refuse, send_all
from .dashboard import (DEFAULT_INTERVAL, SSE_HEADERS, SSE_MEDIA_TYPE, aiter_snapshots,
                        aiter_sse_events)

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

EngineRef = Union["BackgroundTasks", Callable[[], "BackgroundTasks"]]
Allow = Callable[[Request], Awaitable[bool]]


async def local_only(request: Request) -> bool:
    """The default ``allow``: a loopback peer, and no proxy in between."""
    peer = request.client.host if request.client else None
    return is_loopback(peer) and not any(h in request.headers for h in PROXY_HEADERS)


def refusal(exc: TaskHTTPError) -> Response:
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


class CappedStream(StreamingResponse):
    """A StreamingResponse that gives its stream slot back however the response ends."""

    def __init__(self, content: Any, slots: StreamSlots, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._slots = slots

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give()


def _resolver(engine: EngineRef) -> Callable[[], "BackgroundTasks"]:
    def get() -> "BackgroundTasks":
        eng = engine() if callable(engine) and not hasattr(engine, "add_task") else engine
        instrument(eng)
        return eng
    return get


def metrics_route(engine: EngineRef, path: str = "/metrics", *,
                  allow: Optional[Allow] = None) -> Route:
    """GET ``path``: the engine's Prometheus metrics (403 unless ``allow``)."""
    get = _resolver(engine)
    allow = allow or local_only

    async def metrics(request: Request) -> Response:
        if not await allow(request):
            return refusal(FORBIDDEN)
        body, ctype = metrics_text(get())
        return Response(body, media_type=ctype)

    return Route(path, metrics, methods=["GET"], name="czmp_metrics")


def dashboard_routes(engine: EngineRef, prefix: str = "", *, metrics_path: str = "/metrics",
                     interval: float = DEFAULT_INTERVAL, allow: Optional[Allow] = None,
                     streams: Optional[StreamSlots] = None, debug: bool = False,
                     websocket: bool = True) -> list[Any]:
    """Routes: ``metrics_path``, ``{prefix}/dashboard``, ``.../events``, ``.../task/{task_id}``.

    With ``websocket`` (the default), also ``{prefix}/dashboard/ws``: the
    snapshots over a WebSocket, under the same ``allow`` and stream cap
    (integrations/websocket.py); the page then uses it, and the SSE stream
    if it does not open.

    ``metrics_path=None`` leaves /metrics out (an app that exposes it elsewhere).
    Put them before any ``{prefix}/{param}`` route, which would match them first.
    """
    base = prefix.rstrip("/") + "/dashboard"
    page = dashboard_html(prefix, websocket=websocket)
    get = _resolver(engine)
    allow = allow or local_only
    streams = streams or StreamSlots()

    async def page_route(request: Request) -> Response:
        if not await allow(request):
            return refusal(FORBIDDEN)
        get()  # start counting as soon as someone looks
        return HTMLResponse(page)

    async def events(request: Request) -> Response:
        if not await allow(request):
            return refusal(FORBIDDEN)
        try:
            streams.take()
        except TaskHTTPError as exc:
            return refusal(exc)
        stream = aiter_sse_events(get(), interval, request.is_disconnected,
                                  last_event_id=request.headers.get("last-event-id"))
        return CappedStream(stream, streams, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    async def task(request: Request) -> Response:
        if not await allow(request):
            return refusal(FORBIDDEN)
        detail = task_detail(get(), request.path_params["task_id"], debug=debug)
        if detail is None:
            return JSONResponse({"error": "unknown task"}, status_code=404)
        return JSONResponse(detail)

    async def ws_events(socket: WebSocket) -> None:
        # the same checks as events(), before the handshake completes
        if not await allow(socket):  # type: ignore[arg-type] - a WebSocket is an HTTPConnection
            await refuse(socket, FORBIDDEN)
            return
        try:
            streams.take()
        except TaskHTTPError as exc:
            await refuse(socket, exc)
            return
        try:
            snaps = aiter_snapshots(get(), interval, socket.query_params.get("last_event_id"))
            await send_all(socket, _framed(snaps))
        finally:
            streams.give()

    routes: list[Any] = [
        Route(base, page_route, methods=["GET"], name="czmp_dashboard"),
        Route(base + "/events", events, methods=["GET"], name="czmp_dashboard_events"),
        Route(base + "/task/{task_id}", task, methods=["GET"], name="czmp_dashboard_task"),
    ]
    if websocket:
        routes.append(WebSocketRoute(base + "/ws", ws_events, name="czmp_dashboard_ws"))
    if metrics_path:
        routes.insert(0, metrics_route(engine, metrics_path, allow=allow))
    return routes


async def _framed(snaps: Any) -> Any:
    try:
        async for ident, payload in snaps:
            yield message("snapshot", ident, payload)
    finally:
        await snaps.aclose()
