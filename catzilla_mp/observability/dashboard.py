"""The dashboard: one self-contained HTML page, and the SSE stream that feeds it.

    GET {prefix}/dashboard              dashboard_html(prefix)   text/html
    GET {prefix}/dashboard/events       sse_events(engine)       text/event-stream, one
                                        "snapshot" event per ``interval`` seconds
    GET {prefix}/dashboard/task/{id}    task_detail(engine, id)  application/json (404: None)

The page's script and styles (dashboard.js/.css next to this file) are
inlined into the HTML when it is served: no build step, nothing fetched from
the network, so it works behind firewalls and under a strict CSP that allows
inline code. A stream's first event carries the whole history (for the
charts); later ones only the seconds added since, so an open dashboard costs
a few hundred bytes a second. Each event's ``id:`` is its last second, so a
browser that reconnects sends it back as Last-Event-ID and gets only what it
missed.

Servers that run handlers on their event loop (Catzilla's C server drains a
streaming generator on its only thread: a sleeping stream would stall every
other request) use ``sse_events(..., max_events=1)``: one event per
connection, and EventSource's own reconnect (``retry:`` = the interval)
makes it a ~1/s feed that never holds the server.
"""
from __future__ import annotations

import asyncio
import functools
import html
import json
import pathlib
import threading
import time
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Iterator, Optional

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

HERE = pathlib.Path(__file__).resolve().parent
#: Seconds between snapshots on the stream.
DEFAULT_INTERVAL = 1.0
#: Milliseconds EventSource waits before reconnecting after a dropped stream.
RECONNECT_MS = 2000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"


@functools.lru_cache(maxsize=None)
def _page_template() -> str:
    page = (HERE / "dashboard.html").read_text(encoding="utf-8")
    css = (HERE / "dashboard.css").read_text(encoding="utf-8")
    js = (HERE / "dashboard.js").read_text(encoding="utf-8")
    return page.replace("/*__CSS__*/", css).replace("/*__JS__*/", js)


def dashboard_html(prefix: str = "", *, websocket: bool = False) -> str:
    """The dashboard page for an app serving it at ``{prefix}/dashboard``.

    With ``websocket``, the page reads ``{prefix}/dashboard/ws`` and falls
    back to the SSE stream if that does not open.
    """
    base = prefix.rstrip("/") + "/dashboard"
    return _page_template().replace("__BASE__", html.escape(base, quote=True)) \
        .replace("__WS__", "1" if websocket else "")


def _event(snap: dict, last_t: Optional[int], first: bool) -> tuple[str, Optional[int]]:
    """One SSE event: the whole history if ``first``, else the seconds after ``last_t``."""
    payload, new_last = snapshot_payload(snap, last_t, first)
    data = json.dumps(payload, default=str, separators=(",", ":"))
    return f"event: snapshot\nid: {new_last}\ndata: {data}\n\n", new_last


def snapshot_payload(snap: dict, last_t: Optional[int], first: bool) -> tuple[dict, Optional[int]]:
    """(what one snapshot event carries, the last second it covers); see _event."""
    series = snap["series"]
    payload = dict(snap)
    payload["series_reset"] = first
    if not first:
        payload["series"] = [p for p in series if last_t is None or p["t"] > last_t]
    # the last full second this event covers, even when it had no point yet
    new_last = series[-1]["t"] if series else max(last_t or 0, int(snap["time"]) - 1)
    return payload, new_last


def _resume_point(last_event_id: Optional[str]) -> Optional[int]:
    """The second a reconnecting browser last saw (its Last-Event-ID), or None."""
    try:
        return int(last_event_id) if last_event_id else None
    except ValueError:
        return None


def sse_events(engine: "BackgroundTasks", interval: float = DEFAULT_INTERVAL,
               stop: Optional[threading.Event] = None, max_events: Optional[int] = None,
               last_event_id: Optional[str] = None) -> Iterator[str]:
    """Server-Sent Events of dashboard snapshots, for synchronous servers.

    Runs until ``stop`` is set, ``max_events`` were sent, or the consumer
    stops iterating (a closed connection). Each chunk is one complete event.
    ``last_event_id`` is the request's Last-Event-ID header, if any.
    """
    from .attach import instrument

    obs = instrument(engine)
    last_t = _resume_point(last_event_id)
    retry_ms = int(interval * 1000) if max_events == 1 else RECONNECT_MS
    yield f"retry: {retry_ms}\n\n"
    sent = 0
    while True:
        chunk, last_t = _event(obs.snapshot(), last_t, sent == 0 and last_t is None)
        yield chunk
        sent += 1
        if max_events is not None and sent >= max_events:
            return
        if stop is not None:
            if stop.wait(interval):
                return
        else:
            time.sleep(interval)


async def aiter_sse_events(engine: "BackgroundTasks", interval: float = DEFAULT_INTERVAL,
                           is_disconnected: Optional[Callable[[], Awaitable[bool]]] = None,
                           max_events: Optional[int] = None,
                           last_event_id: Optional[str] = None) -> AsyncIterator[str]:
    """As :func:`sse_events`, for asyncio servers: snapshots are taken in a thread.

    ``is_disconnected`` (e.g. Starlette's ``request.is_disconnected``) ends the
    stream early; servers that cancel the response task on disconnect need not
    pass it.
    """
    from .attach import instrument

    obs = instrument(engine)
    last_t = _resume_point(last_event_id)
    yield f"retry: {RECONNECT_MS}\n\n"
    sent = 0
    while True:
        snap = await asyncio.to_thread(obs.snapshot)
        chunk, last_t = _event(snap, last_t, sent == 0 and last_t is None)
        yield chunk
        sent += 1
        if max_events is not None and sent >= max_events:
            return
        await asyncio.sleep(interval)
        if is_disconnected is not None and await is_disconnected():
            return


async def aiter_snapshots(engine: "BackgroundTasks", interval: float = DEFAULT_INTERVAL,
                          last_event_id: Optional[str] = None
                          ) -> AsyncIterator[tuple[Optional[int], dict]]:
    """(id, payload) of each snapshot event, for a WebSocket (integrations/websocket.py).

    The payloads of aiter_sse_events, without the SSE framing; runs until closed.
    """
    from .attach import instrument

    obs = instrument(engine)
    last_t = _resume_point(last_event_id)
    first = last_t is None
    while True:
        snap = await asyncio.to_thread(obs.snapshot)
        payload, last_t = snapshot_payload(snap, last_t, first)
        first = False
        yield last_t, payload
        await asyncio.sleep(interval)
