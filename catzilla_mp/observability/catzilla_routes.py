"""The dashboard and /metrics on a Catzilla app (its own C HTTP server).

    from catzilla_mp.observability.catzilla_routes import add_dashboard_routes
    add_dashboard_routes(app, lambda: app.tasks, prefix="/tasks")

Catzilla's C server drains a streaming generator on its one event-loop
thread, so a stream that sleeps between events would stall every other
request (measured: a /run request waited for the whole stream). The event
route therefore sends ONE snapshot per connection with ``retry:`` set to the
interval: the browser's EventSource reconnects each second by itself, sends
Last-Event-ID, and gets only the seconds it missed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

from . import dashboard_html, instrument, metrics_text, task_detail
from .dashboard import DEFAULT_INTERVAL, SSE_HEADERS, SSE_MEDIA_TYPE, sse_events

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

EngineRef = Union["BackgroundTasks", Callable[[], "BackgroundTasks"]]


def add_dashboard_routes(app: Any, engine: EngineRef, prefix: str = "", *,
                         metrics_path: str = "/metrics", interval: float = DEFAULT_INTERVAL) -> None:
    """Register GET ``metrics_path``, ``{prefix}/dashboard``, ``.../events``, ``.../task/{task_id}``."""
    from catzilla import HTMLResponse, JSONResponse, Response
    from catzilla.streaming import StreamingResponse

    base = prefix.rstrip("/") + "/dashboard"
    page = dashboard_html(prefix)

    def get() -> "BackgroundTasks":
        eng = engine() if callable(engine) and not hasattr(engine, "add_task") else engine
        instrument(eng)
        return eng

    if metrics_path:
        @app.get(metrics_path)
        def czmp_metrics(request):
            body, ctype = metrics_text(get())
            return Response(status_code=200, content_type=ctype.split(";")[0],
                            body=body.decode("utf-8"))

    @app.get(base)
    def czmp_dashboard(request):
        get()
        return HTMLResponse(page)

    @app.get(base + "/events")
    def czmp_dashboard_events(request):
        events = sse_events(get(), interval, max_events=1,
                            last_event_id=_header(request, "Last-Event-ID"))
        return StreamingResponse(events, content_type=SSE_MEDIA_TYPE, headers=dict(SSE_HEADERS))

    @app.get(base + "/task/{task_id}")
    def czmp_dashboard_task(request):
        detail = task_detail(get(), request.path_params["task_id"])
        if detail is None:
            return JSONResponse({"error": "unknown task"}, status_code=404)
        return JSONResponse(detail)


def _header(request: Any, name: str) -> Any:
    # Catzilla 0.2.3 leaves request.headers empty; get_header() reads them from the C request
    getter = getattr(request, "get_header", None)
    if getter is not None:
        return getter(name)
    return (getattr(request, "headers", None) or {}).get(name.lower())
