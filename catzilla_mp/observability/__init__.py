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

import threading
from typing import TYPE_CHECKING

from .dashboard import aiter_sse_events, dashboard_html, sse_events
from .logs import configure_logging
from .snapshot import Observer, task_detail

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

__all__ = ["Observer", "aiter_sse_events", "configure_logging", "dashboard_html", "instrument",
           "metrics_text", "snapshot", "sse_events", "task_detail"]

_lock = threading.Lock()


def instrument(engine: "BackgroundTasks") -> Observer:
    """The engine's Observer, created (and its listeners attached) on first call.

    Idempotent and thread-safe. Costs the engine one listener call per task
    event (a few integer increments under a lock).
    """
    obs = getattr(engine, "_czmp_observer", None)
    if obs is not None:
        return obs
    with _lock:
        obs = getattr(engine, "_czmp_observer", None)
        if obs is None:
            from .logs import TaskEventLogger
            from .metrics import make_registry

            obs = Observer(engine)
            obs.registry = make_registry(obs)
            obs.task_logger = TaskEventLogger(engine)
            engine._czmp_observer = obs
    return obs


def snapshot(engine: "BackgroundTasks") -> dict:
    """The dashboard's JSON snapshot of the engine (see snapshot.build_snapshot)."""
    return instrument(engine).snapshot()


def metrics_text(engine: "BackgroundTasks") -> tuple[bytes, str]:
    """(body, content type) for GET /metrics; see metrics.py."""
    from .metrics import metrics_text as _metrics_text

    return _metrics_text(engine)
