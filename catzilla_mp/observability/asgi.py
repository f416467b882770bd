"""Starlette routes for the dashboard and /metrics (FastAPI apps take them too).

    from catzilla_mp.observability.asgi import dashboard_routes
    app = Starlette(routes=[..., *dashboard_routes(lambda: engine, prefix="/tasks")])
    # FastAPI: app.router.routes.extend(dashboard_routes(lambda: engine, prefix="/tasks"))

``engine`` may be the engine or a zero-argument callable returning it (an
app whose lifespan starts the engine has none yet when routes are built).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Union

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import dashboard_html, instrument, metrics_text, task_detail
from .dashboard import DEFAULT_INTERVAL, SSE_HEADERS, SSE_MEDIA_TYPE, aiter_sse_events

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

EngineRef = Union["BackgroundTasks", Callable[[], "BackgroundTasks"]]


def _resolver(engine: EngineRef) -> Callable[[], "BackgroundTasks"]:
    def get() -> "BackgroundTasks":
        eng = engine() if callable(engine) and not hasattr(engine, "add_task") else engine
        instrument(eng)
        return eng
    return get


def metrics_route(engine: EngineRef, path: str = "/metrics") -> Route:
    """GET ``path``: the engine's Prometheus metrics."""
    get = _resolver(engine)

    async def metrics(request: Request) -> Response:
        body, ctype = metrics_text(get())
        return Response(body, media_type=ctype)

    return Route(path, metrics, methods=["GET"], name="czmp_metrics")


def dashboard_routes(engine: EngineRef, prefix: str = "", *, metrics_path: str = "/metrics",
                     interval: float = DEFAULT_INTERVAL) -> list[Route]:
    """Routes: ``metrics_path``, ``{prefix}/dashboard``, ``.../events``, ``.../task/{task_id}``.

    ``metrics_path=None`` leaves /metrics out (an app that exposes it elsewhere).
    Put them before any ``{prefix}/{param}`` route, which would match them first.
    """
    base = prefix.rstrip("/") + "/dashboard"
    page = dashboard_html(prefix)
    get = _resolver(engine)

    async def page_route(request: Request) -> Response:
        get()  # start counting as soon as someone looks
        return HTMLResponse(page)

    async def events(request: Request) -> Response:
        stream = aiter_sse_events(get(), interval, request.is_disconnected,
                                  last_event_id=request.headers.get("last-event-id"))
        return StreamingResponse(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    async def task(request: Request) -> Response:
        detail = task_detail(get(), request.path_params["task_id"])
        if detail is None:
            return JSONResponse({"error": "unknown task"}, status_code=404)
        return JSONResponse(detail)

    routes = [
        Route(base, page_route, methods=["GET"], name="czmp_dashboard"),
        Route(base + "/events", events, methods=["GET"], name="czmp_dashboard_events"),
        Route(base + "/task/{task_id}", task, methods=["GET"], name="czmp_dashboard_task"),
    ]
    if metrics_path:
        routes.insert(0, metrics_route(engine, metrics_path))
    return routes
