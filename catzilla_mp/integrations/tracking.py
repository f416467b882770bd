"""Request-scoped tracking: which HTTP request submitted which task.

A web integration opens a ``request_scope`` around each request's handler.
Tasks submitted inside it (through the integration's ``add_task``) carry the
request's id, method and path in ``TaskResult.meta["request"]``, and the
``RequestLog`` remembers the task ids of the last ``keep`` requests.

The scope is a ContextVar, so it follows the handler into threads started
by anyio/asyncio helpers that copy the context, and concurrent requests on
one event loop never see each other's scope.
"""
from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

#: The header a client may send to choose the request id; echoed in the response.
REQUEST_ID_HEADER = "X-Request-ID"
#: Client-chosen ids are kept only if they look like ids: they end up in
#: response headers and logs, so nothing that could split a header line.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_current: ContextVar[Optional["RequestInfo"]] = ContextVar("catzilla_mp_request", default=None)


@dataclass(frozen=True)
class RequestInfo:
    """The request a task was submitted from."""

    id: str
    method: str
    path: str

    def as_dict(self) -> dict:
        return asdict(self)


def request_id_from(header_value: Optional[str]) -> str:
    """The client's id if it is a safe token, else a fresh random one."""
    if header_value and _SAFE_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


def current_request() -> Optional[RequestInfo]:
    """The request being handled in this context, or None outside a request."""
    return _current.get()


@contextmanager
def request_scope(info: RequestInfo) -> Iterator[RequestInfo]:
    """Make ``info`` the current request for the duration of the block."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


class RequestLog:
    """Task ids per request id, for the last ``keep`` requests that submitted tasks.

    Bounded so a long-running server does not grow without limit; the oldest
    request is forgotten first. Thread-safe (handlers run on many threads).
    """

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, list[str]] = OrderedDict()

    def tag(self, task) -> Optional[RequestInfo]:
        """Attach the current request (if any) to ``task`` and remember it."""
        info = current_request()
        if info is None:
            return None
        meta = task.meta if isinstance(task.meta, dict) else {}
        meta["request"] = info.as_dict()
        task.meta = meta
        with self._lock:
            ids = self._tasks.get(info.id)
            if ids is None:
                ids = self._tasks[info.id] = []
                while len(self._tasks) > self.keep:
                    self._tasks.popitem(last=False)
            ids.append(task.task_id)
        return info

    def task_ids(self, request_id: str) -> Optional[list[str]]:
        """The ids of the tasks ``request_id`` submitted, oldest first; None if unknown."""
        with self._lock:
            ids = self._tasks.get(request_id)
            return None if ids is None else list(ids)
