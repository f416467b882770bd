"""WebSocket live updates for Starlette/FastAPI: a task's events and the engine's snapshots.

    client ──ws──► {prefix}/{task_id}/ws         access: the task's owner (cookie or owner hook),
                                                 or ``authorize`` -- as GET {prefix}/{task_id}/events
                   {prefix}/dashboard/ws          access: loopback clients only, or ``authorize``
                                                 -- as GET {prefix}/dashboard/events
          ◄── JSON text frames, one per change: {"event": ..., "id": ..., "data": {...}}

The same messages as the SSE streams, in JSON frames instead of SSE lines:
a task's ``status`` events, then one ``end`` event, then a normal close
(1000); the dashboard's ``snapshot`` events every interval (the first with
the whole history, later ones only the seconds added). A reconnecting
client passes the last ``id`` it saw as ``?last_event_id=`` (SSE's
Last-Event-ID).

A refusal happens before the handshake completes, so a client sees the
HTTP answer the SSE route would give (404 for a task it may not read, 403
for the dashboard, 503 when ``max_streams`` streams are open: the streams
of both kinds share the cap) where the server supports ASGI's
websocket.http.response extension (uvicorn does), else a close with 1008
(refused) or 1013 (try again later). Catzilla's own server (0.2.3) has no
WebSocket support; its integration keeps the SSE routes only.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from starlette.websockets import WebSocket, WebSocketDisconnect

from .status import TaskHTTPError

#: Close codes (RFC 6455 7.4.1) for a refusal on a server without HTTP denial responses.
CLOSE_REFUSED = 1008
CLOSE_TRY_AGAIN = 1013


def message(event: str, ident: Any, data: Any) -> str:
    """One frame: ``{"event": event, "id": ident, "data": data}`` as compact JSON."""
    return json.dumps({"event": event, "id": ident, "data": data}, default=str,
                      separators=(",", ":"))


async def refuse(websocket: WebSocket, exc: TaskHTTPError) -> None:
    """Refuse the handshake with ``exc``'s HTTP answer, or a close code if the server cannot."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        from starlette.responses import JSONResponse

        await websocket.send_denial_response(
            JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers))
        return
    await websocket.close(CLOSE_TRY_AGAIN if exc.status_code == 503 else CLOSE_REFUSED)


async def send_all(websocket: WebSocket, frames: AsyncIterator[str]) -> None:
    """Accept, send every frame of ``frames``, then close normally; stop early if the client goes.

    The client's messages are read (and ignored) meanwhile: that is how a
    disconnect is noticed while no frame is due (a task that runs for an hour).
    """
    await websocket.accept()

    async def sender() -> None:
        async for frame in frames:
            await websocket.send_text(frame)

    async def reader() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return

    send_task = asyncio.ensure_future(sender())
    read_task = asyncio.ensure_future(reader())
    try:
        done, _ = await asyncio.wait({send_task, read_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (send_task, read_task):
            t.cancel()
        await asyncio.gather(send_task, read_task, return_exceptions=True)
        closer = getattr(frames, "aclose", None)
        if closer is not None:
            await closer()
    if send_task in done and not send_task.cancelled():
        exc = send_task.exception()
        if exc is not None and not isinstance(exc, (WebSocketDisconnect, OSError, RuntimeError)):
            raise exc
        if exc is None:
            try:
                await websocket.close(1000)
            except (RuntimeError, OSError):
                pass  # the client left at the same moment
