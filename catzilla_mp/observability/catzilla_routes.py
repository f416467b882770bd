"""The dashboard and /metrics on a Catzilla app (its own C HTTP server).

    from catzilla_mp.observability.catzilla_routes import add_dashboard_routes
    add_dashboard_routes(app, lambda: app.tasks, prefix="/tasks")

Catzilla's C server drains a streaming generator on its one event-loop
thread, so a stream that sleeps between events would stall every other
request (measured: a /run request waited for the whole stream). The event
route therefore sends ONE snapshot per connection (a plain, finite response)
with ``retry:`` set to the interval: the browser's EventSource reconnects
each second by itself, sends Last-Event-ID, and gets only the seconds it
missed.

Every route asks ``allow(request)`` (async) first and answers 403 when it
says no; the default lets in local clients only (loopback peer, no proxy
header: catzilla_mp.integrations.access). The task detail shows a traceback
only with ``debug=True``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Union

from ..integrations.access import PROXY_HEADERS, is_loopback
from ..integrations.catzilla_peer import catzilla_peer
from ..integrations.status import FORBIDDEN, StreamSlots
from . import dashboard_html, instrument, metrics_text, task_detail
from .dashboard import DEFAULT_INTERVAL, SSE_HEADERS, SSE_MEDIA_TYPE, sse_events

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

EngineRef = Union["BackgroundTasks", Callable[[], "BackgroundTasks"]]
Allow = Callable[[Any], Awaitable[bool]]


async def local_only(request: Any) -> bool:
    """The default ``allow``: the socket's peer is loopback, and no proxy header."""
    peer = catzilla_peer(request)
    return is_loopback(peer) and not any(_header(request, h) for h in PROXY_HEADERS)


def add_dashboard_routes(app: Any, engine: EngineRef, prefix: Optional[str] = "", *,
                         metrics_path: Optional[str] = "/metrics",
                         interval: float = DEFAULT_INTERVAL, allow: Optional[Allow] = None,
                         streams: Optional[StreamSlots] = None, debug: bool = False) -> None:
    """Register GET ``metrics_path``, ``{prefix}/dashboard``, ``.../events``, ``.../task/{task_id}``.

    ``prefix=None`` registers only ``metrics_path``; ``metrics_path=None`` leaves it out.
    """
    from catzilla import HTMLResponse, JSONResponse, Response

    allow = allow or local_only

    def get() -> "BackgroundTasks":
        eng = engine() if callable(engine) and not hasattr(engine, "add_task") else engine
        instrument(eng)
        return eng

    def refused() -> Any:
        return JSONResponse(FORBIDDEN.body, status_code=FORBIDDEN.status_code)

    if metrics_path:
        @app.get(metrics_path)
        async def czmp_metrics(request):
            if not await allow(request):
                return refused()
            body, ctype = metrics_text(get())
            return Response(status_code=200, content_type=ctype.split(";")[0],
                            body=body.decode("utf-8"))

    if prefix is None:
        return
    base = prefix.rstrip("/") + "/dashboard"
    page = dashboard_html(prefix)

    @app.get(base)
    async def czmp_dashboard(request):
        if not await allow(request):
            return refused()
        get()
        return HTMLResponse(page)

    @app.get(base + "/events")
    async def czmp_dashboard_events(request):
        if not await allow(request):
            return refused()
        # one snapshot, as a finite body: nothing is held open on Catzilla's loop
        body = "".join(sse_events(get(), interval, max_events=1,
                                  last_event_id=_header(request, "Last-Event-ID")))
        return Response(status_code=200, content_type=SSE_MEDIA_TYPE, body=body,
                        headers=dict(SSE_HEADERS))

    @app.get(base + "/task/{task_id}")
    async def czmp_dashboard_task(request):
        if not await allow(request):
            return refused()
        detail = task_detail(get(), request.path_params["task_id"], debug=debug)
        if detail is None:
            return JSONResponse({"error": "unknown task"}, status_code=404)
        return JSONResponse(detail)


def _header(request: Any, name: str) -> Any:
    # Catzilla 0.2.3 leaves request.headers empty; get_header() reads them from the C request
    getter = getattr(request, "get_header", None)
    if getter is not None:
        return getter(name)
    return (getattr(request, "headers", None) or {}).get(name.lower())
