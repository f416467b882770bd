"""See the engine work: Prometheus metrics, a live dashboard, ``catzilla-mp top``, logs.

    from catzilla_mp.observability import instrument, metrics_text, dashboard_html, sse_events

    instrument(engine)                    # once, when the engine starts: counting begins here
    body, ctype = metrics_text(engine)    # GET /metrics
    html = dashboard_html(prefix)         # GET {prefix}/dashboard
    for chunk in sse_events(engine): ...  # GET {prefix}/dashboard/events (text/event-stream)
    task_detail(engine, task_id)          # GET {prefix}/dashboard/task/{task_id}

The web integrations serve these routes; ``asgi.dashboard_routes`` builds them
for any Starlette/FastAPI app. ``catzilla-mp top`` needs none of this: it reads
a running engine's shared memory, read-only, from another shell.
"""
from __future__ import annotations


from .attach import instrument, metrics_text, snapshot
from .dashboard import aiter_sse_events, dashboard_html, sse_events
from .logs import configure_logging
from .snapshot import Observer, task_detail

__all__ = ["Observer", "aiter_sse_events", "configure_logging", "dashboard_html", "instrument",
           "metrics_text", "snapshot", "sse_events", "task_detail"]
